"""ToolPolicyMiddleware against a real MCPServer under real uvicorn, with raw HTTP and with the real mcp client."""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.inbound import encode_header_value
from mcp_types import CallToolResult, ListToolsResult, TextContent, Tool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_access_guard.identity import AccessIdentity, bind_identity, current_identity
from mcp_access_guard.jsonrpc import ListingFilter
from mcp_access_guard.middleware.tools import ToolPolicyMiddleware
from mcp_access_guard.policy import Rule, ToolPolicy
from mcp_access_guard.testing import serve

BOSS = "boss@example.com"
EVE = "eve@example.com"
MODERN_VERSION = "2026-07-28"
LEGACY_VERSION = "2025-06-18"
ACCEPT = "application/json, text/event-stream"
Era = Literal["legacy", "modern"]
CONFIGS = [(json_response, stateless) for json_response in (True, False) for stateless in (True, False)]


class IdentityFromTestHeaders:
    """Test-only stand-in for the JWT layer: binds the identity named by `X-Test-Email` / `X-Test-Client-Id`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", []))
        email = headers.get(b"x-test-email", b"").decode()
        client_id = headers.get(b"x-test-client-id", b"").decode()
        if scope["type"] != "http" or not (email or client_id):
            await self.app(scope, receive, send)
            return
        identity = AccessIdentity(
            subject=email or "",
            issuer="https://team.example",
            expires_at=2**40,
            email=email or None,
            common_name=client_id or None,
        )
        with bind_identity(scope, identity):
            await self.app(scope, receive, send)


def policy() -> ToolPolicy:
    return ToolPolicy(
        {"secret": Rule(emails=[BOSS]), "café": Rule(emails=[BOSS]), "echo": Rule(service_tokens=["robot"])},
        prompts={"briefing": Rule(emails=[BOSS])},
        resources={"file:///payroll": Rule(emails=[BOSS])},
    )


def mcp_server(*, with_restricted: bool = True, tool_count: int = 0) -> MCPServer:
    """`with_restricted=False` is the same server without the restricted tools: the reference for 'does not exist'."""
    mcp = MCPServer("demo")

    @mcp.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @mcp.tool()
    async def whoami() -> str:
        await anyio.sleep(0.01)  # long enough for concurrent requests to interleave
        identity = current_identity()
        return identity.principal if identity else "nobody"

    @mcp.tool()
    def size(text: str) -> int:
        return len(text)

    if with_restricted:

        @mcp.tool()
        def secret() -> str:
            return "the launch codes"

        @mcp.tool(name="café")
        def cafe() -> str:
            return "espresso"

        @mcp.tool()
        def echo(text: str) -> str:
            return text

        @mcp.prompt()
        def briefing() -> str:
            return "Top secret briefing"

        @mcp.resource("file:///payroll")
        def payroll() -> str:
            return "salaries"

    for index in range(tool_count):
        mcp.add_tool(lambda: "x", name=f"bulk{index}", description="bulk")
    return mcp


def guarded(mcp: MCPServer | Server[Any], *, json_response: bool = True, stateless: bool = True) -> ASGIApp:
    app = mcp.streamable_http_app(json_response=json_response, stateless_http=stateless)
    return IdentityFromTestHeaders(ToolPolicyMiddleware(app, policy()))


def bare(mcp: MCPServer | Server[Any], *, json_response: bool = True, stateless: bool = True) -> ASGIApp:
    return IdentityFromTestHeaders(mcp.streamable_http_app(json_response=json_response, stateless_http=stateless))


class Raw:
    """Raw JSON-RPC over HTTP in one era, with the handshake (and session) done for the legacy era."""

    def __init__(self, client: httpx.AsyncClient, url: str, era: Era, email: str | None) -> None:
        self.client = client
        self.url = url + "/mcp"
        self.era = era
        self.headers = {"Accept": ACCEPT, "Content-Type": "application/json"}
        if email:
            self.headers["X-Test-Email"] = email
        self.next_id = 10

    async def start(self) -> Raw:
        if self.era == "modern":
            self.headers["MCP-Protocol-Version"] = MODERN_VERSION
            return self
        init = {"protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        response = await self.post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init})
        assert response.status_code == 200
        if "mcp-session-id" in response.headers:
            self.headers["Mcp-Session-Id"] = response.headers["mcp-session-id"]
        self.headers["MCP-Protocol-Version"] = LEGACY_VERSION
        assert (await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})).status_code == 202
        return self

    def message(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.next_id += 1
        params = dict(params or {})
        if self.era == "modern":
            params["_meta"] = {
                "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        return {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}

    def routing_headers(self, method: str, params: dict[str, Any] | None) -> dict[str, str]:
        if self.era != "modern":
            return {}
        headers = {"Mcp-Method": method}
        key = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}.get(method)
        if key and params and isinstance(params.get(key), str):
            headers["Mcp-Name"] = encode_header_value(params[key])
        return headers

    async def call(self, method: str, params: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
        return await self.post(self.message(method, params), {**self.routing_headers(method, params), **headers})

    async def post(
        self, message: Any = None, headers: dict[str, str] | None = None, *, content: bytes | None = None
    ) -> httpx.Response:
        body = content if content is not None else json.dumps(message).encode()
        return await self.client.post(self.url, content=body, headers={**self.headers, **(headers or {})})


@asynccontextmanager
async def raw(app: ASGIApp, era: Era, email: str | None = EVE) -> AsyncIterator[Raw]:
    async with serve(app) as url, httpx.AsyncClient(timeout=30) as client:
        yield await Raw(client, url, era, email).start()


def messages(response: httpx.Response) -> list[Any]:
    """The JSON-RPC messages of a JSON or SSE response."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return [
            json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:") and line[5:].strip()
        ]
    return [response.json()]


