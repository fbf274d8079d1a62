"""The bearer layer in front of a real MCP app over real uvicorn: `Authorization: Bearer` only; 401 with
`resource_metadata` (and `invalid_token` when one came); forged, expired, revoked and other-resource tokens refused;
`allow` re-checked (403); the identity bound as the JWT layer binds it, for tool code, the SDK, session binding and
ToolPolicy; the bearer never reaching the app nor leaving downstream."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_access_guard import Rule, ToolPolicy, ToolPolicyMiddleware
from mcp_access_guard.downstream import AccessForwardingAuth, ForwardingRefused
from mcp_access_guard.identity import bind_identity
from mcp_access_guard.middleware import oauth as bearer_module
from mcp_access_guard.oauth import InvalidBearer, MemoryStore
from mcp_access_guard.testing import LocalAccessSaaS
from oauth_harness import (
    SECRET_KEY,
    Deployment,
    call_mcp,
    deployment,
    mcp_app,
    register,
    tokens_for,
)

pytestmark = pytest.mark.anyio

__all__ = ["SECRET_KEY"]  # declared for the leak scan

APP = "https://app.example.com/callback"
MODES = [pytest.param("legacy", id="handshake-era"), pytest.param("auto", id="modern-era")]


class HeaderRecorder:
    """The app behind the layer, recording the headers it was given."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen: list[dict[bytes, bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append(dict(scope["headers"]))
        await self.app(scope, receive, send)


@asynccontextmanager
async def signed_in(
    saas: LocalAccessSaaS, email: str = "alice@example.com", **options: Any
) -> AsyncIterator[tuple[Deployment, str]]:
    saas.login_as(email)
    async with deployment(saas, **options) as site:
        client = await register(site.url, [APP])
        yield site, (await tokens_for(site.url, client))["access_token"]


def challenge(site: Deployment, error: str | None = None) -> str:
    metadata = f'resource_metadata="{site.url}/.well-known/oauth-protected-resource/mcp"'
    return f'Bearer error="{error}", {metadata}' if error else f"Bearer {metadata}"


