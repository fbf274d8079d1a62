"""The older HTTP+SSE transport (`GET /sse` + `POST /messages/?session_id=…`, `MCPServer.sse_app()`) behind the whole
stack, over real uvicorn: every layer on the stream and on every POST, each session bound to the caller who opened
it, and the tool policy on the stream (refusals answered as unknown names byte for byte, listings filtered for the
session's principal, every bypass the streamable-HTTP tests try). With the `mcp` SDK's own SSE client, and raw."""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp_types import TextContent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from mcp_access_guard import ConfigError, GuardConfig
from mcp_access_guard.middleware.access import AccessJWTMiddleware
from mcp_access_guard.middleware.sse import SSESessionMiddleware
from mcp_access_guard.middleware.tools import ToolPolicyMiddleware
from mcp_access_guard.settings import PathSettings
from mcp_access_guard.stack import guard
from mcp_access_guard.testing import LocalAccess, LocalAccessSaaS, free_port, serve
from oauth_harness import oauth_config, register, tokens_for
from sse_support import (
    ALICE,
    ASSERTION,
    BOB,
    POLICY,
    SECRET_HEADER,
    SSE_PATHS,
    Session,
    caller,
    comparable,
    session,
    site,
    site_config,
    sse_server,
    user_token,
)
from support import INITIALIZE_PARAMS

pytestmark = pytest.mark.anyio


def text_of(result: Any) -> str:
    content = result.content[0]
    assert isinstance(content, TextContent)
    return content.text


# -- the mcp SDK's SSE client, through the whole stack -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_the_sdk_sse_client_as_alice_and_bob(local_access: LocalAccess, mode: Any) -> None:
    runs: list[str] = []
    seen: dict[str, tuple[list[str], str, str, str]] = {}
    async with site(local_access, sse_server(runs).sse_app()) as url:
        for email in (ALICE, BOB):
            transport = sse_client(f"{url}/sse", headers=caller(local_access, email))
            async with Client(transport, mode=mode) as client:
                names = [tool.name for tool in (await client.list_tools()).tools]
                image = text_of(await client.call_tool("generate_image", {"prompt": "a cat"}))
                made_up = text_of(await client.call_tool("no_such_tool", {"prompt": "a cat"}))
                who = text_of(await client.call_tool("whoami", {}))
            seen[email] = (names, image, made_up, who)
    assert seen[ALICE] == (["add", "whoami", "generate_image"], "image of a cat", "Unknown tool: no_such_tool", ALICE)
    assert seen[BOB] == (["add", "whoami"], "Unknown tool: generate_image", "Unknown tool: no_such_tool", BOB)
    assert runs == [ALICE]


async def test_bob_posting_into_alices_live_session_gets_the_unknown_session_answer(local_access: LocalAccess) -> None:
    runs: list[str] = []
    opened: list[str] = []
    async with site(local_access, sse_server(runs).sse_app()) as url:
        transport = sse_client(f"{url}/sse", headers=caller(local_access, ALICE), on_session_created=opened.append)
        async with Client(transport, mode="legacy") as alice, httpx.AsyncClient() as http:
            (alices,) = opened
            call = {"jsonrpc": "2.0", "id": 66, "method": "tools/call", "params": {"name": "generate_image"}}
            as_bob = {**caller(local_access, BOB), "Content-Type": "application/json"}

            async def post(session_id: str) -> httpx.Response:
                return await http.post(f"{url}/messages/?session_id={session_id}", json=call, headers=as_bob)

            into_alices = await post(alices)
            unknown = await post(uuid.uuid4().hex)
            # Alice's session goes on as before.
            assert text_of(await alice.call_tool("whoami", {})) == ALICE
    assert comparable(into_alices) == comparable(unknown)
    assert (into_alices.status_code, into_alices.text) == (404, "Could not find session")
    assert runs == []


