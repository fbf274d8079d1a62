"""The names an MCP app lists, learned by asking it, so that a name it would resolve some other way is caught.

Frameworks map more than one name onto a tool: FastMCP 4 answers a `FastMCPApp` backend tool also under
`<first 12 hex of sha256(app + "\\0" + tool)>_<name>`, and a server could fold case or keep old names. A policy keyed
by listed names would judge such a spelling by a rule it does not have. So, when the policy has rules, a name with
no rule of its own must be one the app lists, or an address (FastMCP's hash, published in each listed tool's
`_meta.fastmcp.tool_hash`) of listed tools, which are then judged in its place. Anything else is refused like an
unknown name.

The listing is asked of the app itself, with the caller's own request (same path, headers and session, so the same
identity and protocol era) and a body of the guard's making, the first time a name is not known, then again at most
once per `REFRESH_INTERVAL` while names keep missing (one request at a time; a listing that failed, say for a
caller's broken session, is asked again by the next miss). What is learned is kept across callers: a name some caller
was listed is a real name, and the app still decides for itself whom it serves.

On the older HTTP+SSE transport the app answers the POST with `202 Accepted` and sends the listing on the session's
event stream; the tool layer, which rewrites that stream, hands it over (`StreamedAnswers`) and keeps it from the
client.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Scope

from ..jsonrpc import GuardId

logger = logging.getLogger("mcp_access_guard")

FETCH_KIND = "l"
"""The letter in the guard's ids for its own listing requests: their answers are never the client's."""

REFRESH_INTERVAL = 1.0
"""Seconds after a listing came in before a missing name asks for another: a flood of made-up names costs one per
interval."""

FETCH_TIMEOUT = 10.0
MAX_PAGES = 100
MAX_NAMES = 10_000
_FASTMCP_ADDRESS = re.compile(r"([0-9a-f]{12})_.")

# Request headers not copied onto the guard's listing request: they describe the caller's body, not ours (with
# Mcp-Param-*, the arguments of a tool call).
_DROPPED = frozenset(
    (
        b"content-length",
        b"content-type",
        b"content-encoding",
        b"transfer-encoding",
        b"accept",
        b"accept-encoding",
        b"mcp-method",
        b"mcp-name",
        b"last-event-id",
    )
)

Fetch = Callable[[], Awaitable[list[Any] | None]]


class ListedNames:
    """The names one family's listing (`tools/list` or `prompts/list`) gave, and FastMCP's addresses for them."""

    def __init__(self) -> None:
        self._names: set[str] = set()
        self._by_address: dict[str, set[str]] = {}
        self._refreshed_at = -REFRESH_INTERVAL
        self._refreshing: anyio.Event | None = None

    def resolve(self, name: str) -> tuple[bool, list[str]]:
        """(whether `name` is listed, the other listed names it addresses)."""
        if not self._by_address or len(name) < 14 or name[12] != "_":  # the usual case, decided without a regex
            return name in self._names, []
        found = _FASTMCP_ADDRESS.match(name)
        addressed = self._by_address.get(found[1], ()) if found else ()
        return name in self._names, [other for other in addressed if other != name]

    async def refresh(self, fetch: Fetch) -> None:
        """Ask the app again, unless a request is already out (then wait for it) or a listing came in less than an
        interval ago."""
        if self._refreshing is not None:
            await self._refreshing.wait()
            return
        if time.monotonic() - self._refreshed_at < REFRESH_INTERVAL:
            return
        self._refreshing = anyio.Event()
        try:
            entries = await fetch()
            if entries is not None:
                self.learn(entries)
                self._refreshed_at = time.monotonic()
        finally:
            self._refreshing.set()
            self._refreshing = None

    def learn(self, entries: Iterable[Any]) -> None:
        if len(self._names) > MAX_NAMES:
            self._names.clear()
            self._by_address.clear()
        for entry in entries:
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str):
                continue
            self._names.add(name)
            address = _fastmcp_address(entry)
            if address is not None:
                self._by_address.setdefault(address, set()).add(name)


class _Waiting:
    __slots__ = ("answer", "arrived")

    def __init__(self) -> None:
        self.arrived = anyio.Event()
        self.answer: Any = None


class StreamedAnswers:
    """Answers to the guard's listing requests that come on an event stream rather than in the POST's response.

    The stream is served in this process (so is the session it belongs to), by the layer that rewrites it: that
    layer calls `deliver` for each such answer, which the request waiting on it then takes.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, _Waiting] = {}

    def deliver(self, request_id: str, answer: Any) -> None:
        waiting = self._waiting.get(request_id)
        if waiting is not None:
            waiting.answer = answer
            waiting.arrived.set()

    def expect(self, request_id: str) -> _Waiting:
        waiting = self._waiting[request_id] = _Waiting()
        return waiting

    def forget(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)


