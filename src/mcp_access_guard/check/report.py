"""What `check` prints: one line per finding, each through the redactor and the escaper, and the helpers that put
values into words."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

Mark = Literal["ok", "FAIL", "warn", "info"]

AUD_TAG = re.compile(r"[0-9a-f]{64}")
ANY_CASE_AUD_TAG = re.compile(r"[0-9a-fA-F]{64}")
_SHORT = 7
_LONG_VALUE = 80
# Very short values are not redacted: redacting "ab" everywhere would garble every line, and no real secret is that
# short.
_MIN_REDACTED_LENGTH = 4


class Report:
    """Prints findings as they are made and counts them. Every line is redacted (no secret this command was given is
    printed) and escaped (a token's claims, a header or a server's answer cannot move the cursor, forge a line or
    reorder text on the terminal)."""

    def __init__(self) -> None:
        self.counts: dict[Mark, int] = {"ok": 0, "FAIL": 0, "warn": 0, "info": 0}
        self._secrets: set[str] = set()
        self._lines = 0

    def never_print(self, *values: str | None) -> None:
        self._secrets.update(value for value in values if value and len(value) >= _MIN_REDACTED_LENGTH)

    @property
    def failed(self) -> bool:
        return self.counts["FAIL"] > 0

    def section(self, title: str) -> None:
        if self._lines:
            print()
        self._write(title)

    def finding(self, mark: Mark, text: str) -> None:
        self.counts[mark] += 1
        self._write(f"  {mark:<5}{text}")

    def ok(self, text: str) -> None:
        self.finding("ok", text)

    def fail(self, text: str) -> None:
        self.finding("FAIL", text)

    def warn(self, text: str) -> None:
        self.finding("warn", text)

    def info(self, text: str) -> None:
        self.finding("info", text)

    def summary(self) -> None:
        failures, warnings = self.counts["FAIL"], self.counts["warn"]
        counted = f"{plural(failures, 'failure')}, {plural(warnings, 'warning')}"
        print()
        self._write(f"result: {'FAIL' if failures else 'ok'} ({counted})")

    def _write(self, line: str) -> None:
        # Redacted before escaping, so that a secret is found in the form it was given.
        for secret in sorted(self._secrets, key=len, reverse=True):
            line = line.replace(secret, "[redacted]")
        self._lines += 1
        print(printable(line), flush=True)


def printable(text: str) -> str:
    """`text` with every character a terminal would act on written as an escape: control bytes (ANSI sequences start
    with one), U+0085, U+2028/U+2029, bidi and other format characters, separators other than the space."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text)


@contextmanager
def library_logs_captured() -> Iterator[None]:
    """Keep the library's log records off the terminal: what matters becomes a finding, from structured results."""
    logger = logging.getLogger("mcp_access_guard")
    saved = logger.level, logger.propagate, logger.handlers
    logger.setLevel(logging.CRITICAL + 1)
    logger.propagate = False
    logger.handlers = []
    try:
        yield
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers = saved[2]


# -- values in words -------------------------------------------------------------------------------------------------


def without_query(url: str) -> str:
    """A URL fit to print: no credentials, query or fragment (Access login redirects carry a token in the query)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an unparsable URL)"
    if not parts.scheme:
        return parts.path or "(empty)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{port}{parts.path}"


def short(value: str, keep: int = _SHORT) -> str:
    return value if len(value) <= keep + 3 else value[:keep] + "…"


def short_list(values: Iterable[str], keep: int = _SHORT) -> str:
    return ", ".join(short(value, keep) for value in values) or "none"


def distinguishing_length(values: list[str]) -> int:
    """Enough leading characters that two different values never print alike."""
    keep = _SHORT
    for index, value in enumerate(values):
        for other in values[index + 1 :]:
            if value != other:
                keep = max(keep, _common_prefix_length(value, other) + 1)
    return keep


def _common_prefix_length(first: str, second: str) -> int:
    length = 0
    while length < min(len(first), len(second)) and first[length] == second[length]:
        length += 1
    return length


def show(value: Any) -> str:
    """A claim or header value: AUD-tag-shaped strings shortened, long ones cut, anything else as JSON."""
    if value == "":
        return '""'
    if isinstance(value, str):
        return short(value) if ANY_CASE_AUD_TAG.fullmatch(value) else _cut(value)
    if isinstance(value, list):
        return "[" + ", ".join(show(item) for item in value) + "]"
    return _cut(json.dumps(value))


def _cut(text: str) -> str:
    return text if len(text) <= _LONG_VALUE else text[:_LONG_VALUE] + "…"


def number(value: Any) -> float | None:
    """A claim as a number of seconds, or None when it is not one."""
    if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < 2**53:
        return float(value)
    return None


def utc(moment: float) -> str:
    try:
        return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"{moment:.0f} (out of range)"


def relative(moment: float, now: float) -> str:
    return f"in {duration(moment - now)}" if moment >= now else f"{duration(now - moment)} ago"


def duration(seconds: float) -> str:
    """3 h 12 min, 59 min 58 s, 12 s, 2 d 3 h: the two largest units, rounded down."""
    whole = int(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