def spellings(session_id: str) -> list[str]:
    """Every way to write one session id that the SDK reads as that session."""
    as_uuid = uuid.UUID(hex=session_id)
    return [session_id, session_id.upper(), str(as_uuid), "{" + str(as_uuid) + "}", f"urn:uuid:{as_uuid}"]


QUERIES: list[Callable[[str], str]] = [
    lambda value: f"session_id={value}",
    lambda value: f"session%5Fid={value}",
    lambda value: f"session_id={value}&session_id={value}",
    lambda value: f"session_id={value}&extra=1",
]


@pytest.mark.parametrize("query", QUERIES)
async def test_no_spelling_of_alices_session_lets_bob_in_and_alice_may_use_any(
    local_access: LocalAccess, query: Callable[[str], str]
) -> None:
    async with site(local_access) as url, session(url, caller(local_access, ALICE)) as alice:
        as_bob = caller(local_access, BOB)
        for spelling in spellings(alice.session_id):
            message = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            bobs = await alice.post(message, query=query(spelling), as_headers=as_bob)
            unknown = await alice.post(message, query=query(uuid.uuid4().hex), as_headers=as_bob)
            assert comparable(bobs) == comparable(unknown), spelling
            assert bobs.status_code == 404
            alices = await alice.post(message, query=query(spelling))
            assert alices.status_code == 202, spelling


@pytest.mark.parametrize(
    "query",
    [
        lambda alices, other: f"session_id={other}&session_id={alices}",  # the SDK reads the last one
        lambda alices, other: f"session_id={alices}&session_id={other}",
        lambda alices, other: f"sessionId={alices}",  # another server's spelling: not one the SDK reads
    ],
)
async def test_two_sessions_in_one_query_are_no_session(local_access: LocalAccess, query: Any) -> None:
    async with site(local_access) as url, session(url, caller(local_access, ALICE)) as alice:
        other = uuid.uuid4().hex
        message = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        for as_headers in (None, caller(local_access, BOB)):
            mixed = await alice.post(message, query=query(alice.session_id, other), as_headers=as_headers)
            unknown = await alice.post(message, query=query(uuid.uuid4().hex, other), as_headers=as_headers)
            assert comparable(mixed) == comparable(unknown)
            assert mixed.status_code in (400, 404)