async def test_no_token_is_401_with_the_resource_metadata(local_access_saas: LocalAccessSaaS) -> None:
    async with deployment(local_access_saas) as site:
        response = await call_mcp(site.url, None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == challenge(site)
    assert response.json() == {"error": "unauthorized"}


FORGED = {
    "random, well formed": "mag_at_" + "Q" * 43,
    "one character off": None,
    "a refresh token": None,
    "too short": "mag_at_" + "Q" * 42,
    "no prefix": "Q" * 50,
    "an Access-like JWT": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
}


@pytest.mark.parametrize("name", FORGED)
async def test_forged_tokens_are_invalid_token(local_access_saas: LocalAccessSaaS, name: str) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        tokens = await tokens_for(site.url, client)
        forged = FORGED[name]
        if name == "one character off":
            last = tokens["access_token"][-1]
            forged = tokens["access_token"][:-1] + ("A" if last != "A" else "B")
        elif name == "a refresh token":
            forged = tokens["refresh_token"]
        assert forged is not None
        response = await call_mcp(site.url, forged)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == challenge(site, "invalid_token")
    assert response.json() == {"error": "unauthorized"}


@pytest.mark.parametrize("cache_ttl", [0, 5.0], ids=["uncached", "cached"])
async def test_an_expired_token_is_refused(
    local_access_saas: LocalAccessSaaS, monkeypatch: pytest.MonkeyPatch, cache_ttl: float
) -> None:
    async with signed_in(local_access_saas, bearer={"cache_ttl": cache_ttl}, access_token_ttl=60) as (site, token):
        assert (await call_mcp(site.url, token)).status_code == 200
        later = time.time() + 61
        monkeypatch.setattr(site.server.grants, "_clock", lambda: later)
        monkeypatch.setattr(bearer_module, "time", type("Clock", (), {"time": staticmethod(lambda: later)}))
        response = await call_mcp(site.url, token)
        with pytest.raises(InvalidBearer) as refused:
            await site.server.authenticate_bearer(token)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == challenge(site, "invalid_token")
    assert refused.value.reason == "expired"


async def test_a_revoked_token_is_refused_at_once_though_cached(local_access_saas: LocalAccessSaaS) -> None:
    async with signed_in(local_access_saas, bearer={"cache_ttl": 300}) as (site, token):
        assert (await call_mcp(site.url, token)).status_code == 200
        grant = await site.server.authenticate_bearer(token)
        await site.server.grants.revoke(grant.grant_id, "test")
        response = await call_mcp(site.url, token)
        with pytest.raises(InvalidBearer) as refused:
            await site.server.authenticate_bearer(token)
    assert response.status_code == 401
    assert refused.value.reason == "revoked"


async def test_a_token_for_another_resource_is_refused(local_access_saas: LocalAccessSaaS) -> None:
    # Two servers sharing one store: a token one of them issued is not good at the other.
    store = MemoryStore()
    async with (
        signed_in(local_access_saas, store=store) as (first, token),
        deployment(local_access_saas, store=store) as second,
    ):
        at_first = await call_mcp(first.url, token)
        at_second = await call_mcp(second.url, token)
        with pytest.raises(InvalidBearer) as refused:
            await second.server.authenticate_bearer(token)
    assert at_first.status_code == 200
    assert at_second.status_code == 401
    assert at_second.headers["www-authenticate"] == challenge(second, "invalid_token")
    assert refused.value.reason == "wrong_resource"


@pytest.mark.parametrize(
    "authorization",
    [
        ["Bearer TOKEN", "Bearer TOKEN"],
        ["Basic dXNlcjpwYXNz"],
        ["Bearer"],
        ["Bearer TOKEN extra"],
        ["Token TOKEN"],
    ],
    ids=["two headers", "basic", "scheme alone", "two words", "other scheme"],
)
async def test_malformed_authorization_is_invalid_request(
    local_access_saas: LocalAccessSaaS, authorization: list[str]
) -> None:
    async with signed_in(local_access_saas) as (site, token):
        headers = [("Authorization", value.replace("TOKEN", token)) for value in authorization]
        headers += [("Accept", "application/json, text/event-stream"), ("Content-Type", "application/json")]
        async with httpx.AsyncClient() as http:
            response = await http.post(f"{site.url}/mcp", content=b"{}", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == challenge(site, "invalid_request")


async def test_the_scheme_is_case_insensitive(local_access_saas: LocalAccessSaaS) -> None:
    async with signed_in(local_access_saas) as (site, token):
        response = await call_mcp(site.url, None, Authorization=f"bearer {token}")
    assert response.status_code == 200


async def test_a_token_in_the_query_or_a_cookie_is_not_a_credential(local_access_saas: LocalAccessSaaS) -> None:
    async with signed_in(local_access_saas) as (site, token):
        async with httpx.AsyncClient() as http:
            query = await http.post(
                f"{site.url}/mcp",
                params={"access_token": token},
                json={},
                headers={"Accept": "application/json, text/event-stream"},
            )
        cookie = await call_mcp(site.url, None, Cookie=f"access_token={token}; token={token}")
    for response in (query, cookie):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == challenge(site)


async def test_allow_is_rechecked_on_every_request(local_access_saas: LocalAccessSaaS) -> None:
    async with signed_in(
        local_access_saas, "alice@example.com", bearer={"allow": Rule(emails=["bob@example.com"])}
    ) as (
        site,
        token,
    ):
        response = await call_mcp(site.url, token)
    assert response.status_code == 403
    assert response.json() == {"error": "forbidden"}
    assert "www-authenticate" not in response.headers


@pytest.mark.parametrize("mode", MODES)
async def test_the_identity_reaches_tool_code_and_the_bearer_does_not(
    local_access_saas: LocalAccessSaaS, mode: str
) -> None:
    recorder = HeaderRecorder(mcp_app())
    local_access_saas.login_as("Alice@Example.com", groups=["eng"])
    async with deployment(local_access_saas, app=recorder) as site:
        client = await register(site.url, [APP])
        token = (await tokens_for(site.url, client))["access_token"]
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http,
            Client(streamable_http_client(f"{site.url}/mcp", http_client=http), mode=mode) as mcp,
        ):
            who = (await mcp.call_tool("whoami", {})).structured_content
    assert who == {
        "email": "alice@example.com",
        "oauth_client_id": client.client_id,
        "groups": ["eng"],
        "sdk_client_id": "alice@example.com",
        "sdk_token_is_empty": True,
    }
    assert recorder.seen
    assert all(b"authorization" not in headers for headers in recorder.seen)
    assert all(token.encode() not in b"".join(headers.values()) for headers in recorder.seen)


async def test_tool_policy_works_on_oauth_identities(local_access_saas: LocalAccessSaaS) -> None:
    policy = ToolPolicy({"add": Rule(emails=["alice@example.com"])})
    app = ToolPolicyMiddleware(mcp_app(), policy)
    names: dict[str, list[str]] = {}
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas, app=app) as site:
        client = await register(site.url, [APP])
        for email in ("alice@example.com", "bob@example.com"):
            local_access_saas.login_as(email)
            token = (await tokens_for(site.url, client))["access_token"]
            async with (
                httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http,
                Client(streamable_http_client(f"{site.url}/mcp", http_client=http), mode="auto") as mcp,
            ):
                names[email] = sorted(tool.name for tool in (await mcp.list_tools()).tools)
    assert names == {"alice@example.com": ["add", "whoami"], "bob@example.com": ["whoami"]}


