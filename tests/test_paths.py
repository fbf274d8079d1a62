"""PathAllowlistMiddleware over real uvicorn: a raw-socket bypass corpus, health, root_path, and a real MCPServer."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount
from starlette.types import Message, Receive, Scope, Send

from mcp_access_guard.middleware.paths import PathAllowlistMiddleware, parse_allow_entry
from mcp_access_guard.testing import serve
from support import INITIALIZE, MCP_ACCEPT, RecordingApp, send_request

pytestmark = pytest.mark.anyio


class EchoApp(RecordingApp):
    """Answers every request with what it saw; the base records that lifespan reached it."""

    async def answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = {"reached": True, "path": scope["path"], "root_path": scope.get("root_path", "")}
        await JSONResponse(body)(scope, receive, send)


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    app = EchoApp()
    async with serve(PathAllowlistMiddleware(app, allow=("/mcp", "/health", "/docs/*"))) as url:
        assert app.started, "lifespan must pass through the path layer untouched"
        yield url


# (target as sent on the wire, expected status). 200 means the app was reached; 404 is this layer's refusal;
# 400 is uvicorn (h11) refusing a request line that is not valid HTTP before any app runs.
BYPASS_CORPUS = [
    pytest.param(b"/mcp", 200, id="exact"),
    pytest.param(b"/mcp?x=1", 200, id="query-string"),
    pytest.param(b"/mcp?", 200, id="empty-query"),
    pytest.param(b"/mcp?/../admin", 200, id="dots-in-query-only"),
    pytest.param(b"/health", 200, id="health-listed"),
    pytest.param(b"/docs/a", 200, id="subtree-child"),
    pytest.param(b"/docs/a/b", 200, id="subtree-grandchild"),
    pytest.param(b"/docs/a/", 200, id="subtree-trailing-slash"),
    pytest.param(b"/", 404, id="root"),
    pytest.param(b"/mcp/", 404, id="trailing-slash-not-listed"),
    pytest.param(b"/mcpx", 404, id="longer-name"),
    pytest.param(b"/mcp-admin", 404, id="dash-suffix"),
    pytest.param(b"/mcp.", 404, id="dot-suffix"),
    pytest.param(b"/MCP", 404, id="upper-case"),
    pytest.param(b"/Mcp", 404, id="mixed-case"),
    pytest.param(b"/mcp/extra", 404, id="below-exact"),
    pytest.param(b"/health/", 404, id="health-trailing-slash"),
    pytest.param(b"/docs", 404, id="subtree-root-itself"),
    pytest.param(b"/docs/", 200, id="subtree-root-slash"),
    pytest.param(b"/docsx/a", 404, id="subtree-sibling"),
    pytest.param(b"//mcp", 404, id="double-slash-leading"),
    pytest.param(b"/mcp//", 404, id="double-slash-trailing"),
    pytest.param(b"/docs//a", 404, id="double-slash-in-subtree"),
    pytest.param(b"/./mcp", 404, id="dot-segment"),
    pytest.param(b"/mcp/.", 404, id="trailing-dot-segment"),
    pytest.param(b"/x/../mcp", 404, id="dotdot-into-allowed"),
    pytest.param(b"/mcp/..", 404, id="trailing-dotdot"),
    pytest.param(b"/docs/../admin", 404, id="dotdot-out-of-subtree"),
    pytest.param(b"/docs/.../a", 404, id="dot-run-segment"),
    pytest.param(b"/.well-known/../mcp", 404, id="dotdot-via-well-known"),
    pytest.param(b"/%6dcp", 404, id="encoded-unreserved-letter"),
    pytest.param(b"/docs/%41", 404, id="encoded-unreserved-in-subtree"),
    pytest.param(b"/mcp%2f", 404, id="encoded-slash-lower"),
    pytest.param(b"/docs%2Fa", 404, id="encoded-slash-into-subtree"),
    pytest.param(b"/%2fmcp", 404, id="encoded-leading-slash"),
    pytest.param(b"/docs/%2e%2e/admin", 404, id="encoded-dotdot"),
    pytest.param(b"/docs/.%2e/admin", 404, id="half-encoded-dotdot"),
    pytest.param(b"/%2e/mcp", 404, id="encoded-dot"),
    pytest.param(b"/docs/a%2f..%2fb", 404, id="encoded-slash-dotdot"),
    pytest.param(b"/mcp%5c", 404, id="encoded-backslash"),
    pytest.param(b"/docs\\..\\admin", 404, id="backslash-dotdot"),
    pytest.param(b"/mcp\\", 404, id="trailing-backslash"),
    pytest.param(b"/mcp%00", 404, id="encoded-nul"),
    pytest.param(b"/mcp%0a", 404, id="encoded-newline"),
    pytest.param(b"/mcp%09", 404, id="encoded-tab"),
    pytest.param(b"/mcp%20", 404, id="encoded-space"),
    pytest.param(b"/mcp%", 404, id="truncated-escape"),
    pytest.param(b"/mcp%zz", 404, id="malformed-escape"),
    pytest.param(b"/mcp%25", 404, id="encoded-percent"),
    pytest.param(b"/%C3%A9", 404, id="encoded-non-ascii"),
    pytest.param(b"/mcp;jsessionid=1", 404, id="path-parameter"),
    pytest.param(b"/mcp;", 404, id="empty-path-parameter"),
    pytest.param(b"/docs/a;b", 404, id="parameter-in-subtree"),
    pytest.param(b"/mcp%3b", 404, id="encoded-semicolon"),
    pytest.param(b"/mcp#frag", 404, id="fragment-in-target"),
    pytest.param(b"mcp", 404, id="no-leading-slash"),
    pytest.param(b"*", 404, id="asterisk-form"),
    pytest.param(b"http://127.0.0.1/mcp", 404, id="absolute-form"),
    pytest.param(b"/mcp\x00", 400, id="raw-nul"),
    pytest.param(b"/mcp\x01", 400, id="raw-control"),
    pytest.param(b"/mcp\x7f", 400, id="raw-del"),
    pytest.param(b"/m\xc3\xa9", 400, id="raw-non-ascii"),
    pytest.param(b"/mcp\t", 400, id="raw-tab"),
    pytest.param(b"/mcp /x", 400, id="raw-space"),
]


@pytest.mark.parametrize(("target", "expected"), BYPASS_CORPUS)
async def test_bypass_corpus(echo_url: str, target: bytes, expected: int) -> None:
    response = await send_request(echo_url, target)
    assert response.status == expected
    if expected == 200:
        assert json.loads(response.body)["reached"] is True
    else:
        assert b"reached" not in response.body
    if expected == 404:
        assert json.loads(response.body) == {"error": "not_found"}


@pytest.mark.parametrize("method", [b"POST", b"DELETE", b"OPTIONS", b"PUT"])
async def test_refusal_does_not_depend_on_method(echo_url: str, method: bytes) -> None:
    assert (await send_request(echo_url, b"/mcp/..", method=method)).status == 404
    assert (await send_request(echo_url, b"/mcp", method=method)).status == 200


async def test_refusals_are_logged_with_a_reason(echo_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mcp_access_guard")
    for target in (b"/%6dcp", b"/mcp;x", b"/x/../mcp", b"/mcpx", b"/mcp"):
        await send_request(echo_url, target)
    records = [vars(record) for record in caplog.records if record.name == "mcp_access_guard"]
    reasons = [(record["decision"], record["reason"]) for record in records]
    assert reasons == [
        ("deny", "raw_path_mismatch"),
        ("deny", "path_parameter"),
        ("deny", "dot_segment"),
        ("deny", "not_listed"),
        ("allow", "path_allowed"),
    ]


async def test_health_answered_by_the_layer() -> None:
    app = EchoApp()
    async with serve(PathAllowlistMiddleware(app, allow=("/mcp",), health=True)) as url, httpx.AsyncClient() as client:
        response = await client.get(url + "/health")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
        head = await client.head(url + "/health")
        assert head.status_code == 200
        assert head.content == b""
        post = await client.post(url + "/health")
        assert post.status_code == 405
        assert post.headers["allow"] == "GET, HEAD"
        assert "reached" not in post.text
        assert (await client.get(url + "/health/")).status_code == 404
        assert (await client.get(url + "/mcp")).json()["reached"] is True


async def test_health_off_passes_health_to_the_app() -> None:
    async with serve(PathAllowlistMiddleware(EchoApp())) as url, httpx.AsyncClient() as client:
        assert (await client.get(url + "/health")).json() == {"reached": True, "path": "/health", "root_path": ""}


async def test_mounted_under_root_path() -> None:
    guarded = PathAllowlistMiddleware(EchoApp(), allow=("/mcp",))
    parent = Starlette(routes=[Mount("/api", app=guarded)])
    async with serve(parent) as url:
        response = await send_request(url, b"/api/mcp")
        assert response.status == 200
        assert json.loads(response.body) == {"reached": True, "path": "/api/mcp", "root_path": "/api"}
        assert (await send_request(url, b"/api/mcpx")).status == 404
        assert (await send_request(url, b"/api/api/mcp")).status == 404
        assert (await send_request(url, b"/api/x/../mcp")).status == 404
        assert (await send_request(url, b"/api/%6dcp")).status == 404


async def test_in_front_of_a_real_mcp_server() -> None:
    server = MCPServer("paths-test")
    async with serve(PathAllowlistMiddleware(server.streamable_http_app())) as url, httpx.AsyncClient() as client:
        response = await client.post(url + "/mcp", json=INITIALIZE, headers=MCP_ACCEPT)
        assert response.status_code == 200
        assert response.headers["mcp-session-id"]
        assert '"serverInfo"' in response.text
        # Without the layer the SDK would answer /mcp/ with a redirect to /mcp; here nothing unlisted reaches it.
        slash = await client.post(url + "/mcp/", json=INITIALIZE, headers=MCP_ACCEPT)
        assert slash.status_code == 404
        assert slash.json() == {"error": "not_found"}
        assert (await send_request(url, b"/%6dcp", method=b"POST")).status == 404
        assert (await client.get(url + "/mcp-admin")).status_code == 404


async def call_directly(app: PathAllowlistMiddleware, scope: dict[str, Any]) -> list[Message]:
    """Drive the middleware with a hand-made scope: for what uvicorn cannot produce (no raw_path, websockets)."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"} if scope["type"] == "websocket" else {"type": "http.request"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def http_scope(path: str, **extra: Any) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b"", **extra}


