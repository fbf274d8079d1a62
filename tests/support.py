"""Helpers shared by the tests: an MCP initialize request, a base for small test apps, and raw HTTP over a socket.

Imported as ``from support import ...``: ``tests/`` has no ``__init__.py``, so pytest's default import mode puts it on
``sys.path``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.types import Receive, Scope, Send

# An MCP ``initialize`` JSON-RPC request, as a client's first POST to ``/mcp``, and its params on their own.
INITIALIZE_PARAMS: dict[str, Any] = {
    "protocolVersion": "2025-06-18",
    "capabilities": {},
    "clientInfo": {"name": "test", "version": "0"},
}
INITIALIZE: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INITIALIZE_PARAMS}

# The Accept header the streamable HTTP transport requires of a POST; with Content-Type, for a JSON-RPC body.
MCP_ACCEPT = {"Accept": "application/json, text/event-stream"}
MCP_HEADERS = {**MCP_ACCEPT, "Content-Type": "application/json"}


async def answer_lifespan(receive: Receive, send: Send, on_startup: Callable[[], None] | None = None) -> None:
    """Play a test app's part in the ASGI lifespan protocol: complete startup (calling ``on_startup``) and shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if on_startup is not None:
                on_startup()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class RecordingApp:
    """Base for the tests' small ASGI apps: completes lifespan, records that it started and counts the requests.

    A subclass replies to each request in ``answer``; ``hits`` counts the requests that reached it.
    """

    def __init__(self) -> None:
        self.started = False
        self.hits = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send, on_startup=self.mark_started)
            return
        self.hits += 1
        await self.answer(scope, receive, send)

    def mark_started(self) -> None:
        self.started = True

    async def answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Reply to one request that reached the app."""
        raise NotImplementedError


@dataclass(frozen=True)
class RawResponse:
    """An HTTP response as read off the socket: header names lower-cased, body undecoded (not de-chunked)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


async def send_raw(base_url: str, head: bytes) -> RawResponse:
    """Send a request head exactly as given, which no HTTP client would (odd targets, repeated headers).

    ``head`` is the request line and header lines, each ending in CRLF; ``Connection: close`` and the blank line are
    added so the server closes the connection once it has answered.
    """
    url = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(head + b"Connection: close\r\n\r\n")
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()
    response_head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = response_head.decode("latin-1").split("\r\n")
    fields = (line.partition(":") for line in header_lines)
    headers = [(name.strip().lower(), value.strip()) for name, _, value in fields]
    return RawResponse(status=int(status_line.split(" ", 2)[1]), headers=headers, body=body)


async def send_request(
    base_url: str, target: bytes = b"/mcp", method: bytes = b"GET", headers: bytes = b""
) -> RawResponse:
    """Send ``method target HTTP/1.1`` with ``Host: 127.0.0.1`` and the given CRLF-ended header lines, as written."""
    return await send_raw(base_url, method + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers)


class ManualClock:
    """A key cache's clock, moved by hand, so the stale-window arithmetic needs no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
