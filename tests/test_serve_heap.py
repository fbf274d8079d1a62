"""`serve` freezes the heap once the app has started, so full garbage collections stop walking it."""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import Message

from mcp_access_guard.serve import FreezeHeapAfterStartup

pytestmark = pytest.mark.anyio


async def test_the_heap_is_frozen_when_start_up_is_done_not_before() -> None:
    frozen_during_start_up: list[int] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        frozen_during_start_up.append(gc.get_freeze_count())
        yield

    app = FreezeHeapAfterStartup(Starlette(lifespan=lifespan))
    incoming: list[Message] = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[tuple[str, int]] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append((message["type"], gc.get_freeze_count()))

    try:
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    finally:
        gc.unfreeze()
    assert [kind for kind, _ in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    # Uvicorn hears that start-up is done only once everything alive then is out of the collector's way.
    assert sent[0][1] > frozen_during_start_up[0]


async def test_requests_pass_through_untouched() -> None:
    app = FreezeHeapAfterStartup(Starlette(routes=[Route("/ping", lambda request: PlainTextResponse("pong"))]))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/ping",
        "raw_path": b"/ping",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"localhost")],
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    frozen = gc.get_freeze_count()
    await app(scope, receive, send)
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == b"pong"
    assert gc.get_freeze_count() == frozen
