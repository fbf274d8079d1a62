"""Put any Python MCP server behind Cloudflare Access."""

from importlib.metadata import version

from .config import AccessConfig, ConfigError
from .identity import AccessIdentity, current_identity
from .jwks import JWKSCache
from .middleware.access import AccessJWTMiddleware
from .policy import Rule
from .verifier import AccessDenied, AccessVerifier

__version__ = version("mcp-access-guard")

__all__ = [
    "AccessConfig",
    "AccessDenied",
    "AccessIdentity",
    "AccessJWTMiddleware",
    "AccessVerifier",
    "ConfigError",
    "JWKSCache",
    "Rule",
    "current_identity",
]
