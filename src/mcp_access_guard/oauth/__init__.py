"""OAuth mode: this server as the OAuth 2.1 authorization server for MCP clients, with a Cloudflare Access for SaaS
application as the login behind it (DESIGN.md, "OAuth mode")."""

from .config import AccessSaaSConfig, OAuthConfig, StoreLocation, parse_store

__all__ = ["AccessSaaSConfig", "OAuthConfig", "StoreLocation", "parse_store"]