def _fastmcp_address(entry: dict[str, Any]) -> str | None:
    meta = entry.get("_meta")
    fastmcp = meta.get("fastmcp") if isinstance(meta, dict) else None
    address = fastmcp.get("tool_hash") if isinstance(fastmcp, dict) else None
    return address if isinstance(address, str) and re.fullmatch(r"[0-9a-f]{12}", address) else None


async def fetch_listing(
    app: ASGIApp,
    scope: Scope,
    *,
    method: str,
    list_key: str,
    meta: dict[str, Any] | None,
    streamed: StreamedAnswers,
) -> list[Any] | None:
    """Every entry of the app's `method` listing, page by page, asked as the caller of `scope`; None if it fails.

    An answer that does not come in the response (`202 Accepted`) is waited for on `streamed`."""
    entries: list[Any] = []
    cursor: Any = None
    for _ in range(MAX_PAGES):
        params: dict[str, Any] = {} if meta is None else {"_meta": meta}
        if cursor is not None:
            params["cursor"] = cursor
        request_id = GuardId.new(FETCH_KIND, '"listing"').text
        request = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        answer = await _ask(app, scope, request, streamed)
        result = answer.get("result") if isinstance(answer, dict) else None
        page = result.get(list_key) if isinstance(result, dict) else None
        if not isinstance(page, list):
            logger.warning("could not learn the app's %s: it did not answer with a listing", method)
            return None
        entries += page
        cursor = result.get("nextCursor") if isinstance(result, dict) else None
        if not isinstance(cursor, str) or not cursor:
            return entries
    return entries


async def _ask(app: ASGIApp, scope: Scope, request: dict[str, Any], streamed: StreamedAnswers) -> Any:
    """The app's answer to one JSON-RPC request sent as the caller of `scope` would send it (JSON or SSE in the
    response, or on the session's event stream)."""
    body = json.dumps(request, separators=(",", ":")).encode()
    headers = [
        (name, value) for name, value in scope["headers"] if name not in _DROPPED and not name.startswith(b"mcp-param-")
    ]
    headers += [
        (b"content-type", b"application/json"),
        (b"accept", b"application/json, text/event-stream"),
        (b"content-length", str(len(body)).encode()),
    ]
    if any(name == b"mcp-method" for name, _ in scope["headers"]):
        headers.append((b"mcp-method", request["method"].encode()))
    response = bytearray()
    media_type = b""
    status = 0
    finished = anyio.Event()
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal media_type, status
        if message["type"] == "http.response.start":
            status = message["status"]
            media_type = dict(message.get("headers", [])).get(b"content-type", b"").split(b";")[0].strip().lower()
        elif message["type"] == "http.response.body":
            response.extend(message.get("body", b""))
            if not message.get("more_body", False):
                finished.set()

    waiting = streamed.expect(request["id"])
    answer = None
    try:
        with anyio.move_on_after(FETCH_TIMEOUT):
            await app(dict(scope, method="POST", headers=headers), receive, send)
            answer = _answer_in(bytes(response), media_type, request["id"])
            if answer is None and status == 202:
                await waiting.arrived.wait()
                answer = waiting.answer
    except Exception:
        logger.warning("could not learn the app's %s: asking it failed", request["method"], exc_info=True)
        return None
    finally:
        finished.set()
        streamed.forget(request["id"])
    return answer


def _answer_in(body: bytes, media_type: bytes, request_id: str) -> Any:
    if media_type == b"text/event-stream":
        data: list[bytes] = []
        candidates = []
        for line in [*body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"), b""]:
            if line.startswith(b"data:"):
                data.append(line[5:].removeprefix(b" "))
            elif not line and data:
                candidates.append(b"\n".join(data))
                data = []
    else:
        candidates = [body]
    for candidate in candidates:
        try:
            message = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("id") == request_id:
            return message
    return None
