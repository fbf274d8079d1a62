"""The OAuth store: one contract suite run against MemoryStore, SQLiteStore and RedisStore (a real redis-server),
the same races across several OS processes for the shared backends, each backend's own faults, and open_store."""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import sqlite3
import stat
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

import store_race
from mcp_access_guard import ConfigError
from mcp_access_guard.oauth import (
    DEFAULT_STORE_URL,
    MemoryStore,
    OAuthStore,
    SQLiteStore,
    StoreUnavailable,
    open_store,
    secret_key_id,
)
from mcp_access_guard.testing import free_port
from redis_server import RedisServer, require_redis_server
from support import ManualClock

pytestmark = pytest.mark.anyio

# Expiring entries get SHORT; entries that must survive the same wait get LONG. Redis expires for real, so its
# "advance" sleeps; the other backends move an injected clock.
SHORT = 0.05
WAIT = 0.25
LONG = 600.0
RACERS = 50
PROCESSES = 3
REDIS_PASSWORD_SECRET = "hunter2-not-a-real-password"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(require_redis_server(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def redis_store(url: str, prefix: str, **options: Any) -> OAuthStore:
    from mcp_access_guard.oauth.store.redis import RedisStore

    return RedisStore.from_url(url, prefix=prefix, **options)


@dataclass
class Backend:
    """Handles onto one store's data (one for memory; two connections for SQLite and Redis), and a way to let time
    pass for it. `kind` and `target` let spawned processes open the same data."""

    kind: str
    stores: list[OAuthStore]
    advance: Callable[[float], Awaitable[None]]
    target: str = ""
    prefix: str = ""

    @property
    def store(self) -> OAuthStore:
        return self.stores[0]

    def handle(self, index: int) -> OAuthStore:
        return self.stores[index % len(self.stores)]


def clock_advancer(clock: ManualClock) -> Callable[[float], Awaitable[None]]:
    async def advance(seconds: float) -> None:
        clock.advance(seconds)

    return advance


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    clock = ManualClock()
    if request.param == "memory":
        memory = MemoryStore(clock=clock)
        made = Backend("memory", [memory], clock_advancer(clock))
    elif request.param == "sqlite":
        path = str(tmp_path / "oauth.sqlite3")
        stores: list[OAuthStore] = [SQLiteStore(path, clock=clock), SQLiteStore(path, clock=clock)]
        made = Backend("sqlite", stores, clock_advancer(clock), target=path)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        prefix = f"test-{uuid.uuid4().hex}:"
        stores = [redis_store(server.url, prefix), redis_store(server.url, prefix)]
        made = Backend("redis", stores, anyio.sleep, target=server.url, prefix=prefix)
    yield made
    for store in made.stores:
        await store.aclose()


# --- The contract, on every backend -------------------------------------------------------------------------------


async def test_put_get_replace_delete(backend: Backend) -> None:
    store = backend.store
    assert await store.get("missing") is None
    await store.put("k", b"one", ttl=LONG)
    assert await backend.handle(1).get("k") == b"one"
    await store.put("k", b"two", ttl=LONG)
    assert await store.get("k") == b"two"
    await store.delete("k")
    assert await store.get("k") is None
    await store.delete("k")  # deleting what is not there is not an error


async def test_values_are_any_bytes(backend: Backend) -> None:
    every_byte = bytes(range(256)) * 4
    await backend.store.put("binary", every_byte, ttl=LONG)
    await backend.store.put("empty", b"", ttl=LONG)
    assert await backend.handle(1).get("binary") == every_byte
    assert await backend.handle(1).take("empty") == b""


async def test_take_is_single_use(backend: Backend) -> None:
    await backend.store.put("code", b"grant", ttl=LONG)
    assert await backend.store.take("code") == b"grant"
    assert await backend.store.take("code") is None
    assert await backend.store.get("code") is None


async def test_racing_takers_exactly_one_wins(backend: Backend) -> None:
    for round_ in range(5):
        key = f"code:{round_}"
        await backend.store.put(key, b"grant", ttl=LONG)
        results = await asyncio.gather(*(backend.handle(index).take(key) for index in range(RACERS)))
        assert [result for result in results if result is not None] == [b"grant"]


async def test_add_creates_only_once(backend: Backend) -> None:
    assert await backend.store.add("k", b"first", ttl=LONG) is True
    assert await backend.handle(1).add("k", b"second", ttl=LONG) is False
    assert await backend.store.get("k") == b"first"


async def test_racing_adders_exactly_one_wins(backend: Backend) -> None:
    results = await asyncio.gather(
        *(backend.handle(index).add("state", b"%d" % index, ttl=LONG) for index in range(RACERS))
    )
    winners = [index for index, created in enumerate(results) if created]
    assert len(winners) == 1
    assert await backend.store.get("state") == b"%d" % winners[0]


async def test_compare_and_swap_replaces_only_the_expected_value(backend: Backend) -> None:
    store = backend.store
    assert await store.compare_and_swap("missing", b"", b"new", ttl=LONG) is False
    assert await store.get("missing") is None
    await store.put("grant", b"generation 1", ttl=LONG)
    assert await store.compare_and_swap("grant", b"generation 0", b"generation 2", ttl=LONG) is False
    assert await store.get("grant") == b"generation 1"
    # A prefix of the current value is not equal to it.
    assert await store.compare_and_swap("grant", b"generation", b"generation 2", ttl=LONG) is False
    assert await store.compare_and_swap("grant", b"generation 1", b"generation 2", ttl=LONG) is True
    assert await backend.handle(1).get("grant") == b"generation 2"


async def test_compare_and_swap_under_contention_loses_no_update(backend: Backend) -> None:
    await backend.store.put(store_race.CAS_KEY, b"0", ttl=LONG)
    tries = await asyncio.gather(*(store_race.cas_increment(backend.handle(index)) for index in range(RACERS)))
    assert await backend.store.get(store_race.CAS_KEY) == str(RACERS).encode()
    # Every swap but the first had a rival, so some tries failed: the contention was real.
    assert sum(tries) > RACERS


async def test_expired_values_are_gone_for_every_operation(backend: Backend) -> None:
    store = backend.store
    for key in ("get", "take", "add", "cas"):
        await store.put(key, b"short", ttl=SHORT)
    await store.put("kept", b"long", ttl=LONG)
    await backend.advance(WAIT)
    assert await store.get("get") is None
    assert await store.take("take") is None
    assert await store.compare_and_swap("cas", b"short", b"new", ttl=LONG) is False
    assert await store.get("cas") is None
    assert await store.add("add", b"again", ttl=LONG) is True
    assert await store.get("add") == b"again"
    assert await store.get("kept") == b"long"


async def test_put_and_compare_and_swap_set_a_new_ttl(backend: Backend) -> None:
    store = backend.store
    await store.put("renewed", b"short", ttl=SHORT)
    await store.put("renewed", b"long", ttl=LONG)
    await store.put("swapped", b"old", ttl=LONG)
    assert await store.compare_and_swap("swapped", b"old", b"short", ttl=SHORT) is True
    await backend.advance(WAIT)
    assert await store.get("renewed") == b"long"
    assert await store.get("swapped") is None


async def test_counters_count_within_a_window_then_start_again(backend: Backend) -> None:
    store = backend.store
    assert [await store.increment("ip:1", window=SHORT) for _ in range(3)] == [1, 2, 3]
    assert await backend.handle(1).increment("ip:2", window=LONG) == 1
    await backend.advance(WAIT)
    assert await store.increment("ip:1", window=SHORT) == 1
    assert await store.increment("ip:2", window=LONG) == 2


async def test_counters_and_values_do_not_see_each_other(backend: Backend) -> None:
    store = backend.store
    await store.put("shared", b"value", ttl=LONG)
    assert await store.increment("shared", window=LONG) == 1
    assert await store.get("shared") == b"value"
    await store.delete("shared")
    assert await store.increment("shared", window=LONG) == 2


async def test_racing_increments_each_see_a_distinct_count(backend: Backend) -> None:
    counts = await asyncio.gather(*(backend.handle(index).increment("flood", window=LONG) for index in range(RACERS)))
    assert sorted(counts) == list(range(1, RACERS + 1))


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf])
async def test_a_ttl_must_be_a_positive_number_of_seconds(backend: Backend, bad: float) -> None:
    store = backend.store
    await store.put("k", b"v", ttl=LONG)
    with pytest.raises(ValueError, match="ttl"):
        await store.put("k", b"v", ttl=bad)
    with pytest.raises(ValueError, match="ttl"):
        await store.add("k", b"v", ttl=bad)
    with pytest.raises(ValueError, match="ttl"):
        await store.compare_and_swap("k", b"v", b"w", ttl=bad)
    with pytest.raises(ValueError, match="window"):
        await store.increment("n", window=bad)
    assert await store.get("k") == b"v"


