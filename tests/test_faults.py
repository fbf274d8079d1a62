"""Faults in the key source (issue 7, item 4): `LocalAccess` really failing, seen through the real JWT middleware over
HTTP under uvicorn. The key cache runs on a controllable clock, so "past max_age", "inside the stale window" and
"past it" are reached without sleeping; the faults themselves are real (refused connections, a server that sleeps,
HTTP 500, HTML, a 50 MB body...).

Every row of `FAULT_TABLE` is one scenario, asserted as written:

- the keys are fetched once while the issuer is healthy (a request gets 200), then the fault starts;
- `during`: a request once the keys are older than `max_age` but inside the stale window (the refresh fails and the
  last good keys keep serving);
- `past_stale`: a request once the keys are past `max_age + stale_window` (no trustworthy keys: 503, never a 403
  that a client or cache could take for a verdict on the token);
- `recovered`: the fault ends and, with no restart and no operator action, the next request after the cooldown
  gets 200;
- `fetches`: how many fetches the cache made in all; `key_server_saw`: how many of them reached the key server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import httpx
import pytest
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from leak_scan import find_leaks
from mcp_access_guard.jwks import JWKSCache
from mcp_access_guard.middleware.access import AccessJWTMiddleware
from mcp_access_guard.testing import Fault, LocalAccess, serve
from mcp_access_guard.verifier import AccessVerifier
from support import ManualClock, RecordingApp

pytestmark = pytest.mark.anyio

MAX_AGE = 300.0
COOLDOWN = 30.0
STALE_WINDOW = 3600.0
# Short, so the "slow" fault (a server that answers after SLOW_SECONDS) costs the test little real time.
FETCH_TIMEOUT = 0.5
SLOW_SECONDS = 1.0


@dataclass(frozen=True)
class FaultRow:
    fault: str
    during: int
    past_stale: int | None
    recovered: int
    fetches: int
    key_server_saw: int


FAULT_TABLE = [
    # The key server is down before the first request: there are no last good keys to serve.
    FaultRow("down_at_startup", during=503, past_stale=503, recovered=200, fetches=3, key_server_saw=1),
    # Mid-run faults: stale keys serve inside the window; past it 503; then automatic recovery.
    FaultRow("down", during=200, past_stale=503, recovered=200, fetches=4, key_server_saw=2),
    FaultRow("slow", during=200, past_stale=503, recovered=200, fetches=4, key_server_saw=4),
    FaultRow("http_500", during=200, past_stale=503, recovered=200, fetches=4, key_server_saw=4),
    FaultRow("html", during=200, past_stale=503, recovered=200, fetches=4, key_server_saw=4),
    FaultRow("garbage", during=200, past_stale=503, recovered=200, fetches=4, key_server_saw=4),
    FaultRow("empty", during=200, past_stale=503, recovered=200, fetches=4, key_server_saw=4),
    FaultRow("non_rsa", during=200, past_stale=503, recovered=200, fetches=4, key_server_saw=4),
    FaultRow("redirect", during=200, past_stale=503, recovered=200, fetches=4, key_server_saw=4),
    FaultRow("huge", during=200, past_stale=503, recovered=200, fetches=4, key_server_saw=4),
    # A rotation while 200 requests are in flight (the key server taking 0.15 s to answer, as a real one may), the
    # cooldown since the last fetch having passed: old-key and new-key tokens all pass, and the new kid costs one
    # fetch, which every new-key caller arriving while it is in flight waits for.
    FaultRow("rotation_during_load", during=200, past_stale=None, recovered=200, fetches=2, key_server_saw=2),
    # A rotation right after a routine fetch: the new kid is fetched at once (the cooldown only spaces out fetches
    # for unknown kids), so a new-key token is accepted straight away.
    FaultRow("rotation_within_cooldown", during=200, past_stale=None, recovered=200, fetches=2, key_server_saw=2),
]


class OkApp(RecordingApp):
    async def answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"reached": True})(scope, receive, send)


@dataclass
class Rig:
    issuer: LocalAccess
    clock: ManualClock
    cache: JWKSCache
    client: httpx.AsyncClient
    url: str
    bodies: list[bytes]
    tokens: list[str]

    async def status(self, token: str | None = None) -> int:
        token = token or self.issuer.user_token()
        self.tokens.append(token)
        response = await self.client.get(self.url + "/mcp", headers={"Cf-Access-Jwt-Assertion": token})
        self.bodies.append(response.content)
        if response.status_code == 503:
            assert response.json() == {"error": "unavailable"}
        return response.status_code


@asynccontextmanager
async def rig() -> AsyncIterator[Rig]:
    with LocalAccess() as issuer:
        issuer.slow_seconds = SLOW_SECONDS
        config = issuer.config()
        clock = ManualClock()
        cache = JWKSCache(
            config.certs_url,
            max_age=MAX_AGE,
            refetch_cooldown=COOLDOWN,
            stale_window=STALE_WINDOW,
            timeout=FETCH_TIMEOUT,
            max_bytes=config.max_certs_bytes,
            clock=clock,
        )
        verifier = AccessVerifier(config, keys=cache)
        async with serve(AccessJWTMiddleware(OkApp(), verifier)) as url, httpx.AsyncClient(timeout=10) as client:
            yield Rig(issuer, clock, cache, client, url, [], [])
        await verifier.aclose()


def start_fault(issuer: LocalAccess, fault: str) -> None:
    if fault in ("down", "down_at_startup"):
        issuer.go_down()
    else:
        issuer.fault = fault  # type: ignore[assignment]  # checked against the Fault names below


async def run_scenario(row: FaultRow, r: Rig) -> FaultRow:
    """Play one row's scenario and report what was observed, in the row's shape."""
    if row.fault.startswith("rotation"):
        return await run_rotation(row, r)
    if row.fault == "down_at_startup":
        start_fault(r.issuer, row.fault)
    else:
        assert await r.status() == 200  # the keys are fetched while the issuer is healthy
        start_fault(r.issuer, row.fault)
        r.clock.advance(MAX_AGE + 1)
    during = await r.status()
    # Within the cooldown more requests cost no further fetch, whatever they get.
    fetches = r.cache.fetch_count
    assert await r.status() == during
    assert r.cache.fetch_count == fetches
    r.clock.advance(STALE_WINDOW)
    past_stale = await r.status()
    r.issuer.come_back()
    r.clock.advance(COOLDOWN + 1)
    recovered = await r.status()
    return FaultRow(row.fault, during, past_stale, recovered, r.cache.fetch_count, r.issuer.requests)


async def run_rotation(row: FaultRow, r: Rig) -> FaultRow:
    old = r.issuer.current_key
    assert await r.status() == 200
    if row.fault == "rotation_within_cooldown":
        new = r.issuer.rotate()
        during = await r.status(r.issuer.user_token(key=new))
        r.clock.advance(COOLDOWN + 1)
        recovered = await r.status(r.issuer.user_token(key=new))
        assert await r.status(r.issuer.user_token(key=old)) == 200
        return FaultRow(row.fault, during, None, recovered, r.cache.fetch_count, r.issuer.requests)

    r.clock.advance(COOLDOWN + 1)
    r.issuer.slow_seconds, r.issuer.fault = 0.15, "slow"  # answers, within the fetch timeout, after 0.15 s
    statuses: list[int] = []

    async def one(index: int) -> None:
        # Half the callers still hold old-key tokens; the other half arrive after the rotation with new-key ones.
        if index == 100:
            r.issuer.rotate()
        token = r.issuer.user_token(f"user{index % 7}@example.com", key=old if index < 100 else r.issuer.current_key)
        statuses.append(await r.status(token))

    async with anyio.create_task_group() as tasks:
        for index in range(200):
            tasks.start_soon(one, index)
            await anyio.sleep(0.002)  # arrivals spread over about 0.4 s, so some come while the fetch is in flight
    print(f"\nrotation during load: statuses {sorted({s: statuses.count(s) for s in statuses}.items())}")
    during = statuses[0] if len(set(statuses)) == 1 else -1
    r.issuer.fault = None
    recovered = await r.status(r.issuer.user_token(key=old))
    return FaultRow(row.fault, during, None, recovered, r.cache.fetch_count, r.issuer.requests)


def test_every_fault_of_local_access_is_in_the_table() -> None:
    faults = {row.fault for row in FAULT_TABLE}
    assert set(Fault.__args__) <= faults | {"down"}  # type: ignore[attr-defined]
    assert {"down_at_startup", "rotation_during_load"} <= faults


@pytest.mark.parametrize("row", FAULT_TABLE, ids=[row.fault for row in FAULT_TABLE])
async def test_fault(row: FaultRow) -> None:
    async with rig() as r:
        observed = await run_scenario(row, r)
        leaks = find_leaks([body.decode("latin-1") for body in r.bodies], r.tokens, [])
        leaks += [
            f"a whole token in a response body ({len(t)} characters)"
            for t in r.tokens
            if any(t.encode() in b for b in r.bodies)
        ]
    print(f"\n{observed}")
    assert observed == row
    assert not leaks, leaks


@pytest.mark.parametrize("moment", ["first_fetch", "new_kid"])
async def test_a_caller_arriving_while_a_fetch_is_in_flight_waits_for_it(moment: str) -> None:
    """Two valid requests, the second sent while the first one's fetch (0.3 s, within the timeout) is in flight: both
    get 200. (Before the cache let such a caller wait, the second got 503 on the first fetch, 403 on a new kid.)
    """
    async with rig() as r:
        key = r.issuer.current_key
        if moment == "new_kid":
            assert await r.status() == 200
            r.clock.advance(COOLDOWN + 1)
            key = r.issuer.rotate()
        r.issuer.fault, r.issuer.slow_seconds = "slow", 0.3
        statuses: list[int] = []

        async def one() -> None:
            statuses.append(await r.status(r.issuer.user_token(key=key)))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(one)
            await anyio.sleep(0.1)  # the first request's fetch is now in flight
            tasks.start_soon(one)
    assert statuses == [200, 200]
