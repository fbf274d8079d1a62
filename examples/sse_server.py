"""The reference server over the older HTTP+SSE transport (`MCPServer.sse_app()`: `GET /sse` for the event stream,
`POST /messages/?session_id=...` for each message), behind the whole stack: `add` for everyone who passed Access,
`generate_image` only for the people in `ALLOWED_EMAILS`, and `whoami`.

    TEAM_DOMAIN=myteam POLICY_AUD=<your AUD tag> ALLOWED_EMAILS=alice@example.com \\
        uvicorn examples.sse_server:app --port 8000

Clients connect to `https://<your host>/sse` (mcp-remote: `--transport sse-only`). The paths served are `/sse`,
`/messages/` and `/health` unless `GUARD_PATHS` says otherwise. Each session takes messages only from the caller who
opened its stream; callers outside `ALLOWED_EMAILS` do not see `generate_image`, and calling it gets, on their
stream, exactly what a tool that does not exist gets.

A session lives in the process that opened its stream: with several workers, route each client to one of them
(sticky sessions). Behind cloudflared, tell the SDK your host name (`sse_app(transport_security=...)`) or turn its
own Host check off and set `GUARD_ALLOWED_HOSTS`, as for `streamable_http_app()`.
"""

import os

from mcp.server.mcpserver import MCPServer

from mcp_access_guard import GuardConfig, current_identity, guard

SSE_PATHS = "/sse,/messages/,/health"

mcp = MCPServer("reference over SSE")


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


environment = {"GUARD_PATHS": SSE_PATHS, **os.environ}
app = guard(mcp.sse_app(), GuardConfig.from_env(environment, restricted_tool="generate_image"))
