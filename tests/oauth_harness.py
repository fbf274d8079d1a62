"""A guarded MCP server in OAuth mode for the tests, over real uvicorn, logging in through a real `LocalAccessSaaS`;
and the client's side of the flow, step by step (registration, PKCE, the browser, the token endpoint).

The two OAuth layers are composed here on their own (`OAuthEndpointsMiddleware(OAuthBearerMiddleware(mcp_app,
server), server)`), so each test sees exactly them; `test_oauth_guard.py` runs the same flows through `guard()`.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp

from mcp_access_guard import OAuthBearerMiddleware, OAuthEndpointsMiddleware, current_identity
from mcp_access_guard.oauth import MemoryStore, OAuthConfig, OAuthServer, OAuthStore
from mcp_access_guard.testing import LocalAccessSaaS, free_port, serve
from oauth_browser import Walk, walk

SECRET_KEY = "5d0c9a6f1e2b47c8a3d9e6f0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0"
CLIENT_REDIRECT = "http://127.0.0.1:9/callback"


def mcp_app() -> ASGIApp:
    """A small MCP server whose tools report who is calling."""
    server = MCPServer("oauth-test")

    @server.tool()
    def whoami() -> dict[str, Any]:
        identity = current_identity()
        sdk = get_access_token()
        return {
            "email": identity.email if identity else None,
            "oauth_client_id": identity.oauth_client_id if identity else None,
            "groups": list(identity.groups) if identity else [],
            "sdk_client_id": sdk.client_id if sdk else None,
            "sdk_token_is_empty": sdk.token == "" if sdk else None,
        }

    @server.tool()
    def add(a: int, b: int) -> int:
        return a + b

    return server.streamable_http_app()


def compose(app: ASGIApp, server: OAuthServer, **bearer: Any) -> ASGIApp:
    return OAuthEndpointsMiddleware(OAuthBearerMiddleware(app, server, **bearer), server)


@dataclass
class Deployment:
    url: str
    server: OAuthServer
    saas: LocalAccessSaaS
    store: OAuthStore

    @property
    def config(self) -> OAuthConfig:
        return self.server.config


def oauth_config(saas: LocalAccessSaaS, public_url: str, **overrides: Any) -> OAuthConfig:
    settings: dict[str, Any] = {"secret_key": SECRET_KEY, "store": "memory:"}
    return OAuthConfig(public_url, saas.config(), **{**settings, **overrides})


@asynccontextmanager
async def deployment(
    saas: LocalAccessSaaS,
    *,
    app: ASGIApp | None = None,
    store: OAuthStore | str | None = None,
    bearer: dict[str, Any] | None = None,
    server_options: dict[str, Any] | None = None,
    port: int | None = None,
    **config: Any,
) -> AsyncIterator[Deployment]:
    """OAuth mode in front of `app` (default: `mcp_app()`), on a port chosen first so the public URL is known.
    `store` is a store to share, or a store URL for the server to open (and close) itself; default a MemoryStore."""
    port = port or free_port()
    public_url = f"http://127.0.0.1:{port}"
    if isinstance(store, str):
        server = OAuthServer(oauth_config(saas, public_url, store=store, **config), **(server_options or {}))
    else:
        shared = store if store is not None else MemoryStore()
        server = OAuthServer(oauth_config(saas, public_url, **config), store=shared, **(server_options or {}))
    async with serve(compose(app or mcp_app(), server, **(bearer or {})), port=port) as url:
        assert url == public_url
        yield Deployment(url, server, saas, server.store)


# -- the client's side --------------------------------------------------------------------------------------------


@dataclass
class Pkce:
    verifier: str = field(default_factory=lambda: secrets.token_urlsafe(48))

    @property
    def challenge(self) -> str:
        digest = hashlib.sha256(self.verifier.encode()).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass
class Registered:
    client_id: str
    redirect_uri: str
    secret: str | None
    method: str
    document: dict[str, Any]


async def register(
    url: str, redirect_uris: list[str] | None = None, *, method: str | None = "none", **fields: Any
) -> Registered:
    body: dict[str, Any] = {"redirect_uris": redirect_uris or [CLIENT_REDIRECT], "client_name": "Test client", **fields}
    if method is not None:
        body["token_endpoint_auth_method"] = method
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{url}/register", json=body)
    assert response.status_code == 201, response.text
    document = response.json()
    return Registered(
        document["client_id"],
        document["redirect_uris"][0],
        document.get("client_secret"),
        document["token_endpoint_auth_method"],
        document,
    )


def authorize_url(
    url: str,
    client: Registered,
    pkce: Pkce,
    *,
    state: str = "client-state-1",
    redirect_uri: str | None = None,
    **params: str | None,
) -> str:
    query: dict[str, str | None] = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": client.redirect_uri if redirect_uri is None else redirect_uri,
        "state": state,
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
        "scope": "openid email profile",
        "resource": f"{url}/mcp",
        **params,
    }
    return f"{url}/authorize?" + urlencode({name: value for name, value in query.items() if value is not None})


def query_of(location: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(location).query, keep_blank_values=True))


async def browse(
    authorization: str,
    redirect_uri: str,
    *,
    decision: str | None = "approve",
    browser: httpx.AsyncClient | None = None,
) -> Walk:
    """The person's browser, from the authorization URL to the redirect back to the client."""
    return await walk(authorization, decision=decision, stop_at=redirect_uri, http=browser)


