"""OAuth mode's discovery documents (RFC 9728, RFC 8414) and dynamic client registration (RFC 7591), over real HTTP:
what is published, what a client may register, and every redirect URI that is refused."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from mcp.client.auth.utils import validate_metadata_issuer
from mcp.shared.auth import OAuthMetadata, ProtectedResourceMetadata

from mcp_access_guard.oauth import MemoryStore
from mcp_access_guard.oauth.records import CLIENT_SECRET_PREFIX
from mcp_access_guard.testing import LocalAccessSaaS
from oauth_harness import (
    SECRET_KEY,
    Pkce,
    Registered,
    authorize_url,
    deployment,
    exchange,
    log_in,
    register,
)

pytestmark = pytest.mark.anyio

__all__ = ["SECRET_KEY"]  # declared for the leak scan


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.get(url)


async def post_registration(url: str, body: Any, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        if isinstance(body, bytes | str):
            return await http.post(f"{url}/register", content=body, headers=headers)
        return await http.post(f"{url}/register", json=body, headers=headers)


# -- metadata --------------------------------------------------------------------------------------------------------


async def test_protected_resource_metadata_at_both_well_knowns(local_access_saas: LocalAccessSaaS) -> None:
    async with deployment(local_access_saas) as site:
        inserted = await get(f"{site.url}/.well-known/oauth-protected-resource/mcp")
        root = await get(f"{site.url}/.well-known/oauth-protected-resource")
    for response in (inserted, root):
        assert response.status_code == 200
        document = response.json()
        assert document["resource"] == f"{site.url}/mcp"
        # Exactly the public URL: the SDK compares it as a string with the issuer.
        assert document["authorization_servers"] == [site.url]
        assert document["bearer_methods_supported"] == ["header"]
        ProtectedResourceMetadata.model_validate(document)


async def test_authorization_server_metadata(local_access_saas: LocalAccessSaaS) -> None:
    async with deployment(local_access_saas) as site:
        response = await get(f"{site.url}/.well-known/oauth-authorization-server")
    document = response.json()
    assert response.status_code == 200
    assert document["issuer"] == site.url
    assert document["authorization_endpoint"] == f"{site.url}/authorize"
    assert document["token_endpoint"] == f"{site.url}/token"
    assert document["registration_endpoint"] == f"{site.url}/register"
    assert document["revocation_endpoint"] == f"{site.url}/revoke"
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert set(document["token_endpoint_auth_methods_supported"]) == {
        "none",
        "client_secret_post",
        "client_secret_basic",
    }
    assert document["response_types_supported"] == ["code"]
    assert document["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert document["authorization_response_iss_parameter_supported"] is True
    assert document["scopes_supported"] == ["openid", "email", "profile"]
    assert "client_id_metadata_document_supported" not in document
    # The SDK client's own checks pass on it.
    metadata = OAuthMetadata.model_validate(document)
    validate_metadata_issuer(metadata, site.url)


async def test_metadata_follows_the_switches(local_access_saas: LocalAccessSaaS) -> None:
    async with deployment(local_access_saas, dynamic_registration=False, client_metadata_documents=True) as site:
        document = (await get(f"{site.url}/.well-known/oauth-authorization-server")).json()
        registration = await post_registration(site.url, {"redirect_uris": ["https://app.example.com/cb"]})
    assert "registration_endpoint" not in document
    assert document["client_id_metadata_document_supported"] is True
    assert registration.status_code == 404


async def test_wrong_methods_and_unknown_paths(local_access_saas: LocalAccessSaaS) -> None:
    async with deployment(local_access_saas) as site, httpx.AsyncClient() as http:
        token_get = await http.get(f"{site.url}/token")
        consent_get = await http.get(f"{site.url}/consent")
        metadata_post = await http.post(f"{site.url}/.well-known/oauth-authorization-server")
        # Not one of the server's paths: the bearer layer answers it.
        other = await http.get(f"{site.url}/.well-known/openid-configuration")
    assert (token_get.status_code, token_get.headers["allow"]) == (405, "POST")
    assert consent_get.status_code == 405
    assert metadata_post.status_code == 405
    assert other.status_code == 401


# -- registration ---------------------------------------------------------------------------------------------------


async def test_registration_methods(local_access_saas: LocalAccessSaaS) -> None:
    store = MemoryStore()
    async with deployment(local_access_saas, store=store) as site:
        default = await register(site.url, method=None)
        public = await register(site.url, method="none")
        post = await register(site.url, method="client_secret_post")
        refused = await post_registration(
            site.url, {"redirect_uris": ["https://app.example.com/cb"], "token_endpoint_auth_method": "private_key_jwt"}
        )
    # RFC 7591: no method given means client_secret_basic, with a secret issued.
    assert default.method == "client_secret_basic"
    assert default.secret is not None
    assert default.secret.startswith(CLIENT_SECRET_PREFIX)
    assert default.document["client_secret_expires_at"] == 0
    assert public.method == "none"
    assert public.secret is None
    assert "client_secret" not in public.document
    assert post.method == "client_secret_post"
    assert post.secret is not None
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_client_metadata"
    # Secrets are kept hashed: neither appears in the store.
    stored = b"".join(value for value, _ in store._values.values())
    assert default.secret.encode() not in stored
    assert post.secret.encode() not in stored
    assert default.document["grant_types"] == ["authorization_code", "refresh_token"]
    assert default.document["response_types"] == ["code"]
    assert default.document["client_name"] == "Test client"


ACCEPTED_REDIRECTS = [
    "https://app.example.com/callback",
    "https://claude.ai/api/mcp/auth_callback",
    "https://app.example.com:8443/cb?tenant=1",
    "http://127.0.0.1/callback",
    "http://127.0.0.1:33418/callback",
    "http://[::1]:8080/callback",
    "http://localhost:5173/oauth/callback",
    "cursor://anysphere.cursor-retrieval/oauth/user-server/callback",
    "com.example.app:/oauth2redirect",
]


@pytest.mark.parametrize("uri", ACCEPTED_REDIRECTS)
async def test_redirect_uri_accepted(local_access_saas: LocalAccessSaaS, uri: str) -> None:
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [uri])
    assert client.document["redirect_uris"] == [uri]


REFUSED_REDIRECTS = {
    "http on a public host": "http://app.example.com/callback",
    "http on a private address": "http://192.168.1.10/callback",
    "http on a loopback look-alike": "http://127.0.0.1.evil.example/callback",
    "http on a localhost look-alike": "http://localhost.evil.example/callback",
    "fragment": "https://app.example.com/callback#x",
    "empty fragment": "https://app.example.com/callback#",
    "user info": "https://user@app.example.com/callback",
    "user and password": "https://user:pass@app.example.com/callback",
    "user info hiding the host": "https://app.example.com@evil.example/callback",
    "dot segment": "https://app.example.com/a/../callback",
    "single dot segment": "https://app.example.com/./callback",
    "encoded dot segment": "https://app.example.com/a/%2e%2e/callback",
    "backslash": "https://app.example.com\\@evil.example/callback",
    "space": "https://app.example.com/call back",
    "non-ASCII": "https://ex\u00e4mple.com/callback",
    "relative": "/callback",
    "no scheme": "app.example.com/callback",
    "no host": "https:///callback",
    "javascript": "javascript:alert(1)",
    "data": "data:text/html,<script>alert(1)</script>",
    "file": "file:///etc/passwd",
    "upper-case scheme": "HTTPS://app.example.com/callback",
    "empty": "",
}


@pytest.mark.parametrize("uri", REFUSED_REDIRECTS.values(), ids=REFUSED_REDIRECTS.keys())
async def test_redirect_uri_refused(local_access_saas: LocalAccessSaaS, uri: str) -> None:
    async with deployment(local_access_saas) as site:
        response = await post_registration(site.url, {"redirect_uris": ["https://fine.example.com/cb", uri]})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_redirect_uri"


@pytest.mark.parametrize("path", ["/oauth/callback", "/authorize", "/anything"])
async def test_redirect_uri_on_our_own_origin_is_refused(local_access_saas: LocalAccessSaaS, path: str) -> None:
    async with deployment(local_access_saas) as site:
        port = site.url.rpartition(":")[2]
        own = await post_registration(site.url, {"redirect_uris": [site.url + path]})
        # Every loopback name reaches the same loopback server.
        by_name = await post_registration(site.url, {"redirect_uris": [f"http://localhost:{port}{path}"]})
        by_v6 = await post_registration(site.url, {"redirect_uris": [f"http://[::1]:{port}{path}"]})
    for response in (own, by_name, by_v6):
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_redirect_uri"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"redirect_uris": []},
        {"redirect_uris": "https://app.example.com/cb"},
        {"redirect_uris": [f"https://app.example.com/{n}" for n in range(11)]},
        {"redirect_uris": [7]},
    ],
    ids=["missing", "empty", "a string", "too many", "not a string"],
)
async def test_redirect_uri_lists_refused(local_access_saas: LocalAccessSaaS, body: dict[str, Any]) -> None:
    async with deployment(local_access_saas) as site:
        response = await post_registration(site.url, body)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_redirect_uri"


@pytest.mark.parametrize(
    "fields",
    [
        {"grant_types": ["client_credentials"]},
        {"grant_types": ["authorization_code", "implicit"]},
        {"grant_types": ["refresh_token"]},
        {"response_types": ["token"]},
        {"response_types": ["code", "token"]},
        {"token_endpoint_auth_method": "tls_client_auth"},
        {"client_name": 42},
        {"client_name": "x" * 101},
        {"scope": "openid\nemail"},
    ],
)
async def test_client_metadata_refused(local_access_saas: LocalAccessSaaS, fields: dict[str, Any]) -> None:
    async with deployment(local_access_saas) as site:
        response = await post_registration(site.url, {"redirect_uris": ["https://app.example.com/cb"], **fields})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_client_metadata"


async def test_unreadable_registration_bodies(local_access_saas: LocalAccessSaaS) -> None:
    async with deployment(local_access_saas) as site:
        form = await post_registration(
            site.url, "redirect_uris=x", **{"Content-Type": "application/x-www-form-urlencoded"}
        )
        broken = await post_registration(site.url, "{", **{"Content-Type": "application/json"})
        array = await post_registration(site.url, [{"redirect_uris": ["https://app.example.com/cb"]}])
        huge = await post_registration(site.url, "[" * 20_000, **{"Content-Type": "application/json"})
    for response in (form, broken, array):
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_client_metadata"
    assert huge.status_code == 413


async def test_redirect_hosts_allow_list(local_access_saas: LocalAccessSaaS) -> None:
    hosts = ("claude.ai", "*.example.com", "cursor:", "127.0.0.1")
    async with deployment(local_access_saas, redirect_hosts=hosts) as site:
        accepted = [
            await post_registration(site.url, {"redirect_uris": [uri]})
            for uri in (
                "https://claude.ai/api/mcp/auth_callback",
                "https://app.example.com/cb",
                "https://a.b.example.com/cb",
                "cursor://anysphere.cursor-retrieval/oauth/cb",
                "http://127.0.0.1/cb",
            )
        ]
        refused = [
            await post_registration(site.url, {"redirect_uris": [uri]})
            for uri in (
                "https://evil.example/cb",
                "https://example.com/cb",
                "https://app.example.com.evil.example/cb",
                "https://notclaude.ai/cb",
                "http://localhost/cb",
                "vscode://x/cb",
            )
        ]
    assert [response.status_code for response in accepted] == [201] * 5
    assert [response.status_code for response in refused] == [400] * 6
    assert {response.json()["error"] for response in refused} == {"invalid_redirect_uri"}


async def test_registrations_per_address_are_limited(local_access_saas: LocalAccessSaaS) -> None:
    async with deployment(local_access_saas, registration_rate=2) as site:
        first = await post_registration(site.url, {"redirect_uris": ["https://app.example.com/cb"]})
        second = await post_registration(site.url, {"redirect_uris": ["https://app.example.com/cb"]})
        third = await post_registration(site.url, {"redirect_uris": ["https://app.example.com/cb"]})
    assert (first.status_code, second.status_code, third.status_code) == (201, 201, 429)
    assert third.json()["error"] == "temporarily_unavailable"
    assert third.headers["retry-after"] == "3600"


async def test_registrations_overall_are_capped(local_access_saas: LocalAccessSaaS) -> None:
    async with deployment(local_access_saas, registration_cap=1) as site:
        first = await post_registration(site.url, {"redirect_uris": ["https://app.example.com/cb"]})
        second = await post_registration(site.url, {"redirect_uris": ["https://app.example.com/cb"]})
    assert (first.status_code, second.status_code) == (201, 429)
    assert second.headers["retry-after"] == "86400"


async def test_an_unused_registration_expires_and_a_used_one_stays(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    now = [time.monotonic()]
    store = MemoryStore(clock=lambda: now[0])
    async with deployment(local_access_saas, store=store, registration_ttl=600) as site:
        unused = await register(site.url)
        used = await register(site.url)
        pkce = Pkce()
        callback = await log_in(site.url, used, pkce)
        assert (await exchange(site.url, used, callback["code"], pkce)).status_code == 200
        now[0] += 601
        async with httpx.AsyncClient() as http:
            gone = await http.get(authorize_url(site.url, unused, Pkce()))
            kept = await http.get(authorize_url(site.url, used, Pkce()))
    assert gone.status_code == 400
    assert "not registered" in gone.text
    assert kept.status_code == 200
    assert 'name="decision"' in kept.text


async def test_registered_client_shape_is_what_the_sdk_reads(local_access_saas: LocalAccessSaaS) -> None:
    from mcp.client.auth.oauth2 import check_registration_usable
    from mcp.shared.auth import OAuthClientInformationFull

    async with deployment(local_access_saas) as site:
        clients: list[Registered] = [
            await register(site.url, method=method) for method in (None, "none", "client_secret_post")
        ]
    for client in clients:
        information = OAuthClientInformationFull.model_validate(client.document)
        check_registration_usable(information)
