"""The innermost layer: per-caller tool policy, enforced on the JSON-RPC messages themselves.

A refused `tools/call` must look exactly like a call to a tool that does not exist, whatever the server says for
one. So it is not answered here: its name gets a random marker (`secret` becomes `secret-denied-<hex>`), the app
answers for that name in its own words, status and format, and the marker is removed from the answer. Prompts and
resources work the same way when the policy covers them (the marker goes in front of a URI, so no URI template
matches it): `prompts/get`, `resources/read`, `resources/subscribe` and `unsubscribe`, the URIs of a
`subscriptions/listen`, and the prompt or template a `completion/complete` refers to. A resource rule keyed by a URI
template covers every URI the template could match.

`tools/list` (and the prompt and resource listings) are filtered in the response, JSON or SSE, per caller.

On the older HTTP+SSE transport every POST is answered `202 Accepted` and its answer comes on the session's event
stream (`GET /sse`): that stream is rewritten as a GET stream is (below), for the principal who opened it, which
`SSESessionMiddleware` makes the only one who may post to it. Answers to the guard's own listing requests are taken
off it. A POST naming a session whose stream this layer has not seen open (the layer wrapped around the message
endpoint alone, say) would be answered where it cannot rewrite: it goes on naming a session nobody has.

An answer the guard rewrites must come back where the guard can rewrite it, whatever else the client sends: such a
request travels under an id of the guard's own (see `jsonrpc.ids`), so no other request's id can take its answer,
and the caller's id is put back in the answer. The id says how the answer is to be rewritten, so the session's GET
stream (where a resumed stream is replayed) is rewritten the same way; markers are removed there too.

A tool or prompt may have more than one name at the server (FastMCP's hashed addresses, say). When the policy has
rules, a name without a rule of its own is allowed only if the app lists it (see `listed_names`). What the guard
cannot see: a tool whose own code runs another tool, prompt or resource named in its arguments.

Answers this layer rewrites are asked for without `Accept-Encoding`, and one that comes back compressed anyway is
refused (502) rather than passed on unread.

Two answers the SDK gets wrong are put right here: a GET that asks to resume a stream, which the SDK without an event
store leaves unanswered (a 500 from the server), gets a 400; and a request whose session its client ends while it is
in flight gets the 404 of an ended session instead of the SDK's 500.

Every POST body is read (bounded) and parsed strictly before the app sees it, because what the app would parse is
what must be judged: anything that two parsers could read differently is refused with a 4xx JSON-RPC error.
Mount this layer around the MCP endpoint; it reads every POST that reaches it.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from mcp.shared.inbound import (
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    NAME_BEARING_METHODS,
    decode_header_value,
    encode_header_value,
)
from mcp_types import HEADER_MISMATCH, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST
from starlette.routing import Mount, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from ..audit import log_decision
from ..identity import AccessIdentity, current_identity
from ..jsonrpc import (
    DEFAULT_MAX_BODY_BYTES,
    DROP_EVENT,
    GUARD_ID_PREFIX,
    GUARD_TEXTS,
    MARKER,
    ClientGone,
    Edit,
    GuardId,
    ListingFilter,
    ListingShapes,
    RejectedRequest,
    Replacement,
    Rewrite,
    SSERewriter,
    StreamingReplace,
    apply_edits,
    caller_id_text,
    error_body,
    guard_ids_in,
    item_spans,
    listing_filter,
    parse_json_body,
    read_body,
    replace_all,
    replaying,
    restore,
    rewrite_json_body,
    string_mark,
    value_span,
)
from ..policy import Family, ToolPolicy
from .listed_names import FETCH_KIND, ListedNames, StreamedAnswers, fetch_listing
from .sse import OpenStreams, nobodys_session

LAYER = "tool_policy"
logger = logging.getLogger("mcp_access_guard")


@dataclass(frozen=True, slots=True)
class _Target:
    family: Family
    path: tuple[str, ...]  # where the name or URI is in the request
    marker_in_front: bool


@dataclass(frozen=True, slots=True)
class _Listing:
    family: Family
    list_key: str  # where the entries are in the result
    name_key: str  # what names each entry
    kind: str  # the letter in the guard's id that asks for this filter


_TARGETED: Final = {
    "tools/call": _Target("tool", ("params", "name"), False),
    "prompts/get": _Target("prompt", ("params", "name"), False),
    "resources/read": _Target("resource", ("params", "uri"), True),
    "resources/subscribe": _Target("resource", ("params", "uri"), True),
    "resources/unsubscribe": _Target("resource", ("params", "uri"), True),
}
_COMPLETION_REFS: Final = {
    "ref/prompt": _Target("prompt", ("params", "ref", "name"), False),
    "ref/resource": _Target("resource", ("params", "ref", "uri"), True),
}
_LISTEN_TARGET: Final = _Target("resource", ("params", "notifications", "resourceSubscriptions"), True)
_MAX_LISTEN_URIS = 1000  # so that marking them all stays within the room the body has for the guard's edits
_LISTINGS: Final = {
    "tools/list": _Listing("tool", "tools", "name", "t"),
    "prompts/list": _Listing("prompt", "prompts", "name", "p"),
    "resources/list": _Listing("resource", "resources", "uri", "r"),
    "resources/templates/list": _Listing("resource", "resourceTemplates", "uriTemplate", "u"),
}
_LISTING_KINDS: Final = {listing.kind: listing for listing in _LISTINGS.values()}
_REFUSED_KIND = "x"  # the answer only needs markers removed
_GUARDED_METHODS = frozenset(_TARGETED) | frozenset(_LISTINGS) | {"completion/complete", "subscriptions/listen"}
_NOT_A_LETTER = re.compile(r"[^a-z]")
_GUARDED_LETTERS = frozenset(_NOT_A_LETTER.sub("", method) for method in _GUARDED_METHODS)
_ENDED_SESSIONS_KEPT = 1024


@dataclass(slots=True)
class _Verdict:
    """What to do with one inspected request: forward `body`, and rewrite the answer with `rewrite` (one JSON-RPC
    message at a time) and then `replacements` (every byte)."""

    body: bytes
    rewrite: Rewrite | None = None
    replacements: list[Replacement] = field(default_factory=list)
    mcp_name: str | None = None
    # A whole JSON answer done in one step (rewritten and restored), or None when the general way must be taken.
    finish: Callable[[bytes], bytes | None] | None = None


class ToolPolicyMiddleware:
    """Enforce a `ToolPolicy` on any MCP server behind it, for the identity `current_identity()` gives."""

    def __init__(self, app: ASGIApp, policy: ToolPolicy, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.policy = policy
        self.max_body_bytes = max_body_bytes
        self._listed: dict[Family, ListedNames] = {"tool": ListedNames(), "prompt": ListedNames()}
        self._ended_sessions: OrderedDict[str, None] = OrderedDict()
        self._streamed = StreamedAnswers()
        self._streams = OpenStreams()
        self._listing_shapes = ListingShapes(reserved=GUARD_TEXTS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            # JSON-RPC over a websocket is not inspected here, so it is not let through either.
            log_decision(scope, layer=LAYER, decision="deny", reason="websocket", principal=_principal())
            await WebSocketClose(code=1008)(scope, receive, send)
            return
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            return  # a kind of connection this layer knows nothing of does not reach the app
        # Methods are case-sensitive, but a server that folds them must not see an uninspected POST.
        method = scope["method"].upper()
        if method == "POST":
            await self._serve_post(scope, receive, send)
        elif method == "GET":
            await self._serve_get(scope, receive, send)
        elif method == "DELETE":
            await self._serve_delete(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    # -- POST: one JSON-RPC message, judged before the app sees it -------------------------------------------------

    async def _serve_post(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _RequestHeaders(scope["headers"])
        identity = current_identity()
        if scope.get("query_string"):
            named = self._streams.named_in(scope)
            if named is not None and named[1] is None:
                log_decision(scope, layer=LAYER, decision="deny", reason="stream_not_seen", principal=_principal())
                scope = nobodys_session(scope, named[0])
        try:
            _refuse_other_encodings(headers)
            body = await read_body(receive, self.max_body_bytes, headers.content_length)
            verdict = await self._inspect(headers, body, identity, scope)
        except ClientGone:
            return
        except RejectedRequest as refusal:
            log_decision(scope, layer=LAYER, decision="deny", reason=refusal.reason, principal=_principal(identity))
            await _send_refusal(refusal, send)
            return

        ended = self._session_ended(headers.session_id)
        if verdict is None:
            if ended is not None:
                send = _Answer(send, ended=ended).send
            await self.app(scope, replaying(body, receive), send)
            return
        if verdict.body is not body or verdict.mcp_name is not None:
            scope = dict(scope, headers=_forwarded_headers(scope, verdict))
        answer = _Answer(
            send, rewrite=verdict.rewrite, replacements=verdict.replacements, ended=ended, finish=verdict.finish
        )
        await self.app(scope, replaying(verdict.body, receive), answer.send)

    async def _inspect(
        self, headers: _RequestHeaders, body: bytes, identity: AccessIdentity | None, scope: Scope
    ) -> _Verdict | None:
        """What to do with the request; None (the common case) means: forward it as it came."""
        message = parse_json_body(body)
        if isinstance(message, list):
            raise RejectedRequest(400, INVALID_REQUEST, "Batch requests are not accepted", "batch")
        if not isinstance(message, dict):
            raise RejectedRequest(400, INVALID_REQUEST, "Body must be a JSON-RPC object", "not_an_object")
        method = message.get("method")
        _check_routing_headers(headers, message, method)
        request_id = message.get("id")
        if isinstance(request_id, str) and request_id.startswith(GUARD_ID_PREFIX):
            raise RejectedRequest(400, INVALID_REQUEST, "This request id is reserved", "reserved_id")
        if method is None:
            return None  # a client's response to a server request: nothing to decide
        if not isinstance(method, str):
            raise RejectedRequest(400, INVALID_REQUEST, "JSON-RPC method must be a string", "method_not_string")
        if method not in _GUARDED_METHODS:
            if _looks_like_guarded(method):
                raise RejectedRequest(400, INVALID_REQUEST, "Unrecognised method spelling", "method_spelling")
            return None
        if not self._covers(method):
            return None
        # Every request of a covered method is held to this, whatever it names, so a refusal here tells nothing.
        caller_id = caller_id_text(request_id) if "id" in message else None
        if "id" in message and caller_id is None:
            raise RejectedRequest(
                400, INVALID_REQUEST, "Request id must be an integer or a plain string of up to 128 characters", "id"
            )

        listing = _LISTINGS.get(method)
        if listing is not None:
            if caller_id is None:
                return None  # a notification: no answer to filter
            principal = _principal(identity)
            if self.policy.hides_nothing_from(listing.family, identity):
                # Decided before the answer is read: it goes to the caller as the app wrote it, never decoded.
                log_decision(scope, layer=LAYER, decision="allow", reason="listing_all_shown", principal=principal)
                return None
            log_decision(scope, layer=LAYER, decision="allow", reason="listing_filtered", principal=principal)
            guard_id = GuardId.new(listing.kind, caller_id)
            listing_filter = self._listing_filter(listing, guard_id, identity)
            verdict = self._rewritten(body, guard_id, [], rewrite=listing_filter)
            verdict.finish = functools.partial(listing_filter.finished_body, caller_id=caller_id)
            return verdict

        refused = await self._refused(scope, message, method, identity)
        if not refused:
            return None
        text = body.decode("utf-8")
        guard_id = GuardId.new(_REFUSED_KIND, caller_id or '""')
        edits = [
            string_mark(text, _span(text, target, index), guard_id.marker, prefix=target.marker_in_front)
            for target, index in refused
        ]
        verdict = self._rewritten(body, guard_id, edits, text=text, with_id=caller_id is not None)
        if method in NAME_BEARING_METHODS:
            name = message["params"][NAME_BEARING_METHODS[method]]
            target = refused[0][0]
            verdict.mcp_name = guard_id.marker + name if target.marker_in_front else name + guard_id.marker
        return verdict

    def _covers(self, method: str) -> bool:
        if method == "completion/complete":
            return self.policy.covers("prompt") or self.policy.covers("resource")
        if method == "subscriptions/listen":
            return self.policy.covers("resource")
        target = _TARGETED.get(method)
        return self.policy.covers(target.family if target is not None else _LISTINGS[method].family)

    def _rewritten(
        self,
        body: bytes,
        guard_id: GuardId,
        edits: list[Edit],
        *,
        text: str | None = None,
        with_id: bool = True,
        rewrite: Rewrite | None = None,
    ) -> _Verdict:
        """The request with `edits` made and, if it has an id, the guard's id in place of the caller's."""
        if with_id and not edits:
            # The way clients write it, compactly, the id second: its place is known without a scan, in the ASCII
            # start of the body, where offsets into the text are offsets into the bytes.
            usual_end = _USUAL_ID_START + len(guard_id.caller)
            if (
                body.startswith(_USUAL_REQUEST_START)
                and body[_USUAL_ID_START:usual_end] == guard_id.caller.encode("ascii")
                and body[usual_end : usual_end + 1] in (b",", b"}")
            ):
                new_body = body[:_USUAL_ID_START] + guard_id.json.encode("ascii") + body[usual_end:]
                return _Verdict(new_body, rewrite, guard_id.restorations())
        text = body.decode("utf-8") if text is None else text
        if with_id:
            id_span = value_span(text, ("id",))
            assert id_span is not None
            edits = [*edits, (*id_span, guard_id.json)]
        return _Verdict(apply_edits(text, edits).encode("utf-8"), rewrite, guard_id.restorations())

    async def _refused(
        self, scope: Scope, message: dict[str, Any], method: str, identity: AccessIdentity | None
    ) -> list[tuple[_Target, int | None]]:
        """The names (or URIs) this request may not use: what they name, and for a list, where in it they are."""
        refused = []
        for target, name, index in _named(message, method):
            decision = self._decide(target.family, name, identity)
            if decision is None:  # a name the app has not been seen to list: ask it, then decide
                listed_names = self._listed[target.family]
                await listed_names.refresh(functools.partial(self._fetch_listing, scope, message, target.family))
                decision = self._decide(target.family, name, identity) or (False, "not_listed")
            allowed, reason = decision
            log_decision(
                scope,
                layer=LAYER,
                decision="allow" if allowed else "deny",
                reason=reason,
                principal=_principal(identity),
                tool=name,
            )
            if not allowed:
                refused.append((target, index))
        return refused

    def _decide(self, family: Family, name: str, identity: AccessIdentity | None) -> tuple[bool, str] | None:
        """(allowed, reason), or None when only the app's listing can tell: a name without a rule it is not known
        to list, when the policy has rules."""
        allowed, reason = self.policy.decide(family, name, identity)
        listed_names = self._listed.get(family)
        if not allowed or listed_names is None or not self.policy.covers(family):
            return allowed, reason
        listed, addressed = listed_names.resolve(name)
        if reason == "default_allow" and not listed and not addressed:
            return None
        for other in addressed:  # another spelling of listed names: judged as they are
            allowed, reason = self.policy.decide(family, other, identity)
            if not allowed:
                return False, reason
        return True, reason

    async def _fetch_listing(self, scope: Scope, message: dict[str, Any], family: Family) -> list[Any] | None:
        method, listing = next((m, listing) for m, listing in _LISTINGS.items() if listing.family == family)
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        # The caller's protocol metadata, which a modern-era app needs; not its progress token.
        meta = {key: value for key, value in meta.items() if key != "progressToken"} if isinstance(meta, dict) else None
        return await fetch_listing(
            self.app, scope, method=method, list_key=listing.list_key, meta=meta, streamed=self._streamed
        )

    def _listing_filter(self, listing: _Listing, guard_id: GuardId, identity: AccessIdentity | None) -> ListingFilter:
        family, policy = listing.family, self.policy

        def hidden(names: frozenset[str]) -> frozenset[str]:
            return policy.hidden(family, names, identity)

        return listing_filter(guard_id.text, listing.list_key, listing.name_key, hidden, self._listing_shapes)

    # -- GET: the session's own stream, and resumed ones -----------------------------------------------------------

    async def _serve_get(self, scope: Scope, receive: Receive, send: Send) -> None:
        identity = current_identity()
        if any(name == b"accept-encoding" for name, _ in scope["headers"]):
            scope = dict(scope, headers=[header for header in scope["headers"] if header[0] != b"accept-encoding"])
        answer = _Answer(send, rewrite=self._scrubber(identity), streams_only=True)
        await self._streams.serve(self.app, scope, receive, answer.send, None, end_unbindable=False)
        if answer.started or not any(name == b"last-event-id" for name, _ in scope["headers"]):
            return
        # The SDK without an event store returns without answering a request to resume a stream (uvicorn then
        # answers 500): answered here instead, as the SDK answers other requests it cannot serve.
        log_decision(scope, layer=LAYER, decision="deny", reason="resume_unsupported", principal=_principal(identity))
        session = [(name, value) for name, value in scope["headers"] if name == b"mcp-session-id"][:1]
        await _send_error(send, 400, INVALID_REQUEST, "Bad Request: this server cannot resume streams", session)

    def _scrubber(self, identity: AccessIdentity | None) -> Rewrite:
        """A rewrite for messages that reach a stream the guard did not send the request on (a resumed stream
        replayed on the GET stream, every answer of the HTTP+SSE transport): each answer under a guard id gets the
        rewrite that id asks for, and answers to the guard's own listing requests go to it instead."""

        def scrub(text: str) -> str | None:
            if GUARD_ID_PREFIX not in text and "-denied-" not in text:
                return None
            rewritten = text
            for guard_id in guard_ids_in(text):
                if guard_id.kind == FETCH_KIND:
                    answer = _answer_to(text, guard_id.text)
                    if answer is not None:
                        self._streamed.deliver(guard_id.text, answer)
                        return DROP_EVENT
                listing = _LISTING_KINDS.get(guard_id.kind)
                if listing is not None:
                    rewritten = self._listing_filter(listing, guard_id, identity)(rewritten) or rewritten
                rewritten = restore(rewritten, guard_id)
            rewritten = MARKER.sub("", rewritten)
            return None if rewritten == text else rewritten

        return scrub

    # -- DELETE: a session ends ------------------------------------------------------------------------------------

    async def _serve_delete(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = _RequestHeaders(scope["headers"]).session_id
        if session is None:
            await self.app(scope, receive, send)
            return
        # Noted before the app ends the session: requests still in flight in it are answered while it ends.
        self._ended_sessions[session] = None
        if len(self._ended_sessions) > _ENDED_SESSIONS_KEPT:
            self._ended_sessions.popitem(last=False)
        status = 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        if not 200 <= status < 300:
            self._ended_sessions.pop(session, None)

    def _session_ended(self, session: str | None) -> Callable[[], bool] | None:
        if session is None:
            return None
        return lambda: session in self._ended_sessions


def _answer_to(text: str, request_id: str) -> dict[str, Any] | None:
    """The JSON-RPC response in `text` if it answers `request_id`."""
    try:
        message = json.loads(text)
    except ValueError:
        return None
    return message if isinstance(message, dict) and message.get("id") == request_id else None


def _principal(identity: AccessIdentity | None = None) -> str | None:
    identity = identity or current_identity()
    return identity.principal if identity is not None else None


def _named(message: dict[str, Any], method: str) -> list[tuple[_Target, str, int | None]]:
    """The names and URIs the request uses, what family each belongs to, and for a list, where in it each is."""
    params = message.get("params")
    if method == "subscriptions/listen":
        notifications = params.get("notifications") if isinstance(params, dict) else None
        uris = notifications.get("resourceSubscriptions") if isinstance(notifications, dict) else None
        if uris is None:
            return []
        if not isinstance(uris, list) or not all(isinstance(uri, str) for uri in uris):
            raise RejectedRequest(400, INVALID_PARAMS, "resourceSubscriptions must be a list of URIs", "uri_not_string")
        if len(uris) > _MAX_LISTEN_URIS:
            raise RejectedRequest(400, INVALID_PARAMS, "Too many resourceSubscriptions", "too_many_uris")
        return [(_LISTEN_TARGET, uri, index) for index, uri in enumerate(uris)]
    if method == "completion/complete":
        ref = params.get("ref") if isinstance(params, dict) else None
        ref_type = ref.get("type") if isinstance(ref, dict) else None
        completed = _COMPLETION_REFS.get(ref_type) if isinstance(ref_type, str) else None
        if completed is None:
            raise RejectedRequest(
                400, INVALID_PARAMS, "completion/complete needs a ref/prompt or ref/resource params.ref", "ref"
            )
        target = completed
    else:
        target = _TARGETED[method]
    value: Any = message
    for key in target.path:
        value = value.get(key) if isinstance(value, dict) else None
    if not isinstance(value, str):
        where = ".".join(target.path)
        raise RejectedRequest(400, INVALID_PARAMS, f"{method} needs a string {where}", f"{target.path[-1]}_not_string")
    return [(target, value, None)]


def _span(text: str, target: _Target, index: int | None) -> tuple[int, int]:
    """Where a name `_named` found is in the request's text."""
    span = value_span(text, target.path) if index is None else item_spans(text, target.path)[index]
    assert span is not None
    return span


_USUAL_REQUEST_START = b'{"jsonrpc":"2.0","id":'
_USUAL_ID_START = len(_USUAL_REQUEST_START)
_MCP_METHOD = MCP_METHOD_HEADER.encode("latin-1")
_MCP_NAME = MCP_NAME_HEADER.encode("latin-1")


_READ_HEADERS = frozenset(
    (b"content-length", b"content-type", _MCP_METHOD, _MCP_NAME, b"content-encoding", b"mcp-session-id")
)


class _RequestHeaders:
    """The request headers this layer reads, collected in one pass over the raw list.

    Names are compared as the raw bytes ASGI gives (lower case); only the few values read are decoded. Of `Mcp-Method`
    and `Mcp-Name` the first value is kept and a repeat noted, and a `Content-Encoding` is judged as it is read: no
    list is built for headers that come once or never (this runs on every POST, and its object lives as long as the
    request).
    """

    __slots__ = (
        "content_length",
        "content_type",
        "foreign_encoding",
        "mcp_method",
        "mcp_method_repeated",
        "mcp_name",
        "mcp_name_repeated",
        "session_id",
    )

    def __init__(self, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.content_length: str | None = None
        self.content_type = ""
        self.foreign_encoding = False
        self.mcp_method: str | None = None
        self.mcp_name: str | None = None
        self.mcp_method_repeated = self.mcp_name_repeated = False
        self.session_id: str | None = None
        for name, value in raw_headers:
            if name not in _READ_HEADERS:  # most of them: one set lookup, not six comparisons
                continue
            if name == b"content-length":
                self.content_length = value.decode("latin-1")
            elif name == b"content-type":
                self.content_type = value.decode("latin-1")
            elif name == _MCP_METHOD:
                if self.mcp_method is None:
                    self.mcp_method = value.decode("latin-1")
                else:
                    self.mcp_method_repeated = True
            elif name == _MCP_NAME:
                if self.mcp_name is None:
                    self.mcp_name = value.decode("latin-1")
                else:
                    self.mcp_name_repeated = True
            elif name == b"content-encoding":
                if value.decode("latin-1").strip().lower() not in ("", "identity"):
                    self.foreign_encoding = True
            elif name == b"mcp-session-id":
                self.session_id = value.decode("latin-1")


def _refuse_other_encodings(headers: _RequestHeaders) -> None:
    # The SDK reads raw UTF-8 bytes; a proxy or another server might inflate them or honour a charset first.
    # Either way the body would be read two ways, so only one reading is accepted.
    if headers.foreign_encoding:
        raise RejectedRequest(415, INVALID_REQUEST, "Content-Encoding is not accepted on requests", "content_encoding")
    if ";" not in headers.content_type:
        return
    for parameter in headers.content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise RejectedRequest(415, INVALID_REQUEST, "Only UTF-8 request bodies are accepted", "charset")


def _looks_like_guarded(method: str) -> bool:
    """Whether a server that folds case, width, separators or stray characters could read `method` as a guarded one."""
    return _NOT_A_LETTER.sub("", unicodedata.normalize("NFKC", method).casefold()) in _GUARDED_LETTERS


def _check_routing_headers(headers: _RequestHeaders, message: dict[str, Any], method: Any) -> None:
    """`Mcp-Method` and `Mcp-Name` are hints a server or proxy may route on: they must say what the body says."""
    if headers.mcp_method is None and headers.mcp_name is None:
        return
    if headers.mcp_method_repeated or headers.mcp_name_repeated:
        header = MCP_METHOD_HEADER if headers.mcp_method_repeated else MCP_NAME_HEADER
        raise RejectedRequest(400, HEADER_MISMATCH, f"{header} header appears more than once", "header_repeated")
    if headers.mcp_method is not None and headers.mcp_method != method:
        raise _header_mismatch(MCP_METHOD_HEADER)
    name_key = NAME_BEARING_METHODS.get(method) if isinstance(method, str) else None
    if headers.mcp_name is not None and name_key is not None:
        params = message.get("params")
        body_value = params.get(name_key) if isinstance(params, dict) else None
        if decode_header_value(headers.mcp_name) != body_value:
            raise _header_mismatch(MCP_NAME_HEADER)


def _header_mismatch(header: str) -> RejectedRequest:
    return RejectedRequest(400, HEADER_MISMATCH, f"{header} header does not match the request body", "header_mismatch")


def _forwarded_headers(scope: Scope, verdict: _Verdict) -> list[tuple[bytes, bytes]]:
    """The request's headers with Content-Length (and Mcp-Name) saying what the edited body says."""
    replacements = {b"content-length": str(len(verdict.body)).encode("latin-1")}
    if verdict.mcp_name is not None and any(name == _MCP_NAME for name, _ in scope["headers"]):
        replacements[_MCP_NAME] = encode_header_value(verdict.mcp_name).encode("latin-1")
    headers = []
    replaced = set()
    for header in scope["headers"]:
        name = header[0]
        if name == b"accept-encoding":
            continue  # an answer to rewrite must come back readable
        if name in replacements:
            if name in replaced:
                continue  # one copy, as Starlette's MutableHeaders keeps
            replaced.add(name)
            header = (name, replacements[name])
        headers.append(header)  # the server's own pair when unchanged: no copy to keep alive for the request
    return headers


def _encoded(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(
        coding.strip().lower() not in (b"", b"identity")
        for name, value in headers
        if name == b"content-encoding"
        for coding in value.split(b",")
    )


async def _send_refusal(refusal: RejectedRequest, send: Send) -> None:
    await _send_error(send, refusal.status, refusal.code, refusal.message)


async def _send_error(
    send: Send, status: int, code: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = error_body(code, message)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class _Answer:
    """Wraps `send`: passes the app's response on with `rewrite` applied to each of its JSON-RPC messages (JSON or
    SSE; with `streams_only`, SSE only) and `replacements` made in every byte. A body with a length is held until
    complete so the length can be fixed. If `ended` says the request's session was ended by its client meanwhile, a
    5xx from the app becomes the 404 a request for an ended session gets.
    """

    def __init__(
        self,
        send: Send,
        *,
        rewrite: Rewrite | None = None,
        replacements: list[Replacement] | None = None,
        ended: Callable[[], bool] | None = None,
        streams_only: bool = False,
        finish: Callable[[bytes], bytes | None] | None = None,
    ) -> None:
        self._send = send
        self._streams_only = streams_only
        self._rewrite = rewrite
        self._finish = finish
        self._replacements = replacements or []
        self._ended = ended
        self.started = False
        self._dropping = False
        self._start: Message | None = None
        self._held = bytearray()
        self._sse: SSERewriter | None = None
        self._replace: StreamingReplace | None = None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            await self._on_start(message)
        elif message["type"] != "http.response.body":
            await self._send(message)
        elif self._dropping:
            return
        elif self._sse is not None or self._replace is not None or self._start is not None:
            await self._on_body(message)
        else:
            await self._send(message)

    async def _on_start(self, message: Message) -> None:
        if self._ended is not None and message["status"] >= 500 and self._ended():
            self._dropping = True
            await _send_error(self._send, 404, INVALID_REQUEST, "Session not found")
            return
        if self._rewrite is None and not self._replacements:
            await self._send(message)
            return
        # The raw pairs read directly (names are lower-case bytes in ASGI): this runs for every rewritten answer.
        headers = message.get("headers", [])
        content_type = next((value for name, value in headers if name == b"content-type"), b"")
        media_type = content_type.decode("latin-1").split(";")[0].strip().lower()
        streaming = media_type == "text/event-stream"
        if (self._streams_only and not streaming) or not (
            streaming or media_type == "application/json" or media_type.endswith("+json")
        ):
            self._rewrite = self._finish = None  # not JSON-RPC messages to rewrite: only the byte replacements apply
        if (self._rewrite is not None or self._replacements) and _encoded(headers):
            # Asked for without Accept-Encoding, and still compressed: what cannot be read is not passed on.
            logger.error("the app compressed an answer the tool policy must rewrite; it was refused (502)")
            self._dropping = True
            await _send_error(self._send, 502, INTERNAL_ERROR, "Bad Gateway: the server's answer could not be read")
            return
        # A JSON answer to rewrite is held whole, with a length or without one (sent in chunks).
        if streaming or (self._rewrite is None and not any(name == b"content-length" for name, _ in headers)):
            if self._rewrite is not None and streaming:
                self._sse = SSERewriter(self._rewrite)
            if self._replacements:
                self._replace = StreamingReplace(self._replacements)
            if self._sse is not None or self._replace is not None:
                message = {**message, "headers": [header for header in headers if header[0] != b"content-length"]}
            await self._send(message)
            return
        if self._rewrite is None and not self._replacements:
            await self._send(message)
            return
        self._start = message

    async def _on_body(self, message: Message) -> None:
        chunk: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        if self._start is None:  # streaming
            out = chunk
            if self._sse is not None:
                out = self._sse.feed(out) + (b"" if more else self._sse.close())
            if self._replace is not None:
                out = self._replace.feed(out) + (b"" if more else self._replace.close())
            if out or not more:
                await self._send({"type": "http.response.body", "body": out, "more_body": more})
            return
        self._held += chunk
        if more:
            return
        body = bytes(self._held)
        finished = self._finish(body) if self._finish is not None else None
        if finished is not None:
            body = finished
        else:
            if self._rewrite is not None:
                body = rewrite_json_body(body, self._rewrite)
            body = replace_all(body, self._replacements)
        await self._send({**self._start, "headers": _with_length(self._start.get("headers", []), len(body))})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})


def websocket_routes(app: object) -> list[str]:
    """The paths of the WebSocket routes in `app`, as far as Starlette's routers (FastAPI's too) and middleware that
    keeps its inner app as `.app` can be seen into. This layer closes every websocket, so `guard()` refuses to put a
    tool policy in front of such a route rather than serve it broken."""
    found: list[str] = []
    seen: set[int] = set()
    pending: list[tuple[object, str]] = [(app, "")]
    while pending:
        node, prefix = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, WebSocketRoute):
            found.append(prefix + node.path)
            continue
        if isinstance(node, Mount):
            pending += [(route, prefix + node.path) for route in node.routes]
            continue
        routes = getattr(node, "routes", None)
        if isinstance(routes, list):
            pending += [(route, prefix) for route in routes]
        inner = getattr(node, "app", None)
        if inner is not None:
            pending.append((inner, prefix))
    return sorted(found)


def _with_length(headers: list[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    """`headers` with their Content-Length saying `length`: one copy, where the first was (as Starlette sets it)."""
    value = str(length).encode("latin-1")
    out = []
    seen = False
    for header in headers:
        if header[0] == b"content-length":
            if seen:
                continue
            seen, header = True, (b"content-length", value)
        out.append(header)
    return out
