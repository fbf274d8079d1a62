"""`MemoryStore`: the OAuth store in a dict, for tests and a single process. Nothing survives a restart and nothing is
shared with another worker, so `serve --workers N` refuses it."""

from __future__ import annotations

import time
from collections.abc import Callable

from .base import check_ttl

# How often expired entries are dropped, in seconds of the store's clock.
SWEEP_INTERVAL = 60.0


class MemoryStore:
    """Each method runs to completion without awaiting, so on one event loop every operation is atomic."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # key -> (value, expires at); counters: key -> (count, window ends at).
        self._values: dict[str, tuple[bytes, float]] = {}
        self._counters: dict[str, tuple[int, float]] = {}
        self._next_sweep = clock() + SWEEP_INTERVAL

    def __repr__(self) -> str:
        return f"MemoryStore({len(self._values)} values, {len(self._counters)} counters)"

    def _live(self, key: str) -> bytes | None:
        entry = self._values.get(key)
        if entry is None or entry[1] <= self._clock():
            return None
        return entry[0]

    def _set(self, key: str, value: bytes, ttl: float) -> None:
        now = self._clock()
        self._values[key] = (value, now + ttl)
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            self._values = {k: entry for k, entry in self._values.items() if entry[1] > now}
            self._counters = {k: entry for k, entry in self._counters.items() if entry[1] > now}

    async def put(self, key: str, value: bytes, *, ttl: float) -> None:
        self._set(key, value, check_ttl(ttl))

    async def add(self, key: str, value: bytes, *, ttl: float) -> bool:
        check_ttl(ttl)
        if self._live(key) is not None:
            return False
        self._set(key, value, ttl)
        return True

    async def get(self, key: str) -> bytes | None:
        return self._live(key)

    async def take(self, key: str) -> bytes | None:
        value = self._live(key)
        self._values.pop(key, None)
        return value

    async def compare_and_swap(self, key: str, expected: bytes, value: bytes, *, ttl: float) -> bool:
        check_ttl(ttl)
        if self._live(key) != expected:
            return False
        self._set(key, value, ttl)
        return True

    async def delete(self, key: str) -> None:
        self._values.pop(key, None)

    async def increment(self, key: str, *, window: float) -> int:
        check_ttl(window, "window")
        now = self._clock()
        count, ends = self._counters.get(key, (0, now))
        if ends <= now:
            count, ends = 0, now + window
        self._counters[key] = (count + 1, ends)
        return count + 1

    async def aclose(self) -> None:
        self._values.clear()
        self._counters.clear()
