"""ToolPolicyMiddleware against the bare MCPServer app, in process (the ASGI app called directly, no network).

Prints the time each request costs with and without the middleware (µs and ratio) for an allowed tools/call, a
denied one (renamed and answered by the app) and a filtered tools/list, and the memory held while a 4 MiB body is
inspected. Run: python benchmarks/bench_tools.py
"""

from __future__ import annotations

import gc
import json
import logging
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_access_guard.identity import AccessIdentity, bind_identity
from mcp_access_guard.jsonrpc import DEFAULT_MAX_BODY_BYTES
from mcp_access_guard.middleware.tools import ToolPolicyMiddleware
from mcp_access_guard.policy import Rule, ToolPolicy

ROUNDS = 40
PER_ROUND = 200
CALLER = AccessIdentity(subject="u1", issuer="https://team.example", expires_at=2**40, email="eve@example.com")
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


def server() -> MCPServer:
    mcp = MCPServer("bench")

    @mcp.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @mcp.tool()
    def secret() -> str:
        return "hidden"

    for index in range(20):
        mcp.add_tool(lambda: "x", name=f"tool{index}", description=f"Tool number {index}")
    return mcp


def request(method: str, params: dict[str, Any], name: str | None = None) -> tuple[Scope, bytes]:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": META}}).encode()
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"accept", b"application/json, text/event-stream"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"mcp-protocol-version", b"2026-07-28"),
        (b"mcp-method", method.encode()),
    ]
    if name is not None:
        headers.append((b"mcp-name", name.encode()))
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/mcp",
        "raw_path": b"/mcp",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    return scope, body


async def call(app: ASGIApp, scope: Scope, body: bytes) -> bytes:
    sent = False
    out = bytearray()

    async def receive() -> Message:
        nonlocal sent
        if sent:
            await anyio.sleep_forever()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            out.extend(message.get("body", b""))

    with bind_identity(dict(scope), CALLER):
        await app(dict(scope), receive, send)
    return bytes(out)


async def per_request_us(app: ASGIApp, scope: Scope, body: bytes) -> float:
    start = time.perf_counter()
    for _ in range(PER_ROUND):
        await call(app, scope, body)
    return (time.perf_counter() - start) / PER_ROUND * 1e6


async def compare(
    label: str, bare: ASGIApp, guarded: ASGIApp, request_: tuple[Scope, bytes], bare_request: tuple[Scope, bytes]
) -> None:
    """Time `request_` through `guarded` against `bare_request` (the same work for the app) through `bare`."""
    await call(bare, *bare_request)
    await call(guarded, *request_)
    bare_samples: list[float] = []
    guarded_samples: list[float] = []
    # Alternating rounds, so drift in the machine's speed hits both sides alike; the best round of each side is the
    # figure least disturbed by whatever else the machine is doing.
    for _ in range(ROUNDS):
        bare_samples.append(await per_request_us(bare, *bare_request))
        guarded_samples.append(await per_request_us(guarded, *request_))
    bare_us = min(bare_samples)
    guarded_us = min(guarded_samples)
    print(
        f"{label:<30} bare {bare_us:8.1f} µs   guarded {guarded_us:8.1f} µs   "
        f"added {guarded_us - bare_us:7.1f} µs   ratio {guarded_us / bare_us:5.2f}"
    )


def listing_answer(body: bytes) -> bytes | None:
    """The guard asks the app for its tool listing once, to know its tools' names: a trivial app answers that too."""
    message = json.loads(body)
    if message.get("method") != "tools/list":
        return None
    return json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": {"tools": [{"name": "add"}]}}).encode()


async def answer_ok(scope: Scope, receive: Receive, send: Send) -> None:
    answer = listing_answer((await receive())["body"]) or b"{}"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(answer))]})
    await send({"type": "http.response.body", "body": answer})


async def memory_while_inspecting_4_mib() -> None:
    async def drain(scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        answer = listing_answer(message["body"]) if len(message["body"]) < 1000 else None
        assert answer is not None or len(message["body"]) > 4_000_000
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(answer or b""))]}
        )
        await send({"type": "http.response.body", "body": answer or b""})

    text = "x" * (DEFAULT_MAX_BODY_BYTES - 300)
    scope, body = request("tools/call", {"name": "add", "arguments": {"text": text}}, "add")
    middleware = ToolPolicyMiddleware(drain, ToolPolicy({"secret": Rule(emails=["boss@example.com"])}))
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    del text

    async def receive() -> Message:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: Message) -> None:
        pass

    gc.collect()
    tracemalloc.start()
    with bind_identity(dict(scope), CALLER):
        await middleware(dict(scope), receive, send)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    mib = 1024 * 1024
    print(f"4 MiB body inspected           peak {peak / mib:6.1f} MiB held ({peak / len(body):.1f}x the body)")


async def main() -> None:
    # The audit log's cost is the handler's (a file, a network sink); silenced here to time the middleware itself.
    logging.getLogger("mcp_access_guard").setLevel(logging.CRITICAL)
    logging.getLogger("mcp").setLevel(logging.CRITICAL)
    mcp = server()
    app = mcp.streamable_http_app(json_response=True, stateless_http=True)
    policy = ToolPolicy({"secret": Rule(emails=["boss@example.com"])})
    guarded = ToolPolicyMiddleware(app, policy)
    async with app.router.lifespan_context(app):
        allowed = request("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}}, "add")
        await compare("tools/call allowed", app, guarded, allowed, allowed)
        # A denied call is, for the app, a call to a tool it does not have: compare with exactly that.
        denied = request("tools/call", {"name": "secret", "arguments": {}}, "secret")
        missing = request("tools/call", {"name": "secret-missing", "arguments": {}}, "secret-missing")
        await compare("tools/call denied", app, guarded, denied, missing)
        listing = request("tools/list", {})
        await compare("tools/list 22 tools, 1 hidden", app, guarded, listing, listing)
    # The middleware's own cost, without the SDK's run-to-run variance in the figures.
    await compare("tools/call, trivial app", answer_ok, ToolPolicyMiddleware(answer_ok, policy), allowed, allowed)
    await memory_while_inspecting_4_mib()


def run(main: Callable[[], Awaitable[None]]) -> None:
    anyio.run(main)


if __name__ == "__main__":
    run(main)
