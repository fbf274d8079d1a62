"""One MCP request of the newest protocol era, as `demo`, `serve --dev` and the README's curl example send it: no
session, the version in a header and in the body's `_meta`, the method (and a tool's name) in headers as well."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from mcp.shared.inbound import encode_header_value
from mcp_types import CLIENT_CAPABILITIES_META_KEY, PROTOCOL_VERSION_META_KEY
from mcp_types.version import LATEST_MODERN_VERSION

# The newest protocol version, the one the mcp SDK's client speaks by default.
NEWEST_PROTOCOL_VERSION: Final = LATEST_MODERN_VERSION


@dataclass(frozen=True)
class MCPRequest:
    """A POST to the MCP endpoint: its headers (no credential) and its JSON body."""

    headers: dict[str, str]
    body: dict[str, object]


def modern_request(method: str, params: Mapping[str, object] | None = None, *, request_id: int = 1) -> MCPRequest:
    meta = {PROTOCOL_VERSION_META_KEY: NEWEST_PROTOCOL_VERSION, CLIENT_CAPABILITIES_META_KEY: {}}
    headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": NEWEST_PROTOCOL_VERSION,
        "Mcp-Method": method,
    }
    name = (params or {}).get("name")
    if method == "tools/call" and isinstance(name, str):
        headers["Mcp-Name"] = encode_header_value(name)
    body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**(params or {}), "_meta": meta}}
    return MCPRequest(headers, body)


def tools_list_request() -> MCPRequest:
    """The one request that lists the tools, with no session."""
    return modern_request("tools/list")
