"""The older HTTP+SSE transport for the tests: an `MCPServer` served with `sse_app()` behind the whole stack, and a
raw session on it (the event stream read in the background, frame by frame as sent; messages posted to the endpoint
it names)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp

from mcp_access_guard import current_identity
from mcp_access_guard.policy import Rule, ToolPolicy
from mcp_access_guard.settings import GuardConfig, PathSettings, ServiceTokenSettings
from mcp_access_guard.stack import guard
from mcp_access_guard.testing import LocalAccess, serve
from support import INITIALIZE_PARAMS

ALICE = "alice@example.com"
BOB = "bob@example.com"
SECRET = "tunnel-secret-0123456789"
SECRET_HEADER = "Cf-Access-Guard-Secret"
ASSERTION = "Cf-Access-Jwt-Assertion"
SSE_PATHS = ("/sse", "/messages/", "/health")
POLICY = ToolPolicy(
    {"generate_image": Rule(emails=[ALICE])},
    prompts={"briefing": Rule(emails=[ALICE])},
    resources={"file:///payroll": Rule(emails=[ALICE])},
)
WAIT = 15.0  # the longest a test waits for an answer on a stream before failing


def sse_server(runs: list[str] | None = None, *, restricted: bool = True) -> MCPServer:
    """`restricted=False` is the same server without the restricted tool, prompt and resource: the reference for
    'does not exist'. `runs` records who ran `generate_image`."""
    mcp = MCPServer("sse reference")

    @mcp.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @mcp.tool()
    def whoami() -> str:
        identity = current_identity()
        return identity.principal if identity else "nobody"

    if restricted:

        @mcp.tool()
        def generate_image(prompt: str = "") -> str:
            """Only alice may."""
            identity = current_identity()
            if runs is not None:
                runs.append(identity.principal if identity else "nobody")
            return f"image of {prompt}"

        @mcp.prompt()
        def briefing() -> str:
            return "Top secret briefing"

        @mcp.resource("file:///payroll")
        def payroll() -> str:
            return "salaries"

    return mcp


def site_config(local_access: LocalAccess, *, tools: ToolPolicy | None = POLICY) -> GuardConfig:
    return GuardConfig(
        access=local_access.config(),
        paths=PathSettings(allow=SSE_PATHS),
        service_token=ServiceTokenSettings(secrets=(SECRET,)),
        tools=tools,
    )


@asynccontextmanager
async def site(
    local_access: LocalAccess, app: ASGIApp | None = None, *, tools: ToolPolicy | None = POLICY
) -> AsyncIterator[str]:
    """The whole stack around `app` (default: `sse_server().sse_app()`) under real uvicorn; yields its URL."""
    async with serve(guard(app or sse_server().sse_app(), site_config(local_access, tools=tools))) as url:
        yield url


def user_token(local_access: LocalAccess, email: str, **options: Any) -> str:
    """A token for `email` with the user's own `sub`, the same in every token, as Cloudflare's are."""
    return local_access.user_token(email, claims={"sub": str(uuid.uuid5(uuid.NAMESPACE_URL, email))}, **options)


def caller(local_access: LocalAccess, email: str) -> dict[str, str]:
    """What a caller who came through the tunnel and Access sends."""
    return {SECRET_HEADER: SECRET, ASSERTION: user_token(local_access, email)}


@dataclass(frozen=True)
class Frame:
    raw: bytes  # exactly as it came, blank line included
    event: str
    data: str

    @property
    def message(self) -> Any:
        return json.loads(self.data)


_FRAME_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class Session:
    """One raw HTTP+SSE session: `frames` holds every event of the stream so far."""

    def __init__(self, http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> None:
        self.http = http
        self.url = url
        self.headers = headers
        self.frames: list[Frame] = []
        self.ended = False
        self._arrived = anyio.Event()

    @property
    def endpoint(self) -> str:
        return next(frame.data for frame in self.frames if frame.event == "endpoint")

    @property
    def session_id(self) -> str:
        return self.endpoint.split("session_id=", 1)[1]

    async def read(self, response: httpx.Response) -> None:
        buffer = b""
        async for chunk in response.aiter_raw():
            buffer += chunk
            while (found := _FRAME_END.search(buffer)) is not None:
                raw, buffer = buffer[: found.end()], buffer[found.end() :]
                self._add(raw)
        self.ended = True
        self._arrived.set()

    def _add(self, raw: bytes) -> None:
        event = "message"
        data: list[str] = []
        for line in re.split(r"\r\n|\r|\n", raw.decode()):
            field, _, value = line.partition(":")
            if field == "event":
                event = value.strip()
            elif field == "data":
                data.append(value.removeprefix(" "))
        if data:
            self.frames.append(Frame(raw, event, "\n".join(data)))
            self._arrived.set()

    async def wait_for(self, request_id: Any) -> Frame:
        """The frame answering `request_id` (failing after `WAIT` seconds)."""
        with anyio.fail_after(WAIT):
            while True:
                for frame in self.frames:
                    if frame.event == "message" and frame.message.get("id") == request_id:
                        return frame
                assert not self.ended, "the stream ended"
                self._arrived = anyio.Event()
                await self._arrived.wait()

    async def wait_endpoint(self) -> None:
        with anyio.fail_after(WAIT):
            while not any(frame.event == "endpoint" for frame in self.frames) and not self.ended:
                self._arrived = anyio.Event()
                await self._arrived.wait()

    async def post(
        self,
        message: Any = None,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        query: str | None = None,
        as_headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """POST to this session's endpoint (or to `/messages/?<query>`), as this caller or as `as_headers`."""
        target = self.endpoint if query is None else f"/messages/?{query}"
        body = content if content is not None else json.dumps(message).encode()
        sent = {**(self.headers if as_headers is None else as_headers), "Content-Type": "application/json"}
        sent.update(headers or {})
        return await self.http.post(self.url + target, content=body, headers=sent)

    async def request(self, request_id: Any, method: str, params: dict[str, Any] | None = None) -> Frame:
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, **({"params": params} if params else {})}
        accepted = await self.post(message)
        assert accepted.status_code == 202, accepted.text
        return await self.wait_for(request_id)

    async def initialize(self) -> Session:
        await self.request(0, "initialize", INITIALIZE_PARAMS)
        assert (await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})).status_code == 202
        return self


@asynccontextmanager
async def session(url: str, headers: dict[str, str], *, initialize: bool = True) -> AsyncIterator[Session]:
    """A raw session on `url`'s `/sse`, initialized unless told otherwise; its stream is closed when the block ends."""
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(WAIT)) as http,
        http.stream("GET", url + "/sse", headers=headers) as response,
    ):
        assert response.status_code == 200, response.status_code
        opened = Session(http, url, headers)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(opened.read, response)
            await opened.wait_endpoint()
            if initialize:
                await opened.initialize()
            try:
                yield opened
            finally:
                tasks.cancel_scope.cancel()


def comparable(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    """What must be the same in two answers: all but the date."""
    headers = [(name, value) for name, value in response.headers.multi_items() if name != "date"]
    return response.status_code, headers, response.content
