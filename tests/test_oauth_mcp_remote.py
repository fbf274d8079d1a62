"""mcp-remote (pinned in package-lock.json), a real external MCP client, completes OAuth mode headless against
`mcp-access-guard serve` (a subprocess, configured from the environment alone) with `LocalAccessSaaS` as the login.

mcp-remote is driven as an MCP host drives it: spawned with the server's URL, spoken to in JSON-RPC over its stdin and
stdout. It discovers the server from the 401, registers, and opens the authorization URL through `$BROWSER` (there is
no desktop here), which names our scripted browser: that walks consent and Access and loads mcp-remote's own
loopback callback. What it registered and what it was granted are read from the server's store.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from mcp_access_guard import Rule
from mcp_access_guard.oauth.records import ClientRecord, GrantRecord
from mcp_access_guard.testing import LocalAccessSaaS, free_port
from oauth_processes import (
    NODE_BIN,
    Served,
    browser_program,
    headless_environment,
    require_program,
    serving,
    stored,
    visits,
)

pytestmark = pytest.mark.anyio

COOKIE_SECRET_KEY = secrets.token_hex(32)
REPLY_TIMEOUT = 30.0
EXIT_TIMEOUT = 20.0
# The consent answer waits this long before loading the callback: mcp-remote drops an answer that arrives before it
# starts waiting for one (a person is never that quick).
REFUSAL_DELAY = "1.5"
CONFIDENTIAL = '{"token_endpoint_auth_method":"client_secret_post"}'


@pytest.fixture(scope="module")
def mcp_remote() -> Path:
    return require_program(NODE_BIN / "mcp-remote", "run `npm ci`")


class StdioSession:
    """JSON-RPC over mcp-remote's stdin and stdout, one message a line, every reply waited for a bounded time."""

    def __init__(self, process: Process) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self.process = process
        self._lines = BufferedByteReceiveStream(process.stdout)
        self._next_id = 0

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        await self._send({"jsonrpc": "2.0", "method": method, **({"params": params} if params is not None else {})})

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self._next_id += 1
        request_id = self._next_id
        await self._send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}})
        with anyio.fail_after(REPLY_TIMEOUT):
            while True:
                message = json.loads(await self._lines.receive_until(b"\n", 1 << 20))
                if message.get("id") == request_id:
                    assert "error" not in message, message
                    result: dict[str, Any] = message["result"]
                    return result

    async def initialize(self) -> dict[str, Any]:
        params = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}
        result = await self.request("initialize", params)
        await self.notify("notifications/initialized")
        return result

    async def _send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(json.dumps(message).encode() + b"\n")


@dataclass
class Client:
    """Where one mcp-remote keeps its state: its config directory and its callback port, the same for every run."""

    program: Path
    directory: Path
    callback_port: int
    arguments: tuple[str, ...] = ()

    @asynccontextmanager
    async def running(self, server: Served, **environment: str) -> AsyncIterator[StdioSession]:
        """One mcp-remote process for `server`, ended (killed if need be) when the block ends."""
        env = headless_environment(
            self.directory / "home",
            browser_program(self.directory),
            MCP_REMOTE_CONFIG_DIR=str(self.directory / "mcp-auth"),
            **environment,
        )
        command = [str(self.program), f"{server.public_url}/mcp", str(self.callback_port), *self.arguments]
        with (self.directory / "mcp-remote.log").open("ab") as log:
            process = await anyio.open_process(command, env=env, stderr=log)
        try:
            yield StdioSession(process)
        finally:
            await _end(process)

    def log(self) -> str:
        return (self.directory / "mcp-remote.log").read_text(errors="replace")

    def stored_files(self) -> list[str]:
        return sorted(path.name.partition("_")[2] for path in (self.directory / "mcp-auth").rglob("*.json"))


async def _end(process: Process) -> None:
    if process.stdin is not None:
        await process.stdin.aclose()
    with anyio.move_on_after(EXIT_TIMEOUT):
        await process.wait()
        return
    process.kill()
    with anyio.fail_after(EXIT_TIMEOUT):
        await process.wait()


