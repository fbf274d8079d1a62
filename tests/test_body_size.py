"""The request-size layer: outermost in guard(), for every request that carries a body, in both modes and on every
route (the OAuth endpoints and a path that would be 404'd included), over real uvicorn and raw sockets; and the
layer alone, for what uvicorn's own parser settles before any app sees it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import websockets
from starlette.types import Message, Receive, Scope, Send

from mcp_access_guard import GuardConfig, Rule, ToolPolicy, guard
from mcp_access_guard.config import ConfigError
from mcp_access_guard.middleware.body_size import BodySizeLimitMiddleware
from mcp_access_guard.middleware.tools import ToolPolicyMiddleware
from mcp_access_guard.testing import LocalAccess, LocalAccessSaaS, free_port, serve
from oauth_harness import mcp_app, oauth_config, register, tokens_for
from support import INITIALIZE, MCP_HEADERS, RecordingApp

pytestmark = pytest.mark.anyio

LIMIT = 2048
ASSERTION = "Cf-Access-Jwt-Assertion"
JWT_ROUTES = ("/mcp", "/health", "/admin")
OAUTH_ROUTES = ("/mcp", "/token", "/register", "/revoke", "/consent", "/admin")


@asynccontextmanager
async def jwt_site(local_access: LocalAccess, **settings: Any) -> AsyncIterator[str]:
    config = GuardConfig(access=local_access.config(), max_body_bytes=LIMIT, **settings)
    async with serve(guard(mcp_app(), config)) as url:
        yield url


@asynccontextmanager
async def oauth_site(saas: LocalAccessSaaS) -> AsyncIterator[str]:
    port = free_port()
    config = GuardConfig(oauth=oauth_config(saas, f"http://127.0.0.1:{port}"), max_body_bytes=LIMIT)
    async with serve(guard(mcp_app(), config), port=port) as url:
        yield url


@asynccontextmanager
async def site(mode: str, local_access: LocalAccess, saas: LocalAccessSaaS) -> AsyncIterator[str]:
    context = jwt_site(local_access) if mode == "jwt" else oauth_site(saas)
    async with context as url:
        yield url


MODE_ROUTES = [("jwt", route) for route in JWT_ROUTES] + [("oauth", route) for route in OAUTH_ROUTES]


async def exchange(url: str, data: bytes, *, read_timeout: float = 10) -> bytes:
    """Write `data` on a fresh connection, then read until the server closes it; the body is never finished by us
    unless `data` finishes it, so an answer proves the server did not wait for the rest."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=read_timeout)
    finally:
        writer.close()
        await writer.wait_closed()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> bytes:
    return response.partition(b"\r\n\r\n")[2]


def head(method: str, route: str, *lines: str) -> bytes:
    text = f"{method} {route} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(line + "\r\n" for line in lines) + "\r\n"
    return text.encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


# -- a declared length over the limit: refused before the body, the credential or the path is looked at ----------


@pytest.mark.parametrize(("mode", "route"), MODE_ROUTES)
async def test_a_declared_length_over_the_limit_is_refused_before_anything_reads_it(
    local_access: LocalAccess, local_access_saas: LocalAccessSaaS, mode: str, route: str
) -> None:
    async with site(mode, local_access, local_access_saas) as url:
        # Only the head is sent, and no credential: the answer comes without the body, and is not a 401/403/404.
        response = await exchange(url, head("POST", route, f"Content-Length: {LIMIT + 1}", "Expect: 100-continue"))
        assert status_of(response) == 413
        assert b"100 Continue" not in response
        assert json.loads(body_of(response)) == {"error": "body_too_large"}
        assert b"connection: close" in response.lower()
        # Any method that declares a body is held to the same limit.
        for method in ("PUT", "PATCH", "DELETE", "GET"):
            assert status_of(await exchange(url, head(method, route, f"Content-Length: {10**15}"))) == 413


# What each route answers to a credentialed POST whose body it does not read: only the routes that read a body cut it.
UNREAD = {"/health": 405, "/admin": 404}
FORMS = ("/token", "/revoke", "/consent")


