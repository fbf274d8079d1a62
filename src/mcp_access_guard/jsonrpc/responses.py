"""Responses: edit the JSON and SSE answers a server sends, changing as few bytes as possible, never re-encoding."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
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
) -> Rewrite:
    """A rewrite that drops the entries of `result[list_key]` whose `name_key` is `hidden`, in the response to
    `request_id`; an entry that is not an object with a string there is dropped too (nothing vouches for it).

    Only the dropped entries' bytes go; everything else (cursors, `_meta`, the server's own escaping) stays. With
    `shapes`, a listing answered the same way before is not decoded again.
    """
    # The way servers write it, compactly, in this order: where `result` starts is then known without a scan.
    usual_start = '{"jsonrpc":"2.0","id":' + json.dumps(request_id) + ',"result":'

    def rewrite(text: str) -> str | None:
        try:
            return _filtered_listing(text, request_id, usual_start, list_key, name_key, hidden, shapes)
        except (ValueError, IndexError, StopIteration):
            # Not the JSON-RPC response we are waiting for (a comment, a ping, another message shape).
            return None

    return rewrite


def _filtered_listing(
    text: str,
    request_id: Any,
    usual_start: str,
    list_key: str,
    name_key: str,
    hidden: Hidden,
    shapes: ListingShapes | None,
) -> str | None:
    if text.startswith(usual_start):
        result_start: int | None = len(usual_start)
    else:
        top = skip_whitespace(text, 0)
        if not text.startswith("{", top):
            return None
        id_start, result_start = member_starts(text, top, ("id", "result"))
        if id_start is None or not same_json_value(DECODER.raw_decode(text, id_start)[0], request_id):
            return None
    if result_start is None or not text.startswith("{", result_start):
        return None
    result = text[result_start:]
    shape = _read_shape(result, list_key, name_key) if shapes is None else shapes.shape(result, list_key, name_key)
    if shape is None:
        return None
    entries = shape.filtered(hidden(shape.names))
    if entries is None:
        return None
    return text[:result_start] + result[: shape.start] + entries + result[shape.close :]


class ListingShape:
    """A `result` holding a listing, read once: where the list is in it (its `[` and its `]`), where each entry is
    and what it names (None when it is not an object with a string name); and the lists already written for the
    sets of names hidden from callers so far (a few: a policy sorts its callers into few kinds)."""

    __slots__ = ("_filtered", "_text", "close", "entries", "names", "start")
    FILTERED_KEPT = 8

    def __init__(self, start: int, entries: list[tuple[int, int, str | None]], close: int, text: str) -> None:
        self.start = start
        self.entries = entries
        self.close = close
        self.names = frozenset(name for _, _, name in entries if name is not None)
        self._filtered: dict[frozenset[str], str | None] = {}
        self._text = text

    def filtered(self, hidden: frozenset[str]) -> str | None:
        """The list without the entries `hidden` names or that name nothing, from its `[` up to (not with) its `]`;
        None when that drops none."""
        if hidden in self._filtered:
            return self._filtered[hidden]
        text = self._text
        kept = [text[begin:end] for begin, end, name in self.entries if name is not None and name not in hidden]
        filtered = None if len(kept) == len(self.entries) else "[" + ",".join(kept)
        if len(self._filtered) >= self.FILTERED_KEPT:
            self._filtered.clear()
        self._filtered[hidden] = filtered
        return filtered


def _read_shape(result: str, list_key: str, name_key: str) -> ListingShape | None:
    start = member_starts(result, 0, (list_key,))[0]
    if start is None or result[start] != "[":
        return None
    # Each entry is decoded once, by the C scanner, to be named; the loop around it is the per-entry overhead, so
    # whitespace (rare: servers answer compactly) is tested for before the regex is called to skip it.
    entries: list[tuple[int, int, str | None]] = []
    index = skip_whitespace(result, start + 1)
    while result[index] != "]":
        entry, end = scan_value(result, index)
        name = entry.get(name_key) if isinstance(entry, dict) else None
        entries.append((index, end, name if isinstance(name, str) else None))
        index = skip_whitespace(result, end) if result[end] in " \t\n\r" else end
        if result[index] == ",":
            index += 1
            if result[index] in " \t\n\r":
                index = skip_whitespace(result, index)
    return ListingShape(start, entries, index, result)


class ListingShapes:
    """The listings answered lately, read, by the text of their `result`. A server answers an unchanged listing with
    the same text every time, so its entries are decoded once, not once per caller: judging a listing then costs a
    lookup and a set of the names hidden from the caller. Bounded by the text kept, `max_chars` characters in all.
    Nothing here is a decision: which names are hidden is worked out for every answer."""

    def __init__(self, max_chars: int = 8 * 2**20) -> None:
        self._shapes: LRUCache[tuple[str, str, str], tuple[ListingShape | None, int]] = LRUCache(
            maxsize=max_chars, getsizeof=lambda kept: kept[1]
        )

    def shape(self, result: str, list_key: str, name_key: str) -> ListingShape | None:
        # By the keys too: the same text read for other keys is another listing.
        key = (list_key, name_key, result)
        known = self._shapes.get(key)
        if known is not None:
            return known[0]
        shape = _read_shape(result, list_key, name_key)
        # Counted as the text it holds at most: the result itself, and as many filtered lists as it keeps.
        size = len(result) * (1 + ListingShape.FILTERED_KEPT)
        if size <= self._shapes.maxsize:
            self._shapes[key] = (shape, size)
        return shape


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