# --- The same races across OS processes -----------------------------------------------------------------------------


def race_in_processes(backend: Backend) -> list[dict[str, Any]]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    results = context.Queue()
    workers = [
        context.Process(target=store_race.run, args=(backend.kind, backend.target, backend.prefix, barrier, results, n))
        for n in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    try:
        outcomes = dict(results.get(timeout=180) for _ in workers)
    finally:
        for worker in workers:
            worker.join(timeout=30)
    errors = [outcome["error"] for outcome in outcomes.values() if "error" in outcome]
    assert not errors, errors[0]
    return [outcomes[n] for n in range(PROCESSES)]


@pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=True)
async def test_races_across_processes(backend: Backend) -> None:
    # On the processes' own clock (wall time), not the fixture's manual one.
    store = store_race.open_shared(backend.kind, backend.target, backend.prefix)
    await store_race.seed(store)
    outcomes = await anyio.to_thread.run_sync(race_in_processes, backend)

    took = Counter(value for outcome in outcomes for value in outcome["took"])
    assert took == Counter(f"value {index}" for index in range(store_race.TAKE_KEYS)), "each key taken exactly once"
    added = Counter(key for outcome in outcomes for key in outcome["added"])
    assert added == Counter(f"add:{index}" for index in range(store_race.ADD_KEYS)), "each key created exactly once"
    for index in range(store_race.ADD_KEYS):
        owner = next(n for n, outcome in enumerate(outcomes) if f"add:{index}" in outcome["added"])
        assert await store.get(f"add:{index}") == b"%d" % owner
    increments = PROCESSES * store_race.CAS_TASKS
    assert await store.get(store_race.CAS_KEY) == str(increments).encode()
    counts = sorted(count for outcome in outcomes for count in outcome["counts"])
    assert counts == list(range(1, PROCESSES * store_race.INCREMENTS + 1))

    takers = store_race.TAKE_KEYS * store_race.TAKERS_PER_KEY * PROCESSES
    print(
        f"\n{backend.kind}, {PROCESSES} processes: take {takers} takers on {store_race.TAKE_KEYS} keys -> "
        f"{sum(took.values())} wins (per process {[len(o['took']) for o in outcomes]}); add "
        f"{store_race.ADD_KEYS * PROCESSES * 2} adders on {store_race.ADD_KEYS} keys -> {sum(added.values())} created "
        f"(per process {[len(o['added']) for o in outcomes]}); compare-and-swap {increments} increments -> final "
        f"{increments}, {sum(o['cas_tries'] for o in outcomes)} tries; increment -> {len(counts)} distinct counts"
    )
    await store.aclose()


