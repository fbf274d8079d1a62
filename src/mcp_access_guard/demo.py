"""`mcp-access-guard demo`: a guarded MCP server on loopback, an embedded Access issuer, and the real mcp client
calling as several callers. Prints what each got; succeeds only when every caller got what it should."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import MCPServer
from mcp_types import TextContent

from .identity import current_identity
from .middleware.access import ASSERTION_HEADER, AccessJWTMiddleware
from .testing import LocalAccess, SigningKey, serve


def build_server() -> MCPServer:
    server = MCPServer("mcp-access-guard demo")

    @server.tool()
    def whoami() -> dict[str, object]:
        """Who the guard says is calling."""
        identity = current_identity()
        sdk_token = get_access_token()
        return {
            "principal": identity.principal if identity else None,
            "service_token": identity.is_service_token if identity else None,
            "sdk_client_id": sdk_token.client_id if sdk_token else None,
        }

    return server


@dataclass
class Row:
    caller: str
    expected: str
    got: str

    @property
    def ok(self) -> bool:
        return self.expected == self.got


async def _call_whoami(url: str, token: str | None) -> str:
    """What the caller gets: the HTTP status when refused, else the principal that `whoami` reports."""
    statuses: list[int] = []

    async def record(response: httpx2.Response) -> None:
        statuses.append(response.status_code)

    headers = {ASSERTION_HEADER.decode(): token} if token else {}
    async with httpx2.AsyncClient(headers=headers, event_hooks={"response": [record]}) as http:
        try:
            async with Client(streamable_http_client(f"{url}/mcp", http_client=http), mode="legacy") as client:
                result = await client.call_tool("whoami", {})
        except Exception:  # a refused connection surfaces as whatever the client raises
            refused = [status for status in statuses if status >= 400]
            return f"HTTP {refused[0]}" if refused else "error"
    text = result.content[0]
    assert isinstance(text, TextContent)
    answer = json.loads(text.text)
    kind = "service token" if answer["service_token"] else "user"
    return f"{kind} {answer['principal']} (sdk sees {answer['sdk_client_id']})"


async def run_demo(echo: Callable[[str], None] = print) -> bool:
    with LocalAccess() as issuer:
        app = AccessJWTMiddleware(build_server().streamable_http_app(), config=issuer.config())
        forger = SigningKey(kid=issuer.current_key.kid, private_key=SigningKey.generate().private_key)
        service_id = "88bf3b6d86161464f6509f7219099e57.access"
        callers = [
            ("no token", None, "HTTP 401"),
            ("forged token (alice, wrong key)", issuer.user_token("alice@example.com", key=forger), "HTTP 403"),
            ("expired token (alice)", issuer.user_token("alice@example.com", expires_in=-3600), "HTTP 403"),
            ("alice", issuer.user_token("alice@example.com"), "user alice@example.com (sdk sees alice@example.com)"),
            ("service token", issuer.service_token(service_id), f"service token {service_id} (sdk sees {service_id})"),
        ]
        async with serve(app) as url:
            echo(f"Guarded MCP server at {url}/mcp, Access issuer at {issuer.url}\n")
            rows = [Row(caller, expected, await _call_whoami(url, token)) for caller, token, expected in callers]
    width = max(len(row.caller) for row in rows)
    echo(f"{'caller':<{width}}  {'result':<6}  what the caller got")
    for row in rows:
        verdict = "ok" if row.ok else "WRONG"
        echo(f"{row.caller:<{width}}  {verdict:<6}  {row.got}" + ("" if row.ok else f"  (expected {row.expected})"))
    passed = all(row.ok for row in rows)
    echo("\nEvery caller got what it should." if passed else "\nSome callers did not get what they should.")
    return passed