async def log_in(
    url: str,
    client: Registered,
    pkce: Pkce | None = None,
    *,
    browser: httpx.AsyncClient | None = None,
    **params: str | None,
) -> dict[str, str]:
    """The front channel, approved: the parameters the client's redirect URI receives."""
    pkce = pkce or Pkce()
    result = await browse(authorize_url(url, client, pkce, **params), client.redirect_uri, browser=browser)
    assert result.final_url.startswith(client.redirect_uri), result.final_url
    return query_of(result.final_url)


def client_auth(client: Registered, form: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The form and headers of a token or revocation request, authenticated as `client` registered."""
    headers: dict[str, str] = {}
    form = {**form, "client_id": client.client_id}
    if client.method == "client_secret_post":
        assert client.secret
        form["client_secret"] = client.secret
    elif client.method == "client_secret_basic":
        assert client.secret
        pair = f"{client.client_id}:{client.secret}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        del form["client_id"]
    return form, headers


async def token_request(url: str, client: Registered, **form: str) -> httpx.Response:
    body, headers = client_auth(client, form)
    async with httpx.AsyncClient() as http:
        return await http.post(f"{url}/token", data=body, headers=headers)


async def exchange(url: str, client: Registered, code: str, pkce: Pkce, **extra: str) -> httpx.Response:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": pkce.verifier,
        "redirect_uri": client.redirect_uri,
        **extra,
    }
    return await token_request(url, client, **form)


async def refresh(url: str, client: Registered, refresh_token: str, **extra: str) -> httpx.Response:
    return await token_request(url, client, grant_type="refresh_token", refresh_token=refresh_token, **extra)


async def tokens_for(url: str, client: Registered, **params: str | None) -> dict[str, Any]:
    """The whole flow for a client: log in, redeem the code."""
    pkce = Pkce()
    callback = await log_in(url, client, pkce, **params)
    response = await exchange(url, client, callback["code"], pkce)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def call_mcp(url: str, access_token: str | None, **headers: str) -> httpx.Response:
    """One MCP initialize POST to /mcp, with the bearer (if any)."""
    request_headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": "2025-06-18",
        **headers,
    }
    if access_token is not None:
        request_headers["Authorization"] = f"Bearer {access_token}"
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    async with httpx.AsyncClient() as http:
        return await http.post(f"{url}/mcp", json=body, headers=request_headers)
