"""`mcp-access-guard serve` and `token`, run as subprocesses the way a user runs them.

`DevServer` is shared with test_inspector.py (imported as ``from test_cli import ...``).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from mcp_access_guard import serve as serve_module
from mcp_access_guard.cli import build_parser
from mcp_access_guard.config import ConfigError
from mcp_access_guard.testing import LocalAccess, free_port

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = "examples.reference_server:mcp"
MODERN = "2026-07-28"
ACCESS_VARIABLES = ("TEAM_DOMAIN", "POLICY_AUD", "ACCESS_CERTS_URL", "GUARD_DEV", "ALLOWED_EMAILS", "GUARD_SECRETS")


def cli_environment() -> dict[str, str]:
    """The caller's environment with the repository importable and no Access settings of the test run's own."""
    env = {name: value for name, value in os.environ.items() if name not in ACCESS_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return env


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_access_guard.cli", *args],
        cwd=cwd,
        env={**cli_environment(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@dataclass
class DevServer:
    """A running `mcp-access-guard serve --dev` subprocess and what it printed."""

    process: subprocess.Popen[bytes]
    port: int
    cwd: Path
    stdout: Path
    stderr: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def printed(self) -> str:
        return self.stdout.read_text()

    def printed_command(self, program: str) -> list[str]:
        """The indented command line that --dev printed for `program`, split as a shell would."""
        for line in self.printed.splitlines():
            if line.startswith(f"  {program} "):
                return shlex.split(line)
        raise AssertionError(f"no {program} command in:\n{self.printed}")

    def interrupt(self, timeout: float = 10) -> int:
        """Ctrl-C, as a user stops it; the exit status."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def start_dev_server(cwd: Path, app: str = REFERENCE, *extra: str, ready_timeout: float = 60) -> DevServer:
    return start_server(cwd, app, "--dev", *extra, ready_timeout=ready_timeout)