async def list_and_call(session: StdioSession) -> tuple[list[str], str, Any]:
    await session.initialize()
    tools = await session.request("tools/list")
    who = await session.request("tools/call", {"name": "whoami", "arguments": {}})
    added = await session.request("tools/call", {"name": "add", "arguments": {"a": 2, "b": 3}})
    return sorted(tool["name"] for tool in tools["tools"]), who["content"][0]["text"], added["structuredContent"]


@pytest.mark.parametrize(
    ("arguments", "method"),
    [
        pytest.param((), "none", id="as-it-chooses"),
        pytest.param(("--static-oauth-client-metadata", CONFIDENTIAL), "client_secret_post", id="confidential"),
    ],
)
async def test_mcp_remote_logs_in_lists_and_calls_tools_then_reuses_its_tokens(
    mcp_remote: Path, local_access_saas: LocalAccessSaaS, tmp_path: Path, arguments: tuple[str, ...], method: str
) -> None:
    local_access_saas.login_as("alice@example.com")
    store = f"sqlite:///{tmp_path / 'oauth.sqlite3'}"
    client = Client(mcp_remote, tmp_path, free_port(), arguments)
    with serving(local_access_saas, tmp_path, store=store, secret_key=COOKIE_SECRET_KEY) as server:
        async with client.running(server) as session:
            first = await list_and_call(session)
        stored_after_first = client.stored_files()
        # A second run, as the host starts it again: the stored tokens, no browser, no login, no registration.
        async with client.running(server) as session:
            second = await list_and_call(session)
    assert first == second == (["add", "generate_image", "whoami"], "user alice@example.com", {"result": 5})
    assert stored_after_first == ["client_info.json", "tokens.json"]
    assert len(visits(tmp_path)) == 1
    assert local_access_saas.hits["authorization"] == 1

    # What it registered and was granted, from the server's side.
    (registered,) = stored(store, ClientRecord)
    (grant,) = stored(store, GrantRecord)
    assert registered.auth_method == method
    assert (registered.secret_hash is not None) == (method != "none")
    assert registered.scope == "openid email profile"
    assert registered.name == "MCP CLI Proxy"
    assert registered.redirect_uris == (f"http://localhost:{client.callback_port}/oauth/callback",)
    assert grant.client_id == registered.client_id
    assert grant.scopes == ("openid", "email", "profile")
    assert grant.resource == f"{server.public_url}/mcp"
    assert grant.email == "alice@example.com"
    authorization = visits(tmp_path)[0]
    assert "scope=openid+email+profile" in authorization or "scope=openid%20email%20profile" in authorization
    assert "resource=http%3A%2F%2F127.0.0.1" in authorization


@pytest.mark.parametrize("refusal", ["consent-denied", "access-refuses"])
async def test_a_refused_login_makes_mcp_remote_fail_not_hang(
    mcp_remote: Path, local_access_saas: LocalAccessSaaS, tmp_path: Path, refusal: str
) -> None:
    local_access_saas.login_as("alice@example.com")
    environment = {"OAUTH_BROWSER_DELAY": REFUSAL_DELAY}
    if refusal == "consent-denied":
        environment["OAUTH_BROWSER_DECISION"] = "deny"
    else:
        local_access_saas.allow = Rule(emails=["bob@example.com"])
    store = f"sqlite:///{tmp_path / 'oauth.sqlite3'}"
    client = Client(mcp_remote, tmp_path, free_port())
    with serving(local_access_saas, tmp_path, store=store, secret_key=COOKIE_SECRET_KEY) as server:
        async with client.running(server, **environment) as session:
            with pytest.raises((anyio.EndOfStream, anyio.IncompleteRead)):
                await session.initialize()
            with anyio.fail_after(EXIT_TIMEOUT):
                code = await session.process.wait()
    assert code != 0
    assert len(visits(tmp_path)) == 1
    assert local_access_saas.hits["authorization"] == (0 if refusal == "consent-denied" else 1)
    assert "tokens.json" not in client.stored_files()
    assert stored(store, GrantRecord) == []
    assert "access_denied" in client.log()
