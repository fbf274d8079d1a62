"""CORSAllowlistMiddleware over real uvicorn and httpx: preflights, simple requests, Origin and Host refusals."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from mcp_access_guard.middleware.cors import DEFAULT_MCP_ORIGINS, CORSAllowlistMiddleware
from mcp_access_guard.testing import serve
from support import INITIALIZE, MCP_ACCEPT, RecordingApp, send_raw, send_request

pytestmark = pytest.mark.anyio

RequestHeaders = dict[str, str]
ALLOWED = "https://claude.ai"
REFUSED = "https://evil.example"
EXPECTED_ALLOW_HEADERS = {
    "accept",
    "accept-language",
    "authorization",
    "content-language",
    "content-type",
    "last-event-id",
    "mcp-method",
    "mcp-name",
    "mcp-protocol-version",
    "mcp-session-id",
}


class EchoApp(RecordingApp):
    """Counts the requests that reach it and answers with a session id header, like an MCP server would."""

    async def answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"reached": True}, headers={"Mcp-Session-Id": "abc123"})(scope, receive, send)


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.startswith("access-control-")}


def vary(response: httpx.Response) -> set[str]:
    return {part.strip().lower() for value in response.headers.get_list("vary") for part in value.split(",")}


@pytest.fixture
async def echo() -> EchoApp:
    return EchoApp()


@pytest.fixture
async def client(echo: EchoApp) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(CORSAllowlistMiddleware(echo)) as url, httpx.AsyncClient(base_url=url) as http:
        yield http


def preflight_headers(
    origin: str, method: str = "POST", headers: str = "content-type, mcp-session-id"
) -> RequestHeaders:
    return {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}


async def test_preflight_from_allowed_origin(client: httpx.AsyncClient, echo: EchoApp) -> None:
    requested = "content-type, authorization, mcp-session-id, mcp-protocol-version, mcp-method, mcp-name, last-event-id"
    response = await client.options("/mcp", headers=preflight_headers(ALLOWED, headers=requested))
    assert response.status_code == 200
    headers = cors_headers(response)
    assert headers.pop("access-control-allow-origin") == ALLOWED
    assert headers.pop("access-control-allow-methods") == "GET, POST, DELETE, OPTIONS"
    assert {h.strip().lower() for h in headers.pop("access-control-allow-headers").split(",")} == EXPECTED_ALLOW_HEADERS
    assert headers.pop("access-control-max-age") == "600"
    assert headers == {}, "no credentials, nothing else"
    assert "origin" in vary(response)
    assert echo.hits == 0, "a preflight is answered by the layer, before any credential check"


@pytest.mark.parametrize(
    ("request_headers", "expected_status"),
    [
        pytest.param(preflight_headers(REFUSED), 403, id="refused-origin"),
        pytest.param(preflight_headers("null"), 403, id="null-origin"),
        pytest.param(preflight_headers(ALLOWED, method="PUT"), 400, id="method-not-allowed"),
        pytest.param(preflight_headers(ALLOWED, headers="content-type, x-evil"), 400, id="header-not-allowed"),
        pytest.param(
            {**preflight_headers(ALLOWED), "Access-Control-Request-Private-Network": "true"}, 400, id="private-network"
        ),
    ],
)
async def test_refused_preflight_carries_no_cors_headers(
    client: httpx.AsyncClient, echo: EchoApp, request_headers: dict[str, str], expected_status: int
) -> None:
    response = await client.options("/mcp", headers=request_headers)
    assert response.status_code == expected_status
    assert cors_headers(response) == {}
    assert echo.hits == 0
    if expected_status == 403:
        assert response.json() == {"error": "origin_not_allowed"}
        assert "origin" in vary(response)


async def test_simple_request_from_allowed_origin(client: httpx.AsyncClient, echo: EchoApp) -> None:
    response = await client.post("/mcp", json=INITIALIZE, headers={"Origin": ALLOWED})
    assert response.status_code == 200
    assert response.json() == {"reached": True}
    assert cors_headers(response) == {
        "access-control-allow-origin": ALLOWED,
        "access-control-expose-headers": "Mcp-Session-Id",
    }
    assert "origin" in vary(response)
    assert echo.hits == 1


@pytest.mark.parametrize(
    "origin",
    [
        REFUSED,
        "null",
        "http://claude.ai",
        "https://claude.ai/",
        "https://claude.ai:443",
        "https://claude.ai.evil.example",
        "https://evil.claude.ai",
        "HTTPS://CLAUDE.AI",
        "",
    ],
)
async def test_simple_request_from_refused_origin_never_reaches_the_app(
    client: httpx.AsyncClient, echo: EchoApp, origin: str
) -> None:
    response = await client.post("/mcp", json=INITIALIZE, headers={"Origin": origin})
    assert response.status_code == 403
    assert response.json() == {"error": "origin_not_allowed"}
    assert cors_headers(response) == {}
    assert echo.hits == 0


async def test_request_without_origin_passes(client: httpx.AsyncClient, echo: EchoApp) -> None:
    response = await client.post("/mcp", json=INITIALIZE)
    assert response.status_code == 200
    assert cors_headers(response) == {}
    assert "origin" in vary(response)
    assert echo.hits == 1


async def test_plain_options_without_origin_goes_to_the_app(client: httpx.AsyncClient, echo: EchoApp) -> None:
    assert (await client.options("/mcp", headers={"Access-Control-Request-Method": "POST"})).json() == {"reached": True}
    assert echo.hits == 1


async def test_duplicate_origin_headers_are_refused(echo: EchoApp) -> None:
    async with serve(CORSAllowlistMiddleware(echo)) as url:
        response = await send_request(url, headers=f"Origin: {ALLOWED}\r\nOrigin: {ALLOWED}\r\n".encode())
    assert response.status == 403
    assert json.loads(response.body) == {"error": "origin_not_allowed"}
    assert echo.hits == 0


async def test_origins_replaceable_and_extendable(echo: EchoApp) -> None:
    extended = CORSAllowlistMiddleware(echo, extra_origins=["https://example.com"])
    async with serve(extended) as url, httpx.AsyncClient(base_url=url) as client:
        for origin in (*DEFAULT_MCP_ORIGINS, "https://example.com"):
            response = await client.get("/mcp", headers={"Origin": origin})
            assert response.headers["access-control-allow-origin"] == origin
    replaced = CORSAllowlistMiddleware(echo, allow_origins=["https://example.com", "null"])
    async with serve(replaced) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/mcp", headers={"Origin": ALLOWED})).status_code == 403
        assert (await client.get("/mcp", headers={"Origin": "https://example.com"})).status_code == 200
        listed_null = await client.get("/mcp", headers={"Origin": "null"})
        assert listed_null.headers["access-control-allow-origin"] == "null"


async def test_credentials_when_asked(echo: EchoApp) -> None:
    async with (
        serve(CORSAllowlistMiddleware(echo, allow_credentials=True)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        preflight = await client.options("/mcp", headers=preflight_headers(ALLOWED))
        assert preflight.headers["access-control-allow-credentials"] == "true"
        assert preflight.headers["access-control-allow-origin"] == ALLOWED
        simple = await client.get("/mcp", headers={"Origin": ALLOWED})
        assert simple.headers["access-control-allow-credentials"] == "true"
        refused = await client.get("/mcp", headers={"Origin": REFUSED})
        assert cors_headers(refused) == {}


HOSTS = ["mcp.example.com", "*.example.org", "api.example.net:8443"]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        pytest.param("mcp.example.com", 200, id="exact"),
        pytest.param("MCP.Example.COM", 200, id="case-insensitive"),
        pytest.param("mcp.example.com:8443", 200, id="any-port-when-pattern-has-none"),
        pytest.param("a.example.org", 200, id="wildcard"),
        pytest.param("a.b.example.org", 200, id="wildcard-deeper"),
        pytest.param("api.example.net:8443", 200, id="pattern-port"),
        pytest.param("example.org", 421, id="wildcard-not-apex"),
        pytest.param("evilexample.org", 421, id="wildcard-suffix-without-dot"),
        pytest.param("api.example.net", 421, id="pattern-port-missing"),
        pytest.param("api.example.net:9000", 421, id="pattern-port-other"),
        pytest.param("mcp.example.com.", 421, id="trailing-dot"),
        pytest.param("mcp.example.com.evil.example", 421, id="suffix-attack"),
        pytest.param("evil.example", 421, id="other-host"),
        pytest.param("mcp.example.com:abc", 421, id="bad-port"),
        pytest.param("mcp.example.com@evil.example", 421, id="userinfo"),
    ],
)
async def test_allowed_hosts(echo: EchoApp, host: str, expected: int) -> None:
    async with serve(CORSAllowlistMiddleware(echo, allowed_hosts=HOSTS)) as url, httpx.AsyncClient() as client:
        response = await client.get(url + "/mcp", headers={"Host": host})
    assert response.status_code == expected
    if expected == 421:
        assert response.json() == {"error": "misdirected_request"}
        assert echo.hits == 0
    else:
        assert echo.hits == 1


async def test_missing_or_duplicated_host_is_refused(echo: EchoApp) -> None:
    layer = CORSAllowlistMiddleware(echo, allowed_hosts=HOSTS, trust_forwarded_host=True)
    async with serve(layer) as url:
        assert (await send_raw(url, b"GET /mcp HTTP/1.0\r\n")).status == 421
        # h11 itself refuses two Host lines (400); two X-Forwarded-Host lines reach the layer, which refuses them.
        duplicated = b"GET /mcp HTTP/1.1\r\nHost: mcp.example.com\r\nHost: mcp.example.com\r\n"
        assert (await send_raw(url, duplicated)).status == 400
        forwarded_twice = b"X-Forwarded-Host: mcp.example.com\r\nX-Forwarded-Host: mcp.example.com\r\n"
        response = await send_request(url, headers=forwarded_twice)
        assert response.status == 421
        assert json.loads(response.body) == {"error": "misdirected_request"}
        assert (await send_raw(url, b"GET /mcp HTTP/1.1\r\nHost: mcp.example.com\r\n")).status == 200
    assert echo.hits == 1


async def test_host_checked_before_origin(echo: EchoApp) -> None:
    async with serve(CORSAllowlistMiddleware(echo, allowed_hosts=HOSTS)) as url, httpx.AsyncClient() as client:
        response = await client.options(url + "/mcp", headers={"Host": "evil.example", **preflight_headers(ALLOWED)})
    assert response.status_code == 421
    assert cors_headers(response) == {}


@pytest.mark.parametrize(
    ("trust", "host", "forwarded", "expected"),
    [
        pytest.param(True, "127.0.0.1", "mcp.example.com", 200, id="trusted-forwarded-allowed"),
        pytest.param(True, "mcp.example.com", "evil.example", 421, id="trusted-forwarded-refused"),
        pytest.param(True, "mcp.example.com", None, 200, id="trusted-no-forwarded-falls-back-to-host"),
        pytest.param(True, "127.0.0.1", "evil.example, mcp.example.com", 421, id="trusted-forwarded-chain-ambiguous"),
        pytest.param(False, "127.0.0.1", "mcp.example.com", 421, id="untrusted-forwarded-ignored"),
        pytest.param(False, "mcp.example.com", "evil.example", 200, id="untrusted-forwarded-cannot-refuse"),
    ],
)
async def test_forwarded_host(echo: EchoApp, trust: bool, host: str, forwarded: str | None, expected: int) -> None:
    layer = CORSAllowlistMiddleware(echo, allowed_hosts=HOSTS, trust_forwarded_host=trust)
    headers = {"Host": host} | ({"X-Forwarded-Host": forwarded} if forwarded else {})
    async with serve(layer) as url, httpx.AsyncClient() as client:
        assert (await client.get(url + "/mcp", headers=headers)).status_code == expected


async def test_decisions_are_logged(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mcp_access_guard")
    await client.options("/mcp", headers=preflight_headers(ALLOWED))
    await client.options("/mcp", headers=preflight_headers(ALLOWED, method="PUT"))
    await client.post("/mcp", headers={"Origin": REFUSED})
    await client.post("/mcp", headers={"Origin": ALLOWED})
    await client.post("/mcp")
    records = [vars(r) for r in caplog.records if r.name == "mcp_access_guard"]
    assert [(r["layer"], r["decision"], r["reason"]) for r in records] == [
        ("cors", "allow", "preflight_allowed"),
        ("cors", "deny", "preflight_refused"),
        ("cors", "deny", "origin_not_allowed"),
        ("cors", "allow", "origin_allowed"),
        ("cors", "allow", "no_origin"),
    ]


async def test_in_front_of_a_real_mcp_server() -> None:
    # The SDK's own Host/Origin check (on by default for 127.0.0.1) only knows loopback origins and would refuse
    # https://claude.ai; this layer takes over both checks, so the SDK's is turned off, as documented for tunnels.
    server = MCPServer("cors-test")
    sdk_app = server.streamable_http_app(
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False)
    )
    layer = CORSAllowlistMiddleware(sdk_app, allowed_hosts=["127.0.0.1"])
    async with serve(layer) as url, httpx.AsyncClient(base_url=url) as client:
        preflight = await client.options("/mcp", headers=preflight_headers(ALLOWED))
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ALLOWED

        response = await client.post("/mcp", json=INITIALIZE, headers={**MCP_ACCEPT, "Origin": ALLOWED})
        assert response.status_code == 200
        assert response.headers["mcp-session-id"]
        assert response.headers["access-control-allow-origin"] == ALLOWED
        assert response.headers["access-control-expose-headers"] == "Mcp-Session-Id"

        refused = await client.post("/mcp", json=INITIALIZE, headers={**MCP_ACCEPT, "Origin": REFUSED})
        assert refused.status_code == 403
        assert refused.json() == {"error": "origin_not_allowed"}
        assert "mcp-session-id" not in refused.headers

        no_origin = await client.post("/mcp", json=INITIALIZE, headers=MCP_ACCEPT)
        assert no_origin.status_code == 200
        assert no_origin.headers["mcp-session-id"]

        rebound = await client.post("/mcp", json=INITIALIZE, headers={**MCP_ACCEPT, "Host": "attacker.example"})
        assert rebound.status_code == 421


async def test_websocket_origin_is_checked() -> None:
    reached: list[str] = []

    async def websocket_app(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope["path"])

    async def connect(origin: bytes) -> list[Message]:
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "websocket.connect"}

        async def send(message: Message) -> None:
            sent.append(message)

        scope: dict[str, Any] = {
            "type": "websocket",
            "path": "/mcp",
            "headers": [(b"host", b"127.0.0.1"), (b"origin", origin)],
            "extensions": {"websocket.http.response": {}},
        }
        await CORSAllowlistMiddleware(websocket_app)(scope, receive, send)
        return sent

    refused = await connect(REFUSED.encode())
    assert refused[0]["type"] == "websocket.http.response.start"
    assert refused[0]["status"] == 403
    assert reached == []
    await connect(ALLOWED.encode())
    assert reached == ["/mcp"]


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"allow_origins": ["*"]}, id="wildcard-origin"),
        pytest.param({"allow_origins": ["https://claude.ai/"]}, id="origin-with-slash"),
        pytest.param({"allow_origins": ["claude.ai"]}, id="origin-without-scheme"),
        pytest.param({"extra_origins": ["https://*.example.com"]}, id="origin-pattern"),
        pytest.param({"allowed_hosts": ["*"]}, id="wildcard-host"),
        pytest.param({"allowed_hosts": ["a.*.example.com"]}, id="inner-wildcard-host"),
        pytest.param({"allowed_hosts": ["https://example.com"]}, id="host-with-scheme"),
        pytest.param({"allowed_hosts": ["x..example.com"]}, id="empty-label"),
        pytest.param({"allowed_hosts": "localhost"}, id="one-string-not-a-list"),
    ],
)
def test_misconfiguration_is_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        CORSAllowlistMiddleware(EchoApp(), **kwargs)