class WithoutSDKOwnerCheck:
    """Hides the caller from the SDK (no `scope["user"]`), as a server that does not bind sessions would be."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app({key: value for key, value in scope.items() if key != "user"}, receive, send)


@pytest.mark.parametrize("bound", [False, True], ids=["server alone", "with the guard's binding"])
async def test_the_guard_binds_sessions_whatever_the_server_checks(local_access: LocalAccess, bound: bool) -> None:
    runs: list[str] = []
    app: ASGIApp = WithoutSDKOwnerCheck(sse_server(runs).sse_app())
    if bound:
        app = SSESessionMiddleware(app)
    async with (
        serve(AccessJWTMiddleware(app, config=local_access.config())) as url,
        session(url, {ASSERTION: local_access.user_token(ALICE)}) as alice,
    ):
        call = {"jsonrpc": "2.0", "id": 66, "method": "tools/call", "params": {"name": "generate_image"}}
        bobs = await alice.post(call, as_headers={ASSERTION: local_access.user_token(BOB)})
        if bound:
            assert (bobs.status_code, bobs.text) == (404, "Could not find session")
        else:
            # The attack: bob's call runs in alice's session, as bob, and its answer goes to alice's stream.
            assert bobs.status_code == 202
            assert (await alice.wait_for(66)).message["result"]["content"][0]["text"] == "image of "
            assert runs == [BOB]
        whoami = await alice.request(7, "tools/call", {"name": "whoami"})
    assert whoami.message["result"]["content"][0]["text"] == ALICE


async def test_the_sdk_itself_refuses_another_principal_when_the_caller_is_bound(local_access: LocalAccess) -> None:
    # What mcp 2.3 does on its own: the session remembers the (client_id, issuer, subject) of the caller bound in
    # scope["user"] when its stream opened, and answers any other as if the session did not exist.
    async with (
        serve(AccessJWTMiddleware(sse_server().sse_app(), config=local_access.config())) as url,
        session(url, {ASSERTION: local_access.user_token(ALICE)}) as alice,
    ):
        message = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        bobs = await alice.post(message, as_headers={ASSERTION: local_access.user_token(BOB)})
        unknown = await alice.post(message, query=f"session_id={uuid.uuid4().hex}")
    assert comparable(bobs) == comparable(unknown)
    assert bobs.status_code == 404


async def test_a_stream_naming_no_session_the_guard_can_read_is_ended_before_its_endpoint(
    local_access: LocalAccess,
) -> None:
    async def events() -> Any:
        yield b"event: endpoint\r\ndata: /messages/?sid=0123\r\n\r\n"
        yield b"event: message\r\ndata: {}\r\n\r\n"

    async def stream(request: Request) -> StreamingResponse:
        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/sse", stream)])
    async with site(local_access, app) as url, httpx.AsyncClient() as http:
        response = await http.get(f"{url}/sse", headers=caller(local_access, ALICE))
    assert response.status_code == 200
    assert response.content == b""


# -- the tool policy on the stream ---------------------------------------------------------------------------------

REFUSED = [
    pytest.param("tools/call", {"name": "generate_image", "arguments": {"prompt": "x"}}, id="tools/call"),
    pytest.param("prompts/get", {"name": "briefing"}, id="prompts/get"),
    pytest.param("resources/read", {"uri": "file:///payroll"}, id="resources/read"),
    pytest.param("tools/list", None, id="tools/list"),
    pytest.param("prompts/list", None, id="prompts/list"),
    pytest.param("resources/list", None, id="resources/list"),
]


@pytest.mark.parametrize(("method", "params"), REFUSED)
async def test_bob_gets_on_the_stream_byte_for_byte_what_a_server_without_them_sends(
    local_access: LocalAccess, method: str, params: dict[str, Any] | None
) -> None:
    answers = []
    for app, tools in ((sse_server().sse_app(), POLICY), (sse_server(restricted=False).sse_app(), None)):
        async with site(local_access, app, tools=tools) as url, session(url, caller(local_access, BOB)) as bob:
            message = {"jsonrpc": "2.0", "id": 5, "method": method, **({"params": params} if params else {})}
            accepted = await bob.post(message)
            answers.append((comparable(accepted), (await bob.wait_for(5)).raw))
    guarded, reference = answers
    assert guarded == reference
    assert b"-denied-" not in guarded[1]
    assert b"mcp-access-guard" not in guarded[1]


async def test_alice_sees_and_uses_everything_on_her_stream(local_access: LocalAccess) -> None:
    async with site(local_access) as url, session(url, caller(local_access, ALICE)) as alice:
        tools = await alice.request(1, "tools/list")
        image = await alice.request(2, "tools/call", {"name": "generate_image", "arguments": {"prompt": "x"}})
        prompt = await alice.request(3, "prompts/get", {"name": "briefing"})
        resource = await alice.request(4, "resources/read", {"uri": "file:///payroll"})
    assert [tool["name"] for tool in tools.message["result"]["tools"]] == ["add", "whoami", "generate_image"]
    assert image.message["result"]["content"][0]["text"] == "image of x"
    assert "Top secret briefing" in prompt.data
    assert resource.message["result"]["contents"][0]["text"] == "salaries"


async def test_a_name_without_a_rule_is_checked_against_the_listing_asked_on_the_stream(
    local_access: LocalAccess,
) -> None:
    # `add` has no rule of its own: before letting it through, the guard asks the server for its listing in bob's
    # session, whose answer comes on bob's stream. The guard takes it there, and bob never sees it.
    async with site(local_access) as url, session(url, caller(local_access, BOB)) as bob:
        added = await bob.request(1, "tools/call", {"name": "add", "arguments": {"a": 2, "b": 3}})
        made_up = await bob.request(2, "tools/call", {"name": "ADD", "arguments": {"a": 2, "b": 3}})
        ids = [frame.message.get("id") for frame in bob.frames if frame.event == "message"]
    assert added.message["result"]["structuredContent"] == {"result": 5}
    assert made_up.message["result"]["content"][0]["text"] == "Unknown tool: ADD"
    assert ids == [0, 1, 2]


def message_endpoint_alone_guarded(app: Starlette) -> Starlette:
    """`app` (an `sse_app()`) with the tool policy around its message endpoint only, not its stream."""
    (messages,) = [route for route in app.routes if isinstance(route, Mount)]
    messages.app = ToolPolicyMiddleware(messages.app, POLICY)
    return app


@pytest.mark.parametrize("whole_app", [False, True], ids=["message endpoint alone", "the whole app"])
async def test_a_policy_that_cannot_see_the_stream_lets_no_message_through(
    local_access: LocalAccess, whole_app: bool
) -> None:
    # The SDK's SseServerTransport docstring mounts the message endpoint on its own: a policy wrapped around it alone
    # would judge the POSTs but leave their answers, on a stream it never sees, unfiltered and marked.
    runs: list[str] = []
    app: ASGIApp = sse_server(runs).sse_app()
    app = ToolPolicyMiddleware(app, POLICY) if whole_app else message_endpoint_alone_guarded(app)
    async with (
        serve(AccessJWTMiddleware(app, config=local_access.config())) as url,
        session(url, {ASSERTION: user_token(local_access, BOB)}, initialize=False) as bob,
    ):
        opened = await bob.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INITIALIZE_PARAMS})
        if whole_app:
            assert opened.status_code == 202
            await bob.wait_for(0)
            listed = await bob.request(1, "tools/list")
            assert [tool["name"] for tool in listed.message["result"]["tools"]] == ["add", "whoami"]
        else:
            assert (opened.status_code, opened.text) == (404, "Could not find session")
            listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
            assert (await bob.post(listing)).status_code == 404
            assert [frame.event for frame in bob.frames] == ["endpoint"]
    assert runs == []


# -- every bypass the streamable-HTTP tests try, on this transport ---------------------------------------------------


def call(name: Any = "generate_image", request_id: Any = 5) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": name, "arguments": {}}}


def raw_call(name_json: str) -> bytes:
    return b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":%s,"arguments":{}}}' % name_json.encode()


async def bobs_attempt(local_access: LocalAccess, attempt: Callable[[Session], Any], *, guarded: bool) -> Any:
    """Bob's attempt on a site with the policy (or, for the attack's proof, without it): the POST's answer, the
    answer on his stream if one came, and who ran `generate_image`."""
    runs: list[str] = []
    async with (
        site(local_access, sse_server(runs).sse_app(), tools=POLICY if guarded else None) as url,
        session(url, caller(local_access, BOB)) as bob,
    ):
        response = await attempt(bob)
        answer = await bob.wait_for(5) if response.status_code == 202 else None
        await bob.request(6, "tools/call", {"name": "whoami"})  # bob's session still works
    return response, answer, runs


def refused(response: httpx.Response, status: int, code: int) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code


async def test_bypass_batch(local_access: LocalAccess) -> None:
    response, _, runs = await bobs_attempt(local_access, lambda bob: bob.post([call()]), guarded=True)
    refused(response, 400, -32600)
    assert runs == []


async def test_bypass_duplicate_keys(local_access: LocalAccess) -> None:
    body = b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"add","name":"generate_image"}}'
    _, _, unguarded_runs = await bobs_attempt(local_access, lambda bob: bob.post(content=body), guarded=False)
    assert unguarded_runs == [BOB]  # the SDK keeps the last copy
    response, _, runs = await bobs_attempt(local_access, lambda bob: bob.post(content=body), guarded=True)
    refused(response, 400, -32700)
    assert runs == []


@pytest.mark.parametrize("name", ['"generate\\u005fimage"', '"\\u0067enerate_image"'])
async def test_bypass_unicode_escapes_are_judged_after_decoding(local_access: LocalAccess, name: str) -> None:
    def attempt(bob: Session) -> Any:
        return bob.post(content=raw_call(name))

    _, _, unguarded_runs = await bobs_attempt(local_access, attempt, guarded=False)
    assert unguarded_runs == [BOB]
    response, answer, runs = await bobs_attempt(local_access, attempt, guarded=True)
    assert response.status_code == 202
    unknown = {"content": [{"type": "text", "text": "Unknown tool: generate_image"}], "isError": True}
    assert answer.message["result"] == unknown
    assert runs == []


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "utf-8-sig"])
async def test_bypass_other_json_encodings(local_access: LocalAccess, encoding: str) -> None:
    body = json.dumps(call()).encode(encoding)
    response, _, runs = await bobs_attempt(local_access, lambda bob: bob.post(content=body), guarded=True)
    refused(response, 400, -32700)
    assert runs == []


async def test_bypass_content_encoding(local_access: LocalAccess) -> None:
    body = gzip.compress(json.dumps(call()).encode())
    attempt = lambda bob: bob.post(content=body, headers={"Content-Encoding": "gzip"})  # noqa: E731
    response, _, runs = await bobs_attempt(local_access, attempt, guarded=True)
    refused(response, 415, -32600)
    assert runs == []


@pytest.mark.parametrize("charset", ["latin-1", "utf-16"])
async def test_bypass_a_charset_other_than_utf8(local_access: LocalAccess, charset: str) -> None:
    headers = {"Content-Type": f"application/json; charset={charset}"}
    response, _, runs = await bobs_attempt(local_access, lambda bob: bob.post(call(), headers=headers), guarded=True)
    refused(response, 415, -32600)
    assert runs == []


@pytest.mark.parametrize(
    "method", ["TOOLS/CALL", "tools/call ", "Tools/Call", "tools/call\u0000", "\uff54\uff4f\uff4f\uff4c\uff53/call"]
)
async def test_bypass_methods_spelled_differently(local_access: LocalAccess, method: str) -> None:
    attempt = lambda bob: bob.post({**call(), "method": method})  # noqa: E731
    response, _, runs = await bobs_attempt(local_access, attempt, guarded=True)
    refused(response, 400, -32600)
    assert runs == []


@pytest.mark.parametrize(
    ("message", "status", "code"),
    [
        (call(name=5), 400, -32602),
        (call(name=["generate_image"]), 400, -32602),
        ({"jsonrpc": "2.0", "id": 5, "method": "tools/call"}, 400, -32602),
        (call(request_id=5.0), 400, -32600),
        (call(request_id="mcp-access-guard:x00000000000000000000000000000000:35:"), 400, -32600),
    ],
    ids=["number-name", "list-name", "no-params", "float-id", "reserved-id"],
)
async def test_bypass_malformed_envelopes_and_ids(
    local_access: LocalAccess, message: dict[str, Any], status: int, code: int
) -> None:
    response, _, runs = await bobs_attempt(local_access, lambda bob: bob.post(message), guarded=True)
    refused(response, status, code)
    assert runs == []


async def test_bypass_routing_headers_that_disagree_with_the_body(local_access: LocalAccess) -> None:
    # This transport's SDK ignores Mcp-Method and Mcp-Name; a proxy in front might route on them. They must agree.
    headers = {"Mcp-Method": "tools/call", "Mcp-Name": "add"}
    response, _, runs = await bobs_attempt(local_access, lambda bob: bob.post(call(), headers=headers), guarded=True)
    refused(response, 400, -32020)
    assert runs == []


# -- every layer, on the stream and on the messages ------------------------------------------------------------------


async def test_every_layer_guards_the_stream_and_every_post(local_access: LocalAccess) -> None:
    async with site(local_access) as url, session(url, caller(local_access, ALICE)) as alice:
        endpoint = alice.endpoint
        message = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
        good = caller(local_access, ALICE)

        async def both(headers: dict[str, str], path: str = "") -> tuple[int, int]:
            """The status of a GET of the stream and of a POST to alice's session, with these headers."""
            async with httpx.AsyncClient(timeout=5) as http:
                async with http.stream("GET", url + (path or "/sse"), headers=headers) as stream:
                    streamed = stream.status_code
                json_headers = {**headers, "Content-Type": "application/json"}
                posted = await http.post(url + (path or endpoint), content=message, headers=json_headers)
            return streamed, posted.status_code

        assert await both(good) == (200, 202)
        without_secret = {key: value for key, value in good.items() if key != SECRET_HEADER}
        assert await both(without_secret) == (403, 403)
        assert await both({**good, SECRET_HEADER: "not-the-tunnel-secret-0"}) == (403, 403)
        assert await both({SECRET_HEADER: good[SECRET_HEADER]}) == (401, 401)
        assert await both({**good, ASSERTION: "a.b.c"}) == (403, 403)
        expired = user_token(local_access, ALICE, expires_in=-3600)
        assert await both({**good, ASSERTION: expired}) == (403, 403)
        assert await both({**good, "Origin": "https://evil.example"}) == (403, 403)
        for path in ("/messages", "/messages/x", "/sse/", "/SSE", "/mcp", "/messages//", "/sse;x"):
            assert await both(good, path) == (404, 404), path


