"""The reference deployment's server behind the whole stack: `add` for everyone who passed Access,
`generate_image` only for the people in `ALLOWED_EMAILS`, and `whoami`.

    TEAM_DOMAIN=myteam POLICY_AUD=<your AUD tag> ALLOWED_EMAILS=alice@example.com,bob@example.com \\
        uvicorn examples.reference_server:app --port 8000

Callers outside `ALLOWED_EMAILS` do not see `generate_image` in `tools/list`, and calling it gets exactly what a
tool that does not exist gets.
"""

from mcp.server.mcpserver import MCPServer

from mcp_access_guard import GuardConfig, current_identity, guard

mcp = MCPServer("reference")


@mcp.tool()
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@mcp.tool()
def generate_image(prompt: str) -> str:
    """Draw `prompt` (stands in for a costly tool)."""
    return f"an image of {prompt}"


@mcp.tool()
def whoami() -> str:
    """The caller's email, or the client id of the service token it used."""
    identity = current_identity()
    if identity is None:
        return "nobody"
    kind = "service token" if identity.is_service_token else "user"
    return f"{kind} {identity.principal}"


# ALLOWED_EMAILS (comma-separated) says who may use generate_image; unset, nobody may.
app = guard(mcp.streamable_http_app(), GuardConfig.from_env(restricted_tool="generate_image"))
