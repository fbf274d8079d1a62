"""Issue 11, class 1: a request the guard must answer for (a filtered listing, a refused call) cannot have its answer
delivered anywhere the guard does not rewrite it, whatever ids the client sends alongside it.

The SDK routes an answer by `str(id)`: a later request with the same id takes over the earlier one's response stream.
Each test here makes that happen for certain, not by luck of timing: the server (the SDK's `MCPServer`) holds the
guarded request's answer until the colliding request is being served. Real uvicorn, stateful sessions, both response
modes, and the session's GET stream (live, and replaying a resumed stream from an event store).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from mcp.server.mcpserver import MCPServer
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp_types import JSONRPCMessage, Tool
from starlette.types import ASGIApp

from mcp_access_guard.jsonrpc import GUARD_ID_PREFIX
from mcp_access_guard.middleware.tools import ToolPolicyMiddleware
from mcp_access_guard.policy import Rule, ToolPolicy
from mcp_access_guard.testing import serve
from test_tool_policy_middleware import IdentityFromTestHeaders, messages

BOSS = "boss@example.com"
EVE = "eve@example.com"
ACCEPT = "application/json, text/event-stream"
RESUMABLE_VERSION = "2025-11-25"  # the first version whose clients resume streams (and get priming events)
POLICY = ToolPolicy({"secret": Rule(emails=[BOSS])})


class Gates:
    """The guarded request's handler waits, once entered, until the colliding request is being served."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.entered = anyio.Event()
        self.collided = anyio.Event()
        self.released = anyio.Event()


class GatedServer(MCPServer):
    """The SDK's `MCPServer`, holding the guarded request's answer until the colliding request is being served."""

    def __init__(self, gates: Gates) -> None:
        super().__init__("gated")
        self.gates = gates

        @self.tool()
        def add(a: int, b: int) -> int:
            return a + b

        @self.tool()
        def secret() -> str:
            return "the launch codes"

        @self.tool()
        async def gate() -> str:
            """The unguarded request whose id collides with the guarded one's."""
            gates.collided.set()
            with anyio.move_on_after(5):
                await gates.released.wait()
            return "gate done"

    async def list_tools(self) -> list[Tool]:
        if self.gates.method == "tools/list" and not self.gates.entered.is_set():  # later listings are the guard's
            self.gates.entered.set()
            await self.gates.collided.wait()
        return await super().list_tools()

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        if self.gates.method == "tools/call" and name not in ("add", "secret", "gate"):  # the refused call, renamed
            self.gates.entered.set()
            await self.gates.collided.wait()
        return await super().call_tool(name, arguments, context)


def guarded(server: MCPServer, *, json_response: bool, event_store: EventStore | None = None) -> ASGIApp:
    app = server.streamable_http_app(json_response=json_response, stateless_http=False, event_store=event_store)
    return IdentityFromTestHeaders(ToolPolicyMiddleware(app, POLICY))


class Session:
    """One caller's handshake-era session, over its own connections (httpx pools one per concurrent request)."""

    def __init__(self, client: httpx.AsyncClient, url: str, email: str, version: str) -> None:
        self.client = client
        self.url = url + "/mcp"
        self.version = version
        self.headers = {"Accept": ACCEPT, "Content-Type": "application/json", "X-Test-Email": email}

    async def start(self) -> Session:
        params = {"protocolVersion": self.version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        opened = await self.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params})
        assert opened.status_code == 200
        self.headers["Mcp-Session-Id"] = opened.headers["mcp-session-id"]
        self.headers["MCP-Protocol-Version"] = self.version
        assert (await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})).status_code == 202
        return self

    async def post(self, message: Any, *, read_timeout: float = 10) -> httpx.Response:
        body = json.dumps(message)
        return await self.client.post(self.url, content=body, headers=self.headers, timeout=read_timeout)


@asynccontextmanager
async def session(app: ASGIApp, email: str = EVE, version: str = "2025-06-18") -> AsyncIterator[Session]:
    async with serve(app) as url, httpx.AsyncClient() as client:
        yield await Session(client, url, email, version).start()


def request(method: str, request_id: Any, params: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, **({"params": params} if params else {})}


GUARDED = {
    "tools/list": {},
    "tools/call": {"name": "secret", "arguments": {}},
}
ID_PAIRS = [
    pytest.param(100, "100", id="number-then-string"),
    pytest.param("100", 100, id="string-then-number"),
    pytest.param(7, 7, id="the-same-id"),
]


