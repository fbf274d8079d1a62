"""The discovery documents: protected-resource metadata (RFC 9728) and authorization-server metadata (RFC 8414).

`issuer` and `authorization_servers[0]` are `public_url` exactly, with no trailing slash: clients compare them as
strings. The scopes published are those of the identity Access vouches for, which is also what mcp-remote asks for
when none are published; a client that asks for none (the Inspector) is served as well.
"""

from __future__ import annotations

from typing import Any

from .authorize import SUPPORTED_SCOPES
from .config import OAuthConfig
from .records import CLIENT_AUTH_METHODS

PROTECTED_RESOURCE_PATH = "/.well-known/oauth-protected-resource"
AUTHORIZATION_SERVER_PATH = "/.well-known/oauth-authorization-server"
# Discovery documents change only with the configuration.
METADATA_CACHE = {"Cache-Control": "public, max-age=3600"}


def resource_metadata_url(config: OAuthConfig) -> str:
    """Where the bearer layer's WWW-Authenticate points (the path-inserted well-known, RFC 9728 3.1)."""
    return config.public_url + PROTECTED_RESOURCE_PATH + config.resource_path


def protected_resource_metadata(config: OAuthConfig) -> dict[str, Any]:
    return {
        "resource": config.resource,
        "authorization_servers": [config.issuer],
        "scopes_supported": list(SUPPORTED_SCOPES),
        "bearer_methods_supported": ["header"],
    }


def authorization_server_metadata(config: OAuthConfig) -> dict[str, Any]:
    base = config.public_url
    document: dict[str, Any] = {
        "issuer": config.issuer,
        "authorization_endpoint": base + "/authorize",
        "token_endpoint": base + "/token",
        "revocation_endpoint": base + "/revoke",
        "scopes_supported": list(SUPPORTED_SCOPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
        "revocation_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
    }
    if config.dynamic_registration:
        document["registration_endpoint"] = base + "/register"
    if config.client_metadata_documents:
        document["client_id_metadata_document_supported"] = True
    return document
