"""The request-size layer, outermost: a body larger than the limit is refused before anything reads it, whatever the
method, path or credential, and a body that turns out larger than it said is cut off where it crosses the limit."""

from __future__ import annotations

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..audit import log_decision
from ..config import check_whole
from ..jsonrpc import DEFAULT_MAX_BODY_BYTES

LAYER = "body_size"
MAX_BODY_BYTES_LIMIT = 64 * 1024 * 1024

_CONTENT_LENGTH = b"content-length"
_TRANSFER_ENCODING = b"transfer-encoding"
_DISCONNECT: Message = {"type": "http.disconnect"}
_REFUSAL_BODIES = {400: b'{"error":"bad_content_length"}', 413: b'{"error":"body_too_large"}'}


def _declared_refusal(headers: list[tuple[bytes, bytes]], max_bytes: int) -> tuple[int, str] | None:
    """(status, reason) when the request's own framing headers already refuse it, else None."""
    lengths = []
    chunked = False
    for name, value in headers:
        # ASGI servers lower-case names; one that did not must not slip a second length past this check. Only names
        # of the right length are lower-cased: this runs on every request.
        size = len(name)
        if size == 14:
            if name.lower() == _CONTENT_LENGTH:
                lengths.append(value)
        elif size == 17 and name.lower() == _TRANSFER_ENCODING:
            chunked = True
    if not lengths:
        return None
    if len(lengths) > 1:
        # Even two equal copies: a proxy in front may have kept another one, or merged them differently.
        return 400, "content_length_repeated"
    if chunked:
        # Two framings at once is the shape of request smuggling: whichever one a hop believes, refuse both.
        return 400, "content_length_with_transfer_encoding"
    value = lengths[0].strip(b" \t")
    # bytes.isdigit() is ASCII digits only; "42, 42", signs, blanks and hex are all refused here.
    if not value.isdigit():
        return 400, "content_length_malformed"
    digits = value.lstrip(b"0")
    # Compared by length first: int() of thousands of digits is slow, and refused past Python's own digit limit.
    if len(digits) > len(str(max_bytes)) or int(digits or b"0") > max_bytes:
        return 413, "declared_too_large"
    return None


async def _send_refusal(send: Send, status: int) -> None:
    body = _REFUSAL_BODIES[status]
    # `Connection: close`: the rest of the body, never read, must not be taken for the next request.
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodySizeLimitMiddleware:
    """Refuse request bodies larger than `max_body_bytes`, for every HTTP method and path.

    A declared `Content-Length` over the limit: 413 before the body is read (so a client that sent
    `Expect: 100-continue` never sends it). A repeated or malformed `Content-Length`, or one beside
    `Transfer-Encoding`: 400. A body that arrives larger than the limit (chunked, or more than a server let through
    for its length) is cut off once it crosses the limit: the app is told the client disconnected and gets no more of
    it, and the client gets 413, or, if the app had already started its answer, that answer is left unfinished and the
    server closes the connection (a second status cannot be sent, and a truncated answer must not look complete).
    Both refusals say `Connection: close`. WebSocket messages are not request bodies, and lifespan is not a request:
    both pass untouched.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = check_whole("max_body_bytes", max_body_bytes, 1, MAX_BODY_BYTES_LIMIT)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = _declared_refusal(scope["headers"], self.max_body_bytes)
        if refusal is not None:
            status, reason = refusal
            log_decision(scope, layer=LAYER, decision="deny", reason=reason)
            await _send_refusal(send, status)
            return
        body = _BoundedBody(scope, receive, send, self.max_body_bytes)
        try:
            await self.app(scope, body.receive, body.send)
        except ClientDisconnect:
            # Starlette's answer to the disconnect this layer handed the app: the client already has its 413.
            if not body.cut_off:
                raise


class _BoundedBody:
    """One request's `receive` and `send`, counting the body as it arrives."""

    __slots__ = ("_receive", "_scope", "_send", "cut_off", "max_bytes", "received", "response_started")

    def __init__(self, scope: Scope, receive: Receive, send: Send, max_bytes: int) -> None:
        self._scope = scope
        self._receive = receive
        self._send = send
        self.max_bytes = max_bytes
        self.received = 0
        self.response_started = False
        self.cut_off = False

    async def receive(self) -> Message:
        if self.cut_off:
            return _DISCONNECT
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.max_bytes:
                await self._cut_off()
                return _DISCONNECT
        return message

    async def send(self, message: Message) -> None:
        if self.cut_off:
            return  # the app's answer to a body it never got whole: the client has been answered already
        if message["type"] == "http.response.start":
            self.response_started = True
        await self._send(message)

    async def _cut_off(self) -> None:
        self.cut_off = True
        if self.response_started:
            log_decision(self._scope, layer=LAYER, decision="deny", reason="body_too_large_after_response_start")
            return
        log_decision(self._scope, layer=LAYER, decision="deny", reason="body_too_large")
        await _send_refusal(self._send, 413)
