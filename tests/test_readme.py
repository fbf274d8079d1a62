"""Every code block in the README runs here, so the README cannot go stale.

Blocks are read in order. A `<!-- readme-test: KIND -->` line just before a block says how it runs:
- setup: a set-up command; its part after the last `&&` is what this test runs (the install before it is what
  CI does itself);
- serve: a long-running command, started in the background (on a free port) for the blocks marked while-serving;
- while-serving: shell lines run against it;
- toml: a GuardConfig file; json: an mcpServers entry;
- metrics: a python block that sets OpenTelemetry's process-wide meter provider, run in a process of its own.
Unmarked python blocks are executed with TEAM_DOMAIN and POLICY_AUD pointing at a LocalAccess issuer; an `app` they
define is served under uvicorn and must let a valid caller in, and a `test_*` function they define is run.
"""

import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mcp_access_guard import GuardConfig
from mcp_access_guard.config import AccessConfig
from mcp_access_guard.settings import CORSSettings, LimitSettings, PathSettings, ServiceTokenSettings
from mcp_access_guard.testing import LocalAccess, free_port, serve
from support import INITIALIZE, MCP_HEADERS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent
_BLOCK = re.compile(r"(?:<!-- readme-test: (?P<kind>[\w-]+) -->\n)?```(?P<lang>\w+)\n(?P<code>.*?)```", re.S)


@dataclasses.dataclass(frozen=True)
class Block:
    number: int
    lang: str
    kind: str
    code: str


BLOCKS = [
    Block(number, match["lang"], match["kind"] or match["lang"], match["code"])
    for number, match in enumerate(_BLOCK.finditer(README), 1)
]


def blocks(kind: str) -> list[Block]:
    return [block for block in BLOCKS if block.kind == kind]


def test_every_block_has_a_runner() -> None:
    assert README.count("```") == 2 * len(BLOCKS)
    assert {block.kind for block in BLOCKS} <= {"setup", "serve", "while-serving", "python", "toml", "json", "metrics"}


def test_the_readme_keeps_exactly_two_set_up_commands() -> None:
    setup = blocks("setup")
    assert [block.code.strip().rsplit("&& ", 1)[1] for block in setup] == ["mcp-access-guard demo", "pytest"]
    for block in setup:
        assert block.code.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install -e ")


