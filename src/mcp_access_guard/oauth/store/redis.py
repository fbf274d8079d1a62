"""`RedisStore`: the OAuth store in Redis (6.2 or later, for GETDEL), shared by every process on every host.

Each operation is one Redis command or one Lua script, so it is atomic on the server: `take` is GETDEL, create-only
add is SET NX PX, compare-and-swap and the counter are small scripts. Expiry is Redis's own (PX).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from typing import TypeVar, cast

from .base import StoreUnavailable, check_ttl

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError as exc:
    raise ImportError("the Redis OAuth store needs the redis package: pip install 'mcp-access-guard[redis]'") from exc

T = TypeVar("T")

DEFAULT_PREFIX = "mcp-access-guard:"

_COMPARE_AND_SWAP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    return 1
end
return 0
"""
# INCR and PEXPIRE in one script, so a counter can never be left without its expiry.
_INCREMENT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return count
"""


def _milliseconds(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class RedisStore:
    """The store on a `redis.asyncio.Redis` client (which must not decode responses). Values live under
    `prefix + "v:"` and counters under `prefix + "n:"`, so one Redis can serve other uses too.

    redis-py retries a command whose connection failed; a retried command whose first reply was lost fails closed
    (a `take` finds nothing, an `add` or compare-and-swap reports False, a counter counts twice).
    """

    def __init__(self, client: aioredis.Redis, *, prefix: str = DEFAULT_PREFIX) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("RedisStore needs a client that returns bytes (decode_responses=False)")
        self.prefix = prefix
        self._client = client
        self._values = prefix + "v:"
        self._counters = prefix + "n:"
        self._compare_and_swap = client.register_script(_COMPARE_AND_SWAP)
        self._increment = client.register_script(_INCREMENT)

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = DEFAULT_PREFIX, timeout: float = 5.0, max_connections: int = 50
    ) -> RedisStore:
        """`redis://` or `rediss://` (TLS), as redis-py reads them (`/N` picks the database). Connects on first use.
        `timeout` bounds each connect, each reply, and the wait for one of the `max_connections` pooled connections
        (a burst beyond the pool waits its turn rather than failing)."""
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        return cls(aioredis.Redis.from_pool(pool), prefix=prefix)

    def __repr__(self) -> str:
        # Never the URL: it may hold a password.
        return f"RedisStore(prefix={self.prefix!r})"

    async def _call(self, reply: Awaitable[T]) -> T:
        try:
            return await reply
        except RedisError as exc:
            raise StoreUnavailable(f"the Redis OAuth store: {type(exc).__name__}: {exc}") from exc

    async def put(self, key: str, value: bytes, *, ttl: float) -> None:
        await self._call(self._client.set(self._values + key, value, px=_milliseconds(check_ttl(ttl))))

    async def add(self, key: str, value: bytes, *, ttl: float) -> bool:
        created = self._client.set(self._values + key, value, px=_milliseconds(check_ttl(ttl)), nx=True)
        return bool(await self._call(created))

    async def get(self, key: str) -> bytes | None:
        return cast(bytes | None, await self._call(self._client.get(self._values + key)))

    async def take(self, key: str) -> bytes | None:
        return cast(bytes | None, await self._call(self._client.getdel(self._values + key)))

    async def compare_and_swap(self, key: str, expected: bytes, value: bytes, *, ttl: float) -> bool:
        arguments: list[bytes | int] = [expected, value, _milliseconds(check_ttl(ttl))]
        swapped = self._compare_and_swap(keys=[self._values + key], args=arguments)
        return bool(await self._call(swapped))

    async def delete(self, key: str) -> None:
        await self._call(self._client.delete(self._values + key))

    async def increment(self, key: str, *, window: float) -> int:
        counted = self._increment(keys=[self._counters + key], args=[_milliseconds(check_ttl(window, "window"))])
        return int(await self._call(counted))

    async def aclose(self) -> None:
        await self._client.aclose()
