"""Request bodies: read them (bounded), parse them as strictly as any server could, and edit them in place."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from mcp_types import INVALID_REQUEST, PARSE_ERROR
from starlette.types import Message, Receive

from ._scanner import DECODER, make_scanner, member_starts, scan_value, skip_whitespace

SDK_MAX_BODY_BYTES = 4 * 1024 * 1024
"""The mcp SDK's own limit for a request body."""

REWRITE_ROOM = 64 * 1024
"""How much the guard's edits may add to a body (a request id of its own, markers in refused names)."""

DEFAULT_MAX_BODY_BYTES = SDK_MAX_BODY_BYTES - REWRITE_ROOM
"""The largest body the guard reads. Below the SDK's limit by `REWRITE_ROOM`: were an edited body to pass the app's
limit where the unedited one would not, the app's "too large" would tell a refused name from an unknown one."""

_BYTE_ORDER_MARKS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")

Edit = tuple[int, int, str]
"""Replace `text[start:end]` with a string."""


class RejectedRequest(Exception):
    """A request refused before the app sees it: the HTTP status, the JSON-RPC error code and a short message."""

    def __init__(self, status: int, code: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.reason = reason

    def body(self) -> bytes:
        return error_body(self.code, self.message)


class ClientGone(Exception):
    """The client disconnected before its body arrived: there is no one left to answer."""


def error_body(code: int, message: str) -> bytes:
    error = {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}
    return json.dumps(error, separators=(",", ":")).encode()


async def read_body(receive: Receive, max_bytes: int, declared_length: str | None) -> bytes:
    """The whole request body, refusing more than `max_bytes` before reading it when the client says so up front."""
    if declared_length is not None and declared_length.strip().isdigit() and int(declared_length) > max_bytes:
        raise _too_large(max_bytes)
    chunks = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if not more and not chunks and type(body) is bytes:
            # The usual case, the whole body in one message: handed on without a copy.
            if len(body) > max_bytes:
                raise _too_large(max_bytes)
            return body
        chunks += body
        if len(chunks) > max_bytes:
            raise _too_large(max_bytes)
        if not more:
            return bytes(chunks)


def _too_large(max_bytes: int) -> RejectedRequest:
    return RejectedRequest(413, INVALID_REQUEST, f"Request body larger than {max_bytes} bytes", "body_too_large")


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app `body` in one message, then defers to the real one (for disconnects)."""
    return _Replay(body, receive)


class _Replay:
    """One object rather than a closure, its cells and a list: it lives as long as the request, and each object
    alive across the app's awaits is one more for every garbage collection made meanwhile."""

    __slots__ = ("_body", "_receive")

    def __init__(self, body: bytes, receive: Receive) -> None:
        self._body: bytes | None = body
        self._receive = receive

    async def __call__(self) -> Message:
        body = self._body
        if body is None:
            return await self._receive()
        self._body = None
        return {"type": "http.request", "body": body, "more_body": False}


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which copy of a repeated key wins; a body they could read differently is refused.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise RejectedRequest(400, PARSE_ERROR, "Duplicate key in JSON object", "duplicate_key")
    return obj


# `JSONDecoder.decode` is this scanner between two whitespace regexes; `parse_json_body` does the same work inline.
_strict_scan = make_scanner(json.JSONDecoder(object_pairs_hook=_refuse_duplicate_keys))


def parse_json_body(body: bytes) -> Any:
    """Decode a request body as UTF-8 JSON, the only encoding JSON-RPC over HTTP uses; anything else is refused.

    Python's `json.loads(bytes)` would also accept UTF-16, UTF-32 and a BOM (the SDK's modern-era entry does), so the
    bytes are decoded here strictly and every other encoding is refused instead of read in one of several ways.
    """
    if body.startswith(_BYTE_ORDER_MARKS) or body[:4] in (b"\x00\x00\xfe\xff", b"\xff\xfe\x00\x00"):
        raise RejectedRequest(400, PARSE_ERROR, "Request body must be UTF-8 JSON without a byte order mark", "encoding")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RejectedRequest(400, PARSE_ERROR, "Request body must be UTF-8 JSON", "encoding") from None
    try:
        value, end = _strict_scan(text, skip_whitespace(text, 0))
    except (StopIteration, ValueError, RecursionError):
        # StopIteration: no value at all; ValueError covers JSONDecodeError and over-long integer literals; deep
        # nesting raises RecursionError.
        raise RejectedRequest(400, PARSE_ERROR, "Parse error", "parse_error") from None
    if end != len(text) and skip_whitespace(text, end) != len(text):
        raise RejectedRequest(400, PARSE_ERROR, "Parse error", "parse_error")
    return value


# -- finding and editing values in a body known to be valid JSON ------------------------------------------------------
# A repeated key's first copy counts: request bodies with repeated keys are refused before these are used, and
# servers serialise from maps, which cannot repeat a key.


def value_span(text: str, path: tuple[str, ...]) -> tuple[int, int] | None:
    """Where the value at `path` (object keys from the top) sits in the JSON text `text`: (start, end) offsets."""
    start = skip_whitespace(text, 0)
    for key in path:
        if not text.startswith("{", start):
            return None
        found = member_starts(text, start, (key,))[0]
        if found is None:
            return None
        start = found
    return start, DECODER.raw_decode(text, start)[1]


def item_spans(text: str, path: tuple[str, ...]) -> list[tuple[int, int]]:
    """Where each item of the array at `path` sits (none if there is no array there)."""
    span = value_span(text, path)
    if span is None or text[span[0]] != "[":
        return []
    spans = []
    index = skip_whitespace(text, span[0] + 1)
    while text[index] != "]":
        end = scan_value(text, index)[1]
        spans.append((index, end))
        index = skip_whitespace(text, end)
        if text[index] == ",":
            index = skip_whitespace(text, index + 1)
    return spans


def string_mark(text: str, span: tuple[int, int], marker: str, *, prefix: bool) -> Edit:
    """The edit that puts `marker` inside the JSON string at `span`, at its start or end.

    `marker` must be plain ASCII letters, digits and hyphens, so it needs no escaping and survives any encoder.
    """
    if text[span[0]] != '"':
        raise ValueError("not a JSON string")
    at = span[0] + 1 if prefix else span[1] - 1
    return at, at, marker


def apply_edits(text: str, edits: Iterable[Edit]) -> str:
    """`text` with each edit made; the edits must not overlap. Every other character is left as it was."""
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    return text