# --- SQLite: its file, its sweeps, its faults ------------------------------------------------------------------------


def file_modes(directory: Path) -> dict[str, int]:
    return {path.name: stat.S_IMODE(path.stat().st_mode) for path in directory.iterdir()}


async def test_sqlite_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "oauth.sqlite3")
    await store.put("k", b"v", ttl=LONG)
    assert file_modes(tmp_path) == {"oauth.sqlite3": 0o600, "oauth.sqlite3-shm": 0o600, "oauth.sqlite3-wal": 0o600}
    with sqlite3.connect(tmp_path / "oauth.sqlite3") as reader:
        assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    await store.aclose()


async def test_sqlite_warns_about_an_existing_file_others_can_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "oauth.sqlite3"
    path.touch(mode=0o644)
    path.chmod(0o644)
    store = SQLiteStore(path)
    with caplog.at_level(logging.WARNING, logger="mcp_access_guard"):
        await store.put("k", b"v", ttl=LONG)
    assert "open to other users (mode 644)" in caplog.text
    await store.aclose()


def live_rows(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path) as reader:
        values = reader.execute("SELECT count(*) FROM oauth_values").fetchone()[0]
        counters = reader.execute("SELECT count(*) FROM oauth_counters").fetchone()[0]
    return values, counters


