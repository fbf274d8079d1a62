"""Responses: edit the JSON and SSE answers a server sends, changing as few bytes as possible, never re-encoding."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring_ascii
from typing import Any

from cachetools import LRUCache

from ._scanner import DECODER, member_starts, scan_value, skip_whitespace

Replacement = tuple[bytes, bytes]
"""Every occurrence of the first bytes becomes the second."""

Rewrite = Callable[[str], str | None]
"""One JSON-RPC message's text in, its replacement out, or None to leave it exactly as it was. On an event stream,
`DROP_EVENT` takes the whole event out."""

DROP_EVENT = ""
"""What a `Rewrite` returns for an event that must not reach the client (an answer to one of the guard's own
requests): no JSON-RPC message is empty."""


def same_json_value(a: Any, b: Any) -> bool:
    # 1, 1.0 and true are equal in Python but are different JSON-RPC ids.
    return type(a) is type(b) and a == b


Hidden = Callable[[frozenset[str]], frozenset[str]]
"""Which of a listing's names the caller may not see."""


def listing_filter(
    request_id: Any, list_key: str, name_key: str, hidden: Hidden, shapes: ListingShapes | None = None
) -> ListingFilter:
    """A rewrite that drops the entries of `result[list_key]` whose `name_key` is `hidden`, in the response to
    `request_id`; an entry that is not an object with a string there is dropped too (nothing vouches for it).

    Only the dropped entries' bytes go; everything else (cursors, `_meta`, the server's own escaping) stays. With
    `shapes`, a listing answered the same way before is not decoded again, and the list written for a set of hidden
    names is written once.
    """
    return ListingFilter(request_id, list_key, name_key, hidden, shapes)


class ListingFilter:
    """The `Rewrite` `listing_filter` gives; it can also finish a whole JSON body in one step (`finished_body`)."""

    __slots__ = ("_hidden", "_keys", "_request_id", "_shapes", "_usual_start")

    def __init__(
        self, request_id: Any, list_key: str, name_key: str, hidden: Hidden, shapes: ListingShapes | None
    ) -> None:
        self._request_id = request_id
        self._keys = (list_key, name_key)
        self._hidden = hidden
        self._shapes = shapes
        # The way servers write it, compactly, in this order: where `result` starts is then known without a scan.
        id_json = encode_basestring_ascii(request_id) if isinstance(request_id, str) else json.dumps(request_id)
        self._usual_start = '{"jsonrpc":"2.0","id":' + id_json + ',"result":'

    def __call__(self, text: str) -> str | None:
        try:
            return self._filtered_text(text)
        except (ValueError, IndexError, StopIteration):
            # Not the JSON-RPC response we are waiting for (a comment, a ping, another message shape).
            return None

    def finished_body(self, body: bytes, caller_id: str) -> bytes | None:
        """The whole answer filtered, its id put back as `caller_id`, in one step without decoding it: when it is
        written the usual way, its listing was read before, and its `result` holds none of the `reserved` texts of
        `shapes` (so nothing in it is the guard's to restore). None when the general way must be taken."""
        usual_start = self._usual_start.encode("ascii")
        if self._shapes is None or not body.startswith(usual_start):
            return None
        result = body[len(usual_start) :]
        try:
            shape = self._shapes.shape(result, *self._keys)
        except (ValueError, IndexError, StopIteration):
            return None
        if shape is None or shape.reserved:
            return None
        filtered = self._shapes.filtered(shape, self._hidden(shape.names))
        return b'{"jsonrpc":"2.0","id":' + caller_id.encode("ascii") + b',"result":' + (filtered or result)

    def _filtered_text(self, text: str) -> str | None:
        if text.startswith(self._usual_start):
            result_start: int | None = len(self._usual_start)
        else:
            top = skip_whitespace(text, 0)
            if not text.startswith("{", top):
                return None
            id_start, result_start = member_starts(text, top, ("id", "result"))
            if id_start is None or not same_json_value(DECODER.raw_decode(text, id_start)[0], self._request_id):
                return None
        if result_start is None or not text.startswith("{", result_start):
            return None
        result = text[result_start:].encode("utf-8")
        if self._shapes is None:
            shape = _read_shape(result, *self._keys, ())
            filtered = shape.without(self._hidden(shape.names)) if shape is not None else None
        else:
            shape = self._shapes.shape(result, *self._keys)
            filtered = self._shapes.filtered(shape, self._hidden(shape.names)) if shape is not None else None
        return None if filtered is None else text[:result_start] + filtered.decode("utf-8")


