"""A small MCP server behind Cloudflare Access.

    TEAM_DOMAIN=myteam POLICY_AUD=<your AUD tag> uvicorn examples.whoami_server:app --port 8000

Every request must carry the `Cf-Access-Jwt-Assertion` header that Access adds; `whoami` tells the caller who the
guard says they are.
"""

from mcp.server.mcpserver import MCPServer

from mcp_access_guard import AccessConfig, AccessJWTMiddleware, current_identity

mcp = MCPServer("whoami")


@mcp.tool()
def whoami() -> str:
    """The caller's email, or the client id of the service token it used."""
    identity = current_identity()
    if identity is None:
        return "nobody"
    kind = "service token" if identity.is_service_token else "user"
    return f"{kind} {identity.principal}"


app = AccessJWTMiddleware(mcp.streamable_http_app(), config=AccessConfig.from_env())
