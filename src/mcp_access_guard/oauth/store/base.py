"""What every OAuth store offers: the protocol the authorization server is written against, its one error, and how
secrets become keys."""

from __future__ import annotations

import functools
import hashlib
import math
import re
from typing import Protocol

_KIND = re.compile(r"[a-z0-9_]{1,32}")


class StoreUnavailable(Exception):
    """The backend could not answer (Redis down or timing out, the SQLite file locked past its busy timeout or
    unreadable). Callers fail closed: the request is refused as temporarily unavailable, never let through."""


class OAuthStore(Protocol):
    """A small key-value store with expiry and the atomic operations that keep single-use codes and refresh rotation
    correct when several processes share it.

    Keys are short strings (use `secret_key_id` for anything derived from a token); values are bytes the caller
    serialises (and encrypts, for secrets). Every TTL and window is in seconds, a positive number; an expired value is
    never returned. Counters live in their own namespace: `get` does not see them and `increment` does not see values.
    A backend failure raises `StoreUnavailable`; a task cancelled while a call is in flight may or may not have had
    its effect (a `take` may have consumed the value), which fails closed.
    """

    async def put(self, key: str, value: bytes, *, ttl: float) -> None:
        """Set `key` to `value` for `ttl` seconds, replacing whatever was there."""

    async def add(self, key: str, value: bytes, *, ttl: float) -> bool:
        """Create `key` only if it holds no live value; True if this call created it."""

    async def get(self, key: str) -> bytes | None:
        """The live value, or None."""

    async def take(self, key: str) -> bytes | None:
        """Get and delete in one atomic step: of any number of concurrent takers, in any process, exactly one gets
        the value; the others get None."""

    async def compare_and_swap(self, key: str, expected: bytes, value: bytes, *, ttl: float) -> bool:
        """Replace the live value with `value` (for `ttl` seconds) only if it is exactly `expected`; True if
        replaced. False when the key is missing, expired or holds something else."""

    async def delete(self, key: str) -> None:
        """Remove the value, if any."""

    async def increment(self, key: str, *, window: float) -> int:
        """Count one more event on `key` and return the count. The first increment opens a window of `window`
        seconds; when it has passed, the count starts again from 1 (a fixed window, not a sliding one)."""

    async def aclose(self) -> None:
        """Release the connection; the store is not used afterwards."""


def secret_key_id(kind: str, secret: str) -> str:
    """The store key for a secret (a token, a code, a state): `kind:` and the hex SHA-256 of kind and secret, so the
    raw secret is never a key and one kind's key can never name another kind's entry."""
    digest = hashlib.sha256(_kind_prefix(kind) + secret.encode()).hexdigest()
    return f"{kind}:{digest}"


@functools.lru_cache(maxsize=64)
def _kind_prefix(kind: str) -> bytes:
    # Checked once per kind: a bearer lookup computes a key on every request.
    if not _KIND.fullmatch(kind):
        raise ValueError("kind must be 1-32 characters of a-z, 0-9 and _")
    return kind.encode() + b"\x00"


def check_ttl(seconds: float, name: str = "ttl") -> float:
    """`seconds` if it is a positive, finite number of seconds; ValueError otherwise (NaN included)."""
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{name} must be a positive number of seconds")
    return seconds
