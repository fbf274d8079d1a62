"""A real headless Chromium on two origins calls a guarded MCPServer: only the allowed origin can read the session."""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

import anyio
import pytest
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from mcp_access_guard.middleware.cors import CORSAllowlistMiddleware
from mcp_access_guard.testing import free_port, serve

pytestmark = pytest.mark.anyio

CHROMIUM = Path("/usr/bin/chromium")
PAGES = Path(__file__).parent / "browser"
RESULT = re.compile(r'<pre id="result">(.*?)</pre>', re.DOTALL)


async def load_in_chromium(url: str, profile: Path) -> str:
    """What the page wrote into its result element, after Chromium has run its script."""
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        url,
    ]
    with anyio.fail_after(60):
        # Async, so the uvicorn servers in this event loop keep answering while Chromium runs.
        finished = await anyio.run_process(command, check=False, stderr=subprocess.DEVNULL)
    match = RESULT.search(finished.stdout.decode())
    assert match is not None, f"no result element in Chromium's DOM (exit {finished.returncode})"
    return match.group(1)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Chromium at /usr/bin/chromium (apt-get install chromium)")
async def test_only_the_allowed_origin_reads_the_session_id(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mcp_access_guard")
    allowed_port, refused_port = free_port(), free_port()
    allowed_origin = f"http://127.0.0.1:{allowed_port}"

    # Both page origins are loopback, which the SDK's own check (on by default for 127.0.0.1) allows; it is turned
    # off so that this layer alone decides, and its allowed_hosts takes over the DNS-rebinding Host check.
    server = MCPServer("browser-test")
    sdk_app = server.streamable_http_app(
        json_response=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    guarded = CORSAllowlistMiddleware(sdk_app, allow_origins=[allowed_origin], allowed_hosts=["127.0.0.1"])
    pages = Starlette(routes=[Mount("/", app=StaticFiles(directory=PAGES))])

    async with (
        serve(guarded) as mcp_url,
        serve(pages, port=allowed_port) as allowed_pages,
        serve(pages, port=refused_port) as refused_pages,
    ):
        page = f"/mcp_fetch.html?target={mcp_url}/mcp"
        allowed_result = await load_in_chromium(allowed_pages + page, tmp_path / "allowed-profile")
        refused_result = await load_in_chromium(refused_pages + page, tmp_path / "refused-profile")

    assert re.fullmatch(r"status=200 session=read:[0-9a-f]{32}", allowed_result), allowed_result
    assert refused_result == "fetch-failed:TypeError"
    decisions = [(vars(r)["decision"], vars(r)["reason"]) for r in caplog.records if r.name == "mcp_access_guard"]
    assert ("allow", "preflight_allowed") in decisions
    assert ("allow", "origin_allowed") in decisions
    assert ("deny", "origin_not_allowed") in decisions
