"""OAuth mode: this server as the OAuth 2.1 authorization server for MCP clients, with a Cloudflare Access for SaaS
application as the login behind it (DESIGN.md, "OAuth mode")."""

from .config import AccessSaaSConfig, OAuthConfig
from .crypto import DecryptionError, ValueCipher
from .errors import (
    IdTokenReason,
    IdTokenRejected,
    UpstreamDenied,
    UpstreamError,
    UpstreamInvalid,
    UpstreamMisconfigured,
    UpstreamRefused,
    UpstreamUnavailable,
)
from .id_token import IdTokenVerifier, id_token_problems
from .store import (
    DEFAULT_STORE_URL,
    MemoryStore,
    OAuthStore,
    SQLiteStore,
    StoreUnavailable,
    open_store,
    secret_key_id,
)
from .upstream import AccessOIDC, AuthorizationRequest, Discovery, UpstreamTokens

__all__ = [
    "DEFAULT_STORE_URL",
    "AccessOIDC",
    "AccessSaaSConfig",
    "AuthorizationRequest",
    "DecryptionError",
    "Discovery",
    "IdTokenReason",
    "IdTokenRejected",
    "IdTokenVerifier",
    "MemoryStore",
    "OAuthConfig",
    "OAuthStore",
    "SQLiteStore",
    "StoreUnavailable",
    "UpstreamDenied",
    "UpstreamError",
    "UpstreamInvalid",
    "UpstreamMisconfigured",
    "UpstreamRefused",
    "UpstreamTokens",
    "UpstreamUnavailable",
    "ValueCipher",
    "id_token_problems",
    "open_store",
    "secret_key_id",
]