def test_the_main_job_command_runs() -> None:
    done = subprocess.run(
        [BIN / "mcp-access-guard", "demo"], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Every caller got what it should." in done.stdout


def test_the_test_command_collects_the_suite() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert re.search(r"^\d+ tests collected", done.stdout, re.M)


@pytest.fixture
def issuer_env(local_access: LocalAccess, monkeypatch: pytest.MonkeyPatch) -> LocalAccess:
    monkeypatch.setenv("TEAM_DOMAIN", local_access.url)
    monkeypatch.setenv("POLICY_AUD", local_access.audience)
    return local_access


@pytest.mark.anyio
@pytest.mark.parametrize("block", blocks("python"), ids=lambda block: f"block {block.number}")
async def test_python_block(block: Block, issuer_env: LocalAccess) -> None:
    namespace: dict[str, Any] = {"__name__": f"readme_block_{block.number}"}
    exec(compile(block.code, f"README block {block.number}", "exec"), namespace)
    ran = 0
    if "app" in namespace:
        # A block configured for a public name is asked under that name, as the tunnel would.
        public_name = {"Host": "mcp.example.com"} if "mcp.example.com" in block.code else {}
        async with serve(namespace["app"]) as url, httpx.AsyncClient() as http:
            headers = {**MCP_HEADERS, **public_name, "Cf-Access-Jwt-Assertion": issuer_env.user_token()}
            if ".sse_app(" in block.code:
                # The HTTP+SSE transport: the event stream opens and names the endpoint to post to.
                async with http.stream("GET", f"{url}/sse", headers=headers) as stream:
                    assert stream.status_code == 200
                    assert (await anext(stream.aiter_lines())) == "event: endpoint"
                refused = await http.get(f"{url}/sse", headers={**headers, "Cf-Access-Jwt-Assertion": ""})
                assert refused.status_code == 401
            else:
                assert (await http.post(f"{url}/mcp", json=INITIALIZE, headers=headers)).status_code == 200
                assert (
                    await http.post(f"{url}/mcp", json=INITIALIZE, headers={**headers, "Cf-Access-Jwt-Assertion": ""})
                ).status_code == 401
        ran += 1
    for name, function in namespace.items():
        if name.startswith("test_") and callable(function):
            await function(issuer_env)
            ran += 1
    if "forwarding_client" in block.code:
        assert callable(namespace["quarterly_report"])
        ran += 1
    assert ran, f"README block {block.number} defines nothing this test can run"


_DRIVE_METRICS_APP = """
import anyio, httpx, os
from mcp_access_guard.testing import serve

async def drive():
    headers = {**MCP_HEADERS, "Cf-Access-Jwt-Assertion": os.environ["README_TOKEN"]}
    async with serve(app) as url, httpx.AsyncClient() as http:
        assert (await http.post(f"{url}/mcp", json=INITIALIZE, headers=headers)).status_code == 200

anyio.run(drive)
provider.shutdown()  # the reader's last collection, exported
"""


def test_metrics_block_exports_the_decisions(issuer_env: LocalAccess) -> None:
    (block,) = blocks("metrics")
    script = f"INITIALIZE = {INITIALIZE!r}\nMCP_HEADERS = {MCP_HEADERS!r}\n{block.code}{_DRIVE_METRICS_APP}"
    env = {**os.environ, "README_TOKEN": issuer_env.user_token()}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert '"name": "mcp_access_guard.decisions"' in done.stdout
    assert '"reason": "verified"' in done.stdout
    assert '"name": "mcp_access_guard.verification.duration"' in done.stdout


@pytest.fixture
def dev_server() -> Iterator[int]:
    (block,) = blocks("serve")
    port = free_port()
    command = shlex.split(block.code.replace("8000", str(port)))
    assert command[0] == "mcp-access-guard"
    server = subprocess.Popen(
        [BIN / command[0], *command[1:]], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise AssertionError("the README's serve command did not come up")
        yield port
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=20)
    assert server.returncode == 0, output


def test_shell_lines_against_the_dev_server(dev_server: int) -> None:
    (block,) = blocks("while-serving")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.code.replace("8000", str(dev_server))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    tools = json.loads(done.stdout)["result"]["tools"]
    assert [tool["name"] for tool in tools] == ["add", "generate_image", "whoami"]


def test_toml_block_is_a_valid_guard_config(tmp_path: Path) -> None:
    (block,) = blocks("toml")
    path = tmp_path / "guard.toml"
    path.write_text(block.code)
    config = GuardConfig.from_toml(path)
    assert config.access is not None
    assert config.cors is not None
    assert config.tools is not None


def test_json_block_is_an_mcp_remote_entry_with_headers() -> None:
    (block,) = blocks("json")
    server = json.loads(block.code)["mcpServers"]["my-server"]
    assert server["args"][:2] == ["-y", "mcp-remote"]
    headers = [server["args"][i + 1] for i, arg in enumerate(server["args"]) if arg == "--header"]
    assert [header.split(":", 1)[0] for header in headers] == ["CF-Access-Client-Id", "CF-Access-Client-Secret"]


def test_every_setting_is_in_the_configuration_reference() -> None:
    import inspect

    from mcp_access_guard import config as config_module
    from mcp_access_guard import settings as settings_module

    settings = set(inspect.signature(AccessConfig.__init__).parameters) - {"self"}
    for kind in (PathSettings, CORSSettings, ServiceTokenSettings, LimitSettings, GuardConfig):
        settings |= {field.name for field in dataclasses.fields(kind)}
    settings -= {"access", "paths", "cors", "service_token", "limits", "tools", "allow"}
    missing = [name for name in sorted(settings) if f"`{name}`" not in README and f" {name}`" not in README]
    assert not missing, f"settings missing from the README: {missing}"
    variables = set(
        re.findall(
            r'"((?:GUARD|ALLOWED|TEAM|POLICY|ACCESS)_[A-Z_]+)"',
            inspect.getsource(config_module) + inspect.getsource(settings_module),
        )
    )
    variables |= {"ALLOWED_EMAIL_DOMAINS", "ALLOWED_SERVICE_TOKENS", "ALLOWED_GROUPS"}
    assert variables
    assert not [name for name in sorted(variables) if f"`{name}`" not in README]


def test_the_curl_example_is_the_request_serve_dev_prints() -> None:
    from mcp_access_guard.mcp_request import tools_list_request

    (block,) = blocks("while-serving")
    curl = shlex.split(block.code.split("\ncurl ", 1)[1].replace("\\\n", " "))
    headers = dict(curl[index + 1].split(": ", 1) for index, word in enumerate(curl) if word == "-H")
    request = tools_list_request()
    assert headers.pop("Cf-Access-Jwt-Assertion") == "$TOKEN"
    assert headers == request.headers
    assert json.loads(curl[curl.index("--data") + 1]) == request.body


def test_every_command_line_option_is_in_the_command_reference() -> None:
    import argparse

    from mcp_access_guard.cli import build_parser

    (commands,) = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    missing = []
    for name, parser in commands.choices.items():
        for action in parser._actions:
            options = [option for option in action.option_strings if option not in ("-h", "--help")]
            if options and not any(re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", README) for option in options):
                missing.append(f"{name} {options[0]}")
    assert not missing, f"options missing from the README: {missing}"
