"""AccessJWTMiddleware in front of a real MCPServer under real uvicorn, called by the real mcp client."""

import json
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import MCPServer
from mcp_types import TextContent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from mcp_access_guard import AccessJWTMiddleware, AccessVerifier, ConfigError, Rule, current_identity
from mcp_access_guard.jwks import JWKSCache
from mcp_access_guard.testing import LocalAccess, SigningKey, serve
from support import INITIALIZE, MCP_HEADERS, ManualClock

pytestmark = pytest.mark.anyio

ASSERTION = "Cf-Access-Jwt-Assertion"


def whoami_server() -> MCPServer:
    server = MCPServer("whoami")

    @server.tool()
    def whoami() -> dict[str, object]:
        identity = current_identity()
        sdk = get_access_token()
        return {
            "principal": identity.principal if identity else None,
            "service_token": identity.is_service_token if identity else None,
            "sdk_client_id": sdk.client_id if sdk else None,
            "sdk_sees_token": bool(sdk and sdk.token.count(".") == 2),
        }

    return server


@pytest.fixture
async def guarded(local_access: LocalAccess) -> AsyncIterator[tuple[str, AccessJWTMiddleware]]:
    app = AccessJWTMiddleware(whoami_server().streamable_http_app(), config=local_access.config())
    async with serve(app) as url:
        yield url, app
    await app.verifier.aclose()


@asynccontextmanager
async def mcp_client(url: str, token: str, mode: str) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers={ASSERTION: token}) as http,
        Client(streamable_http_client(f"{url}/mcp", http_client=http), mode=mode) as client,
    ):
        yield client


async def whoami(client: Client) -> dict[str, object]:
    result = await client.call_tool("whoami", {})
    content = result.content[0]
    assert isinstance(content, TextContent)
    answer: dict[str, object] = json.loads(content.text)
    return answer


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_user_identity_reaches_tool_code(
    mode: str, local_access: LocalAccess, guarded: tuple[str, AccessJWTMiddleware]
) -> None:
    url, _ = guarded
    async with mcp_client(url, local_access.user_token("Alice@Example.com"), mode) as client:
        assert await whoami(client) == {
            "principal": "alice@example.com",
            "service_token": False,
            "sdk_client_id": "alice@example.com",
            "sdk_sees_token": True,
        }


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_service_token_identity_reaches_tool_code(
    mode: str, local_access: LocalAccess, guarded: tuple[str, AccessJWTMiddleware]
) -> None:
    url, _ = guarded
    async with mcp_client(url, local_access.service_token("ci-bot.access"), mode) as client:
        answer = await whoami(client)
    assert answer["principal"] == "ci-bot.access"
    assert answer["service_token"] is True
    assert answer["sdk_client_id"] == "ci-bot.access"


async def test_two_callers_on_interleaved_requests_stay_apart(
    local_access: LocalAccess, guarded: tuple[str, AccessJWTMiddleware]
) -> None:
    url, _ = guarded
    seen: dict[str, list[object]] = {"alice@example.com": [], "bob@example.com": []}

    async def call_many(email: str) -> None:
        async with mcp_client(url, local_access.user_token(email), "auto") as client:
            for _ in range(10):
                seen[email].append((await whoami(client))["principal"])
                await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tasks:
        for email in seen:
            tasks.start_soon(call_many, email)
    assert seen == {email: [email] * 10 for email in seen}


async def post(url: str, headers: dict[str, str] | None = None, body: object = INITIALIZE) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(f"{url}/mcp", json=body, headers={**MCP_HEADERS, **(headers or {})})


async def test_no_credential_is_401_without_www_authenticate(guarded: tuple[str, AccessJWTMiddleware]) -> None:
    response = await post(guarded[0])
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}
    assert "www-authenticate" not in response.headers


async def test_www_authenticate_only_when_configured(local_access: LocalAccess) -> None:
    challenge = 'Bearer realm="mcp"'
    app = AccessJWTMiddleware(
        whoami_server().streamable_http_app(), config=local_access.config(), www_authenticate=challenge
    )
    async with serve(app) as url:
        assert (await post(url)).headers["www-authenticate"] == challenge
        forbidden = await post(url, {ASSERTION: "x.y.z"})
        assert forbidden.status_code == 403
        assert "www-authenticate" not in forbidden.headers


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda issuer: issuer.user_token(expires_in=-3600), id="expired"),
        pytest.param(lambda issuer: issuer.user_token(claims={"type": "org"}), id="org token"),
        pytest.param(lambda issuer: issuer.user_token(claims={"iss": issuer.url + "/"}), id="issuer with slash"),
        pytest.param(lambda issuer: issuer.user_token(key=SigningKey.generate()), id="unknown key"),
        pytest.param(lambda issuer: issuer.user_token(headers={"alg": "none"}), id="alg none"),
        pytest.param(lambda issuer: "garbage", id="garbage"),
    ],
)
async def test_failed_credential_is_403_with_a_generic_body(
    make_token: object,
    local_access: LocalAccess,
    guarded: tuple[str, AccessJWTMiddleware],
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = make_token(local_access)  # type: ignore[operator]
    with caplog.at_level(logging.INFO, logger="mcp_access_guard"):
        response = await post(guarded[0], {ASSERTION: token})
    assert response.status_code == 403
    assert response.json() == {"error": "forbidden"}
    assert "decision=deny" in caplog.text
    assert token not in caplog.text
    assert token not in response.text


async def test_two_assertion_headers_are_refused(
    local_access: LocalAccess, guarded: tuple[str, AccessJWTMiddleware]
) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{guarded[0]}/mcp",
            json=INITIALIZE,
            headers=[
                *MCP_HEADERS.items(),
                (ASSERTION, local_access.user_token()),
                (ASSERTION, local_access.user_token("mallory@example.com")),
            ],
        )
    assert response.status_code == 403