class ListingShape:
    """A `result` holding a listing, read once: its bytes, where the list is in it (its `[` and its `]`), where each
    entry is and what it names (None when it is not an object with a string name), all by byte offsets; whether any
    reserved text is in it; and the results already written for the sets of names hidden from callers so far (a
    few: a policy sorts its callers into few kinds)."""

    __slots__ = ("close", "entries", "key", "names", "reserved", "result", "start", "written")
    WRITTEN_KEPT = 8
    ENTRY_BYTES = 100  # what an entry's offsets and name cost, roughly, counted against the bound

    def __init__(
        self,
        key: tuple[str, str, int, int],
        result: bytes,
        start: int,
        entries: list[tuple[int, int, str | None]],
        close: int,
        reserved: bool,
    ) -> None:
        self.key = key
        self.result = result
        self.start = start
        self.entries = entries
        self.close = close
        self.names = frozenset(name for _, _, name in entries if name is not None)
        self.reserved = reserved
        self.written: dict[frozenset[str], bytes | None] = {}

    @property
    def size(self) -> int:
        written = sum(len(result) for result in self.written.values() if result is not None)
        return len(self.result) + self.ENTRY_BYTES * len(self.entries) + written

    def without(self, hidden: frozenset[str]) -> bytes | None:
        """The result without the entries `hidden` names or that name nothing; None when that drops none."""
        result = self.result
        kept = [result[begin:end] for begin, end, name in self.entries if name is not None and name not in hidden]
        if len(kept) == len(self.entries):
            return None
        return result[: self.start] + b"[" + b",".join(kept) + result[self.close :]


def _read_shape(result: bytes, list_key: str, name_key: str, reserved: Sequence[bytes]) -> ListingShape | None:
    text = result.decode("utf-8")
    start = member_starts(text, 0, (list_key,))[0]
    if start is None or text[start] != "[":
        return None
    # Each entry is decoded once, by the C scanner, to be named; the loop around it is the per-entry overhead, so
    # whitespace (rare: servers answer compactly) is tested for before the regex is called to skip it.
    entries: list[tuple[int, int, str | None]] = []
    index = skip_whitespace(text, start + 1)
    while text[index] != "]":
        entry, end = scan_value(text, index)
        name = entry.get(name_key) if isinstance(entry, dict) else None
        entries.append((index, end, name if isinstance(name, str) else None))
        index = skip_whitespace(text, end) if text[end] in " \t\n\r" else end
        if text[index] == ",":
            index += 1
            if text[index] in " \t\n\r":
                index = skip_whitespace(text, index)
    if len(text) != len(result):  # not ASCII: offsets into the text are not offsets into the bytes
        to_bytes = _byte_offsets(text, [start, index, *(at for begin, end, _ in entries for at in (begin, end))])
        start, index = to_bytes[start], to_bytes[index]
        entries = [(to_bytes[begin], to_bytes[end], name) for begin, end, name in entries]
    contains_reserved = any(text_ in result for text_ in reserved)
    return ListingShape(_fingerprint(result, list_key, name_key), result, start, entries, index, contains_reserved)


_SAMPLED = 512


def _fingerprint(result: bytes, list_key: str, name_key: str) -> tuple[str, str, int, int]:
    """What a result is looked up by: its length and a hash of its ends, so a large listing is not hashed whole on
    every answer. A listing found by it is compared byte for byte before it is used."""
    sample = result if len(result) <= 2 * _SAMPLED else result[:_SAMPLED] + result[-_SAMPLED:]
    return list_key, name_key, len(result), hash(sample)


