"""Two replicas of one server (same configuration, each with its own connection to one SQLite file), as behind a
tunnel that balances without stickiness: the login on one and the code redeemed on the other; a replay on the other
revokes the grant for both; concurrent refreshes split across both produce one rotation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from mcp_access_guard.oauth import InvalidBearer, OAuthServer
from mcp_access_guard.testing import LocalAccessSaaS, free_port, serve
from oauth_harness import (
    SECRET_KEY,
    Deployment,
    Pkce,
    call_mcp,
    compose,
    exchange,
    log_in,
    mcp_app,
    oauth_config,
    refresh,
    register,
)

pytestmark = pytest.mark.anyio

__all__ = ["SECRET_KEY"]  # declared for the leak scan

APP = "https://app.example.com/callback"


@asynccontextmanager
async def replicas(saas: LocalAccessSaaS, database: Path) -> AsyncIterator[tuple[Deployment, Deployment]]:
    first_port, second_port = free_port(), free_port()
    # Both answer for the same public URL, as replicas behind one host name do.
    config = oauth_config(saas, f"http://127.0.0.1:{first_port}", store=f"sqlite:///{database}")
    servers = OAuthServer(config), OAuthServer(config)
    async with (
        serve(compose(mcp_app(), servers[0], cache_ttl=0), port=first_port) as first_url,
        serve(compose(mcp_app(), servers[1], cache_ttl=0), port=second_port) as second_url,
    ):
        yield (
            Deployment(first_url, servers[0], saas, servers[0].store),
            Deployment(second_url, servers[1], saas, servers[1].store),
        )


async def test_login_on_one_replica_tokens_on_the_other(local_access_saas: LocalAccessSaaS, tmp_path: Path) -> None:
    local_access_saas.login_as("alice@example.com")
    async with replicas(local_access_saas, tmp_path / "shared.sqlite3") as (one, other):
        client = await register(one.url, [APP])
        pkce = Pkce()
        callback = await log_in(one.url, client, pkce)
        redeemed = await exchange(other.url, client, callback["code"], pkce)
        assert redeemed.status_code == 200, redeemed.text
        tokens = redeemed.json()
        on_other = await call_mcp(other.url, tokens["access_token"])
        on_one = await call_mcp(one.url, tokens["access_token"])
        # The code replayed at the first replica: refused, and the grant is gone for both.
        replay = await exchange(one.url, client, callback["code"], pkce)
        after = [await call_mcp(replica.url, tokens["access_token"]) for replica in (one, other)]
        with pytest.raises(InvalidBearer):
            await other.server.authenticate_bearer(tokens["access_token"])
    assert (on_other.status_code, on_one.status_code) == (200, 200)
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    assert [response.status_code for response in after] == [401, 401]


async def test_concurrent_refreshes_on_both_replicas_rotate_once(
    local_access_saas: LocalAccessSaaS, tmp_path: Path
) -> None:
    local_access_saas.login_as("alice@example.com")
    local_access_saas.slow_seconds = 0.3
    async with replicas(local_access_saas, tmp_path / "shared.sqlite3") as (one, other):
        client = await register(one.url, [APP])
        pkce = Pkce()
        callback = await log_in(one.url, client, pkce)
        tokens = (await exchange(one.url, client, callback["code"], pkce)).json()
        before = sum(1 for request in local_access_saas.token_requests if "refresh_token" in request.form)
        local_access_saas.fault = "slow"
        local_access_saas.fault_endpoints = {"token"}
        answers = await asyncio.gather(
            *(refresh(replica.url, client, tokens["refresh_token"]) for replica in (one, other, one, other, one, other))
        )
        local_access_saas.fault = None
        bodies = [answer.json() for answer in answers]
        upstream = sum(1 for request in local_access_saas.token_requests if "refresh_token" in request.form) - before
        next_refresh = await refresh(other.url, client, bodies[0]["refresh_token"])
    assert [answer.status_code for answer in answers] == [200] * 6
    assert all(body == bodies[0] for body in bodies)
    assert upstream == 1
    assert next_refresh.status_code == 200
