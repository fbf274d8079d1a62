"""The races the store tests run, in one process (tasks) and in several spawned processes sharing one SQLite file or
one Redis. Kept in its own module so a spawned process can import it."""

from __future__ import annotations

import asyncio
import traceback
from multiprocessing.synchronize import Barrier
from typing import Any, Protocol

from mcp_access_guard.oauth.store import OAuthStore, SQLiteStore

TAKE_KEYS = 30
TAKERS_PER_KEY = 4
ADD_KEYS = 30
CAS_TASKS = 8
INCREMENTS = 40
CAS_KEY = "cas"
COUNTER_KEY = "counter"
TTL = 600.0


class ResultQueue(Protocol):
    def put(self, item: Any) -> None: ...


async def cas_increment(store: OAuthStore, key: str = CAS_KEY) -> int:
    """Add one to the decimal number under `key` with a read-compare-and-swap loop; the number of tries it took."""
    tries = 0
    while True:
        tries += 1
        current = await store.get(key)
        assert current is not None
        # Let the other tasks read the same value first, so swaps really conflict (even in MemoryStore).
        await asyncio.sleep(0)
        if await store.compare_and_swap(key, current, str(int(current) + 1).encode(), ttl=TTL):
            return tries


async def seed(store: OAuthStore) -> None:
    """What the parent writes before the processes race."""
    for index in range(TAKE_KEYS):
        await store.put(f"take:{index}", f"value {index}".encode(), ttl=TTL)
    await store.put(CAS_KEY, b"0", ttl=TTL)


async def race(store: OAuthStore, barrier: Barrier, worker: int) -> dict[str, Any]:
    """What this process won or saw. Every process starts each round at once (the barrier), so for each key all
    processes' tasks really race."""
    took: list[str] = []
    for index in range(TAKE_KEYS):
        barrier.wait(timeout=60)
        values = await asyncio.gather(*(store.take(f"take:{index}") for _ in range(TAKERS_PER_KEY)))
        took += [value.decode() for value in values if value is not None]
    added: list[str] = []
    for index in range(ADD_KEYS):
        barrier.wait(timeout=60)
        created = await asyncio.gather(*(store.add(f"add:{index}", b"%d" % worker, ttl=TTL) for _ in range(2)))
        added += [f"add:{index}"] * sum(created)
    barrier.wait(timeout=60)
    tries = await asyncio.gather(*(cas_increment(store) for _ in range(CAS_TASKS)))
    barrier.wait(timeout=60)
    counts = await asyncio.gather(*(store.increment(COUNTER_KEY, window=TTL) for _ in range(INCREMENTS)))
    await store.aclose()
    return {"took": took, "added": added, "cas_tries": sum(tries), "counts": counts}


def open_shared(kind: str, target: str, prefix: str) -> OAuthStore:
    if kind == "sqlite":
        return SQLiteStore(target)
    from mcp_access_guard.oauth.store.redis import RedisStore

    return RedisStore.from_url(target, prefix=prefix)


def run(kind: str, target: str, prefix: str, barrier: Barrier, results: ResultQueue, worker: int) -> None:
    """A spawned process's body: race, and report what it won (or how it failed)."""
    try:
        results.put((worker, asyncio.run(race(open_shared(kind, target, prefix), barrier, worker))))
    except BaseException:
        barrier.abort()
        results.put((worker, {"error": traceback.format_exc()}))
