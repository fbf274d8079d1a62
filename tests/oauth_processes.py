"""`mcp-access-guard serve` in OAuth mode as real processes, configured from the environment alone and logging in
through a `LocalAccessSaaS` in the test process; what the server stored, read back from its SQLite file or Redis;
the `$BROWSER` program external clients open the authorization URL with; and the external clients' own binaries.

Each process is bounded: start-up is waited for at most `START_TIMEOUT` seconds, and every process is terminated
(killed if it does not stop) when its block ends.
"""

from __future__ import annotations

import os
import shlex
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from mcp_access_guard.oauth.records import CREDENTIAL, ClientRecord, GrantRecord, Record
from mcp_access_guard.oauth.store.redis import DEFAULT_PREFIX
from mcp_access_guard.testing import LocalAccessSaaS, free_port

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
NODE_BIN = ROOT / "node_modules" / ".bin"
REFERENCE_APP = "examples.reference_server:mcp"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

R = TypeVar("R", bound=Record)


def require_program(path: Path, how: str) -> Path:
    """An external client's binary; under CI (which installs it) a missing one fails the test, elsewhere skips it."""
    if not path.exists():
        reason = f"{path.name} is not installed ({path.relative_to(ROOT)} missing): {how}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def serve_environment(saas: LocalAccessSaaS, public_url: str, store: str, secret_key: str) -> dict[str, str]:
    """Everything `serve` needs for OAuth mode, by Cloudflare's names and ours, and nothing of the caller's own."""
    upstream = saas.config()
    inherited = {name: value for name, value in os.environ.items() if not name.startswith(("ACCESS_", "GUARD_"))}
    inherited.pop("TEAM_DOMAIN", None)
    inherited.pop("POLICY_AUD", None)
    return {
        **inherited,
        "ACCESS_CLIENT_ID": upstream.client_id,
        "ACCESS_CLIENT_SECRET": upstream.client_secret,
        "ACCESS_ISSUER": upstream.issuer,
        "COOKIE_ENCRYPTION_KEY": secret_key,
        "GUARD_PUBLIC_URL": public_url,
        "GUARD_OAUTH_STORE": store,
    }


@dataclass
class Served:
    """One `serve` process: `url` is where it listens (its `public_url` may be another replica's)."""

    url: str
    public_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def serving(
    saas: LocalAccessSaaS,
    directory: Path,
    *,
    store: str,
    secret_key: str,
    port: int | None = None,
    public_url: str | None = None,
    workers: int = 1,
    app: str = REFERENCE_APP,
    cwd: Path = ROOT,
    name: str = "serve",
) -> Iterator[Served]:
    """`mcp-access-guard serve APP` (imported from `cwd`) on 127.0.0.1:`port` in OAuth mode; `public_url` defaults to
    its own URL."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    public_url = public_url or url
    log = directory / f"{name}.log"
    command = [sys.executable, "-m", "mcp_access_guard.cli", "serve", app, "--port", str(port)]
    if workers > 1:
        command += ["--workers", str(workers)]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=serve_environment(saas, public_url, store, secret_key),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    served = Served(url, public_url, process, log)
    try:
        _wait_until_serving(served, workers)
        yield served
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)
    # Whatever the server wrote while it ran: never one of the credentials it minted.
    assert CREDENTIAL.search(served.output()) is None, f"a credential in the output of {name}"


def _wait_until_serving(served: Served, workers: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    metadata = f"{served.url}/.well-known/oauth-authorization-server"
    while time.monotonic() < deadline:
        if served.process.poll() is not None:
            raise AssertionError(f"serve exited with {served.process.returncode}: {served.output()[-2000:]}")
        # With several workers, each says so once its start-up (the OAuth layers' discovery included) is done.
        ready = served.output().count("Application startup complete") >= workers
        if ready:
            try:
                if httpx.get(metadata, timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"serve did not start within {START_TIMEOUT} s: {served.output()[-2000:]}")


# -- what the server stored -----------------------------------------------------------------------------------------


def stored(store: str, kind: type[R]) -> list[R]:
    """The records of one kind (`ClientRecord`, `GrantRecord`) in the SQLite file or Redis a `store` URL names."""
    prefix = {ClientRecord: "client:", GrantRecord: "grant:"}[kind]
    if store.startswith("sqlite:///"):
        with sqlite3.connect(store.removeprefix("sqlite:///")) as database:
            rows = database.execute(
                "SELECT value FROM oauth_values WHERE key LIKE ? AND expires > ?", (prefix + "%", time.time())
            ).fetchall()
        values = [row[0] for row in rows]
    else:
        import redis

        client = redis.Redis.from_url(store)
        try:
            keys = list(client.scan_iter(match=f"{DEFAULT_PREFIX}v:{prefix}*"))
            values = [value for value in client.mget(keys) if value is not None] if keys else []
        finally:
            client.close()
    return [kind.from_bytes(value) for value in values]


# -- the person's browser, for external clients ---------------------------------------------------------------------


def browser_program(directory: Path) -> Path:
    """An executable for `$BROWSER`: it notes each URL it is asked to open in `visits` (one a line) and walks it with
    `oauth_browser.py` (OAUTH_BROWSER_DECISION, OAUTH_BROWSER_DELAY from the environment it inherits).

    It exits 0 whatever page the walk ended on, as a browser that has shown a page does: xdg-open takes a failing
    browser for a missing one and tries the next, which would walk the same URL again."""
    program = directory / "browser"
    walker = TESTS / "oauth_browser.py"
    program.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$1" >> {shlex.quote(str(directory / "visits"))}\n'
        f'{shlex.quote(sys.executable)} {shlex.quote(str(walker))} "$1" 2>> {shlex.quote(str(directory / "walks"))}\n'
        "exit 0\n"
    )
    program.chmod(0o755)
    return program


def visits(directory: Path) -> list[str]:
    """The URLs `browser_program(directory)` was asked to open."""
    path = directory / "visits"
    return path.read_text().splitlines() if path.exists() else []


def headless_environment(home: Path, browser: Path, **extra: str) -> dict[str, str]:
    """A client's environment: its home (where it keeps tokens) under the test's directory, no desktop to open a
    browser on (so `$BROWSER` is what opens it), and the browser program."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("DISPLAY", "WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS", "XDG_CURRENT_DESKTOP")
    }
    home.mkdir(parents=True, exist_ok=True)
    return {**environment, "HOME": str(home), "BROWSER": str(browser), **extra}
