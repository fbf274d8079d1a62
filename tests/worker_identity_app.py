"""An MCP server whose tool says which process answered, for `serve --workers N`:
`mcp-access-guard serve worker_identity_app:mcp` run from `tests/`."""

import os

from mcp.server.mcpserver import MCPServer

mcp = MCPServer("workers")


@mcp.tool()
def worker() -> int:
    """The process id of the worker that ran this call."""
    return os.getpid()
