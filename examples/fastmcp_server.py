"""A FastMCP server (the `fastmcp` package from PyPI) behind the whole stack: `add` for everyone who passed Access,
`generate_image` only for the people on `IMAGE_MAKERS`, and `whoami`, which reports the caller as FastMCP's own
`get_access_token()` sees it and as `current_identity()` sees it.

    TEAM_DOMAIN=myteam POLICY_AUD=<your AUD tag> uvicorn examples.fastmcp_server:app --port 8000

uvicorn runs the lifespan of FastMCP's HTTP app (it starts FastMCP's session manager): `guard()` passes lifespan
events through untouched, so nothing else is needed. Mounted inside a parent app instead, the parent must run it:
`FastAPI(lifespan=http_app.lifespan)`.

Host and Origin: FastMCP can check them itself (`host_origin_protection=`), but bound to loopback behind
cloudflared it would then refuse your public host name with 421. Here FastMCP's check stays off and this library's
CORS layer does the job (`GUARD_ALLOWED_HOSTS`, `CORSSettings(allowed_hosts=...)`, and the Origin allow-list).
"""

from __future__ import annotations

from fastmcp import FastMCP
from fastmcp.server.dependencies import get_access_token
from starlette.types import ASGIApp

from mcp_access_guard import AccessConfig, GuardConfig, Rule, ToolPolicy, current_identity, guard

# Who may use the costly tool; everyone else neither sees it in tools/list nor can call it.
IMAGE_MAKERS = ["alice@example.com"]

mcp = FastMCP("fastmcp behind Cloudflare Access")
policy = ToolPolicy({"generate_image": Rule(emails=IMAGE_MAKERS)})


@mcp.tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@mcp.tool
def generate_image(prompt: str) -> str:
    """Draw `prompt` (stands in for a costly tool)."""
    return f"an image of {prompt}"


@mcp.tool
def whoami() -> dict[str, str | None]:
    """The caller as FastMCP's own auth context reports it, and as this library's identity reports it."""
    token = get_access_token()
    identity = current_identity()
    return {
        "fastmcp_client_id": token.client_id if token else None,
        "guard_principal": identity.principal if identity else None,
        "kind": None if identity is None else "service token" if identity.is_service_token else "user",
    }


def build_app(*, stateless: bool = False, json_response: bool = False) -> ASGIApp:
    """FastMCP's HTTP app at /mcp, inside the guard. Each call builds a new app with its own session manager."""
    http_app = mcp.http_app(
        path="/mcp",
        stateless_http=stateless,
        json_response=json_response,
        # The guard's CORS layer checks Host and Origin; FastMCP's own check would refuse a tunnel's public host.
        host_origin_protection=False,
    )
    return guard(http_app, GuardConfig(access=AccessConfig.from_env(), tools=policy))


app = build_app()
