"""Responses: edit the JSON and SSE answers a server sends, changing as few bytes as possible, never re-encoding."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

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
    top = skip_whitespace(text, 0)
    if not text.startswith("{", top):
        return None
    id_start, result_start = member_starts(text, top, ("id", "result"))
    if id_start is None or not same_json_value(DECODER.raw_decode(text, id_start)[0], request_id):
        return None
    if result_start is None or not text.startswith("{", result_start):
        return None
    start = member_starts(text, result_start, (list_key,))[0]
    if start is None or text[start] != "[":
        return None
    # Each entry is decoded once, by the C scanner, to be judged; the loop around it is the per-entry overhead, so
    # whitespace (rare: servers answer compactly) is tested for before the regex is called to skip it.
    kept: list[str] = []
    dropped = False
    index = skip_whitespace(text, start + 1)
    while text[index] != "]":
        entry, end = scan_value(text, index)
        if keep(entry):
            kept.append(text[index:end])
        else:
            dropped = True
        index = skip_whitespace(text, end) if text[end] in " \t\n\r" else end
        if text[index] == ",":
            index += 1
            if text[index] in " \t\n\r":
                index = skip_whitespace(text, index)
    if not dropped:
        return None
    return text[:start] + "[" + ",".join(kept) + "]" + text[index + 1 :]


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
