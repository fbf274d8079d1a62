"""The CORS layer's fast path claims to add exactly the headers Starlette's `CORSMiddleware` adds to a response that is
not a preflight. Held to it here: the same requests through both, over every combination of origin, method,
credentials setting and headers the app set itself, must leave byte-identical response headers."""

from __future__ import annotations

import itertools

import pytest
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_access_guard.middleware.cors import (
    MCP_EXPOSED_HEADERS,
    MCP_METHODS,
    MCP_REQUEST_HEADERS,
    CORSAllowlistMiddleware,
)

ORIGINS = ("https://claude.ai", "https://app.example.com")
APP_HEADERS: tuple[tuple[tuple[bytes, bytes], ...], ...] = (
    (),
    ((b"content-type", b"application/json"),),
    ((b"vary", b"Accept"),),
    ((b"vary", b"Accept"), (b"vary", b"Cookie")),
    ((b"access-control-allow-origin", b"*"),),
    ((b"access-control-allow-credentials", b"true"),),
    ((b"access-control-expose-headers", b"X-Custom"),),
    ((b"vary", b"Origin"), (b"content-length", b"2")),
)


def app_with(headers: tuple[tuple[bytes, bytes], ...]) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": list(headers)})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


async def response_headers(middleware: ASGIApp, origin: str | None, method: str) -> list[tuple[bytes, bytes]]:
    request_headers = [(b"host", b"mcp.example.com")]
    if origin is not None:
        request_headers.append((b"origin", origin.encode()))
    scope: Scope = {"type": "http", "method": method, "path": "/mcp", "headers": request_headers, "query_string": b""}
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await middleware(scope, receive, send)
    start = next(message for message in sent if message["type"] == "http.response.start")
    return list(start["headers"])


CASES = list(itertools.product((None, *ORIGINS), ("GET", "POST", "DELETE", "OPTIONS"), (False, True), APP_HEADERS))


@pytest.mark.anyio
@pytest.mark.parametrize(("origin", "method", "credentials", "headers"), CASES)
async def test_simple_responses_carry_exactly_starlettes_headers(
    origin: str | None, method: str, credentials: bool, headers: tuple[tuple[bytes, bytes], ...]
) -> None:
    ours = CORSAllowlistMiddleware(app_with(headers), allow_origins=ORIGINS, allow_credentials=credentials)
    starlette = CORSMiddleware(
        app_with(headers),
        allow_origins=ORIGINS,
        allow_methods=MCP_METHODS,
        allow_headers=MCP_REQUEST_HEADERS,
        allow_credentials=credentials,
        expose_headers=MCP_EXPOSED_HEADERS,
    )
    assert await response_headers(ours, origin, method) == await response_headers(starlette, origin, method)
