"""OAuth mode: this server as the OAuth 2.1 authorization server for MCP clients, with a Cloudflare Access for SaaS
application as the login behind it (DESIGN.md, "OAuth mode")."""

from .cimd import ClientMetadataFetcher
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
from .grants import BearerGrant, InvalidBearer
from .id_token import IdTokenVerifier, id_token_problems
from .server import OAuthServer
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
    "BearerGrant",
    "ClientMetadataFetcher",
    "DecryptionError",
    "Discovery",
    "IdTokenReason",
    "IdTokenRejected",
    "IdTokenVerifier",
    "InvalidBearer",
    "MemoryStore",
    "OAuthConfig",
    "OAuthServer",
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
