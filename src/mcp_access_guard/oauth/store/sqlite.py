"""`SQLiteStore`: the default OAuth store, one SQLite file that every worker process on the host shares.

Each operation is a single SQL statement in autocommit mode, so SQLite's write lock makes it atomic across
connections and processes: `take` is `DELETE ... RETURNING`, compare-and-swap an `UPDATE ... WHERE value = ?`,
create-only add an upsert that only replaces an expired row. WAL lets readers run beside the one writer; the busy
timeout makes a writer wait for another process's write instead of failing.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from .base import StoreUnavailable, check_ttl

logger = logging.getLogger("mcp_access_guard")

T = TypeVar("T")

# Expired rows are deleted at most this often per process, at most `sweep_batch` rows per table per sweep.
SWEEP_INTERVAL = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS oauth_values (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS oauth_values_expires ON oauth_values (expires);
CREATE TABLE IF NOT EXISTS oauth_counters (key TEXT PRIMARY KEY, count INTEGER NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS oauth_counters_expires ON oauth_counters (expires);
"""
_SWEEPS = (
    "DELETE FROM oauth_values WHERE key IN (SELECT key FROM oauth_values WHERE expires <= ? LIMIT ?)",
    "DELETE FROM oauth_counters WHERE key IN (SELECT key FROM oauth_counters WHERE expires <= ? LIMIT ?)",
)
_ADD = """
INSERT INTO oauth_values (key, value, expires) VALUES (:key, :value, :expires)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires
    WHERE oauth_values.expires <= :now
RETURNING 1
"""
_INCREMENT = """
INSERT INTO oauth_counters (key, count, expires) VALUES (:key, 1, :expires)
ON CONFLICT (key) DO UPDATE SET
    count = CASE WHEN oauth_counters.expires > :now THEN oauth_counters.count + 1 ELSE 1 END,
    expires = CASE WHEN oauth_counters.expires > :now THEN oauth_counters.expires ELSE excluded.expires END
RETURNING count
"""


