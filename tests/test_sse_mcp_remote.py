"""mcp-remote (pinned in package.json; `.ci/run` installs it with `npm ci`), a real external client, over the older
HTTP+SSE transport (`--transport sse-only`) through the whole stack, driven as an MCP host drives it: spawned with
the server's URL and the caller's headers, spoken to over its stdin and stdout by the `mcp` SDK's stdio client."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp_types import TextContent
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_access_guard.testing import LocalAccess
from oauth_processes import NODE_BIN, require_program
from sse_support import ALICE, BOB, caller, comparable, site, sse_server

pytestmark = pytest.mark.anyio



@pytest.fixture(scope="module")
def mcp_remote() -> Path:
    return require_program(NODE_BIN / "mcp-remote", "run `npm ci`")


@asynccontextmanager
async def through_mcp_remote(program: Path, url: str, headers: dict[str, str], home: Path) -> AsyncIterator[Client]:
    """An SDK client talking to one mcp-remote process that forwards to `url` over HTTP+SSE with `headers`.

    The header values travel in the environment (`${VAR}` in mcp-remote's `--header`), not on its command line.
    """
    await anyio.Path(home).mkdir(parents=True, exist_ok=True)
    arguments = [f"{url}/sse", "--transport", "sse-only"]
    environment = {"PATH": os.environ["PATH"], "HOME": str(home), "MCP_REMOTE_CONFIG_DIR": str(home / "mcp-auth")}
    for index, (name, value) in enumerate(headers.items()):
        arguments += ["--header", f"{name}:${{HEADER_{index}}}"]
        environment[f"HEADER_{index}"] = value
    parameters = StdioServerParameters(command=str(program), args=arguments, env=environment)
    with (home / "mcp-remote.log").open("w") as log:
        async with Client(stdio_client(parameters, errlog=log), mode="legacy") as client:
            yield client


def text_of(result: Any) -> str:
    content = result.content[0]
    assert isinstance(content, TextContent)
    return content.text


class SessionRecorder:
    """Notes the session each message is posted to, as the app sees it (inside the guard)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.posted_to: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            self.posted_to += re.findall(r"session_id=([0-9a-f]{32})", scope["query_string"].decode("latin-1"))
        await self.app(scope, receive, send)


async def test_mcp_remote_sse_only_as_alice_and_bob(
    mcp_remote: Path, local_access: LocalAccess, tmp_path: Path
) -> None:
    runs: list[str] = []
    seen = {}
    async with site(local_access, sse_server(runs).sse_app()) as url:
        for email in (ALICE, BOB):
            headers = caller(local_access, email)
            async with through_mcp_remote(mcp_remote, url, headers, tmp_path / email) as client:
                names = [tool.name for tool in (await client.list_tools()).tools]
                image = text_of(await client.call_tool("generate_image", {"prompt": "a cat"}))
                who = text_of(await client.call_tool("whoami", {}))
            seen[email] = (names, image, who)
    assert seen == {
        ALICE: (["add", "whoami", "generate_image"], "image of a cat", ALICE),
        BOB: (["add", "whoami"], "Unknown tool: generate_image", BOB),
    }
    assert runs == [ALICE]
    assert "sse-only" in (tmp_path / ALICE / "mcp-remote.log").read_text()


async def test_bob_posting_into_the_session_of_alices_mcp_remote_is_refused(
    mcp_remote: Path, local_access: LocalAccess, tmp_path: Path
) -> None:
    runs: list[str] = []
    recorder = SessionRecorder(sse_server(runs).sse_app())
    async with (
        site(local_access, recorder) as url,
        through_mcp_remote(mcp_remote, url, caller(local_access, ALICE), tmp_path / "alice") as alice,
    ):
        assert text_of(await alice.call_tool("whoami", {})) == ALICE
        (alices,) = set(recorder.posted_to)
        call = {"jsonrpc": "2.0", "id": 66, "method": "tools/call", "params": {"name": "generate_image"}}
        as_bob = {**caller(local_access, BOB), "Content-Type": "application/json"}
        async with httpx.AsyncClient() as http:
            into_alices = await http.post(f"{url}/messages/?session_id={alices}", json=call, headers=as_bob)
            unknown = await http.post(f"{url}/messages/?session_id={uuid.uuid4().hex}", json=call, headers=as_bob)
        # Alice's mcp-remote goes on as before, and nothing of bob's reached her session.
        assert text_of(await alice.call_tool("generate_image", {"prompt": "a dog"})) == "image of a dog"
    assert comparable(into_alices) == comparable(unknown)
    assert (into_alices.status_code, into_alices.text) == (404, "Could not find session")
    assert runs == [ALICE]
