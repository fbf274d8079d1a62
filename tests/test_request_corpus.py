"""A request corpus for every layer, sent raw to ONE full stack over real uvicorn (issue 7, item 3).

Each case lives in a data file under `tests/corpus/requests/` (one TOML file per family) with its expected status and
outcome written next to it. The stack is `guard()` with every layer on, around a real `MCPServer` (stateless, JSON
answers; the `sessions` family's stack is stateful, with event-stream answers and a session alice opened); a counting
wrapper between the stack and the app says whether a request reached the app. Requests are written to a socket byte for
byte, so nothing a client library would normalise (header case, repeats, odd targets, bad bodies) is lost.

Case format (all keys but `name`, `why` and `expect` optional):

    name, why              the case and, in words, the reason for its expected outcome
    method, target         request line pieces (default POST /mcp); `version` (default HTTP/1.1)
    omit                   default headers to leave out: host, accept, content-type, protocol, secret, token,
                           content-length
    caller                 whose Access token the default assertion header carries: alice (default), boss, robot
    headers                extra header lines, in order: [name, value]; a value may be a list of pieces (below)
    raw_headers            header lines sent as written (placeholders filled in), for what is not `name: value`
    body                   the body as text (placeholders filled in), encoded with `body_encoding` (default utf-8);
                           a POST with no body sends a tools/list request
    body_hex               the body as hex bytes, for byte sequences no text encoding yields
    body_recipe            the body as a list of pieces: {text = "..."} or {repeat = "x", times = 10485760}
    chunked                send the body with chunked transfer coding instead of a Content-Length
    content_length         send this Content-Length instead of the real one
    slow_drip              {bytes = 4, interval = 0.1}: the body trickles in; a normal request is sent meanwhile
    encoding               how the request head is encoded: utf-8 (default) or latin-1 for single raw bytes
    expect                 status, reached_app, and optionally: error (a layer's {"error": ...}), jsonrpc_error
                           (code), tools (names listed), text (first content text of a tool result), is_error,
                           body (exact), body_contains, headers (name -> value), absent_headers,
                           answered_early (refused before the body was sent), secret_reached_app (default false)

Placeholders `{secret}`, `{secret_b}`, `{token}`, `{boss_token}`, `{robot_token}`, `{expired_token}`,
`{forged_token}`, `{client_id}`, `{client_secret}` (and, in the `sessions` family, `{session}`) are filled in at run
time: no credential is written in a file.

The SDK's own Host/Origin check (on by default for a loopback `host`) is turned off and this library's CORS layer
checks Host instead, with `allowed_hosts` set: otherwise the SDK would refuse every allowed browser Origin
(https://claude.ai is not loopback) and the corpus would test the SDK's check, not ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

from leak_scan import find_leaks
from mcp_access_guard.identity import current_identity
from mcp_access_guard.policy import Rule, ToolPolicy
from mcp_access_guard.settings import CORSSettings, GuardConfig, LimitSettings, ServiceTokenSettings
from mcp_access_guard.stack import guard
from mcp_access_guard.testing import DROP, LocalAccess, SigningKey, serve

CORPUS = Path(__file__).parent / "corpus" / "requests"
FAMILIES = ("paths", "origin_host", "credentials", "jsonrpc", "sessions")

# Test-only credentials (module-level names with SECRET in them are scanned for in the suite's log by conftest.py).
SHARED_SECRETS = ("corpus-tunnel-secret-4f1c2a9e7b", "corpus-tunnel-secret-next-8d03b6")
CLIENT_ID = "robot.access"
CLIENT_SECRET = "corpus-client-secret-5a7e19c2d4"
BOSS = "boss@example.com"
ALLOWED_HOSTS = ("127.0.0.1", "localhost", "mcp.example.com")
CREDENTIAL_HEADERS = (b"cf-access-guard-secret", b"cf-access-client-id", b"cf-access-client-secret")
TOOLS_LIST = '{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
# Fixed so that every slow-drip case stays near 2 s: never more than this many seconds of dripping.
MAX_DRIP_SECONDS = 2.5


# -- the corpus ------------------------------------------------------------------------------------------------------


def load_family(family: str) -> list[dict[str, Any]]:
    with open(CORPUS / f"{family}.toml", "rb") as file:
        cases: list[dict[str, Any]] = tomllib.load(file)["case"]
    for case in cases:
        case["family"] = family
    return cases


ALL_CASES = [case for family in FAMILIES for case in load_family(family)]

# Behaviour the corpus found that is wrong in the library: case name -> what is wrong. Marked xfail(strict=True).
KNOWN_BUGS: dict[str, str] = {}


def corpus_params() -> list[Any]:
    return list(_corpus_params())


def _corpus_params() -> Iterator[Any]:
    for case in ALL_CASES:
        marks = []
        if case["name"] in KNOWN_BUGS:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[case["name"]]))
        yield pytest.param(case, id=f"{case['family']}:{case['name']}", marks=marks)


def test_corpus_is_complete_and_well_formed() -> None:
    counts = {family: sum(case["family"] == family for case in ALL_CASES) for family in FAMILIES}
    assert counts["paths"] >= 80
    assert counts["origin_host"] >= 30
    assert counts["jsonrpc"] >= 60
    assert counts["credentials"] >= 30
    assert counts["sessions"] >= 8
    names = [f"{case['family']}:{case['name']}" for case in ALL_CASES]
    assert len(names) == len(set(names)), "case names must be unique within a family"
    for case in ALL_CASES:
        assert case.get("why"), f"{case['name']}: say why the outcome is expected"
        assert {"status", "reached_app"} <= case["expect"].keys(), case["name"]


# -- the stack -------------------------------------------------------------------------------------------------------


def mcp_app(*, stateful: bool = False, json_response: bool = False) -> ASGIApp:
    mcp = MCPServer("corpus")

    @mcp.tool()
    def add(a: int, b: int) -> int:
        return a + b

    @mcp.tool()
    def size(text: str) -> int:
        return len(text)

    @mcp.tool()
    def whoami() -> str:
        identity = current_identity()
        return identity.principal if identity else "nobody"

    @mcp.tool()
    def secret() -> str:
        return "the launch codes"

    @mcp.tool(name="café")
    def cafe() -> str:
        return "espresso"

    @mcp.tool()
    def echo(text: str) -> str:
        return text

    if stateful:

        @mcp.tool()
        async def slow() -> str:
            await anyio.sleep(0.5)
            return "done"

    return mcp.streamable_http_app(
        json_response=json_response or not stateful,
        stateless_http=not stateful,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )


class CountingApp:
    """Between the stack and the MCP app: counts the requests that got through, and notes any credential header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.hits = 0
        self.credential_headers_seen = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.hits += 1
            names = {name.lower() for name, _ in scope["headers"]}
            self.credential_headers_seen += any(name in names for name in CREDENTIAL_HEADERS)
        await self.app(scope, receive, send)


