"""What one OAuth store operation costs, per backend, as a ratio to a bare dict in the same run.

    python benchmarks/bench_store.py            # full run, well under a minute
    python benchmarks/bench_store.py --quick    # a few seconds

Each operation is awaited one at a time, so the figure is its latency as a caller sees it: `get` of a live key,
`put` of a new key, and `take` of a key put beforehand (those puts are not timed). Backends: a bare dict (the
baseline: lookup, assignment, pop), `MemoryStore`, `SQLiteStore` on a temp file (WAL, synchronous=NORMAL, its calls
in a worker thread), `RedisStore` on a redis-server this script starts on a loopback port with no persistence (left
out, and said so, when redis-server is not installed). Rounds interleave the backends, so machine load hits all alike.
A worker thread's round trip of a no-op is measured too: it is the floor under every SQLiteStore figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import anyio.to_thread

from bench_common import Plan, Section
from mcp_access_guard.oauth.store import MemoryStore, OAuthStore, SQLiteStore
from mcp_access_guard.testing import free_port

TITLE = "OAuth store, per operation"
FULL = Plan(rounds=12, warmup=2, iterations=500)
QUICK = Plan(rounds=4, warmup=1, iterations=100)
OPERATIONS = ("get", "put", "take")
BASELINE = "bare dict"
VALUE = b"x" * 200  # about the size of a serialised grant record
TTL = 600.0


def answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server(binary: str, directory: str) -> Iterator[str]:
    """A redis-server on a free loopback port for the duration of the block; yields its URL."""
    port = free_port()
    command = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", directory]
    process = subprocess.Popen([*command, "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not answers_ping(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def time_dict(operation: str, keys: list[str]) -> float:
    table: dict[str, bytes] = {key: VALUE for key in keys} if operation != "put" else {}
    started = time.perf_counter_ns()
    if operation == "get":
        for key in keys:
            table.get(key)
    elif operation == "put":
        for key in keys:
            table[key] = VALUE
    else:
        for key in keys:
            table.pop(key, None)
    return (time.perf_counter_ns() - started) / len(keys) / 1000


async def time_store(store: OAuthStore, operation: str, keys: list[str]) -> float:
    if operation in ("get", "take"):
        for key in keys:
            await store.put(key, VALUE, ttl=TTL)
    call: Callable[[str], Awaitable[object]] = {
        "get": store.get,
        "put": lambda key: store.put(key, VALUE, ttl=TTL),
        "take": store.take,
    }[operation]
    started = time.perf_counter_ns()
    for key in keys:
        await call(key)
    return (time.perf_counter_ns() - started) / len(keys) / 1000


async def time_thread_hop(calls: int) -> float:
    """One no-op through a worker thread, as SQLiteStore sends each call: the floor under its figures."""
    limiter = anyio.CapacityLimiter(1)
    started = time.perf_counter_ns()
    for _ in range(calls):
        await anyio.to_thread.run_sync(int, limiter=limiter)
    return (time.perf_counter_ns() - started) / calls / 1000


async def measure(section: Section, stores: dict[str, OAuthStore], plan: Plan) -> None:
    samples: dict[str, list[float]] = {}
    hops: list[float] = []
    for round_ in range(plan.warmup + plan.rounds):
        hop = await time_thread_hop(plan.iterations)
        if round_ >= plan.warmup:
            hops.append(hop)
        for operation in OPERATIONS:
            keys = [f"{operation}:{round_}:{index}" for index in range(plan.iterations)]
            timings = {BASELINE: time_dict(operation, keys)}
            for name, store in stores.items():
                timings[name] = await time_store(store, operation, keys)
            if round_ >= plan.warmup:
                for name, micros in timings.items():
                    samples.setdefault(f"{operation}: {name}", []).append(micros)
    for operation in OPERATIONS:
        section.add(f"{operation}: {BASELINE}", "µs/op", samples[f"{operation}: {BASELINE}"])
        for name in stores:
            label = f"{operation}: {name}"
            section.add(label, "µs/op", samples[label], baseline=f"{operation}: {BASELINE}")
    section.add("worker-thread round trip of a no-op (under every SQLiteStore call)", "µs/op", hops)


async def collect(quick: bool = False) -> list[Section]:
    plan = QUICK if quick else FULL
    section = Section(TITLE)
    binary = shutil.which("redis-server")
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as running:
        stores: dict[str, OAuthStore] = {
            "MemoryStore": MemoryStore(),
            "SQLiteStore": SQLiteStore(Path(scratch) / "oauth.sqlite3"),
        }
        try:
            from mcp_access_guard.oauth.store.redis import RedisStore
        except ImportError as missing:
            section.notes.append(f"RedisStore not measured: {missing}.")
        else:
            if binary is None:
                section.notes.append("RedisStore not measured: redis-server is not installed (apt-get install it).")
            else:
                stores["RedisStore"] = RedisStore.from_url(running.enter_context(redis_server(binary, scratch)))
        try:
            await measure(section, stores, plan)
        finally:
            for store in stores.values():
                await store.aclose()
    section.notes.append(
        f"{plan.iterations} sequential operations per round, {plan.rounds} rounds kept after {plan.warmup} warm-up; "
        f"{len(VALUE)}-byte values; all stores in this process, redis-server over loopback."
    )
    return [section]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few seconds")
    quick = parser.parse_args(argv).quick
    (section,) = asyncio.run(collect(quick))
    print(f"{'figure':<66} {'median':>10} {'min-max':>17}  ratio to a bare dict")
    for figure in section.figures:
        ratio = section.ratio(figure)
        shown = f"{ratio:.0f}x" if ratio else "baseline" if figure.label.endswith(BASELINE) else ""
        spread = f"{figure.low:.2f}-{figure.high:.2f}"
        print(f"{figure.label:<66} {figure.median:>7.2f} µs {spread:>17}  {shown}")
    for note in section.notes:
        print(f"- {note}")


if __name__ == "__main__":
    main(sys.argv[1:])
