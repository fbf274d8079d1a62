"""`mcp-access-guard serve --dev --oauth`: OAuth mode against an embedded Access for SaaS application, as subprocesses
the way a user runs it. What it prints is pasted as printed: the mcp SDK's own OAuth client signs in at the printed
URL through a scripted browser, and so does the real MCP Inspector CLI (the printed command, with the browser it
opens pointed at the same scripted browser); with several workers they share a store the server removes at exit."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientMetadata

from mcp_access_guard import Rule
from mcp_access_guard import serve as serve_module
from mcp_access_guard.dev import saas_environment
from mcp_access_guard.testing import LocalAccessSaaS, free_port
from test_cli import REFERENCE, DevServer, run_cli, start_server
from test_inspector import PRINTED_PREFIX, inspector
from test_oauth_sdk import MemoryTokens, ScriptedPerson

__all__ = ["inspector"]  # a fixture, used by name

BROWSER = Path(__file__).resolve().parent / "oauth_browser.py"
PRINTED_REMOTE = ["npx", "-y", "mcp-remote"]


def start_dev_oauth(cwd: Path, *extra: str) -> DevServer:
    return start_server(cwd, REFERENCE, "--dev", "--oauth", *extra)


async def sign_in_and_list(url: str) -> tuple[list[str], str, MemoryTokens]:
    """The mcp SDK's OAuth client at `url`: registers, a scripted person approves, Access signs alice in."""
    person = ScriptedPerson(f"http://127.0.0.1:{free_port()}/callback")
    tokens = MemoryTokens()
    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(redirect_uris=[person.redirect_uri], client_name="dev test"),  # type: ignore[list-item]
        storage=tokens,
        redirect_handler=person.redirect,
        callback_handler=person.callback,
    )
    async with (
        httpx2.AsyncClient(auth=provider, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        names = [tool.name for tool in (await client.list_tools()).tools]
        result = await client.call_tool("whoami", {})
    assert person.consent_pages == 1
    return names, str((result.structured_content or {}).get("result")), tokens


def left_behind(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def printed_arguments(server: DevServer, prefix: list[str]) -> list[str]:
    """The arguments of the indented command line --dev --oauth printed that starts with `prefix`."""
    for line in server.printed.splitlines():
        if line.startswith("  npx "):
            words = shlex.split(line)
            if words[: len(prefix)] == prefix:
                return words[len(prefix) :]
    raise AssertionError(f"no {' '.join(prefix)} command in:\n{server.printed}")


def printed_url(server: DevServer) -> str:
    (url,) = printed_arguments(server, PRINTED_REMOTE)
    return url


@pytest.mark.anyio
async def test_the_printed_url_signs_the_sdk_client_in_and_the_printed_entry_names_it(tmp_path: Path) -> None:
    server = start_dev_oauth(tmp_path)
    try:
        printed = server.printed
        assert "DEV MODE, FOR LOCAL USE ONLY" in printed
        assert "signs in anyone" in printed
        url = printed_url(server)
        assert url == f"{server.url}/mcp"
        entry_text = printed.split("(an mcpServers entry, through mcp-remote):\n", 1)[1].split("\n\n", 1)[0]
        entry = json.loads(entry_text)["mcpServers"]["mcp-access-guard-dev"]
        assert entry == {"command": "npx", "args": ["-y", "mcp-remote", url]}

        names, who, tokens = await sign_in_and_list(url)
        assert names == ["add", "generate_image", "whoami"]
        assert who == "user alice@example.com"
        assert tokens.tokens is not None
        assert tokens.tokens.access_token.startswith("mag_at_")
        # The credentials are not in what the server printed or logged.
        output = server.printed + server.stderr.read_text()
        assert tokens.tokens.access_token not in output
        assert "mag_at_" not in output
        assert "mag_rt_" not in output
        assert server.interrupt() == 0, server.stderr.read_text()
    finally:
        server.kill()
    assert "Traceback" not in server.stderr.read_text()
    # Nothing left behind: no store file, no dev state.
    assert left_behind(tmp_path) == sorted([server.stdout.name, server.stderr.name])


def test_the_printed_inspector_command_signs_in_through_the_browser(inspector: Path, tmp_path: Path) -> None:
    browser = tmp_path / "browser"
    # What the Inspector opens the authorization URL with (through xdg-open and $BROWSER): the scripted browser.
    browser.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(BROWSER))} "$@"\n')
    browser.chmod(browser.stat().st_mode | stat.S_IXUSR)
    server = start_dev_oauth(tmp_path)
    try:
        arguments = printed_arguments(server, PRINTED_PREFIX)
        assert arguments == ["--cli", f"{server.url}/mcp", "--transport", "http", "--method", "tools/list"]
        done = subprocess.run(
            [str(inspector), *arguments, "--format", "json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            stdin=subprocess.DEVNULL,
            env={
                **os.environ,
                "HOME": str(tmp_path),
                "BROWSER": str(browser),
                # No terminal here: the Inspector opens the browser only when told to.
                "MCP_AUTO_OPEN_ENABLED": "true",
            },
        )
        assert done.returncode == 0, done.stderr
        listed = json.loads(done.stdout)["result"]
        assert [tool["name"] for tool in listed["tools"]] == ["add", "generate_image", "whoami"]
        assert "Authorization complete" in done.stderr
        assert server.interrupt() == 0
    finally:
        server.kill()


@pytest.mark.anyio
async def test_several_workers_share_a_store_that_goes_with_the_server(tmp_path: Path) -> None:
    server = start_dev_oauth(tmp_path, "--workers", "2")
    try:
        assert "(2 worker(s))" in server.printed
        # Registration, consent, the callback and the token exchange are separate connections: with two workers they
        # land on either, and only a shared store lets the login finish.
        for _ in range(3):
            names, who, _ = await sign_in_and_list(printed_url(server))
            assert names == ["add", "generate_image", "whoami"]
            assert who == "user alice@example.com"
        assert server.interrupt(timeout=20) == 0, server.stderr.read_text()
    finally:
        server.kill()
    assert "Traceback" not in server.stderr.read_text()
    assert left_behind(tmp_path) == sorted([server.stdout.name, server.stderr.name])


def test_oauth_without_dev_is_refused(tmp_path: Path) -> None:
    done = run_cli("serve", REFERENCE, "--oauth", cwd=tmp_path)
    assert done.returncode == 2
    assert "--oauth goes with --dev" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10"])
def test_dev_oauth_is_refused_off_loopback(tmp_path: Path, host: str) -> None:
    done = run_cli("serve", REFERENCE, "--dev", "--oauth", "--host", host, cwd=tmp_path)
    assert done.returncode == 2
    assert "a login that signs in anyone" in done.stderr
    assert "--allow-dev-on-network" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_dev_application_replaces_the_files_and_keeps_its_other_settings(tmp_path: Path) -> None:
    client_id = "0123456789abcdef" * 4
    issuer = f"https://myteam.cloudflareaccess.com/cdn-cgi/access/sso/oidc/{client_id}"
    path = tmp_path / "guard.toml"
    path.write_text(
        '[oauth]\npublic_url = "https://mcp.example.com"\nstore = "redis://127.0.0.1:1/0"\nconsent = "once"\n'
        'access_token_ttl = 600\n[oauth.allow]\nemail_domains = ["example.com"]\n'
        f'[oauth.upstream]\nclient_id = "{client_id}"\nissuer = "{issuer}"\n'
    )
    environ = {"ACCESS_CLIENT_SECRET": secrets.token_hex(32), "COOKIE_ENCRYPTION_KEY": secrets.token_hex(32)}
    with LocalAccessSaaS() as saas:
        public_url = f"http://127.0.0.1:{free_port()}"
        dev = {**environ, **saas_environment(saas, public_url, "memory:")}
        config = serve_module.load_config(str(path), dev, dev_oauth=True)
    assert config.oauth is not None
    oauth = config.oauth
    assert (oauth.public_url, oauth.upstream.issuer, oauth.store) == (public_url, saas.issuer, "memory:")
    assert oauth.secret_key == dev["COOKIE_ENCRYPTION_KEY"] != environ["COOKIE_ENCRYPTION_KEY"]
    assert oauth.upstream.client_secret == saas.client_secret
    assert (oauth.consent, oauth.access_token_ttl) == ("once", 600)
    assert oauth.allow == Rule(email_domains=["example.com"])
    assert config.access is None
