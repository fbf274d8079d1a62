"""Replicas as real processes: two `mcp-access-guard serve` processes with one configuration (the same public URL,
key and store), sharing one SQLite file and then one real Redis, as behind a tunnel that balances without
stickiness; and `serve --workers 4` on SQLite, with every request on a new connection so the workers share the flow.

The front channel (registration, /authorize, consent, Access, /oauth/callback) runs on one replica and the code is
redeemed and the token used on the other; a code redeemed on one and replayed on the other is refused and revokes the
grant on both; concurrent refreshes of one grant, split across both, rotate it once.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from mcp_access_guard.mcp_request import modern_request
from mcp_access_guard.middleware.oauth import OAuthBearerMiddleware
from mcp_access_guard.testing import LocalAccessSaaS, free_port
from oauth_harness import Pkce, call_mcp, exchange, log_in, refresh, register
from oauth_processes import TESTS, Served, serving
from redis_server import RedisServer, require_redis_server

pytestmark = pytest.mark.anyio

COOKIE_SECRET_KEY = secrets.token_hex(32)
APP = "https://app.example.com/callback"
STORES = ["sqlite", "redis"]
MAX_CALLS_TO_SEE_TWO_WORKERS = 200
# How long `serve`'s bearer layer keeps a looked-up token (its default), and room for a loaded machine.
MAX_CACHE_TTL = inspect.signature(OAuthBearerMiddleware).parameters["cache_ttl"].default
SLACK = 10.0


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The store URL both replicas are given: a SQLite file, or a real redis-server of this test's own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.sqlite3'}"
        return
    server = RedisServer(require_redis_server(), tmp_path)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@contextmanager
def two_replicas(saas: LocalAccessSaaS, directory: Path, store: str) -> Iterator[tuple[Served, Served]]:
    """Two serve processes; both answer for the first one's URL, as replicas behind one host name do."""
    first_port = free_port()
    public_url = f"http://127.0.0.1:{first_port}"
    with ExitStack() as stack:
        replicas = tuple(
            stack.enter_context(
                serving(
                    saas,
                    directory,
                    store=store,
                    secret_key=COOKIE_SECRET_KEY,
                    port=port,
                    public_url=public_url,
                    name=f"replica-{index}",
                )
            )
            for index, port in enumerate((first_port, free_port()))
        )
        yield replicas[0], replicas[1]


def fresh_connections() -> httpx.AsyncClient:
    """A browser that opens a new connection for every request, so a balancer (or the kernel) may send each one
    elsewhere; cookies are kept as a browser keeps them."""
    return httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))


@pytest.mark.parametrize("store", STORES, indirect=True)
async def test_front_channel_on_one_replica_code_and_token_on_the_other_and_a_replay_revokes_on_both(
    local_access_saas: LocalAccessSaaS, tmp_path: Path, store: str
) -> None:
    local_access_saas.login_as("alice@example.com")
    with two_replicas(local_access_saas, tmp_path, store) as (one, other):
        client = await register(one.url, [APP])
        pkce = Pkce()
        callback = await log_in(one.url, client, pkce)
        assert callback["iss"] == one.public_url
        redeemed = await exchange(other.url, client, callback["code"], pkce)
        assert redeemed.status_code == 200, redeemed.text
        tokens = redeemed.json()
        used = [await call_mcp(replica.url, tokens["access_token"]) for replica in (other, one)]
        # The code replayed at the first replica: refused, and the grant is revoked in the shared store.
        replay = await exchange(one.url, client, callback["code"], pkce)
        on_one = await call_mcp(one.url, tokens["access_token"])
        refreshed = [await refresh(replica.url, client, tokens["refresh_token"]) for replica in (other, one)]
        on_other = await _refused_within(other.url, tokens["access_token"], MAX_CACHE_TTL + SLACK)
    assert [response.status_code for response in used] == [200, 200]
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    # The replica that saw the replay drops the token at once; the other once its short lookup cache has let go.
    assert on_one.status_code == 401
    assert 'error="invalid_token"' in on_one.headers["www-authenticate"]
    assert on_other.status_code == 401
    assert 'error="invalid_token"' in on_other.headers["www-authenticate"]
    assert [response.status_code for response in refreshed] == [400, 400]
    assert {response.json()["error"] for response in refreshed} == {"invalid_grant"}