def start_server(
    cwd: Path, *arguments: str, env: dict[str, str] | None = None, ready_timeout: float = 60
) -> DevServer:
    """`mcp-access-guard serve ARGUMENTS` on a free port, once it answers /health."""
    port = free_port()
    stdout, stderr = cwd / f"serve-{port}.out", cwd / f"serve-{port}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "mcp_access_guard.cli", "serve", *arguments, "--port", str(port)],
            cwd=cwd,
            env={**cli_environment(), **(env or {})},
            stdout=out,
            stderr=err,
        )
    server = DevServer(process, port, cwd, stdout, stderr)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited with {process.returncode}:\n{stderr.read_text()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.kill()
    raise AssertionError(f"serve did not answer /health within {ready_timeout}s:\n{stderr.read_text()}")


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[DevServer]:
    server = start_dev_server(tmp_path)
    yield server
    server.kill()


def tool_call(
    url: str, token: str, name: str, arguments: dict[str, Any] | None = None, **headers: str
) -> tuple[int, Any]:
    """One modern-era tools/call over a fresh connection: the status, and the tool's structured result when 200."""
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": name,
            "arguments": arguments or {},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    headers = {
        "Cf-Access-Jwt-Assertion": token,
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": name,
        **headers,
    }
    with httpx.Client(timeout=30) as http:
        response = http.post(f"{url}/mcp", json=message, headers=headers)
    if response.status_code != 200:
        return response.status_code, None
    answer = json_rpc_answer(response)
    return 200, answer["result"]["structuredContent"]["result"]


def json_rpc_answer(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC answer in a JSON or an SSE response."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        frames = [line[5:] for line in response.text.splitlines() if line.startswith("data:")]
        answer: dict[str, Any] = json.loads(frames[-1])
    else:
        answer = response.json()
    return answer


def curl_to_httpx(words: list[str]) -> httpx.Request:
    """The request a printed `curl -sS URL -H ... --data ...` line sends."""
    assert words[:2] == ["curl", "-sS"], words
    url, headers, body = words[2], [], ""
    pairs = iter(words[3:])
    for flag in pairs:
        value = next(pairs)
        if flag == "-H":
            name, _, header_value = value.partition(": ")
            headers.append((name, header_value))
        elif flag == "--data":
            body = value
        else:
            raise AssertionError(f"unexpected curl flag {flag}")
    return httpx.Request("POST", url, headers=headers, content=body.encode())


# -- serve --dev ------------------------------------------------------------------------------------------------------


def test_serve_dev_prints_working_commands_and_stops_cleanly_on_ctrl_c(dev_server: DevServer) -> None:
    printed = dev_server.printed
    assert "DEV MODE, FOR LOCAL USE ONLY" in printed
    state = dev_server.cwd / ".mcp-access-guard-dev.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert set(json.loads(state.read_text())) >= {"issuer", "audience", "kid", "private_key_pem"}

    curl = dev_server.printed_command("curl")
    with httpx.Client(timeout=30) as http:
        listed = json_rpc_answer(http.send(curl_to_httpx(curl)))
    assert [tool["name"] for tool in listed["result"]["tools"]] == ["add", "generate_image", "whoami"]
    if shutil.which("curl"):  # and the printed line itself, when curl is installed
        done = subprocess.run(curl, capture_output=True, text=True, timeout=30, check=True)
        assert '"name":"whoami"' in done.stdout

    inspector = dev_server.printed_command("npx")
    assert inspector[:5] == ["npx", "-y", "@modelcontextprotocol/inspector@2", "--cli", f"{dev_server.url}/mcp"]
    assert inspector[5:] == ["--transport", "http", "--header", curl[4], "--method", "tools/list"]

    entry_text = printed.split("(an mcpServers entry, through mcp-remote):\n", 1)[1].split("\n\n", 1)[0]
    entry = json.loads(entry_text)["mcpServers"]["mcp-access-guard-dev"]
    assert entry["args"] == [
        "-y",
        "mcp-remote",
        f"{dev_server.url}/mcp",
        "--header",
        "Cf-Access-Jwt-Assertion:${CF_ACCESS_TOKEN}",
    ]
    token = entry["env"]["CF_ACCESS_TOKEN"]
    assert tool_call(dev_server.url, token, "whoami") == (200, "user alice@example.com")

    robot = printed.split("in place of the user's in any of the above:\n", 1)[1].split()[0]
    assert tool_call(dev_server.url, robot, "whoami") == (200, "service token dev-robot.access")
    assert tool_call(dev_server.url, robot + "x", "whoami")[0] == 403

    started = time.monotonic()
    assert dev_server.interrupt() == 0, dev_server.stderr.read_text()
    assert time.monotonic() - started < 10
    assert not state.exists()
    assert "Traceback" not in dev_server.stderr.read_text()


def test_sigterm_also_stops_it_cleanly(dev_server: DevServer) -> None:
    dev_server.process.send_signal(signal.SIGTERM)
    assert dev_server.process.wait(timeout=10) == 0
    assert not (dev_server.cwd / ".mcp-access-guard-dev.json").exists()


def test_minted_token_works_until_the_server_restarts_with_a_new_key(tmp_path: Path) -> None:
    first = start_dev_server(tmp_path)
    try:
        minted = run_cli("token", "--email", "Bob@Example.com", "--group", "eng", cwd=tmp_path)
        assert minted.returncode == 0, minted.stderr
        token = minted.stdout.strip()
        assert minted.stdout == token + "\n"  # only the token, for $(...)
        robot = run_cli("token", "--service-token", "ci-bot", "--expires-in", "5m", cwd=tmp_path).stdout.strip()
        expired = run_cli("token", "--email", "bob@example.com", "--expires-in=-1h", cwd=tmp_path).stdout.strip()

        assert tool_call(first.url, token, "whoami") == (200, "user bob@example.com")
        assert tool_call(first.url, token, "add", {"a": 2, "b": 3}) == (200, 5)
        assert tool_call(first.url, robot, "whoami") == (200, "service token ci-bot.access")
        assert tool_call(first.url, expired, "whoami")[0] == 403
        assert first.interrupt() == 0
    finally:
        first.kill()

    gone = run_cli("token", "--email", "bob@example.com", cwd=tmp_path)
    assert gone.returncode != 0
    assert gone.stdout == ""
    assert "no dev issuer state" in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1

    second = start_dev_server(tmp_path)
    try:
        assert tool_call(second.url, token, "whoami")[0] == 403
        fresh = run_cli("token", "--email", "bob@example.com", cwd=tmp_path).stdout.strip()
        assert tool_call(second.url, fresh, "whoami") == (200, "user bob@example.com")
    finally:
        second.kill()


PID_SERVER = '''
import os

from mcp.server.mcpserver import MCPServer

mcp = MCPServer("pids")


@mcp.tool()
def pid() -> int:
    """The worker process that answered."""
    return os.getpid()
'''


def test_serve_with_four_workers_spreads_verified_requests_over_all_of_them(tmp_path: Path) -> None:
    (tmp_path / "pid_server.py").write_text(PID_SERVER)
    server = start_dev_server(tmp_path, "pid_server:mcp", "--workers", "4")
    try:
        state = LocalAccess.load(tmp_path / ".mcp-access-guard-dev.json")
        token = state.user_token("alice@example.com")
        forged = LocalAccess(audience=state.audience, port=server.port).user_token("alice@example.com")
        answered_by: dict[int, int] = {}
        # One request at a time, each on a fresh connection, so the kernel hands each to whichever worker accepts.
        for _ in range(400):
            status, pid = tool_call(server.url, token, "pid")
            assert status == 200
            answered_by[pid] = answered_by.get(pid, 0) + 1
            if len(answered_by) == 4:
                break
        assert len(answered_by) == 4, answered_by
        assert server.process.pid not in answered_by  # workers answer, not the supervisor
        for _ in range(8):  # every worker verifies on its own: a token from another key is refused by each
            assert tool_call(server.url, forged, "pid")[0] == 403
        assert server.interrupt(timeout=20) == 0
        assert not (tmp_path / ".mcp-access-guard-dev.json").exists()
    finally:
        server.kill()


# -- open mode, dev mode off loopback, and where serve's settings come from ---------------------------------------


def test_open_mode_is_announced_on_stderr_whatever_the_log_level(tmp_path: Path) -> None:
    server = start_server(tmp_path, REFERENCE, "--log-level", "critical", env={"GUARD_DEV": "1"})
    try:
        assert tool_call(server.url, "", "add", {"a": 2, "b": 3}) == (200, 5)  # open: no credential needed
        assert server.interrupt() == 0
    finally:
        server.kill()
    stderr = server.stderr.read_text()
    assert "!! OPEN MODE: no Cloudflare Access verification" in stderr
    assert f"answers ANYONE who reaches {server.url}" in stderr


@pytest.mark.parametrize(
    ("arguments", "env"),
    [
        ([REFERENCE, "--host", "0.0.0.0"], {"GUARD_DEV": "1"}),
        ([REFERENCE, "--host", "::"], {"GUARD_DEV": "true"}),
        ([REFERENCE, "--dev", "--host", "0.0.0.0"], {}),
        ([REFERENCE, "--dev", "--host", "192.0.2.10"], {}),
    ],
)
def test_dev_and_open_mode_are_refused_off_loopback(tmp_path: Path, arguments: list[str], env: dict[str, str]) -> None:
    done = run_cli("serve", *arguments, cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert "which other machines can reach" in done.stderr
    assert "--allow-dev-on-network" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not list(tmp_path.glob(".mcp-access-guard-dev*"))


def test_dev_mode_off_loopback_needs_the_second_switch(tmp_path: Path) -> None:
    server = start_dev_server(tmp_path, REFERENCE, "--host", "0.0.0.0", "--allow-dev-on-network")
    try:
        token = server.printed.split("in place of the user's in any of the above:\n", 1)[1].split()[0]
        assert tool_call(server.url, token, "whoami") == (200, "service token dev-robot.access")
        assert server.interrupt() == 0
    finally:
        server.kill()


def test_a_secret_in_the_environment_guards_a_server_configured_by_a_file(
    tmp_path: Path, local_access: LocalAccess
) -> None:
    (tmp_path / "guard.toml").write_text(
        f'[access]\nteam_domain = "{local_access.url}"\naudiences = ["{local_access.audience}"]\n'
    )
    (tmp_path / "pid_server.py").write_text(PID_SERVER)  # an app that reads no settings of its own
    secret = secrets.token_hex(16)
    env = {"GUARD_SECRETS": secret, "FORWARDED_ALLOW_IPS": "*"}
    server = start_server(tmp_path, "pid_server:mcp", "--config", "guard.toml", env=env)
    try:
        token = local_access.user_token()
        # Around the tunnel (no secret) a valid token is not enough; through it, it is.
        assert tool_call(server.url, token, "pid")[0] == 403
        assert tool_call(server.url, token, "pid", **{"Cf-Access-Guard-Secret": secret}) == (200, server.process.pid)
        assert server.interrupt() == 0
    finally:
        server.kill()
    stderr = server.stderr.read_text()
    assert "FORWARDED_ALLOW_IPS is not read; proxy headers are trusted from --forwarded-allow-ips 127.0.0.1" in stderr
    assert "OPEN MODE" not in stderr


SERVE_UP_TO_THE_LOOP = """
import sys

import uvicorn

uvicorn.run = lambda *args, **options: None  # everything up to the server's loop runs for real
from mcp_access_guard.cli import main

assert main(sys.argv[1:]) == 0
print(sorted(name for name in sys.modules if name.startswith("mcp_access_guard.")))
"""


@pytest.mark.parametrize(("dev", "loaded"), [(False, False), (True, True)])
def test_a_production_serve_never_imports_the_test_issuer(tmp_path: Path, dev: bool, loaded: bool) -> None:
    env = {**cli_environment(), "TEAM_DOMAIN": "myteam", "POLICY_AUD": AUD}
    done = subprocess.run(
        [sys.executable, "-c", SERVE_UP_TO_THE_LOOP, "serve", REFERENCE, *(["--dev"] if dev else [])],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    modules = done.stdout.strip().splitlines()[-1]
    assert "'mcp_access_guard.serve'" in modules
    assert ("'mcp_access_guard.testing'" in modules) is loaded
    assert ("'mcp_access_guard.dev'" in modules) is loaded
    assert "'mcp_access_guard.check'" not in modules


# -- the dev state file ------------------------------------------------------------------------------------------------


def test_the_dev_state_file_is_never_written_through_a_symbolic_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / ".mcp-access-guard-dev.json").symlink_to(victim)
    done = run_cli("serve", REFERENCE, "--dev", cwd=tmp_path)
    assert done.returncode == 2
    assert "cannot write the dev state file .mcp-access-guard-dev.json: it is a symbolic link" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert victim.read_text() == "precious"


def test_the_dev_state_file_is_never_read_through_a_symbolic_link(tmp_path: Path) -> None:
    with LocalAccess() as issuer:
        issuer.save(tmp_path / "state.json")
    (tmp_path / "link.json").symlink_to(tmp_path / "state.json")
    done = run_cli("token", "--email", "alice@example.com", "--dev-state", "link.json", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "cannot use the dev issuer state in link.json: it is a symbolic link" in done.stderr
    assert run_cli("token", "--email", "alice@example.com", "--dev-state", "state.json", cwd=tmp_path).stdout


def test_a_planted_temporary_name_is_not_followed(tmp_path: Path) -> None:
    # The name the state was once written through (predictable: the pid) is where another user would plant a link.
    victim = tmp_path / "victim"
    victim.write_text("precious")
    planted = tmp_path / f".state.json.{os.getpid()}.tmp"
    planted.symlink_to(victim)
    with LocalAccess() as issuer:
        issuer.save(tmp_path / "state.json")
    assert victim.read_text() == "precious"
    assert planted.is_symlink()
    state = tmp_path / "state.json"
    assert not state.is_symlink()
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert sorted(path.name for path in tmp_path.iterdir()) == [planted.name, "state.json", "victim"]


# -- bad input: one line, non-zero, no traceback -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "no_colon"], "expected MODULE:APP"),
        (["serve", "no_such_module_xyz:app", "--dev"], "no such module"),
        (["serve", "examples.reference_server:nothing", "--dev"], "has no attribute"),
        (["serve", "json:__doc__", "--dev"], "neither an ASGI app nor an MCP server"),
        (["serve", REFERENCE], "TEAM_DOMAIN"),
        (["serve", REFERENCE, "--config", "missing.toml", "--dev"], "cannot read missing.toml"),
        (["token", "--email", "alice@example.com"], "no dev issuer state"),
        (["token", "--email", "alice@example.com", "--dev-state", "garbage.json"], "garbage.json"),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "garbage.json").write_text("{not json")
    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not list(tmp_path.glob(".mcp-access-guard-dev*"))


@pytest.mark.parametrize("args", [["token"], ["token", "--email", "a@b.c", "--expires-in", "soon"], ["serve"]])
def test_bad_arguments_get_usage_errors(tmp_path: Path, args: list[str]) -> None:
    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert "usage:" in done.stderr
    assert "Traceback" not in done.stderr


def test_help_says_where_settings_come_from(tmp_path: Path) -> None:
    done = run_cli("serve", "--help", cwd=tmp_path)
    assert done.returncode == 0
    for phrase in ("--config FILE", "TEAM_DOMAIN", "--workers", "--proxy-headers", "--dev-state"):
        assert phrase in done.stdout


# -- where settings come from ---------------------------------------------------------------------------------------

TEAM = "https://myteam.cloudflareaccess.com"
AUD = "a" * 64


def test_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    config = serve_module.load_config(None, {"TEAM_DOMAIN": "myteam", "POLICY_AUD": AUD})
    assert config.access is not None
    assert (config.access.team_domain, config.access.audiences) == (TEAM, (AUD,))


def test_environment_fills_what_the_file_leaves_out(tmp_path: Path) -> None:
    path = tmp_path / "guard.toml"
    path.write_text('[tools.generate_image]\nemails = ["alice@example.com"]\n')
    env = {"TEAM_DOMAIN": "myteam", "POLICY_AUD": AUD, "GUARD_SECRETS": "kept-from-the-environment"}
    config = serve_module.load_config(str(path), env)
    assert config.access is not None
    assert config.access.team_domain == TEAM
    assert config.tools is not None
    # A secret kept in the environment, as examples/guard.toml advises, is not dropped because a file is used.
    assert config.service_token.secrets == ("kept-from-the-environment",)
    with pytest.raises(ConfigError, match="TEAM_DOMAIN"):
        serve_module.load_config(str(path), {"TEAM_DOMAIN": "http://example.com", "POLICY_AUD": AUD})
    with pytest.raises(ConfigError):
        serve_module.load_config(str(path), {})


def test_a_file_access_table_wins_over_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "guard.toml"
    path.write_text(f'[access]\nteam_domain = "otherteam"\naudiences = ["{AUD}"]\nleeway = 5\n')
    config = serve_module.load_config(str(path), {"TEAM_DOMAIN": "myteam", "POLICY_AUD": AUD})
    assert config.access is not None
    assert config.access.team_domain == "https://otherteam.cloudflareaccess.com"


def test_dev_issuer_replaces_the_files_team_and_keeps_its_other_settings(tmp_path: Path) -> None:
    path = tmp_path / "guard.toml"
    path.write_text(f'[access]\nteam_domain = "otherteam"\naudiences = ["{AUD}"]\nleeway = 5\n')
    env = {"TEAM_DOMAIN": "myteam", "POLICY_AUD": AUD, "ACCESS_CERTS_URL": "https://elsewhere.example/certs"}
    config = serve_module.load_config(str(path), env, dev_issuer=("http://127.0.0.1:9", "b" * 64))
    assert config.access is not None
    assert (config.access.team_domain, config.access.audiences, config.access.leeway) == (
        "http://127.0.0.1:9",
        ("b" * 64,),
        5,
    )
    assert config.access.certs_url == "http://127.0.0.1:9/cdn-cgi/access/certs"
    # And with no Access settings anywhere, the dev issuer is all there is.
    alone = serve_module.load_config(None, {}, dev_issuer=("http://127.0.0.1:9", "b" * 64))
    assert alone.access is not None
    assert alone.access.issuer == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("options", "trusted"), [([], "127.0.0.1"), (["--forwarded-allow-ips", "10.0.0.1"], "10.0.0.1")]
)
def test_uvicorn_never_reads_forwarded_allow_ips_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, options: list[str], trusted: str
) -> None:
    import uvicorn

    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    args = build_parser().parse_args(["serve", "m:app", *options])
    assert uvicorn.Config("m:app", **serve_module.uvicorn_options(args)).forwarded_allow_ips == trusted


def test_local_access_state_round_trip(tmp_path: Path) -> None:
    with LocalAccess() as issuer:
        issuer.save(tmp_path / "state.json")
        again = LocalAccess.load(tmp_path / "state.json")
        assert (again.url, again.audience, again.current_key.kid) == (
            issuer.url,
            issuer.audience,
            issuer.current_key.kid,
        )
        assert stat.S_IMODE((tmp_path / "state.json").stat().st_mode) == 0o600
        assert again.user_token().split(".")[0] == issuer.user_token().split(".")[0]
    fresh = LocalAccess()
    assert fresh.keys[0].kid != issuer.current_key.kid
