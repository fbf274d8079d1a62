"""`mcp-access-guard demo`: the whole stack around an MCP server on loopback, an embedded Access issuer, and the
real mcp client calling as several callers. Prints what each got; succeeds only when every caller got what it
should."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult, TextContent

from .identity import current_identity
from .mcp_request import modern_request
from .middleware.access import ASSERTION_HEADER
from .policy import ToolPolicy
from .settings import GuardConfig
from .stack import guard
from .testing import LocalAccess, SigningKey, serve

ALICE = "alice@example.com"
BOB = "bob@example.com"
SERVICE_ID = "88bf3b6d86161464f6509f7219099e57.access"


def build_server(policy: ToolPolicy) -> MCPServer:
    """The reference deployment's tools: `add` for everyone, `generate_image` for a named list, and `whoami`."""
    server = MCPServer("mcp-access-guard demo")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @server.tool()
    @policy.restrict(emails=[ALICE])
    def generate_image(prompt: str) -> str:
        """Pretend to draw `prompt` (alice only)."""
        return f"an image of {prompt}"

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
    request: str
    expected: str
    got: str

    @property
    def ok(self) -> bool:
        return self.expected == self.got


def _text(result: CallToolResult) -> str:
    content = result.content[0]
    return content.text if isinstance(content, TextContent) else repr(content)


async def _as_caller(url: str, token: str | None, action: Callable[[Client], Awaitable[str]]) -> str:
    """What the caller gets: the HTTP status when refused, else what `action` makes of the session."""
    statuses: list[int] = []

    async def record(response: httpx2.Response) -> None:
        statuses.append(response.status_code)

    headers = {ASSERTION_HEADER.decode(): token} if token else {}
    async with httpx2.AsyncClient(headers=headers, event_hooks={"response": [record]}) as http:
        try:
            async with Client(streamable_http_client(f"{url}/mcp", http_client=http), mode="legacy") as client:
                return await action(client)
        except Exception:  # a refused connection surfaces as whatever the client raises
            refused = [status for status in statuses if status >= 400]
            return f"HTTP {refused[0]}" if refused else "error"


async def _whoami(client: Client) -> str:
    answer = json.loads(_text(await client.call_tool("whoami", {})))
    kind = "service token" if answer["service_token"] else "user"
    return f"{kind} {answer['principal']} (sdk sees {answer['sdk_client_id']})"


async def _tool_names(client: Client) -> str:
    return ", ".join(tool.name for tool in (await client.list_tools()).tools)


async def _draw(client: Client) -> str:
    return _text(await client.call_tool("generate_image", {"prompt": "a cat"}))


async def _raw_call(url: str, token: str, name: str) -> tuple[int, str, bytes]:
    """One modern-era tools/call over plain HTTP, with the name blanked out of the answer for comparison."""
    request = modern_request("tools/call", {"name": name, "arguments": {"prompt": "a cat"}}, request_id=7)
    async with httpx2.AsyncClient() as http:
        response = await http.post(
            f"{url}/mcp", json=request.body, headers={**request.headers, ASSERTION_HEADER.decode(): token}
        )
    return (
        response.status_code,
        response.headers.get("content-type", ""),
        response.content.replace(name.encode(), b"NAME"),
    )


async def _same_as_a_made_up_tool(url: str, token: str) -> str:
    denied = await _raw_call(url, token, "generate_image")
    made_up = await _raw_call(url, token, "no_such_tool_xyz")
    return "same bytes as for a made-up tool" if denied == made_up else f"differs: {denied!r} vs {made_up!r}"


async def _plain_request(url: str, path: str, headers: dict[str, str]) -> str:
    async with httpx2.AsyncClient() as http:
        return f"HTTP {(await http.post(url + path, json={}, headers=headers)).status_code}"


async def run_demo(echo: Callable[[str], None] = print) -> bool:
    with LocalAccess() as issuer:
        policy = ToolPolicy()
        app = guard(build_server(policy).streamable_http_app(), GuardConfig(access=issuer.config(), tools=policy))
        forger = SigningKey(kid=issuer.current_key.kid, private_key=SigningKey.generate().private_key)
        alice, bob = issuer.user_token(ALICE), issuer.user_token(BOB)
        async with serve(app) as url:
            echo(f"Guarded MCP server at {url}/mcp, Access issuer at {issuer.url}\n")
            rows = [
                Row("anyone", "POST /admin", "HTTP 404", await _plain_request(url, "/admin", {})),
                Row(
                    "a foreign web page",
                    "POST /mcp",
                    "HTTP 403",
                    await _plain_request(url, "/mcp", {"Origin": "https://evil.example"}),
                ),
                Row("no token", "whoami", "HTTP 401", await _as_caller(url, None, _whoami)),
                Row(
                    "forged token",
                    "whoami",
                    "HTTP 403",
                    await _as_caller(url, issuer.user_token(ALICE, key=forger), _whoami),
                ),
                Row(
                    "expired token",
                    "whoami",
                    "HTTP 403",
                    await _as_caller(url, issuer.user_token(ALICE, expires_in=-3600), _whoami),
                ),
                Row("alice", "whoami", f"user {ALICE} (sdk sees {ALICE})", await _as_caller(url, alice, _whoami)),
                Row("alice", "tools/list", "add, generate_image, whoami", await _as_caller(url, alice, _tool_names)),
                Row("alice", "generate_image", "an image of a cat", await _as_caller(url, alice, _draw)),
                Row("bob", "tools/list", "add, whoami", await _as_caller(url, bob, _tool_names)),
                Row("bob", "generate_image", "Unknown tool: generate_image", await _as_caller(url, bob, _draw)),
                Row(
                    "bob",
                    "generate_image, raw",
                    "same bytes as for a made-up tool",
                    await _same_as_a_made_up_tool(url, bob),
                ),
                Row(
                    "service token",
                    "whoami",
                    f"service token {SERVICE_ID} (sdk sees {SERVICE_ID})",
                    await _as_caller(url, issuer.service_token(SERVICE_ID), _whoami),
                ),
            ]
    _print_table(rows, echo)
    passed = all(row.ok for row in rows)
    echo("\nEvery caller got what it should." if passed else "\nSome callers did not get what they should.")
    return passed


def _print_table(rows: list[Row], echo: Callable[[str], None]) -> None:
    caller_width = max(len(row.caller) for row in rows)
    request_width = max(len(row.request) for row in rows)
    echo(f"{'caller':<{caller_width}}  {'request':<{request_width}}  {'result':<6}  what the caller got")
    for row in rows:
        verdict = "ok" if row.ok else "WRONG"
        line = f"{row.caller:<{caller_width}}  {row.request:<{request_width}}  {verdict:<6}  {row.got}"
        echo(line if row.ok else f"{line}  (expected {row.expected})")