async def test_path_checked_when_server_gives_no_raw_path() -> None:
    layer = PathAllowlistMiddleware(EchoApp())
    assert (await call_directly(layer, http_scope("/mcp")))[0]["status"] == 200
    assert (await call_directly(layer, http_scope("/x/../mcp")))[0]["status"] == 404
    assert (await call_directly(layer, http_scope("/mcp\x00")))[0]["status"] == 404
    assert (await call_directly(layer, http_scope("/mcp", raw_path=b"/mcp/")))[0]["status"] == 404


async def test_websocket_is_checked_like_http() -> None:
    reached: list[str] = []

    async def websocket_app(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope["path"])
        await send({"type": "websocket.close", "code": 1000})

    layer = PathAllowlistMiddleware(websocket_app)
    websocket = {"type": "websocket", "headers": [], "query_string": b"", "extensions": {"websocket.http.response": {}}}
    refused = await call_directly(layer, {**websocket, "path": "/admin", "raw_path": b"/admin"})
    assert refused[0] == {"type": "websocket.http.response.start", "status": 404, "headers": refused[0]["headers"]}
    assert reached == []
    await call_directly(layer, {**websocket, "path": "/mcp", "raw_path": b"/mcp"})
    assert reached == ["/mcp"]


@pytest.mark.parametrize("entry", ["mcp", "", "/a/../b", "/a//b", "/mcp;x", "/mcp%2f", "/mcp*", "/a/*/b", "/m\\cp"])
def test_ambiguous_allow_list_entries_are_rejected(entry: str) -> None:
    with pytest.raises(ValueError, match="not a whole, normalised path"):
        PathAllowlistMiddleware(EchoApp(), allow=(entry,))


