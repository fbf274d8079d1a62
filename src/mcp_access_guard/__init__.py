"""Put any Python MCP server behind Cloudflare Access."""

from importlib.metadata import version

from .config import AccessConfig, ConfigError
from .downstream import AccessForwardingAuth, forwarding_client
from .identity import AccessIdentity, current_identity
from .jwks import JWKSCache
from .middleware.access import AccessJWTMiddleware
from .middleware.body_size import BodySizeLimitMiddleware
from .middleware.budget import RequestBudgetMiddleware
from .middleware.cors import DEFAULT_MCP_ORIGINS, CORSAllowlistMiddleware
from .middleware.oauth import OAuthBearerMiddleware, OAuthEndpointsMiddleware
from .middleware.paths import PathAllowlistMiddleware
from .middleware.service_token import ServiceTokenMiddleware
from .middleware.tools import ToolPolicyMiddleware
from .policy import Rule, ToolPolicy
from .settings import CORSSettings, GuardConfig, LimitSettings, PathSettings, ServiceTokenSettings
from .stack import guard
from .verifier import AccessDenied, AccessVerifier

__version__ = version("mcp-access-guard")

__all__ = [
    "DEFAULT_MCP_ORIGINS",
    "AccessConfig",
    "AccessDenied",
    "AccessForwardingAuth",
    "AccessIdentity",
    "AccessJWTMiddleware",
    "AccessVerifier",
    "BodySizeLimitMiddleware",
    "CORSAllowlistMiddleware",
    "CORSSettings",
    "ConfigError",
    "GuardConfig",
    "JWKSCache",
    "LimitSettings",
    "OAuthBearerMiddleware",
    "OAuthEndpointsMiddleware",
    "PathAllowlistMiddleware",
    "PathSettings",
    "RequestBudgetMiddleware",
    "Rule",
    "ServiceTokenMiddleware",
    "ServiceTokenSettings",
    "ToolPolicy",
    "ToolPolicyMiddleware",
    "current_identity",
    "forwarding_client",
    "guard",
]