async def bearer_for(url: str, saas: LocalAccessSaaS) -> str:
    saas.login_as("alice@example.com")
    answer = await tokens_for(url, await register(url))
    return str(answer["access_token"])


@pytest.mark.parametrize(("mode", "route"), MODE_ROUTES)
async def test_a_chunked_body_is_cut_off_where_it_crosses_the_limit(
    local_access: LocalAccess,
    local_access_saas: LocalAccessSaaS,
    mode: str,
    route: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with site(mode, local_access, local_access_saas) as url:
        if mode == "jwt":
            credential = f"{ASSERTION}: {local_access.user_token()}"
        else:
            credential = f"Authorization: Bearer {await bearer_for(url, local_access_saas)}"
        content_type = "application/x-www-form-urlencoded" if route in FORMS else "application/json"
        request = head("POST", route, "Transfer-Encoding: chunked", f"Content-Type: {content_type}", credential)
        # More than the limit in chunks, and no last chunk: the body never ends, so only the cut, or an answer that
        # needs no body, can end the exchange.
        response = await exchange(url, request + chunk(b" " * 1500) + chunk(b" " * 1500))
        assert status_of(response) == UNREAD.get(route, 413)
        if route not in UNREAD:
            assert json.loads(body_of(response)) == {"error": "body_too_large"}
    # The app behind was told the client left, and took it as such: no error, no traceback.
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


BAD_FRAMINGS = [
    (("Content-Length: 5", "Transfer-Encoding: chunked"), "a length beside chunked"),
    (("Transfer-Encoding: chunked", "Content-Length: 5"), "chunked beside a length"),
    (("Content-Length: 5", "Content-Length: 6"), "two lengths that disagree"),
    (("Content-Length: -5",), "a sign"),
    (("Content-Length: 0x10",), "hex"),
    (("Content-Length: 5 5",), "two numbers"),
]


@pytest.mark.parametrize(("mode", "route"), MODE_ROUTES)
async def test_conflicting_or_malformed_framing_is_a_400(
    local_access: LocalAccess, local_access_saas: LocalAccessSaaS, mode: str, route: str
) -> None:
    # uvicorn's parser refuses some of these itself; a length beside chunked it accepts (chunked wins), and this layer
    # refuses. Either way nothing behind reads a body framed two ways, on any route.
    async with site(mode, local_access, local_access_saas) as url:
        for lines, why in BAD_FRAMINGS:
            response = await exchange(url, head("POST", route, *lines) + b"0\r\n\r\n")
            assert status_of(response) == 400, why
        # Two equal lengths uvicorn's parser folds into one before any app sees them (the layer alone refuses even
        # those: see below); over the limit, the one left is refused like any other.
        folded = await exchange(url, head("POST", route, "Content-Length: 3000", "Content-Length: 3000"))
        assert status_of(folded) == 413


async def test_the_limit_itself_is_allowed_and_one_byte_more_is_not(local_access: LocalAccess) -> None:
    async with jwt_site(local_access) as url, httpx.AsyncClient() as http:
        body = json.dumps(INITIALIZE).encode()
        headers = {**MCP_HEADERS, ASSERTION: local_access.user_token()}
        exact = await http.post(f"{url}/mcp", content=body.ljust(LIMIT), headers=headers)
        assert exact.status_code == 200, exact.text
        over = await http.post(f"{url}/mcp", content=body.ljust(LIMIT + 1), headers=headers)
        assert over.status_code == 413
        assert over.json() == {"error": "body_too_large"}

        # The same bodies streamed with no length: the count, not the header, decides.
        async def stream(data: bytes) -> AsyncIterator[bytes]:
            for start in range(0, len(data), 500):
                yield data[start : start + 500]

        exact = await http.post(f"{url}/mcp", content=stream(body.ljust(LIMIT)), headers=headers)
        assert exact.status_code == 200, exact.text
        over = await http.post(f"{url}/mcp", content=stream(body.ljust(LIMIT + 1)), headers=headers)
        assert over.status_code == 413


async def test_the_tool_layer_behind_it_keeps_its_own_bound(local_access: LocalAccess) -> None:
    policy = ToolPolicy({"add": Rule(emails=["alice@example.com"])})
    async with jwt_site(local_access, tools=policy) as url, httpx.AsyncClient() as http:
        headers = {**MCP_HEADERS, ASSERTION: local_access.user_token()}
        body = json.dumps(INITIALIZE).encode()
        assert (await http.post(f"{url}/mcp", content=body.ljust(LIMIT), headers=headers)).status_code == 200
        # Refused by the outer layer (its body, not the tool layer's JSON-RPC error): nothing inside read it.
        over = await http.post(f"{url}/mcp", content=body.ljust(LIMIT + 1), headers=headers)
        assert (over.status_code, over.json()) == (413, {"error": "body_too_large"})
    # The tool layer used alone still refuses on its own.
    alone = ToolPolicyMiddleware(mcp_app(), ToolPolicy({}, default="deny"), max_body_bytes=100)
    async with serve(alone) as url, httpx.AsyncClient() as http:
        refused = await http.post(f"{url}/mcp", content=b" " * 101, headers=MCP_HEADERS)
        assert refused.status_code == 413
        assert refused.json()["error"]["message"] == "Request body larger than 100 bytes"


async def test_a_cut_oauth_form_leaves_no_error_behind(
    local_access_saas: LocalAccessSaaS, caplog: pytest.LogCaptureFixture
) -> None:
    # The endpoint reads the form with Starlette's Request, which raises ClientDisconnect at the cut: that is the
    # layer's own signal, so no "Exception in ASGI application" follows the 413.
    async with oauth_site(local_access_saas) as url:
        with caplog.at_level(logging.INFO, logger="uvicorn.error"):
            form = "Content-Type: application/x-www-form-urlencoded"
            request = head("POST", "/token", "Transfer-Encoding: chunked", form)
            response = await exchange(url, request + chunk(b"a=" + b"b" * 3000))
        assert status_of(response) == 413
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    refusals = [record for record in caplog.records if getattr(record, "layer", None) == "body_size"]
    assert [record.reason for record in refusals] == ["body_too_large"]  # type: ignore[attr-defined]


# -- the layer alone -----------------------------------------------------------------------------------------------


class BodyReader(RecordingApp):
    """Reads the whole body, then answers with its length; remembers what `receive` gave it."""

    def __init__(self, *, answer_first: bool = False) -> None:
        super().__init__()
        self.answer_first = answer_first
        self.messages: list[Message] = []

    async def answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            message = await receive()
            await send({"type": "websocket.send", "text": f"echo {len(message.get('text') or '')}"})
            await send({"type": "websocket.close", "code": 1000})
            return
        if self.answer_first:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"started", "more_body": True})
        size = 0
        while True:
            message = await receive()
            self.messages.append(message)
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        if self.answer_first:
            await send({"type": "http.response.body", "body": b" and finished"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": str(size).encode()})


async def test_used_alone_it_passes_lifespan_and_websockets_untouched() -> None:
    app = BodyReader()
    async with serve(BodySizeLimitMiddleware(app, max_body_bytes=10)) as url:
        assert app.started
        # A websocket message larger than the limit is not a request body.
        async with websockets.connect(url.replace("http", "ws") + "/ws") as socket:
            await socket.send("x" * 100)
            assert await socket.recv() == "echo 100"
        async with httpx.AsyncClient() as http:
            assert (await http.post(url, content=b"0123456789")).text == "10"
            assert (await http.post(url, content=b"0123456789!")).status_code == 413


async def test_an_answer_already_started_is_left_unfinished_when_the_body_crosses_the_limit() -> None:
    app = BodyReader(answer_first=True)
    async with serve(BodySizeLimitMiddleware(app, max_body_bytes=100)) as url:
        request = head("POST", "/", "Transfer-Encoding: chunked")
        response = await exchange(url, request + chunk(b"x" * 60) + chunk(b"x" * 60))
    # No second status line: the 200 already on its way stays, with its chunked body never ended (no last chunk),
    # and the connection closed, so the client cannot take the cut answer for a whole one.
    assert status_of(response) == 200
    assert response.count(b"HTTP/1.1") == 1
    assert b"started" in response
    assert b"finished" not in response
    assert not response.endswith(b"0\r\n\r\n")
    # The app was told the client was gone, and got no more of the body.
    assert app.messages[-1] == {"type": "http.disconnect"}
    assert sum(len(message.get("body", b"")) for message in app.messages) <= 100


async def test_a_length_that_lies_short_gives_the_app_no_more_than_it_declared() -> None:
    # uvicorn holds the body to its Content-Length: the bytes past it are left for a next request, never the app's.
    # The layer's own count covers a server that would not (see the scripted case below).
    app = BodyReader()
    async with serve(BodySizeLimitMiddleware(app, max_body_bytes=100)) as url:
        response = await exchange(url, head("POST", "/", "Content-Length: 50") + b"x" * 50 + b"y" * 3000)
    assert status_of(response) == 200
    assert b"\r\n50\r\n" in body_of(response)  # the one chunk of the app's answer: it read 50 bytes
    assert sum(len(message.get("body", b"")) for message in app.messages) == 50


async def scripted(scope: Scope, messages: list[Message], max_body_bytes: int) -> tuple[list[Message], list[Message]]:
    """Drive the layer alone with a scope and body messages uvicorn would never deliver: what the app received and
    what was sent back."""
    app = BodyReader()
    given: list[Message] = list(messages)
    sent: list[Message] = []

    async def receive() -> Message:
        return given.pop(0) if given else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await BodySizeLimitMiddleware(app, max_body_bytes=max_body_bytes)(scope, receive, send)
    return app.messages, sent


def http_scope(*headers: tuple[bytes, bytes]) -> Scope:
    return {"type": "http", "method": "POST", "path": "/mcp", "headers": list(headers), "query_string": b""}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (((b"content-length", b"5"), (b"content-length", b"5")), 400),
        (((b"content-length", b"5"), (b"Content-Length", b"5")), 400),
        (((b"content-length", b"5, 5"),), 400),
        (((b"content-length", b""),), 400),
        (((b"content-length", "\uff15".encode()),), 400),
        (((b"content-length", b"+5"),), 400),
        (((b"content-length", b"5"), (b"transfer-encoding", b"chunked")), 400),
        (((b"content-length", b"9" * 5000),), 413),
        (((b"content-length", b"11"),), 413),
        (((b"content-length", b"0" * 50 + b"10"),), None),
    ],
)
async def test_framing_headers_a_server_might_pass_on_are_judged_here(
    headers: tuple[tuple[bytes, bytes], ...], status: int | None
) -> None:
    received, sent = await scripted(http_scope(*headers), [{"type": "http.request", "body": b"0123456789"}], 10)
    if status is None:
        assert sent[0]["status"] == 200
        assert sent[1]["body"] == b"10"
    else:
        assert sent[0]["status"] == status
        assert received == []  # the app never ran


async def test_a_body_longer_than_its_length_is_still_cut_at_the_limit() -> None:
    # A server that does not hold the body to its Content-Length (h11 does; not every server must) cannot take
    # the limit past its bound.
    chunks: list[Message] = [{"type": "http.request", "body": b"x" * 8, "more_body": True} for _ in range(5)]
    received, sent = await scripted(http_scope((b"content-length", b"8")), chunks, 20)
    assert [message["status"] for message in sent if message["type"] == "http.response.start"] == [413]
    assert received[-1] == {"type": "http.disconnect"}
    assert sum(len(message.get("body", b"")) for message in received) <= 20


@pytest.mark.parametrize("bad", [0, -1, 64 * 1024 * 1024 + 1, 1.5, True])
def test_the_limit_must_be_a_whole_number_in_range(bad: object) -> None:
    with pytest.raises(ConfigError, match="max_body_bytes"):
        BodySizeLimitMiddleware(BodyReader(), max_body_bytes=bad)  # type: ignore[arg-type]
