"""OAuth mode: this server as the OAuth 2.1 authorization server for MCP clients, with a Cloudflare Access for SaaS
application as the login behind it (DESIGN.md, "OAuth mode")."""

from .config import AccessSaaSConfig, OAuthConfig, StoreLocation, parse_store
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
from .upstream import AccessOIDC, AuthorizationRequest, Discovery, UpstreamTokens

__all__ = [
    "AccessOIDC",
    "AccessSaaSConfig",
    "AuthorizationRequest",
    "Discovery",
    "IdTokenReason",
    "IdTokenRejected",
    "IdTokenVerifier",
    "OAuthConfig",
    "StoreLocation",
    "UpstreamDenied",
    "UpstreamError",
    "UpstreamInvalid",
    "UpstreamMisconfigured",
    "UpstreamRefused",
    "UpstreamTokens",
    "UpstreamUnavailable",
    "id_token_problems",
    "parse_store",
]
