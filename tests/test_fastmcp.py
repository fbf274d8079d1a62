"""FastMCP (the `fastmcp` package from PyPI) behind the whole stack, over real uvicorn with the real mcp client:
per-tool policy, and FastMCP's own `get_access_token()` seeing the caller that Access vouched for."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import fastmcp.server.dependencies
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, TextContent

from mcp_access_guard.testing import LocalAccess, serve

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastmcp_server.py"
MODERN = "2026-07-28"
ROBOT = "robot.access"

# Every transport shape FastMCP offers, each against both protocol eras of the client.
TRANSPORTS = [
    pytest.param({"stateless": False, "json_response": False}, id="stateful-sse"),
    pytest.param({"stateless": False, "json_response": True}, id="stateful-json"),
    pytest.param({"stateless": True, "json_response": False}, id="stateless-sse"),
    pytest.param({"stateless": True, "json_response": True}, id="stateless-json"),
]
MODES = [pytest.param("legacy", id="legacy"), pytest.param("auto", id="auto")]


@pytest.fixture
def example(local_access: LocalAccess, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The example module, loaded from its file as a user runs it, pointed at the local issuer."""
    monkeypatch.setenv("TEAM_DOMAIN", local_access.url)
    monkeypatch.setenv("POLICY_AUD", local_access.audience)
    spec = importlib.util.spec_from_file_location("fastmcp_server", EXAMPLE)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@asynccontextmanager
async def connect(url: str, token: str, mode: str) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers={"Cf-Access-Jwt-Assertion": token}) as http,
        Client(streamable_http_client(f"{url}/mcp", http_client=http), mode=mode) as client,
    ):
        yield client


def text_of(result: CallToolResult) -> str:
    content = result.content[0]
    assert isinstance(content, TextContent)
    return content.text


def assert_era(client: Client, mode: str) -> None:
    # FastMCP's server speaks both eras: "auto" must really have reached the modern one, not fallen back.
    if mode == "auto":
        assert client.protocol_version == MODERN
    else:
        assert client.protocol_version != MODERN


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_allow_listed_user_sees_and_calls_generate_image(
    example: ModuleType, local_access: LocalAccess, transport: dict[str, bool], mode: str
) -> None:
    async with (
        serve(example.build_app(**transport)) as url,
        connect(url, local_access.user_token("alice@example.com"), mode) as alice,
    ):
        assert_era(alice, mode)
        names = [tool.name for tool in (await alice.list_tools()).tools]
        drawn = await alice.call_tool("generate_image", {"prompt": "a cat"})
        added = await alice.call_tool("add", {"a": 2, "b": 3})
    assert names == ["add", "generate_image", "whoami"]
    assert not drawn.is_error
    assert text_of(drawn) == "an image of a cat"
    assert text_of(added) == "5"


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_other_user_neither_sees_nor_calls_generate_image(
    example: ModuleType, local_access: LocalAccess, transport: dict[str, bool], mode: str
) -> None:
    async with (
        serve(example.build_app(**transport)) as url,
        connect(url, local_access.user_token("bob@example.com"), mode) as bob,
    ):
        assert_era(bob, mode)
        names = [tool.name for tool in (await bob.list_tools()).tools]
        denied = await bob.call_tool("generate_image", {"prompt": "a cat"})
        made_up = await bob.call_tool("no_such_tool", {"prompt": "a cat"})
        added = await bob.call_tool("add", {"a": 2, "b": 3})
    assert names == ["add", "whoami"]
    # Indistinguishable from a tool that does not exist: FastMCP's own words, with only the name differing.
    assert denied.is_error
    assert made_up.is_error
    assert text_of(denied) == "Unknown tool: 'generate_image'"
    assert text_of(made_up) == "Unknown tool: 'no_such_tool'"
    assert denied.model_dump(exclude={"content"}) == made_up.model_dump(exclude={"content"})
    assert text_of(added) == "5"


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_fastmcp_get_access_token_reports_the_caller(
    example: ModuleType, local_access: LocalAccess, transport: dict[str, bool], mode: str
) -> None:
    async with serve(example.build_app(**transport)) as url:
        async with connect(url, local_access.user_token("Alice@Example.com"), mode) as alice:
            user = (await alice.call_tool("whoami", {})).structured_content
        async with connect(url, local_access.service_token(ROBOT), mode) as robot:
            service = (await robot.call_tool("whoami", {})).structured_content
    assert user == {"fastmcp_client_id": "alice@example.com", "guard_principal": "alice@example.com", "kind": "user"}
    assert service == {"fastmcp_client_id": ROBOT, "guard_principal": ROBOT, "kind": "service token"}


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("transport", [TRANSPORTS[0], TRANSPORTS[3]])
async def test_fastmcp_finds_the_caller_in_the_request_scope_alone(
    example: ModuleType,
    local_access: LocalAccess,
    monkeypatch: pytest.MonkeyPatch,
    transport: dict[str, bool],
    mode: str,
) -> None:
    # FastMCP reads the HTTP request's scope["user"] first and the SDK's auth contextvar only as a fallback. With
    # the fallback cut off, the caller must still be found: the guard's scope["user"] is what FastMCP relies on.
    monkeypatch.setattr(fastmcp.server.dependencies, "_sdk_get_access_token", lambda: None)
    async with (
        serve(example.build_app(**transport)) as url,
        connect(url, local_access.user_token("bob@example.com"), mode) as bob,
    ):
        who = (await bob.call_tool("whoami", {})).structured_content
    assert who is not None
    assert who["fastmcp_client_id"] == "bob@example.com"