@dataclass
class Stack:
    url: str
    app: CountingApp
    issuer: LocalAccess
    values: dict[str, str]
    tokens: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module scope, so the one stack below serves every case


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[Stack]:
    async with open_stack(stateful=False) as opened:
        yield opened


@pytest.fixture(scope="module")
async def session_stack() -> AsyncIterator[Stack]:
    """The stateful stack, with a session alice opened: `{session}` in the `sessions` family's cases."""
    async with open_stack(stateful=True) as opened:
        opened.values["session"] = await open_session(opened, "token")
        yield opened


@asynccontextmanager
async def open_stack(*, stateful: bool, json_response: bool = False) -> AsyncIterator[Stack]:
    with LocalAccess() as issuer:
        config = GuardConfig(
            access=issuer.config(),
            cors=CORSSettings(allowed_hosts=ALLOWED_HOSTS),
            service_token=ServiceTokenSettings(secrets=SHARED_SECRETS, client_credentials={CLIENT_ID: CLIENT_SECRET}),
            tools=ToolPolicy(
                {"secret": Rule(emails=[BOSS]), "café": Rule(emails=[BOSS]), "echo": Rule(service_tokens=["robot"])},
                prompts={"briefing": Rule(emails=[BOSS])},
                resources={"users://{user_id}/profile": Rule(emails=[BOSS])},
            ),
            # Every case comes from one address; the limit on failed credentials has tests of its own.
            limits=LimitSettings(failed_credentials=0),
        )
        counting = CountingApp(mcp_app(stateful=stateful, json_response=json_response))
        tokens = {
            "token": issuer.user_token("alice@example.com"),
            "boss_token": issuer.user_token(BOSS),
            "robot_token": issuer.service_token(CLIENT_ID),
            "expired_token": issuer.user_token(expires_in=-3600),
            # Signed by a key the issuer never published, under the published key's kid.
            "forged_token": issuer.user_token(
                BOSS, key=SigningKey(issuer.current_key.kid, SigningKey.generate().private_key)
            ),
            "org_token": issuer.user_token(claims={"type": "org"}),
            "no_email_token": issuer.user_token(claims={"email": DROP}),
        }
        values = {
            **tokens,
            "secret": SHARED_SECRETS[0],
            "secret_b": SHARED_SECRETS[1],
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        }
        async with serve(guard(counting, config)) as url:
            yield Stack(url, counting, issuer, values, list(tokens.values()))