class SQLiteStore:
    """The store in the SQLite file at `path` (relative to the working directory at construction).

    Blocking sqlite3 calls run in a worker thread, never on the event loop. Writes go through one connection, used by
    one thread at a time (a one-slot limiter): SQLite allows one writer at a time anyway, and the concurrency that
    matters, several worker processes, is settled by SQLite's file locks. Reads (`get`, every bearer lookup the
    bearer layer's cache misses) run beside each other and beside the writer, as WAL allows, each worker thread
    through a connection of its own: queued behind one slot, a burst of lookups under load waits seconds. The file
    is opened on first use, created with mode 0600 (its -wal and -shm files inherit the mode). `clock` is wall time,
    shared by every process; tests may inject one.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        sweep_batch: int = 500,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = os.path.abspath(path)
        self.busy_timeout = check_ttl(busy_timeout, "busy_timeout")
        self.sweep_batch = sweep_batch
        self._clock = clock
        self._limiter = anyio.CapacityLimiter(1)
        self._connection: sqlite3.Connection | None = None
        self._next_sweep = 0.0
        # Each worker thread's read connection, and all of them, to close.
        self._thread_reader = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    async def _run(self, operation: Callable[..., T], *args: object) -> T:
        return await anyio.to_thread.run_sync(self._call, operation, *args, limiter=self._limiter)

    def _call(self, operation: Callable[..., T], *args: object) -> T:
        try:
            if self._connection is None:
                self._connection = self._connect()
            return operation(self._connection, *args)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"the SQLite OAuth store {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        # Created here with 0600 before SQLite opens it; SQLite would create it with the umask's mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        mode = stat.S_IMODE(os.stat(self.path).st_mode)
        if mode & 0o077:
            logger.warning("the OAuth store file %s is open to other users (mode %o): chmod 600 it", self.path, mode)
        connection = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            (journal,) = connection.execute("PRAGMA journal_mode=WAL").fetchone()
            if journal != "wal":
                raise sqlite3.OperationalError(f"the file system refused WAL mode (journal mode {journal})")
            # With WAL, NORMAL still survives a crash of the process; only a power loss may undo the last commits.
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(_SCHEMA)
        except sqlite3.Error:
            connection.close()
            raise
        return connection

    def _sweep_if_due(self, db: sqlite3.Connection, now: float) -> None:
        if now < self._next_sweep:
            return
        full = False
        for sweep in _SWEEPS:
            full |= db.execute(sweep, (now, self.sweep_batch)).rowcount >= self.sweep_batch
        # A full batch means more rows are waiting: sweep again on the next write rather than in a minute.
        self._next_sweep = now if full else now + SWEEP_INTERVAL

    def _put(self, db: sqlite3.Connection, key: str, value: bytes, ttl: float) -> None:
        now = self._clock()
        db.execute("REPLACE INTO oauth_values (key, value, expires) VALUES (?, ?, ?)", (key, value, now + ttl))
        self._sweep_if_due(db, now)

    def _add(self, db: sqlite3.Connection, key: str, value: bytes, ttl: float) -> bool:
        now = self._clock()
        created = db.execute(_ADD, {"key": key, "value": value, "expires": now + ttl, "now": now}).fetchall()
        self._sweep_if_due(db, now)
        return bool(created)

    def _get(self, db: sqlite3.Connection, key: str) -> bytes | None:
        query = "SELECT value FROM oauth_values WHERE key = ? AND expires > ?"
        row = db.execute(query, (key, self._clock())).fetchone()
        return None if row is None else bytes(row[0])

    def _take(self, db: sqlite3.Connection, key: str) -> bytes | None:
        rows = db.execute("DELETE FROM oauth_values WHERE key = ? RETURNING value, expires", (key,)).fetchall()
        if not rows or rows[0][1] <= self._clock():
            return None
        return bytes(rows[0][0])

    def _compare_and_swap(self, db: sqlite3.Connection, key: str, expected: bytes, value: bytes, ttl: float) -> bool:
        now = self._clock()
        swapped = db.execute(
            "UPDATE oauth_values SET value = ?, expires = ? WHERE key = ? AND value = ? AND expires > ?",
            (value, now + ttl, key, expected, now),
        )
        return swapped.rowcount == 1

    def _delete(self, db: sqlite3.Connection, key: str) -> None:
        db.execute("DELETE FROM oauth_values WHERE key = ?", (key,))

    def _increment(self, db: sqlite3.Connection, key: str, window: float) -> int:
        now = self._clock()
        ((count,),) = db.execute(_INCREMENT, {"key": key, "expires": now + window, "now": now}).fetchall()
        self._sweep_if_due(db, now)
        return int(count)

    def _close(self, db: sqlite3.Connection) -> None:
        db.close()
        self._connection = None

    async def put(self, key: str, value: bytes, *, ttl: float) -> None:
        await self._run(self._put, key, value, check_ttl(ttl))

    async def add(self, key: str, value: bytes, *, ttl: float) -> bool:
        return await self._run(self._add, key, value, check_ttl(ttl))

    async def get(self, key: str) -> bytes | None:
        if self._connection is None:
            # The writer's connection creates the file, with its mode, and the schema, before anything reads.
            await self._run(_nothing)
        return await anyio.to_thread.run_sync(self._read, key)

    def _read(self, key: str) -> bytes | None:
        try:
            reader: sqlite3.Connection | None = getattr(self._thread_reader, "connection", None)
            if reader is None:
                reader = sqlite3.connect(
                    self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
                )
                with self._readers_lock:
                    self._readers.append(reader)
                self._thread_reader.connection = reader
            return self._get(reader, key)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"the SQLite OAuth store {self.path}: {exc}") from exc

    async def take(self, key: str) -> bytes | None:
        return await self._run(self._take, key)

    async def compare_and_swap(self, key: str, expected: bytes, value: bytes, *, ttl: float) -> bool:
        return await self._run(self._compare_and_swap, key, expected, value, check_ttl(ttl))

    async def delete(self, key: str) -> None:
        await self._run(self._delete, key)

    async def increment(self, key: str, *, window: float) -> int:
        return await self._run(self._increment, key, check_ttl(window, "window"))

    async def aclose(self) -> None:
        if self._connection is not None:
            await self._run(self._close)
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for reader in readers:
            reader.close()
        self._thread_reader = threading.local()


def _nothing(db: sqlite3.Connection) -> None:
    """An operation that only makes sure the connection is open."""