async def read_stream(response: httpx.Response, into: bytearray) -> None:
    async for chunk in response.aiter_bytes():
        into.extend(chunk)


def only_message(response: httpx.Response) -> dict[str, Any]:
    (message,) = [message for message in messages(response) if "id" in message]
    return message  # type: ignore[no-any-return]


@pytest.mark.anyio
@pytest.mark.parametrize("json_response", [True, False], ids=["json", "sse"])
@pytest.mark.parametrize(("guarded_id", "colliding_id"), ID_PAIRS)
@pytest.mark.parametrize("method", list(GUARDED))
async def test_a_colliding_id_cannot_take_the_answer_to_a_guarded_request(
    json_response: bool, guarded_id: Any, colliding_id: Any, method: str
) -> None:
    gates = Gates(method)
    answers: dict[str, httpx.Response | None] = {}
    get_stream = bytearray()
    with anyio.fail_after(30):
        async with session(guarded(GatedServer(gates), json_response=json_response)) as eve:

            async def guarded_request() -> None:
                try:
                    answers["guarded"] = await eve.post(request(method, guarded_id, GUARDED[method]), read_timeout=5)
                except httpx.ReadTimeout:
                    answers["guarded"] = None  # its answer went elsewhere
                gates.released.set()

            async def colliding_request() -> None:
                call = request("tools/call", colliding_id, {"name": "gate", "arguments": {}})
                answers["colliding"] = await eve.post(call)

            # The session's GET stream is open throughout: nothing of the guarded answer may show up there either.
            get_headers = {**eve.headers, "Accept": "text/event-stream"}
            async with (
                eve.client.stream("GET", eve.url, headers=get_headers, timeout=None) as get,
                anyio.create_task_group() as tasks,
            ):
                tasks.start_soon(read_stream, get, get_stream)
                tasks.start_soon(guarded_request)
                await gates.entered.wait()
                await colliding_request()
                await gates.released.wait()
                await anyio.sleep(0.1)
                tasks.cancel_scope.cancel()
            # Checked before the server stops: on a server whose answer went astray, stopping waits for it.
            colliding = answers["colliding"]
            assert colliding is not None
            assert "secret" not in colliding.text
            colliding_answer = only_message(colliding)
            assert colliding_answer["id"] == colliding_id
            assert type(colliding_answer["id"]) is type(colliding_id)
            assert colliding_answer["result"]["content"] == [{"type": "text", "text": "gate done"}]
            guarded_answer = answers["guarded"]
            assert guarded_answer is not None, "the guarded request's answer was delivered elsewhere"
            answer = only_message(guarded_answer)
            assert type(answer["id"]) is type(guarded_id)
            assert answer["id"] == guarded_id
            if method == "tools/list":
                assert [tool["name"] for tool in answer["result"]["tools"]] == ["add", "gate"]
                assert "the launch codes" not in colliding.text
            else:
                assert answer["result"]["content"][0]["text"] == "Unknown tool: secret"
            assert GUARD_ID_PREFIX not in guarded_answer.text + colliding.text
            assert b"secret" not in get_stream
            assert GUARD_ID_PREFIX.encode() not in get_stream


# -- ids the guard will not stand in for -----------------------------------------------------------------------------


class Counting:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.hits = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.hits += scope["type"] == "http"
        await self.app(scope, receive, send)