async def test_sqlite_sweeps_expired_rows_in_bounded_batches(tmp_path: Path) -> None:
    clock = ManualClock()
    path = tmp_path / "oauth.sqlite3"
    store = SQLiteStore(path, clock=clock, sweep_batch=10)
    for index in range(35):
        await store.put(f"code:{index}", b"v", ttl=30)
        await store.increment(f"ip:{index}", window=30)
    await store.put("kept", b"v", ttl=LONG)
    assert live_rows(path) == (36, 35)
    clock.advance(61)  # past the expiry and the sweep interval
    seen = []
    for index in range(5):
        await store.put(f"write:{index}", b"v", ttl=LONG)
        seen.append(live_rows(path))
    # At most one batch per table per write; a full batch sweeps again on the next write, a partial one stops.
    assert seen == [(27, 25), (18, 15), (9, 5), (5, 0), (6, 0)]
    assert await store.get("kept") == b"v"
    await store.aclose()


async def test_sqlite_waits_off_the_event_loop_and_fails_closed_when_locked(tmp_path: Path) -> None:
    path = tmp_path / "oauth.sqlite3"
    store = SQLiteStore(path, busy_timeout=0.3)
    await store.put("k", b"before", ttl=LONG)
    other_process = sqlite3.connect(path, isolation_level=None)
    other_process.execute("BEGIN IMMEDIATE")  # holds the write lock, as a stuck worker would
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    async with anyio.create_task_group() as group:
        group.start_soon(ticker)
        with pytest.raises(StoreUnavailable, match=r"oauth\.sqlite3.*locked"):
            await store.put("k", b"during", ttl=LONG)
        group.cancel_scope.cancel()
    assert ticks > 0, "the event loop ran other tasks while the store waited for the lock"
    assert await store.get("k") == b"before", "WAL readers are not blocked by the writer"
    other_process.rollback()
    other_process.close()
    await store.put("k", b"after", ttl=LONG)
    assert await store.get("k") == b"after"
    await store.aclose()


async def test_sqlite_file_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "oauth.sqlite3"
    path.write_bytes(b"this is not a database, " * 100)
    store = SQLiteStore(path)
    with pytest.raises(StoreUnavailable, match="not a database"):
        await store.get("k")
    await store.aclose()


async def test_sqlite_file_it_cannot_create_is_unavailable(tmp_path: Path) -> None:
    directory = tmp_path / "volume"
    directory.mkdir()
    store = open_store(f"sqlite:///{directory}/oauth.sqlite3")
    directory.rmdir()  # the volume went away after start-up
    with pytest.raises(StoreUnavailable, match="No such file or directory"):
        await store.get("k")
    directory.mkdir()
    await store.put("k", b"v", ttl=LONG)  # and the next call opens it once it is back
    assert await store.get("k") == b"v"
    await store.aclose()


