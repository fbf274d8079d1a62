"""Reading bounded JSON-RPC request bodies, and rewriting JSON and SSE responses without re-encoding them.

Everything here is pure: no policy, no logging. The tool-policy layer decides; these helpers read what a client sent
exactly as strictly as any server could, and edit what a server answered with as few bytes changed as possible.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any

from mcp_types import INVALID_REQUEST, PARSE_ERROR
from starlette.types import Message, Receive

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
"""The mcp SDK's own limit for a request body."""

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_WHITESPACE_CHARS = " \t\n\r"
_DECODER = json.JSONDecoder()
# The C scanner behind `raw_decode`, called directly: one Python frame less per value, in loops that decode many.
# It raises StopIteration (not ValueError) when no value starts at the index.
_scan = _DECODER.scan_once  # type: ignore[attr-defined]
_BYTE_ORDER_MARKS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


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


# -- request bodies ------------------------------------------------------------------------------------------


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
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which copy of a repeated key wins; a body they could read differently is refused.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise RejectedRequest(400, PARSE_ERROR, "Duplicate key in JSON object", "duplicate_key")
    return obj


# `JSONDecoder.decode` is this scanner between two whitespace regexes; `parse_json_body` does the same work inline.
_strict_scan = json.JSONDecoder(object_pairs_hook=_refuse_duplicate_keys).scan_once  # type: ignore[attr-defined]


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
        value, end = _strict_scan(text, _skip_whitespace(text, 0))
    except (StopIteration, ValueError, RecursionError):
        # StopIteration: no value at all; ValueError covers JSONDecodeError and over-long integer literals; deep
        # nesting raises RecursionError.
        raise RejectedRequest(400, PARSE_ERROR, "Parse error", "parse_error") from None
    if end != len(text) and _skip_whitespace(text, end) != len(text):
        raise RejectedRequest(400, PARSE_ERROR, "Parse error", "parse_error")
    return value


def value_span(text: str, path: tuple[str, ...]) -> tuple[int, int] | None:
    """Where the value at `path` (object keys from the top) sits in the JSON text `text`: (start, end) offsets.

    `text` must already be known to be valid JSON. A repeated key's first copy counts: request bodies with repeated
    keys are refused before this is used, and servers serialise from maps, which cannot repeat a key.
    """
    start = _value_start(text, path)
    if start is None:
        return None
    _, end = _DECODER.raw_decode(text, start)
    return start, end


def _value_start(text: str, path: tuple[str, ...]) -> int | None:
    start = _skip_whitespace(text, 0)
    for key in path:
        if not text.startswith("{", start):
            return None
        found = _member_starts(text, start, (key,))[0]
        if found is None:
            return None
        start = found
    return start


def _member_starts(text: str, start: int, keys: tuple[str, ...]) -> list[int | None]:
    """Where the value of each of `keys` starts in the object starting at `start` (first copy; None if absent).

    One walk for all the keys, stopping once each is found; values not asked for are scanned past, not kept.
    """
    found: list[int | None] = [None] * len(keys)
    missing = len(keys)
    index = _skip_whitespace(text, start + 1)
    if text.startswith("}", index):
        return found
    try:
        while True:
            key, index = scanstring(text, index + 1)
            index = _skip_whitespace(text, _skip_whitespace(text, index) + 1)
            if key in keys and found[keys.index(key)] is None:
                found[keys.index(key)] = index
                missing -= 1
                if not missing:
                    return found
            index = _skip_whitespace(text, _scan(text, index)[1])
            if text[index] == "}":
                return found
            index = _skip_whitespace(text, index + 1)
    except StopIteration as error:
        raise json.JSONDecodeError("Expecting value", text, error.value) from None


def _skip_whitespace(text: str, index: int) -> int:
    # Most JSON on the wire is compact: a character test is much cheaper than the regex it usually spares.
    if index < len(text) and text[index] not in _WHITESPACE_CHARS:
        return index
    return _WHITESPACE.match(text, index).end()  # type: ignore[union-attr]


def mark_string(text: str, path: tuple[str, ...], marker: str, *, prefix: bool) -> str:
    """`text` with `marker` added inside the JSON string at `path`, every other byte untouched.

    `marker` must be plain ASCII letters, digits and hyphens, so it needs no escaping and survives any encoder.
    """
    span = value_span(text, path)
    if span is None or text[span[0]] != '"':
        raise ValueError(f"no string at {'.'.join(path)}")
    at = span[0] + 1 if prefix else span[1] - 1
    return text[:at] + marker + text[at:]


# -- responses -------------------------------------------------------------------------------------------------

Rewrite = Callable[[str], str | None]
"""One JSON-RPC message's text in, its replacement out, or None to leave it exactly as it was."""


def same_json_value(a: Any, b: Any) -> bool:
    # 1, 1.0 and true are equal in Python but are different JSON-RPC ids.
    return type(a) is type(b) and a == b


def listing_filter(request_id: Any, list_key: str, keep: Callable[[Any], bool]) -> Rewrite:
    """A rewrite that drops the entries of `result[list_key]` that `keep` refuses, in the response to `request_id`.

    Only the dropped entries' bytes go; everything else (cursors, `_meta`, the server's own escaping) stays.
    """

    def rewrite(text: str) -> str | None:
        try:
            return _filtered_listing(text, request_id, list_key, keep)
        except (ValueError, IndexError, StopIteration):
            # Not the JSON-RPC response we are waiting for (a comment, a ping, another message shape).
            return None

    return rewrite