def result(response: httpx.Response) -> Any:
    return messages(response)[-1]["result"]


def comparable(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    # Only what legitimately differs between two requests: the date and the session's own id.
    headers = [
        (name, value) for name, value in response.headers.multi_items() if name not in ("date", "mcp-session-id")
    ]
    return response.status_code, headers, response.content


# -- denial looks exactly like absence -------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("json_response", "stateless"), CONFIGS)
@pytest.mark.parametrize("era", ["legacy", "modern"])
@pytest.mark.parametrize("name", ["secret", "café"])
async def test_denied_call_is_byte_for_byte_the_answer_for_a_tool_that_does_not_exist(
    json_response: bool, stateless: bool, era: Era, name: str
) -> None:
    options = {"json_response": json_response, "stateless": stateless}
    params = {"name": name, "arguments": {}}
    async with raw(guarded(mcp_server(), **options), era) as session:
        denied = await session.call("tools/call", params)
    async with raw(bare(mcp_server(with_restricted=False), **options), era) as session:
        absent = await session.call("tools/call", params)
    assert comparable(denied) == comparable(absent)
    assert result(denied)["isError"] is True
    assert result(denied)["content"][0]["text"] == f"Unknown tool: {name}"


@pytest.mark.anyio
@pytest.mark.parametrize(("json_response", "stateless"), CONFIGS)
@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_allowed_caller_gets_the_tool_and_the_full_list(json_response: bool, stateless: bool, era: Era) -> None:
    app = guarded(mcp_server(), json_response=json_response, stateless=stateless)
    async with raw(app, era, BOSS) as session:
        called = await session.call("tools/call", {"name": "secret", "arguments": {}})
        listed = await session.call("tools/list")
    assert result(called)["content"][0]["text"] == "the launch codes"
    assert {tool["name"] for tool in result(listed)["tools"]} == {"add", "whoami", "size", "secret", "café"}


@pytest.mark.anyio
@pytest.mark.parametrize(("json_response", "stateless"), CONFIGS)
@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_list_is_filtered_per_caller_with_a_correct_length(
    json_response: bool, stateless: bool, era: Era
) -> None:
    options = {"json_response": json_response, "stateless": stateless}
    async with raw(guarded(mcp_server(), **options), era) as session:
        filtered = await session.call("tools/list")
    async with raw(bare(mcp_server(with_restricted=False), **options), era) as session:
        reference = await session.call("tools/list")
    assert [tool["name"] for tool in result(filtered)["tools"]] == ["add", "whoami", "size"]
    # Filtering the restricted tools out gives what a server without them sends.
    assert comparable(filtered) == comparable(reference)
    if "content-length" in filtered.headers:
        assert int(filtered.headers["content-length"]) == len(filtered.content)


class RequestRecorder:
    """Between the guard and the app: keeps the bodies the app was sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.bodies: list[Any] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        message = await receive()
        self.bodies.append(json.loads(message["body"]))
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return message

        await self.app(scope, replay, send)


@pytest.mark.anyio
@pytest.mark.parametrize(("json_response", "stateless"), CONFIGS)
@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_a_caller_who_may_see_every_tool_gets_the_listing_as_the_app_wrote_it(
    json_response: bool, stateless: bool, era: Era
) -> None:
    options = {"json_response": json_response, "stateless": stateless}
    recorder = RequestRecorder(mcp_server().streamable_http_app(json_response=json_response, stateless_http=stateless))
    open_to_boss = ToolPolicy({"secret": Rule(emails=[BOSS]), "café": Rule(emails=[BOSS])})
    async with raw(IdentityFromTestHeaders(ToolPolicyMiddleware(recorder, open_to_boss)), era, BOSS) as session:
        listed = await session.call("tools/list")
    async with raw(bare(mcp_server(), **options), era, BOSS) as session:
        reference = await session.call("tools/list")
    assert comparable(listed) == comparable(reference)
    # Decided before the answer came: the app was asked under the caller's own id, so its answer needed no edit.
    assert recorder.bodies[-1]["method"] == "tools/list"
    assert recorder.bodies[-1]["id"] == session.next_id


@pytest.mark.anyio
async def test_a_listing_read_before_is_judged_afresh_for_each_caller_and_each_change() -> None:
    mcp = mcp_server()
    policy_ = policy()
    app = IdentityFromTestHeaders(ToolPolicyMiddleware(mcp.streamable_http_app(), policy_))
    async with serve(app) as url, httpx.AsyncClient(timeout=30) as client:
        eve = await Raw(client, url, "modern", EVE).start()
        boss = await Raw(client, url, "modern", BOSS).start()

        async def names(session: Raw) -> list[str]:
            return [tool["name"] for tool in result(await session.call("tools/list"))["tools"]]

        for _ in range(2):
            assert await names(eve) == ["add", "whoami", "size"]
            assert await names(boss) == ["add", "whoami", "size", "secret", "café"]
        # The policy changes: the listing text is the same, the answers are not.
        policy_.rules["add"] = Rule(emails=[BOSS])
        assert await names(eve) == ["whoami", "size"]
        assert await names(boss) == ["add", "whoami", "size", "secret", "café"]
        # The listing changes: a new text, read anew.
        mcp.add_tool(lambda: "x", name="late", description="added while serving")
        assert await names(eve) == ["whoami", "size", "late"]


@pytest.mark.anyio
async def test_json_listings_remembered_for_one_caller_never_reach_another(monkeypatch: pytest.MonkeyPatch) -> None:
    # JSON answers, finished in one step from a result written per set of hidden names: callers interleaved on the
    # same listing bytes, then a changed policy and a changed listing.
    finished: list[bool] = []
    finish = ListingFilter.finished_body

    def watched(self: ListingFilter, body: bytes, caller_id: str) -> bytes | None:
        answer = finish(self, body, caller_id)
        finished.append(answer is not None)
        return answer

    monkeypatch.setattr(ListingFilter, "finished_body", watched)
    mcp = mcp_server()
    policy_ = policy()
    app = IdentityFromTestHeaders(ToolPolicyMiddleware(mcp.streamable_http_app(json_response=True), policy_))
    async with serve(app) as url, httpx.AsyncClient(timeout=30) as client:
        eve = await Raw(client, url, "modern", EVE).start()
        boss = await Raw(client, url, "modern", BOSS).start()
        anonymous = await Raw(client, url, "modern", None).start()

        async def names(session: Raw) -> list[str]:
            response = await session.call("tools/list")
            assert response.headers["content-type"].startswith("application/json")
            assert int(response.headers["content-length"]) == len(response.content)
            assert messages(response)[-1]["id"] == session.next_id
            return [tool["name"] for tool in result(response)["tools"]]

        for _ in range(3):
            assert await names(eve) == ["add", "whoami", "size"]
            assert await names(boss) == ["add", "whoami", "size", "secret", "café"]
            assert await names(anonymous) == ["add", "whoami", "size"]
        policy_.rules["add"] = Rule(emails=[BOSS])
        assert await names(eve) == ["whoami", "size"]
        assert await names(boss) == ["add", "whoami", "size", "secret", "café"]
        mcp.add_tool(lambda: "x", name="late", description="added while serving")
        assert await names(eve) == ["whoami", "size", "late"]
        assert await names(boss) == ["add", "whoami", "size", "secret", "café", "late"]
    # Every listing finished in one step, boss's too: the policy has rules (for prompts, for "echo") he does not match.
    assert len(finished) == 13
    assert all(finished)


@pytest.mark.anyio
@pytest.mark.parametrize("chunks", [1, 3])
async def test_a_json_listing_sent_without_a_length_is_filtered_too(chunks: int) -> None:
    # An answer in chunks (no Content-Length) is still one JSON message: held whole and filtered like any other.
    async def chunking_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        request = json.loads((await receive())["body"])
        tools = [{"name": name} for name in ("add", "secret", "café")]
        body = json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": {"tools": tools}}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        size = -(-len(body) // chunks)
        for start in range(0, len(body), size):
            await send({"type": "http.response.body", "body": body[start : start + size], "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async with raw(IdentityFromTestHeaders(ToolPolicyMiddleware(chunking_app, policy())), "modern") as session:
        listed = await session.call("tools/list")
    assert listed.status_code == 200
    assert [tool["name"] for tool in result(listed)["tools"]] == ["add"]
    assert messages(listed)[-1]["id"] == session.next_id


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "caller_id"),
    [
        (b'{"jsonrpc":"2.0","id":7,"method":"tools/list"}', 7),
        (b'{"jsonrpc":"2.0","id":"a-7","method":"tools/list","params":{}}', "a-7"),
        (b'{"jsonrpc": "2.0", "id": 7, "method": "tools/list"}', 7),
        (b'{"id":7,"jsonrpc":"2.0","method":"tools/list"}', 7),
        (b'{"jsonrpc":"2.0","id":"a\\u002d7","method":"tools/list"}', "a-7"),
        (b'{"jsonrpc":"2.0","id":70,"method":"tools/list","params":{"_meta":{"id":7}}}', 70),
    ],
)
async def test_a_listing_request_travels_under_the_guards_id_however_the_client_wrote_it(
    body: bytes, caller_id: Any
) -> None:
    forwarded: list[Any] = []

    async def listing_app(scope: Scope, receive: Receive, send: Send) -> None:
        request = json.loads((await receive())["body"])
        forwarded.append(request)
        answer = {"jsonrpc": "2.0", "id": request["id"], "result": {"tools": [{"name": "add"}, {"name": "secret"}]}}
        encoded = json.dumps(answer, separators=(",", ":")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(encoded)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": encoded})

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/mcp", "headers": [(b"content-type", b"application/json")]}
    await ToolPolicyMiddleware(listing_app, policy())(scope, receive, send)
    (request,) = forwarded
    assert request["id"].startswith("mcp-access-guard:t")
    assert {key: value for key, value in request.items() if key != "id"} == {
        key: value for key, value in json.loads(body).items() if key != "id"
    }
    answer = json.loads(b"".join(message.get("body", b"") for message in sent[1:]))
    assert answer == {"jsonrpc": "2.0", "id": caller_id, "result": {"tools": [{"name": "add"}]}}


@pytest.mark.anyio
async def test_service_token_rule_and_anonymous_callers() -> None:
    async with serve(guarded(mcp_server())) as url, httpx.AsyncClient() as client:
        robot = Raw(client, url, "modern", None)
        robot.headers["X-Test-Client-Id"] = "robot.access"
        await robot.start()
        assert (
            result(await robot.call("tools/call", {"name": "echo", "arguments": {"text": "hi"}}))["content"][0]["text"]
            == "hi"
        )
        nobody = await Raw(client, url, "modern", None).start()
        listed = {tool["name"] for tool in result(await nobody.call("tools/list"))["tools"]}
        assert listed == {"add", "whoami", "size"}
        denied = await nobody.call("tools/call", {"name": "echo", "arguments": {"text": "hi"}})
        assert result(denied)["content"][0]["text"] == "Unknown tool: echo"
        anonymous = await nobody.call("tools/call", {"name": "whoami", "arguments": {}})
        assert result(anonymous)["content"][0]["text"] == "nobody"


# -- a server whose unknown-tool answer is its own, with pagination ------------------------------------------------


def paginated_lowlevel_server(*, with_secret: bool = True) -> Server[Any]:
    names = ["alpha", "secret", "beta", "gamma"] if with_secret else ["alpha", "beta", "gamma"]
    pages = [names[:2], names[2:]]

    async def list_tools(ctx: Any, params: Any) -> ListToolsResult:
        page = int(params.cursor) if params is not None and params.cursor else 0
        tools = [Tool(name=name, input_schema={"type": "object"}) for name in pages[page]]
        return ListToolsResult(tools=tools, next_cursor=str(page + 1) if page + 1 < len(pages) else None)

    async def call_tool(ctx: Any, params: Any) -> CallToolResult:
        if params.name not in names:
            return CallToolResult(
                content=[TextContent(type="text", text=f"No such tool here: {params.name}!")], is_error=True
            )
        return CallToolResult(content=[TextContent(type="text", text=f"ran {params.name}")])

    return Server("lowlevel", on_list_tools=list_tools, on_call_tool=call_tool)


@pytest.mark.anyio
@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_a_server_with_its_own_unknown_answer_and_pagination(era: Era) -> None:
    async with raw(guarded(paginated_lowlevel_server(), json_response=False), era) as session:
        denied = await session.call("tools/call", {"name": "secret", "arguments": {}})
        first = await session.call("tools/list")
        second = await session.call("tools/list", {"cursor": result(first)["nextCursor"]})
    async with raw(bare(paginated_lowlevel_server(with_secret=False), json_response=False), era) as session:
        absent = await session.call("tools/call", {"name": "secret", "arguments": {}})
    assert comparable(denied) == comparable(absent)
    assert result(denied)["content"][0]["text"] == "No such tool here: secret!"
    assert [tool["name"] for tool in result(first)["tools"]] == ["alpha"]
    assert result(first)["nextCursor"] == "1"
    assert [tool["name"] for tool in result(second)["tools"]] == ["beta", "gamma"]
    assert "nextCursor" not in result(second)


# -- the real mcp client, both modes, every transport setting ----------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("json_response", "stateless"), CONFIGS)
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_real_client_end_to_end(json_response: bool, stateless: bool, mode: Literal["legacy", "auto"]) -> None:
    app = guarded(mcp_server(), json_response=json_response, stateless=stateless)
    async with serve(app) as url:
        for email, expect_secret in ((EVE, False), (BOSS, True)):
            http_client = httpx2.AsyncClient(headers={"X-Test-Email": email})
            async with Client(streamable_http_client(url + "/mcp", http_client=http_client), mode=mode) as client:
                names = {tool.name for tool in (await client.list_tools()).tools}
                assert ("secret" in names) is expect_secret
                called = await client.call_tool("secret", {})
                text = called.content[0].text  # type: ignore[union-attr]
                if expect_secret:
                    assert (called.is_error, text) == (False, "the launch codes")
                else:
                    assert (called.is_error, text) == (True, "Unknown tool: secret")
                assert (await client.call_tool("add", {"a": 2, "b": 3})).structured_content == {"result": 5}
                whoami = await client.call_tool("whoami", {})
                assert whoami.content[0].text == email  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_two_callers_interleaved_never_see_each_others_identity() -> None:
    async with serve(guarded(mcp_server(), json_response=False, stateless=False)) as url, httpx.AsyncClient() as client:
        sessions = {
            email: await Raw(client, url, era, email).start() for email, era in ((EVE, "legacy"), (BOSS, "modern"))
        }
        seen: list[tuple[str, str, set[str]]] = []

        async def work(email: str) -> None:
            session = sessions[email]
            who = await session.call("tools/call", {"name": "whoami", "arguments": {}})
            listed = await session.call("tools/list")
            seen.append((email, result(who)["content"][0]["text"], {tool["name"] for tool in result(listed)["tools"]}))

        async with anyio.create_task_group() as tasks:
            for _ in range(10):
                tasks.start_soon(work, EVE)
                tasks.start_soon(work, BOSS)
    assert len(seen) == 20
    for email, principal, names in seen:
        assert principal == email
        assert ("secret" in names) is (email == BOSS)


@pytest.mark.anyio
async def test_500_tools_listed_over_sse_are_filtered() -> None:
    mcp = mcp_server(tool_count=500)
    restricted = ToolPolicy({f"bulk{index}": Rule(emails=[BOSS]) for index in range(0, 500, 2)})
    app = IdentityFromTestHeaders(
        ToolPolicyMiddleware(mcp.streamable_http_app(json_response=False, stateless_http=False), restricted)
    )
    async with raw(app, "legacy") as session:
        listed = await session.call("tools/list")
    assert listed.headers["content-type"].startswith("text/event-stream")
    bulk = [tool["name"] for tool in result(listed)["tools"] if tool["name"].startswith("bulk")]
    assert bulk == [f"bulk{index}" for index in range(1, 500, 2)]


# -- prompts and resources -----------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_prompts_and_resources_are_hidden_and_refused_like_missing_ones(era: Era) -> None:
    calls = [
        ("prompts/get", {"name": "briefing"}),
        ("resources/read", {"uri": "file:///payroll"}),
        ("prompts/list", None),
        ("resources/list", None),
    ]
    async with raw(guarded(mcp_server(), json_response=False), era) as session:
        denied = [await session.call(method, params) for method, params in calls]
    async with raw(bare(mcp_server(with_restricted=False), json_response=False), era) as session:
        absent = [await session.call(method, params) for method, params in calls]
    for got, reference in zip(denied, absent, strict=True):
        assert comparable(got) == comparable(reference)
    assert "Unknown resource: file:///payroll" in denied[1].text
    async with raw(guarded(mcp_server()), era, BOSS) as session:
        assert "Top secret briefing" in (await session.call("prompts/get", {"name": "briefing"})).text
        assert (
            result(await session.call("resources/read", {"uri": "file:///payroll"}))["contents"][0]["text"]
            == "salaries"
        )


# -- no bypass: each input, what the bare app does with it, and what the guard does ----------------------------------


async def both(era: Era, send: Callable[[Raw], Any], *, email: str = EVE) -> tuple[httpx.Response, httpx.Response]:
    """The same request to the bare app and to the guarded one."""
    async with raw(bare(mcp_server()), era, email) as session:
        unguarded = await send(session)
    async with raw(guarded(mcp_server()), era, email) as session:
        guarded_response = await send(session)
    return unguarded, guarded_response


def refused(response: httpx.Response, status: int, code: int) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code
    assert "launch codes" not in response.text


def call_body(session: Raw, name: Any = "secret") -> dict[str, Any]:
    return session.message("tools/call", {"name": name, "arguments": {}})


@pytest.mark.anyio
async def test_bypass_batch() -> None:
    # The SDK refuses batches (400, -32602 validation error); the guard refuses them before it (400, -32600).
    unguarded, guarded_response = await both("legacy", lambda s: s.post([call_body(s)]))
    assert unguarded.status_code == 400
    assert unguarded.json()["error"]["code"] == -32602
    refused(guarded_response, 400, -32600)


@pytest.mark.anyio
async def test_bypass_duplicate_keys() -> None:
    # The SDK keeps the last copy and runs `secret`; the guard refuses the ambiguity.
    body = b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"add","name":"secret","arguments":{}}}'
    unguarded, guarded_response = await both("legacy", lambda s: s.post(content=body))
    assert "launch codes" in unguarded.text
    refused(guarded_response, 400, -32700)


@pytest.mark.anyio
@pytest.mark.parametrize("name", [5, ["secret"], None, {"name": "secret"}])
async def test_bypass_non_string_name(name: Any) -> None:
    # The SDK answers -32602 "Invalid request parameters" with 200; the guard refuses with 400 before it.
    unguarded, guarded_response = await both("legacy", lambda s: s.post(call_body(s, name)))
    assert unguarded.status_code == 200
    assert unguarded.json()["error"]["code"] == -32602
    refused(guarded_response, 400, -32602)


@pytest.mark.anyio
async def test_bypass_unicode_escapes_are_judged_after_decoding() -> None:
    # The SDK decodes "s\u0065cret" to "secret" and runs it; the guard sees the same name and denies it.
    body = b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"s\\u0065cret","arguments":{}}}'
    unguarded, guarded_response = await both("legacy", lambda s: s.post(content=body))
    assert "launch codes" in unguarded.text
    assert guarded_response.status_code == 200
    assert result(guarded_response) == {"content": [{"text": "Unknown tool: secret", "type": "text"}], "isError": True}


@pytest.mark.anyio
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "utf-8-sig"])
async def test_bypass_other_json_encodings(encoding: str) -> None:
    # The SDK's modern entry reads UTF-16/32 and BOMs (json.loads on bytes) and runs `secret`; the guard refuses.
    unguarded, guarded_response = await both(
        "modern",
        lambda s: s.post(
            content=json.dumps(call_body(s)).encode(encoding),
            headers={"Mcp-Method": "tools/call", "Mcp-Name": "secret"},
        ),
    )
    assert "launch codes" in unguarded.text
    refused(guarded_response, 400, -32700)


@pytest.mark.anyio
async def test_bypass_content_encoding() -> None:
    # The SDK ignores Content-Encoding and fails to parse gzip (400 parse error); a proxy might inflate it first.
    # The guard refuses any request Content-Encoding with 415.
    def send(session: Raw) -> Any:
        body = gzip.compress(json.dumps(call_body(session)).encode())
        return session.post(content=body, headers={"Content-Encoding": "gzip"})

    unguarded, guarded_response = await both("legacy", send)
    assert unguarded.status_code == 400
    assert unguarded.json()["error"]["code"] == -32700
    refused(guarded_response, 415, -32600)


@pytest.mark.anyio
@pytest.mark.parametrize(("charset", "status"), [("utf-8", 200), ('"UTF-8"', 200), ("latin-1", 415), ("utf-16", 415)])
async def test_bypass_a_charset_other_than_utf8(charset: str, status: int) -> None:
    # The SDK ignores the charset and reads UTF-8; a server honouring it would read other characters.
    # The guard accepts only UTF-8 (415 otherwise), so both read the same name.
    def send(session: Raw) -> Any:
        content_type = f"application/json; charset={charset}"
        return session.call("tools/call", {"name": "café", "arguments": {}}, **{"Content-Type": content_type})

    unguarded, guarded_response = await both("legacy", send)
    assert result(unguarded)["content"][0]["text"] == "espresso"
    if status == 415:
        refused(guarded_response, 415, -32600)
    else:
        assert result(guarded_response)["content"][0]["text"] == "Unknown tool: café"


@pytest.mark.anyio
@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_bypass_non_json_content_type_carrying_json(era: Era, caplog: pytest.LogCaptureFixture) -> None:
    # The SDK refuses any POST whose Content-Type is not application/json (400 "Invalid Content-Type header").
    # The guard judges the body anyway (it does not trust the label) and the app then answers exactly as it would.
    caplog.set_level(logging.INFO, logger="mcp_access_guard")

    def send(session: Raw) -> Any:
        return session.call("tools/call", {"name": "secret", "arguments": {}}, **{"Content-Type": "text/plain"})

    unguarded, guarded_response = await both(era, send)
    assert comparable(guarded_response) == comparable(unguarded)
    assert (guarded_response.status_code, guarded_response.text) == (400, "Invalid Content-Type header")
    assert any("decision=deny" in line and "tool=secret" in line for line in caplog.messages)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "method",
    [
        "TOOLS/CALL",
        "tools/call ",
        "Tools/Call",
        "tools/call\u0000",
        "\uff54\uff4f\uff4f\uff4c\uff53/\uff43\uff41\uff4c\uff4c",
        "tools//call",
    ],
)
async def test_bypass_methods_spelled_differently(method: str) -> None:
    # The SDK matches methods exactly and answers -32601 "Method not found"; a lenient server might fold them.
    # The guard refuses every spelling that folds to a guarded method.
    def send(session: Raw) -> Any:
        return session.post({**call_body(session), "method": method})

    unguarded, guarded_response = await both("legacy", send)
    assert unguarded.json()["error"]["code"] == -32601
    refused(guarded_response, 400, -32600)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"jsonrpc": "2.0", "id": 5, "method": 7}, 400, -32600),
        ({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": ["secret", {}]}, 400, -32602),
        ({"jsonrpc": "2.0", "id": 5, "method": "tools/call"}, 400, -32602),
        ("tools/call", 400, -32600),
    ],
)
async def test_bypass_malformed_envelopes(body: Any, status: int, code: int) -> None:
    # The SDK refuses each of these itself (a 4xx or a JSON-RPC error); the guard refuses them first, never a 500.
    unguarded, guarded_response = await both("legacy", lambda s: s.post(body))
    assert "launch codes" not in unguarded.text
    refused(guarded_response, status, code)


@pytest.mark.anyio
async def test_headers_that_disagree_with_the_body_are_refused_in_both_eras() -> None:
    # Modern era: the SDK itself rejects the mismatch (-32020). Legacy era: the SDK ignores the headers and runs
    # `secret`. The guard refuses both before the app sees them: the body decides, and it must say the same.
    def lying_name(session: Raw) -> Any:
        return session.post(call_body(session), {"Mcp-Method": "tools/call", "Mcp-Name": "add"})

    def lying_method(session: Raw) -> Any:
        return session.post(call_body(session), {"Mcp-Method": "tools/list"})

    for era in ("legacy", "modern"):
        for send in (lying_name, lying_method):
            unguarded, guarded_response = await both(era, send, email=EVE)  # type: ignore[arg-type]
            if era == "modern":
                assert unguarded.json()["error"]["code"] == -32020
            refused(guarded_response, 400, -32020)
    legacy_unguarded, _ = await both("legacy", lying_name)
    assert "launch codes" in legacy_unguarded.text


@pytest.mark.anyio
async def test_repeated_routing_headers_are_refused() -> None:
    async with serve(guarded(mcp_server())) as url, httpx.AsyncClient() as client:
        session = await Raw(client, url, "modern", EVE).start()
        headers = [*session.headers.items(), ("Mcp-Method", "tools/call"), ("Mcp-Name", "add"), ("Mcp-Name", "secret")]
        response = await client.post(session.url, content=json.dumps(call_body(session)).encode(), headers=headers)
    refused(response, 400, -32020)


@pytest.mark.anyio
async def test_base64_mcp_name_header_is_decoded_and_rewritten() -> None:
    # The modern client sends non-ASCII names base64-wrapped; the guard compares decoded and re-encodes the new name.
    async with raw(guarded(mcp_server()), "modern") as session:
        denied = await session.call("tools/call", {"name": "café", "arguments": {}})
        wrong = await session.call(
            "tools/call", {"name": "café", "arguments": {}}, **{"Mcp-Name": encode_header_value("cafe")}
        )
    assert result(denied)["content"][0]["text"] == "Unknown tool: café"
    refused(wrong, 400, -32020)


# -- bodies --------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_3_mib_body_passes_unchanged_and_a_5_mib_body_is_refused() -> None:
    async with raw(guarded(mcp_server()), "legacy") as session:
        large = await session.call("tools/call", {"name": "size", "arguments": {"text": "x" * (3 * 1024 * 1024)}})
        too_large = await session.call("tools/call", {"name": "size", "arguments": {"text": "x" * (5 * 1024 * 1024)}})
    assert result(large)["structuredContent"] == {"result": 3 * 1024 * 1024}
    refused(too_large, 413, -32600)


@pytest.mark.anyio
async def test_a_chunked_body_over_the_limit_is_refused_while_streaming() -> None:
    app = IdentityFromTestHeaders(
        ToolPolicyMiddleware(mcp_server().streamable_http_app(), policy(), max_body_bytes=1000)
    )

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"x" * 100

    async with serve(app) as url, httpx.AsyncClient() as client:
        response = await client.post(url + "/mcp", content=chunks(), headers={"Content-Type": "application/json"})
    refused(response, 413, -32600)


# -- what passes untouched -------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_get_and_delete_pass_untouched() -> None:
    async with raw(guarded(mcp_server(), json_response=False, stateless=False), "legacy") as session:
        async with session.client.stream("GET", session.url, headers=session.headers) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
        deleted = await session.client.delete(session.url, headers=session.headers)
        assert deleted.status_code == 200
        after = await session.call("tools/list")
    assert after.status_code == 404


@pytest.mark.anyio
async def test_lifespan_passes_and_websockets_are_refused() -> None:
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        sent.append({"type": "reached", "scope_type": scope["type"]})

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    middleware = ToolPolicyMiddleware(app, policy())
    await middleware({"type": "lifespan"}, receive, send)
    await middleware({"type": "websocket", "path": "/mcp", "headers": []}, receive, send)
    assert sent[0] == {"type": "reached", "scope_type": "lifespan"}
    assert sent[1]["type"] == "websocket.close"
    assert sent[1]["code"] == 1008
    assert len(sent) == 2


# -- audit -------------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_every_decision_is_logged_with_principal_tool_and_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mcp_access_guard")
    async with raw(guarded(mcp_server()), "modern") as session:
        await session.call("tools/call", {"name": "secret", "arguments": {}})
        await session.call("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}})
        await session.post([call_body(session)])
    records = [record for record in caplog.records if record.name == "mcp_access_guard"]
    decisions = [(r.decision, r.reason, r.principal, r.tool) for r in records]  # type: ignore[attr-defined]
    assert ("deny", "rule_not_matched", EVE, "secret") in decisions
    assert ("allow", "default_allow", EVE, "add") in decisions
    assert ("deny", "batch", EVE, None) in decisions
    assert all(record.levelno == logging.WARNING for record in records if record.decision == "deny")  # type: ignore[attr-defined]


# -- the decorator alone ---------------------------------------------------------------------------------------------


def decorated_server(restricted: ToolPolicy | None) -> MCPServer:
    """`restricted=None` is the same server without the restricted tools."""
    mcp = MCPServer("demo")

    @mcp.tool()
    def add(a: int, b: int) -> int:
        return a + b

    if restricted is not None:

        @mcp.tool()
        @restricted.restrict(emails=[BOSS])
        def secret(ctx: Context) -> int:
            """Sync, with Context injected."""
            return len(ctx.request_id or "") + 1

        @mcp.tool(name="vault")
        @restricted.restrict(name="vault", groups=["admins"])
        async def open_vault(code: str, ctx: Context) -> str:
            """Async, registered under another name."""
            return f"opened {code}"

    return mcp


@pytest.mark.anyio
@pytest.mark.parametrize("era", ["legacy", "modern"])
@pytest.mark.parametrize("json_response", [True, False])
async def test_restrict_without_the_middleware_answers_like_an_unknown_tool(era: Era, json_response: bool) -> None:
    restricted = ToolPolicy()
    calls = [("secret", {}), ("vault", {"code": "1234"})]
    async with raw(bare(decorated_server(restricted), json_response=json_response), era) as session:
        denied = [await session.call("tools/call", {"name": name, "arguments": args}) for name, args in calls]
    async with raw(bare(decorated_server(None), json_response=json_response), era) as session:
        absent = [await session.call("tools/call", {"name": name, "arguments": args}) for name, args in calls]
    for got, reference in zip(denied, absent, strict=True):
        assert comparable(got) == comparable(reference)
    async with raw(bare(decorated_server(ToolPolicy()), json_response=json_response), era, BOSS) as session:
        allowed = await session.call("tools/call", {"name": "secret", "arguments": {}})
    assert result(allowed)["isError"] is False
    assert result(allowed)["structuredContent"]["result"] >= 1


@pytest.mark.anyio
async def test_a_lower_case_post_is_inspected_too() -> None:
    # A server that folded method names would otherwise run an uninspected tools/call.
    received: list[bytes] = []

    async def folding_app(scope: Scope, receive: Receive, send: Send) -> None:
        received.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "secret"}}).encode()
    scope = {"type": "http", "method": "post", "path": "/mcp", "headers": [(b"content-type", b"application/json")]}
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        pass

    await ToolPolicyMiddleware(folding_app, policy())(scope, receive, send)
    (forwarded,) = received
    assert json.loads(forwarded)["params"]["name"].startswith("secret-denied-")


# -- answers the layer cannot read -------------------------------------------------------------------------------------


class AlwaysGzip:
    """Compresses every answer of the app, whatever the request accepts (as a misconfigured proxy or app might)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message = {}
        body = bytearray()

        async def collect(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    compressed = gzip.compress(bytes(body))
                    headers = [(k, v) for k, v in start["headers"] if k not in (b"content-length", b"content-encoding")]
                    headers += [(b"content-encoding", b"gzip"), (b"content-length", str(len(compressed)).encode())]
                    await send({**start, "headers": headers})
                    await send({"type": "http.response.body", "body": compressed})

        await self.app(scope, receive, collect)


@pytest.mark.anyio
async def test_an_app_that_compresses_is_asked_for_answers_it_does_not_compress() -> None:
    from starlette.middleware.gzip import GZipMiddleware

    def compressing() -> ASGIApp:
        return GZipMiddleware(mcp_server(tool_count=20).streamable_http_app(), minimum_size=1)

    gzip_accepted = {"Accept-Encoding": "gzip"}
    async with raw(IdentityFromTestHeaders(compressing()), "modern") as session:
        unguarded = await session.call("tools/list", None, **gzip_accepted)
    # Read unseen, the listing would reach the caller unfiltered, under the guard's id.
    assert unguarded.headers["content-encoding"] == "gzip"
    async with raw(IdentityFromTestHeaders(ToolPolicyMiddleware(compressing(), policy())), "modern") as session:
        listed = await session.call("tools/list", None, **gzip_accepted)
        denied = await session.call("tools/call", {"name": "secret", "arguments": {}}, **gzip_accepted)
    assert "content-encoding" not in listed.headers
    assert "secret" not in {tool["name"] for tool in result(listed)["tools"]}
    assert messages(listed)[-1]["id"] == session.next_id - 1
    assert result(denied)["content"][0]["text"] == "Unknown tool: secret"


@pytest.mark.anyio
@pytest.mark.parametrize("json_response", [True, False])
async def test_an_answer_compressed_anyway_is_refused_where_it_must_be_rewritten(json_response: bool) -> None:
    def guarded_app() -> ASGIApp:
        app = AlwaysGzip(mcp_server().streamable_http_app(json_response=json_response))
        return IdentityFromTestHeaders(ToolPolicyMiddleware(app, policy()))

    async with raw(guarded_app(), "modern") as session:
        listed = await session.call("tools/list")
        denied = await session.call("tools/call", {"name": "secret", "arguments": {}})
        # A name without a rule needs the app's listing, which cannot be read either: refused like an unknown one.
        added = await session.call("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}})
    for response in (listed, denied, added):
        refused(response, 502, -32603)
        assert b"mcp-access-guard" not in response.content
    async with raw(guarded_app(), "modern", BOSS) as session:
        allowed = await session.call("tools/call", {"name": "secret", "arguments": {}})
    # An answer the guard has nothing to change in is not its to judge: it passes as the app sent it.
    assert allowed.headers["content-encoding"] == "gzip"
    assert result(allowed)["content"][0]["text"] == "the launch codes"


@pytest.mark.anyio
async def test_a_kind_of_connection_the_layer_does_not_know_never_reaches_the_app() -> None:
    reached: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope["type"])

    async def receive() -> Message:
        return {"type": "webtransport.connect"}

    async def send(message: Message) -> None:
        reached.append(message["type"])

    await ToolPolicyMiddleware(app, policy())({"type": "webtransport", "path": "/mcp", "headers": []}, receive, send)
    assert reached == []