async def test_a_session_stays_bound_to_its_oauth_caller(local_access_saas: LocalAccessSaaS) -> None:
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site, httpx.AsyncClient() as http:
        client = await register(site.url, [APP])
        alice = (await tokens_for(site.url, client))["access_token"]
        local_access_saas.login_as("bob@example.com")
        bob = (await tokens_for(site.url, client))["access_token"]
        opened = await http.post(
            f"{site.url}/mcp", json=initialize, headers={**headers, "Authorization": f"Bearer {alice}"}
        )
        session = {"Mcp-Session-Id": opened.headers["mcp-session-id"]}
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        own = await http.post(
            f"{site.url}/mcp", json=listing, headers={**headers, **session, "Authorization": f"Bearer {alice}"}
        )
        hijack = await http.post(
            f"{site.url}/mcp", json=listing, headers={**headers, **session, "Authorization": f"Bearer {bob}"}
        )
    assert opened.status_code == 200
    assert own.status_code == 200
    assert hijack.status_code == 404


async def test_lookups_are_cached_for_the_ttl(local_access_saas: LocalAccessSaaS) -> None:
    class CountingStore(MemoryStore):
        gets = 0

        async def get(self, key: str) -> bytes | None:
            CountingStore.gets += 1
            return await super().get(key)

    for cache_ttl, expected in ((5.0, 2), (0, 6)):
        CountingStore.gets = 0
        async with signed_in(local_access_saas, store=CountingStore(), bearer={"cache_ttl": cache_ttl}) as (
            site,
            token,
        ):
            before = CountingStore.gets
            for _ in range(3):
                assert (await call_mcp(site.url, token)).status_code == 200
            # The token's record and its grant: two reads per lookup.
            assert CountingStore.gets - before == expected


async def test_a_websocket_is_refused_without_a_token(local_access_saas: LocalAccessSaaS) -> None:
    async with deployment(local_access_saas) as site:
        layer = bearer_module.OAuthBearerMiddleware(mcp_app(), site.server)
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "websocket.connect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await layer({"type": "websocket", "path": "/mcp", "headers": [], "client": ("127.0.0.1", 1)}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]


async def test_an_oauth_caller_is_never_forwarded_downstream(local_access_saas: LocalAccessSaaS) -> None:
    async with signed_in(local_access_saas) as (site, token):
        identity = (await site.server.authenticate_bearer(token)).identity
    auth = AccessForwardingAuth(["reports.example.com"])
    request = httpx.Request("GET", "https://reports.example.com/report")
    other = httpx.Request("GET", "https://elsewhere.example.com/")
    with bind_identity({"type": "http"}, identity):
        with pytest.raises(ForwardingRefused):
            next(auth.auth_flow(request))
        # A host that is not listed gets nothing, as for any caller, and no error.
        assert "cf-access-token" not in next(auth.auth_flow(other)).headers
    assert "cf-access-token" not in request.headers
    assert identity.token == ""
    assert identity.oauth_client_id is not None
    assert token not in repr(identity)