async def test_the_oauth_bearer_guards_the_stream_and_every_post(local_access_saas: LocalAccessSaaS) -> None:
    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    config = GuardConfig(oauth=oauth_config(local_access_saas, public_url), paths=PathSettings(SSE_PATHS), tools=POLICY)
    runs: list[str] = []
    async with serve(guard(sse_server(runs).sse_app(), config), port=port) as url:
        seen = {}
        for email in (ALICE, BOB):
            local_access_saas.login_as(email)
            tokens = await tokens_for(url, await register(url))
            bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
            async with session(url, bearer) as caller_session:
                listed = await caller_session.request(1, "tools/list")
                image = await caller_session.request(2, "tools/call", {"name": "generate_image", "arguments": {}})
                message = {"jsonrpc": "2.0", "method": "notifications/initialized"}
                anonymous = await caller_session.post(message, as_headers={})
                forged = await caller_session.post(message, as_headers={"Authorization": "Bearer mag_at_forged"})
            seen[email] = (
                [tool["name"] for tool in listed.message["result"]["tools"]],
                image.message["result"]["content"][0]["text"],
            )
            assert anonymous.status_code == forged.status_code == 401
            assert "resource_metadata=" in anonymous.headers["www-authenticate"]
        async with httpx.AsyncClient() as http:
            refused_stream = await http.get(f"{url}/sse")
    assert refused_stream.status_code == 401
    assert seen == {
        ALICE: (["add", "whoami", "generate_image"], "image of "),
        BOB: (["add", "whoami"], "Unknown tool: generate_image"),
    }
    assert runs == [ALICE]