# The documented setting for the older HTTP+SSE transport: exactly its stream and its message endpoint.
SSE_CORPUS = [
    pytest.param(b"/sse", 200, id="stream"),
    pytest.param(b"/messages/", 200, id="messages"),
    pytest.param(b"/messages/?session_id=0123456789abcdef0123456789abcdef", 200, id="messages-with-session"),
    pytest.param(b"/messages", 404, id="messages-without-slash"),
    pytest.param(b"/messages/x", 404, id="below-messages"),
    pytest.param(b"/messages//", 404, id="messages-double-slash"),
    pytest.param(b"/messages/.", 404, id="messages-dot"),
    pytest.param(b"/Messages/", 404, id="messages-case"),
    pytest.param(b"/messages%2f", 404, id="messages-encoded-slash"),
    pytest.param(b"/sse/", 404, id="stream-trailing-slash"),
    pytest.param(b"/sse/../messages/", 404, id="dotdot-from-stream"),
    pytest.param(b"/mcp", 404, id="streamable-endpoint-not-listed"),
]


@pytest.mark.parametrize(("target", "expected"), SSE_CORPUS)
async def test_the_sse_setting_admits_exactly_the_stream_and_the_message_endpoint(target: bytes, expected: int) -> None:
    async with serve(PathAllowlistMiddleware(EchoApp(), allow=("/sse", "/messages/"))) as url:
        assert (await send_request(url, target)).status == expected


@pytest.mark.parametrize(
    ("target", "expected"), [(b"/messages/", 200), (b"/messages/x", 200), (b"/messages", 404), (b"/messagesx/", 404)]
)
async def test_a_subtree_entry_admits_its_own_directory_too(target: bytes, expected: int) -> None:
    assert parse_allow_entry("/messages/*") == ("/messages/", True)
    async with serve(PathAllowlistMiddleware(EchoApp(), allow=("/messages/*",))) as url:
        assert (await send_request(url, target)).status == expected
