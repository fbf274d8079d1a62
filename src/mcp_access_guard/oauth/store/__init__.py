"""Where OAuth mode keeps its short-lived state: authorization codes, transactions, grants, refresh tokens, counters.

`open_store(url)` picks the backend from the `store` setting (GUARD_OAUTH_STORE). `RedisStore` is imported from
`mcp_access_guard.oauth.store.redis`, which needs the `redis` extra.
"""

from __future__ import annotations

import os

from ...config import ConfigError
from .base import OAuthStore, StoreUnavailable, secret_key_id
from .memory import MemoryStore
from .sqlite import SQLiteStore

# A file in the working directory: every worker started from the same directory shares it.
DEFAULT_STORE_URL = "sqlite:///mcp-access-guard-oauth.sqlite3"

_SETTING = "store (GUARD_OAUTH_STORE)"
_SQLITE_PREFIX = "sqlite:///"
_EXPECTED = "'sqlite:///PATH' (relative, or sqlite:////absolute/path), 'redis://...', 'rediss://...' or 'memory:'"


def open_store(url: str | None = None) -> OAuthStore:
    """The store a `store` URL names (None: `DEFAULT_STORE_URL`). No I/O beyond checking that a SQLite file's
    directory exists: each backend connects on first use. ConfigError, naming the setting, for anything else."""
    url = DEFAULT_STORE_URL if url is None else url.strip()
    scheme = url.partition(":")[0].lower()
    # The value itself is never echoed: a Redis URL may hold a password.
    if url == "memory:":
        return MemoryStore()
    if scheme == "sqlite":
        return SQLiteStore(_sqlite_path(url))
    if scheme in ("redis", "rediss"):
        try:
            from .redis import RedisStore
        except ImportError:
            raise ConfigError(
                f"{_SETTING} is a Redis URL, which needs the redis package: pip install 'mcp-access-guard[redis]'"
            ) from None
        try:
            return RedisStore.from_url(url)
        except ValueError as exc:
            raise ConfigError(f"{_SETTING} is not a usable Redis URL ({type(exc).__name__})") from None
    raise ConfigError(f"{_SETTING} must be {_EXPECTED}")


def _sqlite_path(url: str) -> str:
    path = url[len(_SQLITE_PREFIX) :] if url.startswith(_SQLITE_PREFIX) else ""
    if not path or path == ":memory:" or "?" in path or "#" in path:
        raise ConfigError(
            f"{_SETTING}: a SQLite store is 'sqlite:///PATH' with a file path and no query, e.g. {DEFAULT_STORE_URL!r}"
        )
    path = os.path.abspath(path)
    if os.path.isdir(path) or not os.path.isdir(os.path.dirname(path)):
        raise ConfigError(f"{_SETTING}: {path} must be a file in an existing directory")
    return path


__all__ = [
    "DEFAULT_STORE_URL",
    "MemoryStore",
    "OAuthStore",
    "SQLiteStore",
    "StoreUnavailable",
    "open_store",
    "secret_key_id",
]