@pytest.mark.anyio
async def test_refusals_before_fastmcp(example: ModuleType, local_access: LocalAccess) -> None:
    request: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    accept = {"Accept": "application/json, text/event-stream"}
    async with serve(example.app) as url, httpx2.AsyncClient() as http:
        no_token = await http.post(f"{url}/mcp", json=request, headers=accept)
        forged = await http.post(
            f"{url}/mcp",
            json=request,
            headers={**accept, "Cf-Access-Jwt-Assertion": local_access.user_token(claims={"aud": ["someone-else"]})},
        )
        # FastMCP's own Host/Origin check is off in the example; the guard's CORS layer still refuses foreign pages.
        foreign_page = await http.post(
            f"{url}/mcp",
            json=request,
            headers={**accept, "Origin": "https://evil.example", "Cf-Access-Jwt-Assertion": local_access.user_token()},
        )
        other_path = await http.get(f"{url}/docs")
    assert no_token.status_code == 401
    assert "www-authenticate" not in no_token.headers
    assert forged.status_code == 403
    assert foreign_page.status_code == 403
    assert other_path.status_code == 404


@pytest.mark.anyio
async def test_fastmcp_session_stays_bound_to_its_caller(example: ModuleType, local_access: LocalAccess) -> None:
    # FastMCP's session manager keeps the SDK's rule: a session belongs to the principal that opened it.
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    tools_list = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    alice = {**headers, "Cf-Access-Jwt-Assertion": local_access.user_token("alice@example.com")}
    bob = {**headers, "Cf-Access-Jwt-Assertion": local_access.user_token("bob@example.com")}
    async with serve(example.app) as url, httpx2.AsyncClient() as http:
        opened = await http.post(f"{url}/mcp", json=initialize, headers=alice)
        session = {"Mcp-Session-Id": opened.headers["mcp-session-id"]}
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await http.post(f"{url}/mcp", json=initialized, headers={**alice, **session})).status_code == 202
        own = await http.post(f"{url}/mcp", json=tools_list, headers={**alice, **session})
        hijack = await http.post(f"{url}/mcp", json=tools_list, headers={**bob, **session})
    assert opened.status_code == 200
    assert own.status_code == 200
    assert '"generate_image"' in own.text
    assert hijack.status_code == 404