async def test_random_kid_flood_costs_one_fetch(
    local_access: LocalAccess, guarded: tuple[str, AccessJWTMiddleware]
) -> None:
    url, app = guarded
    statuses: list[int] = []

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=200)) as http:

        async def forged_kid() -> None:
            token = local_access.user_token(headers={"kid": secrets.token_hex(16)})
            response = await http.post(f"{url}/mcp", json=INITIALIZE, headers={**MCP_HEADERS, ASSERTION: token})
            statuses.append(response.status_code)

        async with anyio.create_task_group() as tasks:
            for _ in range(200):
                tasks.start_soon(forged_kid)
    assert statuses == [403] * 200
    assert app.verifier.keys.fetch_count == 1
    assert local_access.requests == 1


async def test_another_principal_reusing_a_session_id_gets_404(
    local_access: LocalAccess, guarded: tuple[str, AccessJWTMiddleware]
) -> None:
    url, _ = guarded
    alice = {ASSERTION: local_access.user_token("alice@example.com")}
    bob = {ASSERTION: local_access.user_token("bob@example.com")}
    opened = await post(url, alice)
    assert opened.status_code == 200
    session = {"Mcp-Session-Id": opened.headers["mcp-session-id"], "Mcp-Protocol-Version": "2025-06-18"}
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    await post(url, {**alice, **session}, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert (await post(url, {**bob, **session}, listing)).status_code == 404
    assert (await post(url, {**alice, **session}, listing)).status_code == 200


async def test_outage_inside_then_past_the_stale_window(local_access: LocalAccess) -> None:
    clock = ManualClock()
    config = local_access.config(keys_max_age=300, stale_window=600, fetch_timeout=1)
    keys = JWKSCache(config.certs_url, max_age=300, stale_window=600, timeout=1, clock=clock)
    app = AccessJWTMiddleware(whoami_server().streamable_http_app(), AccessVerifier(config, keys=keys))
    token = local_access.user_token()
    async with serve(app) as url:
        assert (await post(url, {ASSERTION: token})).status_code == 200
        local_access.go_down()
        clock.now += 800  # stale, and the refresh fails: the last good keys still serve
        assert (await post(url, {ASSERTION: token})).status_code == 200
        assert (await post(url, {ASSERTION: local_access.user_token("bob@example.com")})).status_code == 200
        clock.now += 101  # past max_age + stale_window
        unavailable = await post(url, {ASSERTION: token})
        assert unavailable.status_code == 503
        assert unavailable.json() == {"error": "unavailable"}
        local_access.come_back()
        clock.now += 30
        assert (await post(url, {ASSERTION: token})).status_code == 200
    # The first fetch, two failed refreshes a cooldown apart (bob's new token waited out the cooldown), the recovery.
    assert keys.fetch_count == 4


async def test_identity_allow_list(local_access: LocalAccess) -> None:
    allow = Rule(emails=["alice@example.com"], email_domains=["staff.example.com"], service_tokens=["ci-bot"])
    app = AccessJWTMiddleware(whoami_server().streamable_http_app(), config=local_access.config(), allow=allow)
    async with serve(app) as url:
        for token, status in [
            (local_access.user_token("alice@example.com"), 200),
            (local_access.user_token("carol@staff.example.com"), 200),
            (local_access.service_token("ci-bot.access"), 200),
            (local_access.user_token("bob@example.com"), 403),
            (local_access.user_token("eve@evilstaff.example.com"), 403),
            (local_access.service_token("other.access"), 403),
        ]:
            assert (await post(url, {ASSERTION: token})).status_code == status


async def echo_identity(request: Request) -> JSONResponse:
    identity = request.state.access_identity
    return JSONResponse({"principal": identity.principal, "contextvar": current_identity() is identity})


async def test_identity_in_scope_state_and_cookie_only_when_enabled(local_access: LocalAccess) -> None:
    app = Starlette(routes=[Route("/mcp", echo_identity, methods=["GET"])])
    token = local_access.user_token()
    async with (
        serve(AccessJWTMiddleware(app, config=local_access.config(), cookie=True)) as with_cookie,
        serve(AccessJWTMiddleware(app, config=local_access.config())) as without_cookie,
        httpx.AsyncClient() as http,
    ):
        answer = await http.get(f"{with_cookie}/mcp", headers={"Cookie": f"CF_Authorization={token}"})
        assert answer.json() == {"principal": "alice@example.com", "contextvar": True}
        refused = await http.get(f"{without_cookie}/mcp", headers={"Cookie": f"CF_Authorization={token}"})
        assert refused.status_code == 401
        assert (await http.get(f"{with_cookie}/mcp", headers={ASSERTION: token})).status_code == 200


def test_websocket_is_verified_like_http(local_access: LocalAccess) -> None:
    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(websocket.state.access_identity.principal)
        await websocket.close()

    app = AccessJWTMiddleware(Starlette(routes=[WebSocketRoute("/ws", endpoint)]), config=local_access.config())
    with TestClient(app) as client:
        with client.websocket_connect("/ws", headers={ASSERTION: local_access.user_token()}) as socket:
            assert socket.receive_text() == "alice@example.com"
        for headers in ({}, {ASSERTION: "x.y.z"}):
            with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect("/ws", headers=headers):
                pass
            assert closed.value.code == 1008


def test_lifespan_passes_through(local_access: LocalAccess) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = AccessJWTMiddleware(Starlette(lifespan=lifespan), config=local_access.config())
    with TestClient(app):
        assert events == ["startup"]
    assert events == ["startup", "shutdown"]


def test_unconfigured_layer_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match="needs a verifier or a config"):
        AccessJWTMiddleware(Starlette())