def _byte_offsets(text: str, offsets: list[int]) -> dict[int, int]:
    """Where each of `offsets` (into `text`) falls in `text` encoded as UTF-8; one pass over the text."""
    found = {}
    at = width = 0
    for offset in sorted(set(offsets)):
        width += len(text[at:offset].encode("utf-8"))
        at = offset
        found[offset] = width
    return found


class ListingShapes:
    """The listings answered lately, read, found by the bytes of their `result`. A server answers an unchanged
    listing with the same bytes every time, so its entries are decoded once, not once per caller, and the result
    written for one set of hidden names is written once: judging a listing then costs a lookup, a comparison and
    working out the names hidden from the caller. Bounded by the bytes kept, `max_bytes` in all. Nothing here is a
    decision: which names are hidden is worked out for every answer, and a result written for one set of hidden names
    is only ever given for that set.

    `reserved`: texts whose presence in a result is noted (`ListingShape.reserved`), once per listing.
    """

    def __init__(self, max_bytes: int = 8 * 2**20, *, reserved: Sequence[bytes] = ()) -> None:
        self._shapes: LRUCache[tuple[str, str, int, int], ListingShape] = LRUCache(
            maxsize=max_bytes, getsizeof=lambda shape: shape.size
        )
        self._reserved = tuple(reserved)

    def shape(self, result: bytes, list_key: str, name_key: str) -> ListingShape | None:
        # By the keys too: the same bytes read for other keys are another listing.
        key = _fingerprint(result, list_key, name_key)
        known = self._shapes.get(key)
        if known is not None and known.result == result:
            return known
        shape = _read_shape(result, list_key, name_key, self._reserved)
        if shape is not None and shape.size <= self._shapes.maxsize:
            self._shapes[key] = shape  # in place of another listing that had the same fingerprint, if one did
        return shape

    def filtered(self, shape: ListingShape, hidden: frozenset[str]) -> bytes | None:
        """`shape.without(hidden)`, written once per set of hidden names while the listing is kept."""
        if hidden in shape.written:
            return shape.written[hidden]
        written = shape.without(hidden)
        if self._shapes.get(shape.key) is shape:
            if len(shape.written) >= shape.WRITTEN_KEPT:
                shape.written.clear()
            shape.written[hidden] = written
            if shape.size <= self._shapes.maxsize:
                self._shapes[shape.key] = shape  # counted again, with what it now keeps
            else:
                del self._shapes[shape.key]
        return written


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
        if rewritten == DROP_EVENT:
            return b""
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


def replace_all(data: bytes, replacements: Sequence[Replacement]) -> bytes:
    for needle, replacement in replacements:
        data = data.replace(needle, replacement)
    return data


class StreamingReplace:
    """Makes `replacements`, in order, in a byte stream fed in chunks of any size.

    The replacements must not create each other's needles (the guard's needles hold random parts no payload has).
    """

    def __init__(self, replacements: Sequence[Replacement]) -> None:
        self._replacements = replacements
        self._window = max(len(needle) for needle, _ in replacements) - 1
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        data = replace_all(self._tail + chunk, self._replacements)
        keep = self._unfinished_needle(data)
        self._tail = data[len(data) - keep :] if keep else b""
        return data[: len(data) - keep]

    def close(self) -> bytes:
        rest, self._tail = self._tail, b""
        return rest

    def _unfinished_needle(self, data: bytes) -> int:
        """The length of the longest end of `data` that could still grow into a needle: it is held back."""
        window = max(0, len(data) - self._window)
        longest = 0
        for needle, _ in self._replacements:
            at = data.find(needle[:1], window)
            while at != -1 and len(data) - at > longest:
                if needle.startswith(data[at:]):
                    longest = len(data) - at
                    break
                at = data.find(needle[:1], at + 1)
        return longest