# --- Redis: its faults -----------------------------------------------------------------------------------------------


async def test_redis_store_survives_a_server_restart(tmp_path: Path) -> None:
    server = RedisServer(require_redis_server(), tmp_path)
    server.start()
    store = redis_store(server.url, "restart:", timeout=1)
    try:
        await store.put("k", b"v", ttl=LONG)
        server.stop()
        with pytest.raises(StoreUnavailable, match="ConnectionError"):
            await store.get("k")
        with pytest.raises(StoreUnavailable):
            await store.take("k")
        server.start()
        assert await store.get("k") is None, "no persistence: a restarted server is empty"
        await store.put("k", b"again", ttl=LONG)
        assert await store.take("k") == b"again"
    finally:
        await store.aclose()
        server.stop()


async def fault_server(handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> Any:
    return await asyncio.start_server(handle, "127.0.0.1", free_port())


async def test_redis_connection_dropped_mid_call_is_unavailable() -> None:
    async def drop_when_asked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    server = await fault_server(drop_when_asked)
    port = server.sockets[0].getsockname()[1]
    store = redis_store(f"redis://127.0.0.1:{port}/0", "drop:", timeout=1)
    async with server:
        with pytest.raises(StoreUnavailable, match="ConnectionError"):
            await store.take("k")
    await store.aclose()


async def test_redis_server_that_never_answers_is_unavailable() -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await fault_server(never_answer)
    port = server.sockets[0].getsockname()[1]
    store = redis_store(f"redis://127.0.0.1:{port}/0", "silent:", timeout=0.2)
    async with server:
        with pytest.raises(StoreUnavailable, match="Timeout"):
            await store.compare_and_swap("k", b"a", b"b", ttl=LONG)
    await store.aclose()


async def test_redis_burst_beyond_the_pool_waits_its_turn(redis_server: RedisServer) -> None:
    store = redis_store(redis_server.url, f"burst-{uuid.uuid4().hex}:", max_connections=4)
    await store.put("k", b"v", ttl=LONG)
    assert await asyncio.gather(*(store.get("k") for _ in range(200))) == [b"v"] * 200
    await store.aclose()


async def test_redis_store_refuses_a_client_that_decodes_replies(redis_server: RedisServer) -> None:
    import redis.asyncio

    from mcp_access_guard.oauth.store.redis import RedisStore

    client = redis.asyncio.from_url(redis_server.url, decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses"):
        RedisStore(client)
    await client.aclose()


# --- open_store and secret_key_id -------------------------------------------------------------------------------------


async def test_open_store_memory_and_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert isinstance(open_store("memory:"), MemoryStore)
    relative = open_store("sqlite:///oauth.sqlite3")
    assert isinstance(relative, SQLiteStore)
    assert relative.path == str(tmp_path / "oauth.sqlite3")
    (tmp_path / "state").mkdir()
    absolute = open_store(f"sqlite:///{tmp_path}/state/oauth.sqlite3")
    assert isinstance(absolute, SQLiteStore)
    assert absolute.path == str(tmp_path / "state" / "oauth.sqlite3")
    default = open_store(None)
    assert isinstance(default, SQLiteStore)
    assert default.path == str(tmp_path / DEFAULT_STORE_URL.removeprefix("sqlite:///"))
    await default.put("k", b"v", ttl=LONG)
    assert (tmp_path / DEFAULT_STORE_URL.removeprefix("sqlite:///")).exists()
    for store in (relative, absolute, default):
        await store.aclose()


async def test_open_store_redis(redis_server: RedisServer) -> None:
    from mcp_access_guard.oauth.store.redis import RedisStore

    store = open_store(redis_server.url)
    assert isinstance(store, RedisStore)
    await store.put("open-store", b"v", ttl=LONG)
    assert await store.take("open-store") == b"v"
    await store.aclose()
    # rediss:// is TLS; nothing connects until the first operation.
    tls = open_store("rediss://cache.internal:6380/2")
    assert isinstance(tls, RedisStore)
    await tls.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "",
        "oauth.sqlite3",
        "memory://",
        "postgres://db/oauth",
        "sqlite:oauth.sqlite3",
        "sqlite://host/oauth.sqlite3",
        "sqlite:///",
        "sqlite:///:memory:",
        "sqlite:///oauth.sqlite3?mode=ro",
        "sqlite:///missing-directory/oauth.sqlite3",
        "sqlite:///.",
        f"redis://:{REDIS_PASSWORD_SECRET}@cache:not-a-port/0",
        f"https://user:{REDIS_PASSWORD_SECRET}@example.com/",
    ],
)
def test_open_store_refuses_other_urls_naming_the_setting(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="GUARD_OAUTH_STORE") as refused:
        open_store(url)
    assert REDIS_PASSWORD_SECRET not in str(refused.value)