# -- what cannot be inspected is refused at start ---------------------------------------------------------------------


async def echo_socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(await websocket.receive_text())


@pytest.mark.parametrize(
    "build",
    [
        lambda: Starlette(routes=[Mount("/", sse_server().sse_app()), WebSocketRoute("/ws", echo_socket)]),
        lambda: Starlette(routes=[Mount("/api", Starlette(routes=[WebSocketRoute("/ws", echo_socket)]))]),
    ],
    ids=["beside the SSE app", "in a mounted app"],
)
def test_guard_refuses_a_tool_policy_in_front_of_a_websocket_route(local_access: LocalAccess, build: Any) -> None:
    with pytest.raises(ConfigError, match=r"WebSocket transport.*'/(api/)?ws'"):
        guard(build(), site_config(local_access))
    guard(build(), site_config(local_access, tools=None))  # no policy: nothing to inspect


def test_guard_refuses_a_fastapi_websocket_route_too(local_access: LocalAccess) -> None:
    from fastapi import FastAPI

    api = FastAPI()
    api.mount("/mcp-sse", sse_server().sse_app())

    @api.websocket("/live")
    async def live(websocket: WebSocket) -> None:
        await echo_socket(websocket)

    with pytest.raises(ConfigError, match="'/live'"):
        guard(api, site_config(local_access))