def session_headers(stack: Stack, token: str, session: str | None = None) -> dict[str, str]:
    headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": "2025-06-18",
        "Cf-Access-Guard-Secret": stack.values["secret"],
        "Cf-Access-Jwt-Assertion": stack.values[token],
    }
    return headers if session is None else {**headers, "Mcp-Session-Id": session}


async def open_session(stack: Stack, token: str) -> str:
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    async with httpx.AsyncClient() as client:
        opened = await client.post(stack.url + "/mcp", json=initialize, headers=session_headers(stack, token))
        session: str = opened.headers["mcp-session-id"]
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        done = await client.post(stack.url + "/mcp", json=initialized, headers=session_headers(stack, token, session))
        assert done.status_code == 202
    return session


# -- raw requests ----------------------------------------------------------------------------------------------------


def fill(text: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


def pieces(value: Any, values: dict[str, str]) -> str:
    """A header value or body given as text, or as a list of {text} / {repeat, times} pieces."""
    if isinstance(value, str):
        return fill(value, values)
    return "".join(fill(part["text"], values) if "text" in part else part["repeat"] * part["times"] for part in value)


@dataclass
class Request:
    head: bytes
    body: bytes
    chunked: bool = False
    drip: dict[str, float] | None = None


def build(case: dict[str, Any], values: dict[str, str]) -> Request:
    omit = set(case.get("omit", ()))
    method = case.get("method", "POST")
    if "body_hex" in case:
        body = bytes.fromhex(case["body_hex"])
    elif "body_recipe" in case:
        body = pieces(case["body_recipe"], values).encode()
    elif "body" in case:
        body = fill(case["body"], values).encode(case.get("body_encoding", "utf-8"))
    else:
        body = TOOLS_LIST.encode() if method == "POST" else b""
    token = values[{"alice": "token", "boss": "boss_token", "robot": "robot_token"}[case.get("caller", "alice")]]
    lines = [f"{method} {pieces(case.get('target', '/mcp'), values)} {case.get('version', 'HTTP/1.1')}"]
    defaults = [
        ("host", "Host", "127.0.0.1"),
        ("accept", "Accept", "application/json, text/event-stream"),
        ("content-type", "Content-Type", "application/json"),
        ("protocol", "MCP-Protocol-Version", "2025-06-18"),
        ("secret", "Cf-Access-Guard-Secret", values["secret"]),
        ("token", "Cf-Access-Jwt-Assertion", token),
    ]
    lines += [f"{name}: {value}" for key, name, value in defaults if key not in omit]
    lines += [f"{name}: {pieces(value, values)}" for name, value in case.get("headers", ())]
    lines += [fill(line, values) for line in case.get("raw_headers", ())]
    chunked = bool(case.get("chunked"))
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif "content_length" in case:
        lines.append(f"Content-Length: {case['content_length']}")
    elif "content-length" not in omit and (body or method == "POST"):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode(case.get("encoding", "utf-8"))
    return Request(head, body, chunked, case.get("slow_drip"))


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    body_bytes_sent: int


def parse_response(data: bytes, sent: int) -> Response:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = dechunk(body)
    return Response(int(status_line.split(" ", 2)[1]), headers, body, sent)


def dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


async def exchange(url: str, request: Request) -> Response:
    """Write the request, reading the answer meanwhile: the server may answer (and hang up) before the body is sent.

    A large body goes in 64 KiB pieces and stops once the answer has begun, as a client that reads while it writes
    would; a dripped body goes a few bytes per interval. Plain sockets rather than asyncio streams: a stream that
    fails to write (the server hung up) discards the answer it had already received.
    """
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, (parts.hostname, parts.port))
    answered = asyncio.Event()
    sent = 0

    async def read_all() -> bytes:
        data = b""
        try:
            while chunk := await loop.sock_recv(sock, 65536):
                data += chunk
                answered.set()
                head = data.partition(b"\r\n\r\n")[0] if b"\r\n\r\n" in data else None
                if head is not None and b"text/event-stream" in head.lower():
                    break  # a stream that stays open: its head is the answer
        except ConnectionResetError:
            pass  # the server hung up on a body it had refused; what it said before that is the answer
        answered.set()
        return data

    async def write_all() -> None:
        nonlocal sent
        await loop.sock_sendall(sock, request.head)
        step, interval = (int(request.drip["bytes"]), request.drip["interval"]) if request.drip else (65536, 0.0)
        for offset in range(0, len(request.body), step):
            if answered.is_set():
                return
            chunk = request.body[offset : offset + step]
            await loop.sock_sendall(sock, b"%x\r\n%s\r\n" % (len(chunk), chunk) if request.chunked else chunk)
            sent += len(chunk)
            if interval:
                await asyncio.sleep(interval)
            elif sent == step and len(request.body) > 4 * step:
                # After the first piece of a large body, give the server a moment to refuse it by its declared size.
                await asyncio.wait([asyncio.ensure_future(answered.wait())], timeout=0.2)
        if request.chunked and not answered.is_set():
            await loop.sock_sendall(sock, b"0\r\n\r\n")

    reading = asyncio.ensure_future(asyncio.wait_for(read_all(), timeout=15))
    # The server may answer and close while the body is still going: the answer is what counts.
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        await write_all()
    try:
        data = await reading
    finally:
        sock.close()
    return parse_response(data, sent)


