"""OAuth mode: this server as the OAuth 2.1 authorization server for MCP clients, with a Cloudflare Access for SaaS
application as the login behind it (DESIGN.md, "OAuth mode")."""

from .crypto import DecryptionError, ValueCipher
from .store import (
    DEFAULT_STORE_URL,
    MemoryStore,
    OAuthStore,
    SQLiteStore,
    StoreUnavailable,
    open_store,
    secret_key_id,
)

__all__ = [
    "DEFAULT_STORE_URL",
    "DecryptionError",
    "MemoryStore",
    "OAuthStore",
    "SQLiteStore",
    "StoreUnavailable",
    "ValueCipher",
    "open_store",
    "secret_key_id",
]
