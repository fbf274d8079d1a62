"""A real forward proxy on loopback that records every request it is sent and answers each with 200 itself,
forwarding nothing: what a credential sent through an environment proxy (HTTP_PROXY) would reach."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream

PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
NO_PROXY_VARIABLES = ("NO_PROXY", "no_proxy")


class RecordingProxy:
    def __init__(self) -> None:
        self.requests: list[bytes] = []

    @property
    def received(self) -> bytes:
        return b"".join(self.requests)

    @asynccontextmanager
    async def running(self, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
        """Listen on loopback, and name this proxy in the environment as HTTP_PROXY and ALL_PROXY (no NO_PROXY)."""
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(SocketAttribute.local_port)
        url = f"http://127.0.0.1:{port}"
        for name in (*PROXY_VARIABLES, *NO_PROXY_VARIABLES):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", url)
        monkeypatch.setenv("ALL_PROXY", url)
        async with listener, anyio.create_task_group() as tasks:
            tasks.start_soon(listener.serve, self._answer)
            try:
                yield url
            finally:
                tasks.cancel_scope.cancel()

    async def _answer(self, stream: SocketStream) -> None:
        async with stream:
            received = b""
            try:
                while b"\r\n\r\n" not in received:
                    received += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
            if received:
                self.requests.append(received)
                await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