async def normal_request(stack: Stack) -> Response:
    return await exchange(stack.url, build({"name": "normal"}, stack.values))


# -- checking one case -----------------------------------------------------------------------------------------------


def check(case: dict[str, Any], response: Response, reached: bool, request: Request) -> None:
    expect = case["expect"]
    label = f"{case['name']} ({case['why']}): got {response.status} {response.body[:300]!r}"
    assert response.status == expect["status"], label
    assert reached == expect["reached_app"], label
    parsed: Any = None
    if response.body.strip().startswith((b"{", b"[")):
        parsed = json.loads(response.body)
    if "error" in expect:
        assert parsed == {"error": expect["error"]} or (
            isinstance(parsed, dict) and parsed.get("error") == expect["error"]
        ), label
    if "jsonrpc_error" in expect:
        assert parsed["error"]["code"] == expect["jsonrpc_error"], label
    if "tools" in expect:
        assert [tool["name"] for tool in parsed["result"]["tools"]] == expect["tools"], label
    if "text" in expect:
        assert parsed["result"]["content"][0]["text"] == expect["text"], label
    if "is_error" in expect:
        assert parsed["result"]["isError"] is expect["is_error"], label
    if "body" in expect:
        assert response.body == expect["body"].encode(), label
    if "body_contains" in expect:
        assert expect["body_contains"].encode() in response.body, label
    for name, value in expect.get("headers", {}).items():
        assert response.headers.get(name.lower()) == value, label
    for name in expect.get("absent_headers", ()):
        assert name.lower() not in response.headers, label
    if expect.get("answered_early"):
        assert response.body_bytes_sent < len(request.body), f"{label}: the whole body was sent before the answer"


