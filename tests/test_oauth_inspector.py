"""The MCP Inspector CLI (pinned in package-lock.json) completes OAuth mode non-interactively against
`mcp-access-guard serve` (a subprocess, configured from the environment alone) with `LocalAccessSaaS` as the login.

Without a terminal the Inspector starts an interactive login only when `MCP_AUTO_OPEN_ENABLED=true`; it then opens
the authorization URL through `$BROWSER` (our scripted browser) and waits on its loopback callback. It keeps the
tokens between runs only with `MCP_INSPECTOR_SECRET_STORE=file` (under `$HOME`, here the test's directory).
"""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import pytest

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

COOKIE_SECRET_KEY = secrets.token_hex(32)
RUN_TIMEOUT = 60


@pytest.fixture(scope="module")
def inspector() -> Path:
    return require_program(NODE_BIN / "mcp-inspector", "run `npm ci`")


def run_inspector(
    inspector: Path, server: Served, directory: Path, callback_port: int, *arguments: str, **environment: str
) -> subprocess.CompletedProcess[str]:
    env = headless_environment(
        directory / "home",
        browser_program(directory),
        MCP_AUTO_OPEN_ENABLED="true",
        MCP_INSPECTOR_SECRET_STORE="file",
        **environment,
    )
    command = [str(inspector), "--cli", f"{server.public_url}/mcp", "--transport", "http"]
    command += ["--callback-url", f"http://127.0.0.1:{callback_port}/oauth/callback", *arguments, "--format", "json"]
    return subprocess.run(
        command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )


def test_the_inspector_logs_in_lists_and_calls_tools_then_reuses_its_tokens(
    inspector: Path, local_access_saas: LocalAccessSaaS, tmp_path: Path
) -> None:
    local_access_saas.login_as("alice@example.com")
    store = f"sqlite:///{tmp_path / 'oauth.sqlite3'}"
    callback_port = free_port()
    with serving(local_access_saas, tmp_path, store=store, secret_key=COOKIE_SECRET_KEY) as server:
        listed = run_inspector(inspector, server, tmp_path, callback_port, "--method", "tools/list")
        assert listed.returncode == 0, listed.stderr
        call = ("--method", "tools/call", "--tool-name", "add", "--tool-arg", "a=2", "b=3")
        added = run_inspector(inspector, server, tmp_path, callback_port, *call)
        assert added.returncode == 0, added.stderr
    tools = json.loads(listed.stdout)["result"]["tools"]
    assert sorted(tool["name"] for tool in tools) == ["add", "generate_image", "whoami"]
    assert json.loads(added.stdout)["result"]["structuredContent"] == {"result": 5}
    # One login, by the first run; the second used the tokens it kept.
    assert len(visits(tmp_path)) == 1
    assert local_access_saas.hits["authorization"] == 1

    (registered,) = stored(store, ClientRecord)
    (grant,) = stored(store, GrantRecord)
    assert registered.auth_method == "none"
    assert registered.secret_hash is None
    assert registered.name == "MCP Inspector"
    assert registered.redirect_uris == (f"http://127.0.0.1:{callback_port}/oauth/callback",)
    # It asks for what the resource metadata publishes.
    assert registered.scope == "openid email profile"
    assert grant.scopes == ("openid", "email", "profile")
    assert grant.resource == f"{server.public_url}/mcp"
    assert grant.email == "alice@example.com"
    assert "resource=http%3A%2F%2F127.0.0.1" in visits(tmp_path)[0]


def test_a_denied_consent_makes_the_inspector_fail(
    inspector: Path, local_access_saas: LocalAccessSaaS, tmp_path: Path
) -> None:
    local_access_saas.login_as("alice@example.com")
    store = f"sqlite:///{tmp_path / 'oauth.sqlite3'}"
    with serving(local_access_saas, tmp_path, store=store, secret_key=COOKIE_SECRET_KEY) as server:
        refused = run_inspector(
            inspector,
            server,
            tmp_path,
            free_port(),
            "--method",
            "tools/list",
            OAUTH_BROWSER_DECISION="deny",
            OAUTH_BROWSER_DELAY="1",
        )
    assert refused.returncode != 0
    assert "access_denied" in refused.stderr
    assert refused.stdout.strip() == ""
    assert len(visits(tmp_path)) == 1
    assert local_access_saas.hits["authorization"] == 0
    assert stored(store, GrantRecord) == []
