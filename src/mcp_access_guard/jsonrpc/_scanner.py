"""The json module's C scanner, called directly: the one place this package relies on CPython's `json` internals.

`JSONDecoder.scan_once` and `json.decoder.scanstring` are what `json.loads` runs underneath, minus a Python frame or
two per value. Reading a request or a listing entry by entry calls them in loops, so the frames matter; and calling
them at an index lets a value be found, or skipped, without decoding the whole text. Both are undocumented but have
been stable since Python 3.1. `scan_once` raises StopIteration (not ValueError) when no value starts at the index.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from json.decoder import scanstring as scan_string  # type: ignore[attr-defined]
from typing import Any

__all__ = ["DECODER", "make_scanner", "member_starts", "scan_string", "scan_value", "skip_whitespace"]

DECODER = json.JSONDecoder()
scan_value: Callable[[str, int], tuple[Any, int]] = DECODER.scan_once  # type: ignore[attr-defined]

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_WHITESPACE_CHARS = " \t\n\r"


def make_scanner(decoder: json.JSONDecoder) -> Callable[[str, int], tuple[Any, int]]:
    """The scanner of a decoder with hooks (a strict `object_pairs_hook`, say)."""
    scan: Callable[[str, int], tuple[Any, int]] = decoder.scan_once  # type: ignore[attr-defined]
    return scan


def skip_whitespace(text: str, index: int) -> int:
    # Most JSON on the wire is compact: a character test is much cheaper than the regex it usually spares.
    if index < len(text) and text[index] not in _WHITESPACE_CHARS:
        return index
    return _WHITESPACE.match(text, index).end()  # type: ignore[union-attr]


def member_starts(text: str, start: int, keys: tuple[str, ...]) -> list[int | None]:
    """Where the value of each of `keys` starts in the object starting at `start` (first copy; None if absent).

    One walk for all the keys, stopping once each is found; values not asked for are scanned past, not kept.
    """
    found: list[int | None] = [None] * len(keys)
    missing = len(keys)
    index = skip_whitespace(text, start + 1)
    if text.startswith("}", index):
        return found
    try:
        while True:
            key, index = scan_string(text, index + 1)
            index = skip_whitespace(text, skip_whitespace(text, index) + 1)
            if key in keys and found[keys.index(key)] is None:
                found[keys.index(key)] = index
                missing -= 1
                if not missing:
                    return found
            index = skip_whitespace(text, scan_value(text, index)[1])
            if text[index] == "}":
                return found
            index = skip_whitespace(text, index + 1)
    except StopIteration as error:
        raise json.JSONDecodeError("Expecting value", text, error.value) from None
