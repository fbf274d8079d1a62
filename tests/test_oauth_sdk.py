"""Done-when: the `mcp` SDK's own `OAuthClientProvider` completes the whole flow against LocalAccessSaaS through real
uvicorn, in both protocol eras: discovery from the 401, dynamic registration, consent pressed by a scripted browser
(as the provider's redirect and callback handlers), PKCE, tokens, tools listed and called with the caller's identity
in tool code, and a refresh. Once on a SQLite store the server opens itself."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

from mcp_access_guard.testing import LocalAccessSaaS, free_port
from oauth_harness import SECRET_KEY, Deployment, browse, deployment, query_of

pytestmark = pytest.mark.anyio

__all__ = ["SECRET_KEY"]  # declared for the leak scan

MODERN = "2026-07-28"
MODES = [pytest.param("legacy", id="handshake-era"), pytest.param("auto", id="modern-era")]


class MemoryTokens:
    """The provider's token storage, kept in memory and inspectable."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


class ScriptedPerson:
    """The provider's redirect and callback handlers: a browser walks the authorization URL, approves, and the
    client's loopback callback is what it stops at."""

    def __init__(self, redirect_uri: str) -> None:
        self.redirect_uri = redirect_uri
        self.visits: list[str] = []
        self.consent_pages = 0
        self._result: AuthorizationCodeResult | None = None

    async def redirect(self, authorization_url: str) -> None:
        self.visits.append(authorization_url)
        walked = await browse(authorization_url, self.redirect_uri)
        self.consent_pages += walked.consent_pages
        answer = query_of(walked.final_url)
        self._result = AuthorizationCodeResult(code=answer["code"], state=answer.get("state"), iss=answer.get("iss"))

    async def callback(self) -> AuthorizationCodeResult:
        assert self._result is not None
        result, self._result = self._result, None
        return result


def provider_for(
    site: Deployment, person: ScriptedPerson, tokens: MemoryTokens, **metadata: Any
) -> OAuthClientProvider:
    return OAuthClientProvider(
        server_url=f"{site.url}/mcp",
        client_metadata=OAuthClientMetadata(
            redirect_uris=[person.redirect_uri], client_name="SDK end-to-end", **metadata
        ),
        storage=tokens,
        redirect_handler=person.redirect,
        callback_handler=person.callback,
    )


@asynccontextmanager
async def connected(provider: OAuthClientProvider, url: str, mode: str) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(auth=provider, timeout=30) as http,
        Client(streamable_http_client(f"{url}/mcp", http_client=http), mode=mode) as client,
    ):
        yield client


def assert_era(client: Client, mode: str) -> None:
    if mode == "auto":
        assert client.protocol_version == MODERN
    else:
        assert client.protocol_version != MODERN


async def whole_flow(site: Deployment, mode: str, **metadata: Any) -> None:
    saas = site.saas
    person = ScriptedPerson(f"http://127.0.0.1:{free_port()}/callback")
    tokens = MemoryTokens()
    provider = provider_for(site, person, tokens, **metadata)
    async with connected(provider, site.url, mode) as client:
        assert_era(client, mode)
        names = sorted(tool.name for tool in (await client.list_tools()).tools)
        who = (await client.call_tool("whoami", {})).structured_content
        added = (await client.call_tool("add", {"a": 2, "b": 3})).structured_content
    assert names == ["add", "whoami"]
    assert tokens.client is not None
    assert who == {
        "email": "alice@example.com",
        "oauth_client_id": tokens.client.client_id,
        "groups": ["eng"],
        "sdk_client_id": "alice@example.com",
        "sdk_token_is_empty": True,
    }
    assert added == {"result": 5}
    # One registration, one consent, one login at Access.
    assert person.consent_pages == 1
    assert len(person.visits) == 1
    assert saas.hits["authorization"] == 1
    authorization = query_of(person.visits[0])
    assert authorization["code_challenge_method"] == "S256"
    assert authorization["resource"] == f"{site.url}/mcp"
    assert tokens.tokens is not None
    first = tokens.tokens
    assert first.access_token.startswith("mag_at_")
    assert first.refresh_token is not None

    # The access token runs out: the provider refreshes, through us and upstream, with no person involved.
    provider.context.token_expiry_time = time.time() - 1
    upstream_refreshes = sum(1 for request in saas.token_requests if request.form.get("grant_type") == "refresh_token")
    async with connected(provider, site.url, mode) as client:
        again = (await client.call_tool("whoami", {})).structured_content
    assert again == who
    assert tokens.tokens is not None
    assert tokens.tokens.access_token != first.access_token
    assert tokens.tokens.refresh_token not in (None, first.refresh_token)
    assert len(person.visits) == 1
    assert (
        sum(1 for request in saas.token_requests if request.form.get("grant_type") == "refresh_token")
        == upstream_refreshes + 1
    )


def files_starting(directory: Path, name: str) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(directory.iterdir()) if path.name.startswith(name))


@pytest.mark.parametrize("mode", MODES)
async def test_sdk_client_public(local_access_saas: LocalAccessSaaS, mode: str) -> None:
    local_access_saas.login_as("alice@example.com", groups=["eng"])
    async with deployment(local_access_saas) as site:
        await whole_flow(site, mode, token_endpoint_auth_method="none")


@pytest.mark.parametrize("mode", MODES)
async def test_sdk_client_confidential(local_access_saas: LocalAccessSaaS, mode: str) -> None:
    local_access_saas.login_as("alice@example.com", groups=["eng"])
    async with deployment(local_access_saas) as site:
        await whole_flow(site, mode, token_endpoint_auth_method="client_secret_post")


async def test_sdk_client_on_sqlite(local_access_saas: LocalAccessSaaS, tmp_path: Path) -> None:
    local_access_saas.login_as("alice@example.com", groups=["eng"])
    database = tmp_path / "oauth.sqlite3"
    async with deployment(local_access_saas, store=f"sqlite:///{database}") as site:
        await whole_flow(site, "auto")
    # What the server wrote (the file and its write-ahead log) holds the grant, and no token in the clear.
    stored = files_starting(tmp_path, database.name)
    assert b"grant:" in stored
    assert b"client:" in stored
    for prefix in (b"mag_at_", b"mag_rt_", b"mag_ac_", b"mag_cs_"):
        assert prefix not in stored
