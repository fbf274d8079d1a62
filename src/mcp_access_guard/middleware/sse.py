"""Session binding for the older HTTP+SSE transport: a session's messages come only from the caller who opened it.

On that transport (`MCPServer.sse_app()`, FastMCP's `transport="sse"`) a client opens an event stream (`GET /sse`)
whose first event, `endpoint`, names where to post: `/messages/?session_id=<id>`. Every message posted there is
answered `202 Accepted`, and its answer comes on the stream. The id in the query is all that ties a POST to a
session.

This layer reads the `endpoint` event of every event stream it passes and notes whose session it names (before the
client can see it), for as long as the stream is open. A request whose query names a session (`session_id`, or
`sessionId` as other servers spell it) goes on only from the principal that opened it, with the query naming it as
the app wrote it; from anyone else, or for a session not open here, the query names a random new session instead, so
the app answers as it answers for a session it does not have, in its own words. An event stream whose `endpoint`
names no session this layer can read is ended at once: its messages could not be bound.

The `mcp` SDK (2.3) makes the same check itself, when the caller is bound as this library binds it; this layer holds
whatever the server checks. A session lives in the process that opened its stream, in the SDK and here: with several
workers, the SSE transport needs sticky sessions.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..audit import log_decision
from ..identity import AccessIdentity, current_identity

LAYER = "sse_session"
SESSION_PARAMETERS: Final = frozenset({"session_id", "sessionId"})
_MAX_FIRST_EVENT = 8 * 1024  # the endpoint event is a short URI; a stream that starts otherwise is not watched

Owner = tuple[str, str, str, str | None] | None
"""Who opened a session: (issuer, subject, principal, OAuth client), or None for no identity (open mode)."""


def _owner(identity: AccessIdentity | None) -> Owner:
    if identity is None:
        return None
    return identity.issuer, identity.subject, identity.principal, identity.oauth_client_id


def session_key(value: str) -> str:
    """One key for every spelling of a session id the app reads as the same one (the SDK parses `UUID(hex=...)`,
    which takes upper case, hyphens, braces and a `urn:uuid:` prefix)."""
    try:
        return uuid.UUID(hex=value).hex
    except ValueError:
        return value


class OpenStreams:
    """The HTTP+SSE sessions whose event streams are open through one layer: for each (by `session_key`), what the
    layer noted about it, the query parameter naming it and its id as the app wrote it."""

    def __init__(self) -> None:
        self.sessions: dict[str, tuple[object, str, str]] = {}

    def named_in(self, scope: Scope) -> tuple[list[tuple[str, str]], tuple[object, str, str] | None] | None:
        """None if `scope`'s query names no session; else its pairs and the open session it names (None if it names
        one not open here, or more than one)."""
        query = scope.get("query_string")
        if not query:
            return None
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        keys = {session_key(value) for name, value in pairs if name in SESSION_PARAMETERS}
        if not keys:
            return None
        return pairs, self.sessions.get(keys.pop()) if len(keys) == 1 else None

    async def serve(
        self, app: ASGIApp, scope: Scope, receive: Receive, send: Send, note: object, *, end_unbindable: bool
    ) -> bool:
        """Pass a GET to `app`, noting (with `note`) the session its event stream's `endpoint` names before the
        client can see the event, until the stream ends. With `end_unbindable`, a stream whose `endpoint` names no
        session that can be read is ended there. True if a stream was ended so."""
        watch = _FirstEvent()
        opened: list[str] = []
        ended = False

        async def watching_send(message: Message) -> None:
            nonlocal ended
            if ended:
                return
            if message["type"] == "http.response.start":
                media_type = Headers(raw=message.get("headers", [])).get("content-type", "").split(";")[0]
                watch.active = media_type.strip().lower() == "text/event-stream"
            elif message["type"] == "http.response.body" and watch.active:
                event = watch.feed(message.get("body", b""))
                if event is not None and event[0] == "endpoint":
                    session = _named_session(event[1])
                    if session is not None:
                        key = session_key(session[1])
                        self.sessions[key] = (note, *session)
                        opened.append(key)
                    elif end_unbindable:
                        ended = True
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                        return
            await send(message)

        try:
            await app(scope, receive, watching_send)
        finally:
            for key in opened:
                self.sessions.pop(key, None)
        return ended


def naming(scope: Scope, pairs: list[tuple[str, str]], session_id: str) -> Scope:
    """`scope` with every session parameter of its query (`pairs`) set to `session_id`."""
    query = urlencode([(name, session_id if name in SESSION_PARAMETERS else value) for name, value in pairs])
    return dict(scope, query_string=query.encode("latin-1"))


def nobodys_session(scope: Scope, pairs: list[tuple[str, str]]) -> Scope:
    """`scope` naming a session nobody has: the app answers as it answers for a session it does not have."""
    return naming(scope, pairs, uuid.uuid4().hex)


class SSESessionMiddleware:
    """Bind each HTTP+SSE session to the principal that opened its stream (see the module's docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._streams = OpenStreams()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("query_string"):
            scope = self._bound(scope)
        method = scope["method"]
        if method != "POST" and method.upper() == "GET":  # a server that folds case must not open an unwatched one
            owner = _owner(current_identity())
            if await self._streams.serve(self.app, scope, receive, send, owner, end_unbindable=True):
                log_decision(scope, layer=LAYER, decision="deny", reason="endpoint_unbindable", principal=_principal())
        else:
            await self.app(scope, receive, send)

    def _bound(self, scope: Scope) -> Scope:
        """`scope` with its query naming the session as the app wrote it, if the caller opened it; else a session
        nobody has. Queries that name none pass as they came."""
        named = self._streams.named_in(scope)
        if named is None:
            return scope
        pairs, session = named
        identity = current_identity()
        if session is not None and session[0] == _owner(identity):
            log_decision(scope, layer=LAYER, decision="allow", reason="session_owner", principal=_principal(identity))
            return naming(scope, pairs, session[2])
        reason = "unknown_session" if session is None else "not_session_owner"
        log_decision(scope, layer=LAYER, decision="deny", reason=reason, principal=_principal(identity))
        return nobodys_session(scope, pairs)


def _principal(identity: AccessIdentity | None = None) -> str | None:
    identity = identity or current_identity()
    return identity.principal if identity is not None else None


def _named_session(endpoint: str) -> tuple[str, str] | None:
    """(query parameter, session id) from an `endpoint` event's URI; None unless it names exactly one session."""
    pairs = parse_qsl(urlsplit(endpoint).query, keep_blank_values=True)
    named = [(name, value) for name, value in pairs if name in SESSION_PARAMETERS]
    return named[0] if len(named) == 1 and named[0][1] else None


class _FirstEvent:
    """The name and data of an event stream's first event, from chunks of any size; comments skipped."""

    def __init__(self) -> None:
        self.active = False
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> tuple[str, str] | None:
        """The first event once it is complete (then stops watching); None until then."""
        self._buffer += chunk
        name = "message"
        data: list[str] = []
        for line, complete in _lines(bytes(self._buffer)):
            if not complete:
                break
            if not line:
                if data:
                    self.active = False
                    self._buffer = bytearray()
                    return name, "\n".join(data)
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        if len(self._buffer) > _MAX_FIRST_EVENT:
            self.active = False
        return None


def _lines(buffer: bytes) -> Iterator[tuple[str, bool]]:
    """Each line of `buffer` (CRLF, CR or LF ends it) and whether its end has arrived."""
    text = buffer.decode("utf-8", errors="replace")
    start = 0
    while start < len(text):
        ends = [at for at in (text.find("\r", start), text.find("\n", start)) if at != -1]
        if not ends:
            yield text[start:], False
            return
        at = min(ends)
        if text[at] == "\r" and at + 1 == len(text):
            yield text[start:at], False  # perhaps the first half of CRLF
            return
        yield text[start:at], True
        start = at + 2 if text.startswith("\r\n", at) else at + 1