def assert_no_credentials(texts: list[str], stack: Stack) -> None:
    leaks = find_leaks(texts, stack.tokens, [*SHARED_SECRETS, CLIENT_SECRET])
    leaks += [
        f"a whole token appears ({len(token)} characters)" for token in stack.tokens if any(token in t for t in texts)
    ]
    assert not leaks, leaks


@pytest.mark.anyio
@pytest.mark.parametrize("case", corpus_params())
async def test_request_corpus(
    stack: Stack, session_stack: Stack, case: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    stack = session_stack if case["family"] == "sessions" else stack
    caplog.set_level(logging.DEBUG)
    request = build(case, stack.values)
    hits, credentials_seen = stack.app.hits, stack.app.credential_headers_seen
    if request.drip:
        assert len(request.body) / request.drip["bytes"] * request.drip["interval"] <= MAX_DRIP_SECONDS
        response = await drip_while_serving_others(stack, request)
    else:
        response = await exchange(stack.url, request)
    check(case, response, stack.app.hits > hits, request)
    # The tunnel's secret and the service-token pair never reach the app, whatever the case did with them.
    assert stack.app.credential_headers_seen == credentials_seen, "a credential header reached the app"
    if len(request.body) > 1024 * 1024:
        # Refusing a large body must not have tied the server up: the next request is answered as usual.
        follow_up = await normal_request(stack)
        assert follow_up.status == 200, follow_up
    logged = [record.getMessage() + " " + json.dumps(vars(record), default=str) for record in caplog.records]
    assert_no_credentials([response.body.decode("latin-1"), *logged], stack)


async def drip_while_serving_others(stack: Stack, request: Request) -> Response:
    """Send the dripped request, and a normal one meanwhile: the normal one must finish while the drip goes on."""
    started = time.monotonic()
    dripping = asyncio.ensure_future(exchange(stack.url, request))
    await asyncio.sleep(0.3)  # the drip has begun
    others = await asyncio.gather(*(normal_request(stack) for _ in range(3)))
    others_done = time.monotonic()
    assert all(other.status == 200 for other in others)
    assert not dripping.done(), "the other requests should have finished while the body was still dripping"
    response = await dripping
    assert others_done - started < time.monotonic() - started
    return response


@pytest.mark.anyio
@pytest.mark.parametrize("json_response", [True, False], ids=["json", "sse"])
async def test_a_request_in_flight_when_its_session_ends_is_not_answered_5xx(json_response: bool) -> None:
    # In JSON mode the SDK answers a request whose session is ended under it 500 ("Session terminated before the
    # request completed"). The client ended it: the guard answers what a request for an ended session gets, 404.
    call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "slow", "arguments": {}}}
    async with open_stack(stateful=True, json_response=json_response) as opened, httpx.AsyncClient() as client:
        session = await open_session(opened, "token")
        headers = session_headers(opened, "token", session)
        answers: dict[str, httpx.Response] = {}

        async def slow_call() -> None:
            answers["call"] = await client.post(opened.url + "/mcp", json=call, headers=headers)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(slow_call)
            await anyio.sleep(0.2)
            answers["delete"] = await client.delete(opened.url + "/mcp", headers=headers)
        after = await client.post(opened.url + "/mcp", json=call, headers=headers)
    assert answers["delete"].status_code == 200
    assert answers["call"].status_code < 500, answers["call"].text
    if json_response:
        assert answers["call"].status_code == 404
        assert answers["call"].json()["error"] == {"code": -32600, "message": "Session not found"}
    assert after.status_code == 404
