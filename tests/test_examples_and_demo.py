"""The example server and the demo, run the way a user runs them."""

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import TextContent

from mcp_access_guard.testing import LocalAccess, serve

ROOT = Path(__file__).resolve().parent.parent


async def call_as(
    url: str, token: str, tool: str, arguments: dict[str, object], headers: dict[str, str] | None = None
) -> tuple[list[str], str]:
    async with (
        httpx2.AsyncClient(headers=headers or {"Cf-Access-Jwt-Assertion": token}) as http,
        Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
    ):
        names = [tool.name for tool in (await client.list_tools()).tools]
        result = await client.call_tool(tool, arguments)
    content = result.content[0]
    assert isinstance(content, TextContent)
    return names, content.text


@pytest.mark.anyio
async def test_reference_example_under_uvicorn(local_access: LocalAccess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEAM_DOMAIN", local_access.url)
    monkeypatch.setenv("POLICY_AUD", local_access.audience)
    monkeypatch.setenv("ALLOWED_EMAILS", "alice@example.com")
    example = load_example("reference_server")
    async with serve(example.app) as url:
        robot = await call_as(url, local_access.service_token("robot.access"), "whoami", {})
        alice = await call_as(url, local_access.user_token("alice@example.com"), "generate_image", {"prompt": "a cat"})
        bob = await call_as(url, local_access.user_token("bob@example.com"), "generate_image", {"prompt": "a cat"})
    assert robot == (["add", "whoami"], "service token robot.access")
    assert alice == (["add", "generate_image", "whoami"], "an image of a cat")
    assert bob == (["add", "whoami"], "Unknown tool: generate_image")


ACCESS_ROWS = [
    "anyone POST /admin ok HTTP 404",
    "a foreign web page POST /mcp ok HTTP 403",
    "no token whoami ok HTTP 401",
    "forged token whoami ok HTTP 403",
    "expired token whoami ok HTTP 403",
    "alice whoami ok user alice@example.com (sdk sees alice@example.com)",
    "alice tools/list ok add, generate_image, whoami",
    "alice generate_image ok an image of a cat",
    "bob tools/list ok add, whoami",
    "bob generate_image ok Unknown tool: generate_image",
    "bob generate_image, raw ok same bytes as for a made-up tool",
    "service token whoami ok service token 88bf3b6d86161464f6509f7219099e57.access",
]
OAUTH_ROWS = [
    "an MCP client POST /mcp, no token ok HTTP 401, pointing at our metadata",
    "alice's client tools/list (registers; alice consents) ok add, generate_image, whoami",
    "alice the consent page ok asks to allow Demo client, once",
    "alice's client whoami ok user alice@example.com through the client it registered",
    "alice's client generate_image ok an image of a cat",
    "bob's client tools/list ok add, whoami",
    "bob's client generate_image ok Unknown tool: generate_image",
    "anyone POST /token, alice's code again ok HTTP 400 invalid_grant",
    "alice's client tools/list after the replay ok HTTP 401: the replay revoked the grant",
    "mallory (not example.com) sign in ok back to the client with error=access_denied",
    "a person who denies the consent page ok back to the client with error=access_denied; Access never asked",
    "a client register http://evil.example/callback ok HTTP 400 invalid_redirect_uri",
    "a page on another site POST /consent ok HTTP 403",
]


def run_demo_command(*options: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "mcp_access_guard.cli", "demo", *options],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Every caller got what it should." in done.stdout
    assert "WRONG" not in done.stdout
    return [" ".join(line.split()) for line in done.stdout.splitlines()]


def test_demo_command_succeeds_and_shows_every_caller_in_both_modes() -> None:
    rows = run_demo_command()
    for expected in ACCESS_ROWS + OAUTH_ROWS:
        assert any(row.startswith(expected) for row in rows), (expected, rows)
    # Access mode first, then OAuth mode.
    assert rows.index(next(row for row in rows if row.startswith(OAUTH_ROWS[0]))) > rows.index(
        next(row for row in rows if row.startswith(ACCESS_ROWS[-1]))
    )


def test_demo_oauth_shows_oauth_mode_alone() -> None:
    rows = run_demo_command("--oauth")
    for expected in OAUTH_ROWS:
        assert any(row.startswith(expected) for row in rows), (expected, rows)
    assert not any(row.startswith(ACCESS_ROWS[0]) for row in rows)


@pytest.mark.anyio
async def test_the_demo_fails_when_a_caller_gets_what_it_should_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """A guard that let mallory in would make the demo say so, and fail."""
    from mcp_access_guard import demo

    async def let_anyone_in(url: str, decision: str) -> str:
        return "back to the client with a code"

    monkeypatch.setattr(demo, "_front_channel", let_anyone_in)
    printed: list[str] = []
    assert await demo.run_demo(printed.append, access=False) is False
    assert printed[-1].strip() == "Some callers did not get what they should."
    assert any("WRONG" in line and "expected back to the client with error=access_denied" in line for line in printed)


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.anyio
async def test_fastapi_example_guards_every_layer(local_access: LocalAccess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEAM_DOMAIN", local_access.url)
    monkeypatch.setenv("POLICY_AUD", local_access.audience)
    monkeypatch.setenv("GUARD_SECRETS", "tunnel-secret-42")
    example = load_example("fastapi_app")
    headers = {"Cf-Access-Guard-Secret": "tunnel-secret-42", "Cf-Access-Jwt-Assertion": local_access.user_token()}
    async with serve(example.app) as url:
        async with httpx2.AsyncClient() as plain:
            assert (await plain.get(f"{url}/docs")).status_code == 404
            assert (await plain.get(f"{url}/health")).json() == {"status": "ok"}
            assert (await plain.post(f"{url}/mcp", json={})).status_code == 403
            refused = await plain.post(f"{url}/mcp", json={}, headers={"Cf-Access-Guard-Secret": "tunnel-secret-42"})
            assert refused.status_code == 401
        for mode in ("legacy", "auto"):
            async with (
                httpx2.AsyncClient(headers=headers) as http,
                Client(streamable_http_client(f"{url}/mcp", http_client=http), mode=mode) as client,
            ):
                added = await client.call_tool("add", {"a": 2, "b": 3})
                who = await client.call_tool("whoami", {})
            assert isinstance(added.content[0], TextContent)
            assert added.content[0].text == "5"
            assert isinstance(who.content[0], TextContent)
            assert who.content[0].text == "alice@example.com"
        bob = {**headers, "Cf-Access-Jwt-Assertion": local_access.user_token("bob@example.com")}
        assert await call_as(url, local_access.user_token(), "generate_image", {"prompt": "x"}, bob) == (
            ["add", "whoami"],
            "Unknown tool: generate_image",
        )
