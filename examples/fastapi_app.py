"""An MCP server mounted in FastAPI, guarded layer by layer with `add_middleware`.

    TEAM_DOMAIN=myteam POLICY_AUD=<your AUD tag> GUARD_SECRETS=<tunnel secret> uvicorn examples.fastapi_app:app

The parent app must run the MCP session manager in its own lifespan: a mounted app's lifespan is not run for it.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from mcp.server.mcpserver import MCPServer

from mcp_access_guard import (
    AccessJWTMiddleware,
    BodySizeLimitMiddleware,
    CORSAllowlistMiddleware,
    GuardConfig,
    PathAllowlistMiddleware,
    Rule,
    ServiceTokenMiddleware,
    ToolPolicy,
    ToolPolicyMiddleware,
    current_identity,
)

config = GuardConfig.from_env()
mcp = MCPServer("fastapi example")


@mcp.tool()
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@mcp.tool()
def generate_image(prompt: str) -> str:
    """Draw `prompt` (only for the people the policy names)."""
    return f"an image of {prompt}"


@mcp.tool()
def whoami() -> str:
    """Who the guard says is calling."""
    identity = current_identity()
    return identity.principal if identity else "nobody"


mcp_app = mcp.streamable_http_app()


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    async with mcp.session_manager.run():
        yield


app = FastAPI(lifespan=lifespan)
app.mount("/", mcp_app)
# add_middleware wraps from the inside out: the last one added is the first a request meets.
app.add_middleware(ToolPolicyMiddleware, policy=ToolPolicy({"generate_image": Rule(emails=["alice@example.com"])}))
app.add_middleware(AccessJWTMiddleware, config=config.access)
app.add_middleware(ServiceTokenMiddleware, secrets=config.service_token.secrets)
app.add_middleware(CORSAllowlistMiddleware)
app.add_middleware(PathAllowlistMiddleware, health=True)
app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=config.max_body_bytes)