def _filtered_listing(text: str, request_id: Any, list_key: str, keep: Callable[[Any], bool]) -> str | None:
    top = _skip_whitespace(text, 0)
    if not text.startswith("{", top):
        return None
    id_start, result_start = _member_starts(text, top, ("id", "result"))
    if id_start is None or not same_json_value(_DECODER.raw_decode(text, id_start)[0], request_id):
        return None
    if result_start is None or not text.startswith("{", result_start):
        return None
    start = _member_starts(text, result_start, (list_key,))[0]
    if start is None or text[start] != "[":
        return None
    # Each entry is decoded once, by the C scanner, to be judged; the loop around it is the per-entry overhead, so
    # whitespace (rare: servers answer compactly) is tested for before the regex is called to skip it.
    kept: list[str] = []
    dropped = False
    index = _skip_whitespace(text, start + 1)
    while text[index] != "]":
        entry, end = _scan(text, index)
        if keep(entry):
            kept.append(text[index:end])
        else:
            dropped = True
        index = _skip_whitespace(text, end) if text[end] in _WHITESPACE_CHARS else end
        if text[index] == ",":
            index += 1
            if text[index] in _WHITESPACE_CHARS:
                index = _skip_whitespace(text, index)
    if not dropped:
        return None
    return text[:start] + "[" + ",".join(kept) + "]" + text[index + 1 :]


def marker_remover(marker: str) -> Rewrite:
    def rewrite(text: str) -> str | None:
        return text.replace(marker, "") if marker in text else None

    return rewrite


def rewrite_json_body(body: bytes, rewrite: Rewrite) -> bytes:
    """A whole `application/json` body through `rewrite`; bodies that are not UTF-8 are left as they are."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return body
    rewritten = rewrite(text)
    return body if rewritten is None else rewritten.encode("utf-8")


class SSERewriter:
    """Applies a `Rewrite` to each `data` payload of a `text/event-stream`, fed in chunks of any size.

    Frames are held until their blank line arrives (a frame and its `\\r\\n` may be split anywhere), then passed on
    byte for byte unless the rewrite changed their data. Scanning resumes where it stopped, so one-byte chunks cost
    linear time.
    """

    def __init__(self, rewrite: Rewrite) -> None:
        self._rewrite = rewrite
        self._buffer = bytearray()
        self._scanned = 0
        self._frame: list[tuple[bytes, bytes]] = []  # (line, its line ending)

    def feed(self, chunk: bytes) -> bytes:
        self._buffer += chunk
        return self._drain(final=False)

    def close(self) -> bytes:
        """The end of the stream: finish what can be finished; an unterminated last frame goes out as it came."""
        out = self._drain(final=True)
        rest = b"".join(line + ending for line, ending in self._frame) + bytes(self._buffer)
        self._frame = []
        self._buffer.clear()
        self._scanned = 0
        return out + rest

    def _drain(self, *, final: bool) -> bytes:
        out = bytearray()
        buffer = self._buffer
        line_start = 0
        # Line ends are found with `find` (memchr), many times faster than a regex over a long `data` line. The next
        # CR and LF are remembered until passed (-1: none left), so each byte is searched once.
        cr = lf = -2
        while True:
            if -1 != cr < self._scanned:
                cr = buffer.find(b"\r", self._scanned)
            if -1 != lf < self._scanned:
                lf = buffer.find(b"\n", self._scanned)
            at = lf if cr == -1 or -1 != lf < cr else cr
            if at == -1:
                self._scanned = len(buffer)
                break
            end = at + 2 if at == cr and lf == cr + 1 else at + 1  # CRLF, or a lone CR or LF
            if not final and at == cr == len(buffer) - 1:
                # A lone CR at the end may be the first half of CRLF: wait for the next byte.
                self._scanned = at
                break
            line = bytes(buffer[line_start:at])
            ending = bytes(buffer[at:end])
            line_start = self._scanned = end
            if line:
                self._frame.append((line, ending))
            else:
                out += self._finish_frame(ending)
        del self._buffer[:line_start]
        self._scanned -= line_start
        return bytes(out)

    def _finish_frame(self, blank_line: bytes) -> bytes:
        frame, self._frame = self._frame, []
        original = b"".join(line + ending for line, ending in frame) + blank_line
        data_lines = [_field_value(line) for line, _ in frame if _field_name(line) == b"data"]
        if not data_lines:
            return original
        try:
            data = b"\n".join(data_lines).decode("utf-8")
        except UnicodeDecodeError:
            return original
        rewritten = self._rewrite(data)
        if rewritten is None:
            return original
        out = bytearray()
        for line, ending in frame:
            if _field_name(line) != b"data":
                out += line + ending
            elif data_lines:
                for data_line in rewritten.split("\n"):
                    out += b"data: " + data_line.encode("utf-8") + ending
                data_lines = []
        return bytes(out + blank_line)


def _field_name(line: bytes) -> bytes:
    return line.partition(b":")[0]


def _field_value(line: bytes) -> bytes:
    value = line.partition(b":")[2]
    return value[1:] if value.startswith(b" ") else value


class StreamingReplace:
    """Removes every occurrence of `needle` from a byte stream fed in chunks of any size."""

    def __init__(self, needle: bytes) -> None:
        self._needle = needle
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        data = (self._tail + chunk).replace(self._needle, b"")
        keep = min(len(self._needle) - 1, len(data))
        # Hold back only a suffix that could still grow into the needle.
        while keep and not self._needle.startswith(data[len(data) - keep :]):
            keep -= 1
        self._tail = data[len(data) - keep :] if keep else b""
        return data[: len(data) - keep]

    def close(self) -> bytes:
        rest, self._tail = self._tail, b""
        return rest