def test_guard_serves_the_sse_and_streamable_apps_with_a_policy(local_access: LocalAccess) -> None:
    server = sse_server()
    for app in (server.sse_app(), server.streamable_http_app()):
        assert guard(app, site_config(local_access)) is not None


# -- the example ------------------------------------------------------------------------------------------------------


async def test_the_sse_example_under_uvicorn(local_access: LocalAccess, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_examples_and_demo import load_example

    monkeypatch.setenv("TEAM_DOMAIN", local_access.url)
    monkeypatch.setenv("POLICY_AUD", local_access.audience)
    monkeypatch.setenv("ALLOWED_EMAILS", ALICE)
    monkeypatch.delenv("GUARD_PATHS", raising=False)
    example = load_example("sse_server")
    seen = {}
    async with serve(example.app) as url, httpx.AsyncClient() as http:
        for name, token in (
            ("robot", local_access.service_token("robot.access")),
            (ALICE, user_token(local_access, ALICE)),
            (BOB, user_token(local_access, BOB)),
        ):
            async with Client(sse_client(f"{url}/sse", headers={ASSERTION: token}), mode="legacy") as client:
                names = [tool.name for tool in (await client.list_tools()).tools]
                image = text_of(await client.call_tool("generate_image", {"prompt": "a cat"}))
                who = text_of(await client.call_tool("whoami", {}))
            seen[name] = (names, image, who)
        health = await http.get(f"{url}/health")
        streamable = await http.post(f"{url}/mcp", json={})
    assert seen == {
        "robot": (["add", "whoami"], "Unknown tool: generate_image", "service token robot.access"),
        ALICE: (["add", "generate_image", "whoami"], "an image of a cat", f"user {ALICE}"),
        BOB: (["add", "whoami"], "Unknown tool: generate_image", f"user {BOB}"),
    }
    assert health.json() == {"status": "ok"}
    assert streamable.status_code == 404


async def test_an_oauth_client_discovers_logs_in_and_uses_the_sse_transport(local_access_saas: LocalAccessSaaS) -> None:
    # OAuth mode over HTTP+SSE: the protected resource is the stream's URL (`resource_path="/sse"`), which is what
    # an OAuth client connecting to `/sse` asks for and checks; the same token then goes with every POST.
    from mcp.client.auth import OAuthClientProvider
    from mcp.shared.auth import OAuthClientMetadata

    from test_oauth_sdk import MemoryTokens, ScriptedPerson

    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    oauth = oauth_config(local_access_saas, public_url, resource_path="/sse")
    config = GuardConfig(oauth=oauth, paths=PathSettings(SSE_PATHS), tools=POLICY)
    seen = {}
    async with serve(guard(sse_server().sse_app(), config), port=port) as url:
        for email in (ALICE, BOB):
            local_access_saas.login_as(email)
            person = ScriptedPerson(f"http://127.0.0.1:{free_port()}/callback")
            provider = OAuthClientProvider(
                server_url=f"{url}/sse",
                client_metadata=OAuthClientMetadata(redirect_uris=[person.redirect_uri], client_name="SSE client"),
                storage=MemoryTokens(),
                redirect_handler=person.redirect,
                callback_handler=person.callback,
            )
            async with Client(sse_client(f"{url}/sse", auth=provider), mode="legacy") as client:
                names = [tool.name for tool in (await client.list_tools()).tools]
                image = text_of(await client.call_tool("generate_image", {"prompt": "a cat"}))
            seen[email] = (names, image, person.consent_pages)
    assert seen == {
        ALICE: (["add", "whoami", "generate_image"], "image of a cat", 1),
        BOB: (["add", "whoami"], "Unknown tool: generate_image", 1),
    }
