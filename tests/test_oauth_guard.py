"""`guard(app, GuardConfig(oauth=...))`: OAuth mode with every other layer on top, over real uvicorn and a real
LocalAccessSaaS. The SDK's own client completes the flow through the whole stack in both eras; the path allow-list
admits exactly the authorization server's paths; the consent form may post from our own origin and no other; the
tool policy sees the OAuth caller; a direct service-token pair still works beside OAuth; `serve` runs OAuth mode
from the environment alone."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from mcp_access_guard import GuardConfig, Rule, ToolPolicy, guard
from mcp_access_guard.mcp_request import tools_list_request
from mcp_access_guard.middleware.oauth import OAuthEndpointsMiddleware
from mcp_access_guard.oauth import OAuthServer
from mcp_access_guard.settings import ServiceTokenSettings
from mcp_access_guard.testing import LocalAccessSaaS, free_port, serve
from oauth_harness import Deployment, mcp_app, oauth_config, register, tokens_for
from test_oauth_sdk import MODES, whole_flow

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
ROBOT_ID = "robot.access"
ROBOT_SECRET = secrets.token_hex(32)
LIST_TOOLS = tools_list_request()


def the_server(app: Any) -> OAuthServer:
    """The OAuthServer guard() built, found by walking down the stack."""
    while not isinstance(app, OAuthEndpointsMiddleware):
        app = app.app
    return app.server


@asynccontextmanager
async def guarded_site(saas: LocalAccessSaaS, **settings: Any) -> AsyncIterator[Deployment]:
    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    app = guard(mcp_app(), GuardConfig(oauth=oauth_config(saas, public_url), **settings))
    server = the_server(app)
    async with serve(app, port=port) as url:
        yield Deployment(url, server, saas, server.store)


@pytest.mark.parametrize("mode", MODES)
async def test_the_sdk_client_completes_the_flow_through_the_whole_stack(
    local_access_saas: LocalAccessSaaS, mode: str
) -> None:
    local_access_saas.login_as("alice@example.com", groups=["eng"])
    async with guarded_site(local_access_saas) as site:
        await whole_flow(site, mode, token_endpoint_auth_method="none")


async def test_paths_admit_the_authorization_server_and_nothing_else(local_access_saas: LocalAccessSaaS) -> None:
    async with guarded_site(local_access_saas) as site, httpx.AsyncClient() as http:
        metadata = await http.get(f"{site.url}/.well-known/oauth-authorization-server")
        resource = await http.get(f"{site.url}/.well-known/oauth-protected-resource/mcp")
        assert metadata.status_code == resource.status_code == 200
        assert metadata.json()["issuer"] == site.url
        assert resource.json()["resource"] == f"{site.url}/mcp"
        for path in ("/admin", "/docs", "/oauth/callback/../admin", "/.well-known/openid-configuration"):
            assert (await http.get(site.url + path)).status_code == 404, path
        unauthenticated = await http.post(f"{site.url}/mcp", json=LIST_TOOLS.body, headers=LIST_TOOLS.headers)
        assert unauthenticated.status_code == 401
        assert "resource_metadata=" in unauthenticated.headers["www-authenticate"]


async def test_the_consent_form_may_post_from_our_own_origin_only(local_access_saas: LocalAccessSaaS) -> None:
    async with guarded_site(local_access_saas) as site, httpx.AsyncClient() as http:
        own = await http.post(f"{site.url}/consent", data={"decision": "approve"}, headers={"Origin": site.url})
        foreign = await http.post(
            f"{site.url}/consent", data={"decision": "approve"}, headers={"Origin": "https://evil.example"}
        )
    # Ours reaches the server, which refuses the form for its missing CSRF value; the other origin never gets there.
    assert own.status_code == 400
    assert foreign.status_code == 403
    assert foreign.json() == {"error": "origin_not_allowed"}


async def test_the_tool_policy_sees_the_oauth_caller(local_access_saas: LocalAccessSaaS) -> None:
    policy = ToolPolicy({"add": Rule(emails=["alice@example.com"])})
    async with guarded_site(local_access_saas, tools=policy) as site:
        listings = {}
        for person in ("alice@example.com", "bob@example.com"):
            local_access_saas.login_as(person)
            tokens = await tokens_for(site.url, await register(site.url))
            async with httpx.AsyncClient() as http:
                answer = await http.post(
                    f"{site.url}/mcp",
                    json=LIST_TOOLS.body,
                    headers={**LIST_TOOLS.headers, "Authorization": f"Bearer {tokens['access_token']}"},
                )
            assert answer.status_code == 200, answer.text
            listings[person] = sorted(tool["name"] for tool in _result(answer)["tools"])
    assert listings == {"alice@example.com": ["add", "whoami"], "bob@example.com": ["whoami"]}


def _result(response: httpx.Response) -> dict[str, Any]:
    text = response.text
    if response.headers["content-type"].startswith("text/event-stream"):
        text = next(line[5:] for line in text.splitlines() if line.startswith("data:"))
    result: dict[str, Any] = json.loads(text)["result"]
    return result


async def test_a_direct_service_token_pair_still_works_beside_oauth(local_access_saas: LocalAccessSaaS) -> None:
    pairs = ServiceTokenSettings(client_credentials={ROBOT_ID: ROBOT_SECRET})
    headers = LIST_TOOLS.headers
    async with guarded_site(local_access_saas, service_token=pairs) as site, httpx.AsyncClient() as http:
        robot = await http.post(
            f"{site.url}/mcp",
            json=LIST_TOOLS.body,
            headers={**headers, "CF-Access-Client-Id": ROBOT_ID, "CF-Access-Client-Secret": ROBOT_SECRET},
        )
        wrong = await http.post(
            f"{site.url}/mcp",
            json=LIST_TOOLS.body,
            headers={**headers, "CF-Access-Client-Id": ROBOT_ID, "CF-Access-Client-Secret": "x" * 64},
        )
        nobody = await http.post(f"{site.url}/mcp", json=LIST_TOOLS.body, headers=headers)
    assert robot.status_code == 200, robot.text
    assert "whoami" in [tool["name"] for tool in _result(robot)["tools"]]
    assert wrong.status_code == 403
    assert nobody.status_code == 401


def _serve_environment(saas: LocalAccessSaaS, port: int, **extra: str) -> dict[str, str]:
    upstream = saas.config()
    return {
        **{name: value for name, value in os.environ.items() if not name.startswith(("ACCESS_", "GUARD_", "TEAM_"))},
        "ACCESS_CLIENT_ID": upstream.client_id,
        "ACCESS_CLIENT_SECRET": upstream.client_secret,
        "ACCESS_ISSUER": upstream.issuer,
        "COOKIE_ENCRYPTION_KEY": secrets.token_hex(32),
        "GUARD_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "GUARD_OAUTH_STORE": "memory:",
        **extra,
    }


def test_serve_refuses_a_memory_store_with_several_workers(local_access_saas: LocalAccessSaaS) -> None:
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "mcp_access_guard.cli", "serve", "examples.reference_server:mcp", "--workers", "2"],
        cwd=ROOT,
        env=_serve_environment(local_access_saas, port),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "memory: OAuth store lives in one process" in done.stderr


async def test_serve_runs_oauth_mode_from_the_environment_alone(
    local_access_saas: LocalAccessSaaS, tmp_path: Path
) -> None:
    port = free_port()
    command = [sys.executable, "-m", "mcp_access_guard.cli", "serve", "examples.reference_server:mcp"]
    log = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("w+") as output_file:
        process = await anyio.open_process(
            [*command, "--port", str(port)],
            cwd=ROOT,
            env=_serve_environment(local_access_saas, port),
            stdout=output_file,
            stderr=subprocess.STDOUT,
        )
        try:
            await _exercise(url)
        finally:
            process.terminate()
            await process.wait()
        output = log.read_text()
    assert "GET /oauth/callback" in output
    assert "upstream-code-must-not-be-logged" not in output


async def _exercise(url: str) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(400):
            try:
                metadata = await http.get(f"{url}/.well-known/oauth-authorization-server")
                break
            except httpx.ConnectError:
                await anyio.sleep(0.05)
        assert metadata.status_code == 200
        assert metadata.json()["issuer"] == url
        challenge = await http.post(f"{url}/mcp", json=LIST_TOOLS.body, headers=LIST_TOOLS.headers)
        assert challenge.status_code == 401
        # A request with a query string, as Access's redirect to /oauth/callback has: never in the access log.
        await http.get(f"{url}/oauth/callback?code=upstream-code-must-not-be-logged&state=s")
