"""The MCP Inspector CLI (a real external client, from npm) against `mcp-access-guard serve --dev`, through the whole
stack. `.ci/run` installs it with `npm ci` from package.json; there is no `npx` download at test time."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from test_cli import ROOT, DevServer, run_cli, start_dev_server

INSPECTOR = ROOT / "node_modules" / ".bin" / "mcp-inspector"
PRINTED_PREFIX = ["npx", "-y", "@modelcontextprotocol/inspector@2"]


@pytest.fixture(scope="module")
def inspector() -> Path:
    if not INSPECTOR.exists():
        reason = f"the MCP Inspector is not installed ({INSPECTOR.relative_to(ROOT)} missing): run `npm ci`"
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI installs it, so there it must run
        pytest.skip(reason)
    return INSPECTOR


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[DevServer]:
    server = start_dev_server(tmp_path)
    yield server
    server.kill()


def run_inspector(inspector: Path, arguments: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    # Its settings directory (~/.mcp-inspector) goes under the test's own directory, not the user's home.
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run(
        [str(inspector), *arguments], capture_output=True, text=True, timeout=120, check=False, env=env
    )


def printed_inspector_arguments(server: DevServer) -> list[str]:
    """The Inspector command `serve --dev` printed, minus the `npx` download."""
    words = server.printed_command("npx")
    assert words[: len(PRINTED_PREFIX)] == PRINTED_PREFIX
    return words[len(PRINTED_PREFIX) :]


def test_the_printed_inspector_command_lists_tools(inspector: Path, dev_server: DevServer, tmp_path: Path) -> None:
    done = run_inspector(inspector, [*printed_inspector_arguments(dev_server), "--format", "json"], tmp_path)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)["result"]
    assert [tool["name"] for tool in listed["tools"]] == ["add", "generate_image", "whoami"]


def test_inspector_calls_add_and_a_refused_token_makes_it_fail(
    inspector: Path, dev_server: DevServer, tmp_path: Path
) -> None:
    def call_add(token: str) -> subprocess.CompletedProcess[str]:
        arguments = [
            "--cli",
            f"{dev_server.url}/mcp",
            "--transport",
            "http",
            "--header",
            f"Cf-Access-Jwt-Assertion: {token}",
        ]
        arguments += ["--method", "tools/call", "--tool-name", "add", "--tool-arg", "a=2", "b=3", "--format", "json"]
        return run_inspector(inspector, arguments, tmp_path)

    minted = run_cli("token", "--email", "bob@example.com", cwd=dev_server.cwd)
    assert minted.returncode == 0, minted.stderr
    added = call_add(minted.stdout.strip())
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["result"]["structuredContent"] == {"result": 5}

    expired = run_cli("token", "--email", "bob@example.com", "--expires-in=-1h", cwd=dev_server.cwd).stdout.strip()
    refused = call_add(expired)
    assert refused.returncode != 0
    assert "403" in refused.stderr
    assert "5" not in refused.stdout