def test_open_store_names_the_extra_when_redis_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("redis", "redis.asyncio", "redis.exceptions"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "mcp_access_guard.oauth.store.redis", raising=False)
    with pytest.raises(ConfigError, match=r"GUARD_OAUTH_STORE.*pip install 'mcp-access-guard\[redis\]'"):
        open_store("redis://127.0.0.1:6379/0")


async def test_redis_store_repr_never_holds_the_url(redis_server: RedisServer) -> None:
    store = open_store(f"redis://:{REDIS_PASSWORD_SECRET}@127.0.0.1:{redis_server.port}/0")
    assert REDIS_PASSWORD_SECRET not in repr(store)
    await store.aclose()


def test_secret_key_id_hashes_the_secret_per_kind() -> None:
    token = "mag_ac_" + "x" * 43
    key = secret_key_id("code", token)
    kind, _, digest = key.partition(":")
    assert kind == "code"
    assert len(digest) == 64
    assert int(digest, 16) >= 0
    assert token not in key
    assert secret_key_id("code", token) == key
    assert secret_key_id("refresh", token) != "refresh:" + digest
    assert secret_key_id("code", token + "y") != key


@pytest.mark.parametrize("kind", ["", "Code", "code:x", "a b", "k" * 33])
def test_secret_key_id_refuses_odd_kinds(kind: str) -> None:
    with pytest.raises(ValueError, match="kind"):
        secret_key_id(kind, "secret")


async def test_sqlite_reads_run_beside_each_other_and_see_every_committed_write(tmp_path: Path) -> None:
    """Reads go through each worker thread's own connection: many at once, while the writer writes, each sees the
    value last committed, and closing the store closes them all."""
    store = SQLiteStore(tmp_path / "oauth.sqlite3")
    keys = [f"k{index}" for index in range(40)]
    for key in keys:
        await store.put(key, b"first", ttl=LONG)
    seen: dict[str, bytes | None] = {}

    async def read(key: str) -> None:
        seen[key] = await store.get(key)

    async with anyio.create_task_group() as group:
        for key in keys:
            group.start_soon(read, key)
    assert seen == dict.fromkeys(keys, b"first")
    async def write(key: str) -> None:
        await store.put(key, b"second", ttl=LONG)

    async with anyio.create_task_group() as group:
        for key in keys:
            group.start_soon(write, key)
    assert [await store.get(key) for key in keys] == [b"second"] * len(keys)
    assert await store.take(keys[0]) == b"second"
    assert await store.get(keys[0]) is None
    readers = list(store._readers)
    assert len(readers) > 1, "the reads did not run beside each other"
    await store.aclose()
    for reader in readers:
        with pytest.raises(sqlite3.ProgrammingError):
            reader.execute("SELECT 1")