async def _refused_within(url: str, access_token: str, seconds: float) -> httpx.Response:
    """The first answer to the token that is not a success, asked again until `seconds` have passed: a replica
    that looked the token up before another revoked it keeps it for at most its cache's time to live."""
    with anyio.move_on_after(seconds):
        while True:
            response = await call_mcp(url, access_token)
            if response.status_code != 200:
                return response
            await anyio.sleep(0.25)
    raise AssertionError(f"the revoked token was still accepted after {seconds:g} s")


@pytest.mark.parametrize("store", STORES, indirect=True)
async def test_concurrent_refreshes_split_across_replicas_rotate_once(
    local_access_saas: LocalAccessSaaS, tmp_path: Path, store: str
) -> None:
    local_access_saas.login_as("alice@example.com")
    with two_replicas(local_access_saas, tmp_path, store) as (one, other):
        client = await register(one.url, [APP])
        pkce = Pkce()
        callback = await log_in(one.url, client, pkce)
        tokens = (await exchange(other.url, client, callback["code"], pkce)).json()
        upstream_before = _upstream_refreshes(local_access_saas)
        # Access answers slowly, so every refresh is in flight while the first one holds the grant.
        local_access_saas.slow_seconds = 0.5
        local_access_saas.fault_endpoints = {"token"}
        local_access_saas.fault = "slow"
        answers = await asyncio.gather(
            *(refresh(replica.url, client, tokens["refresh_token"]) for replica in (one, other) * 4)
        )
        local_access_saas.fault = None
        upstream = _upstream_refreshes(local_access_saas) - upstream_before
        bodies = [answer.json() for answer in answers]
        rotated = bodies[0]
        new_token = [await call_mcp(replica.url, rotated["access_token"]) for replica in (one, other)]
        next_refresh = await refresh(one.url, client, rotated["refresh_token"])
    assert [answer.status_code for answer in answers] == [200] * 8, bodies
    # One rotation: every caller got the same new pair, and Access was asked once.
    assert all(body == rotated for body in bodies)
    assert rotated["refresh_token"] != tokens["refresh_token"]
    assert upstream == 1
    assert [response.status_code for response in new_token] == [200, 200]
    assert next_refresh.status_code == 200


def _upstream_refreshes(saas: LocalAccessSaaS) -> int:
    return sum(1 for request in saas.token_requests if request.form.get("grant_type") == "refresh_token")


async def test_serve_with_four_workers_on_sqlite_shares_the_flow_between_them(
    local_access_saas: LocalAccessSaaS, tmp_path: Path
) -> None:
    local_access_saas.login_as("alice@example.com")
    store = f"sqlite:///{tmp_path / 'oauth.sqlite3'}"
    with serving(
        local_access_saas,
        tmp_path,
        store=store,
        secret_key=COOKIE_SECRET_KEY,
        workers=4,
        app="worker_identity_app:mcp",
        cwd=TESTS,
    ) as server:
        client = await register(server.url, [APP])
        pkce = Pkce()
        async with fresh_connections() as browser:
            callback = await log_in(server.url, client, pkce, browser=browser)
        redeemed = await exchange(server.url, client, callback["code"], pkce)
        assert redeemed.status_code == 200, redeemed.text
        tokens = redeemed.json()
        refreshed = await refresh(server.url, client, tokens["refresh_token"])
        assert refreshed.status_code == 200, refreshed.text
        answered_by = await _workers_answering(server.url, refreshed.json()["access_token"])
        output = server.output()
    started = {int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", output)}
    assert len(started) == 4
    assert len(answered_by) >= 2
    assert answered_by <= started


async def _workers_answering(url: str, access_token: str) -> set[int]:
    """Call the `worker` tool, each time on a new connection, until two workers have answered (or give up)."""
    request = modern_request("tools/call", {"name": "worker", "arguments": {}})
    headers = {**request.headers, "Authorization": f"Bearer {access_token}"}
    seen: set[int] = set()
    for _ in range(MAX_CALLS_TO_SEE_TWO_WORKERS):
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(f"{url}/mcp", json=request.body, headers=headers)
        assert response.status_code == 200, response.text
        seen.add(_structured_result(response)["result"])
        if len(seen) >= 2:
            break
    return seen


def _structured_result(response: httpx.Response) -> dict[str, Any]:
    text = response.text
    if response.headers["content-type"].startswith("text/event-stream"):
        text = next(line[5:] for line in text.splitlines() if line.startswith("data:"))
    result: dict[str, Any] = json.loads(text)["result"]["structuredContent"]
    return result