ODD_IDS = [1.0, 1.5, -0.0, True, False, None, [1], {"a": 1}, "x" * 127, "caf\u00e9", 'a"b', "a\\b", "a\nb", 10**130]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "params"),
    [("tools/list", {}), ("tools/call", {"name": "secret", "arguments": {}}), ("tools/call", {"name": "add"})],
    ids=["listing", "refused-call", "allowed-call"],
)
async def test_ids_the_guard_cannot_give_back_are_refused_on_guarded_methods_whatever_they_name(
    method: str, params: dict[str, Any]
) -> None:
    # The SDK reads 1.0 or true as no id at all, other servers as `str(id)`: the guard takes over only ids that every
    # encoder writes one way (integers, plain strings of up to 128 characters), and refuses the others before the
    # app, for allowed and refused names alike, so the refusal tells nothing about the name.
    from test_tool_policy_middleware import mcp_server

    counting = Counting(mcp_server().streamable_http_app(json_response=True, stateless_http=True))
    app = IdentityFromTestHeaders(ToolPolicyMiddleware(counting, POLICY))
    headers = {"Accept": ACCEPT, "Content-Type": "application/json", "X-Test-Email": EVE}
    async with serve(app) as url, httpx.AsyncClient() as client:
        for request_id in ODD_IDS:
            body = json.dumps(request(method, request_id, params))
            response = await client.post(url + "/mcp", content=body, headers=headers)
            assert response.status_code == 400, (request_id, response.text)
            assert response.json()["error"]["code"] == -32600
    assert counting.hits == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    "message",
    [
        {"jsonrpc": "2.0", "id": GUARD_ID_PREFIX + "t" + "0" * 32 + ":31:", "method": "ping"},
        {"jsonrpc": "2.0", "id": GUARD_ID_PREFIX, "method": "tools/call", "params": {"name": "add"}},
        {"jsonrpc": "2.0", "id": GUARD_ID_PREFIX + "x", "result": {}},
    ],
    ids=["ping", "tools/call", "a-response"],
)
async def test_ids_in_the_guards_own_namespace_are_refused_on_every_message(message: dict[str, Any]) -> None:
    from test_tool_policy_middleware import mcp_server

    counting = Counting(mcp_server().streamable_http_app(json_response=True, stateless_http=True))
    app = IdentityFromTestHeaders(ToolPolicyMiddleware(counting, POLICY))
    headers = {"Accept": ACCEPT, "Content-Type": "application/json", "X-Test-Email": EVE}
    async with serve(app) as url, httpx.AsyncClient() as client:
        response = await client.post(url + "/mcp", content=json.dumps(message), headers=headers)
    assert response.status_code == 400
    assert response.json()["error"] == {"code": -32600, "message": "This request id is reserved"}
    assert counting.hits == 0


# -- a resumed stream, replayed on the session's GET stream -----------------------------------------------------------


class MemoryEventStore(EventStore):
    """The SDK's event-store interface over a list: every stream's events, replayed after a given one."""

    def __init__(self) -> None:
        self.events: list[tuple[EventId, StreamId, JSONRPCMessage | None]] = []

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        event_id = str(len(self.events))
        self.events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        start = int(last_event_id)
        stream = self.events[start][1]
        for event_id, stream_id, message in self.events[start + 1 :]:
            if stream_id == stream and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream


def first_event_id(response: httpx.Response) -> str:
    return next(line[3:].strip() for line in response.text.splitlines() if line.startswith("id:"))


async def replayed_answer(eve: Session, last_event_id: str) -> tuple[dict[str, Any], str]:
    """The first answer the GET stream replays after `last_event_id`, and all the stream's text up to it."""
    headers = {**eve.headers, "Accept": "text/event-stream", "Last-Event-ID": last_event_id}
    text = ""
    async with eve.client.stream("GET", eve.url, headers=headers, timeout=10) as replay:
        assert replay.status_code == 200
        async for chunk in replay.aiter_text():
            text += chunk
            for line in text.splitlines():
                if line.startswith("data:") and '"id"' in line:
                    return json.loads(line[5:]), text
    raise AssertionError(f"nothing replayed: {text!r}")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "params", "request_id"),
    [("tools/list", {}, 5), ("tools/call", {"name": "secret", "arguments": {}}, "call-5")],
    ids=["listing", "refused-call"],
)
async def test_a_resumed_stream_replayed_on_the_get_stream_is_rewritten_like_the_original(
    method: str, params: dict[str, Any], request_id: Any
) -> None:
    from test_tool_policy_middleware import mcp_server

    app = mcp_server().streamable_http_app(json_response=False, stateless_http=False, event_store=MemoryEventStore())
    guarded_app = IdentityFromTestHeaders(ToolPolicyMiddleware(app, POLICY))
    with anyio.fail_after(30):
        async with session(guarded_app, version=RESUMABLE_VERSION) as eve:
            original = await eve.post(request(method, request_id, params))
            # The client lost the stream after its priming event; it resumes from there.
            replayed, stream_text = await replayed_answer(eve, first_event_id(original))
    assert replayed == only_message(original)
    assert replayed["id"] == request_id
    if method == "tools/list":
        assert [tool["name"] for tool in replayed["result"]["tools"]] == ["add", "whoami", "size", "café", "echo"]
    else:
        assert replayed["result"]["content"][0]["text"] == "Unknown tool: secret"
    assert "secret" not in stream_text.replace("Unknown tool: secret", "")
    assert "-denied-" not in stream_text
    assert GUARD_ID_PREFIX not in stream_text
