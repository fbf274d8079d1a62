"""Load while the key source fails (issue 7, item 5), in real time over real uvicorn.

2,000 valid requests (several users, old and new key) and 400 invalid ones (forged, expired, wrong audience, unknown
kid, wrong algorithm, org token, garbage) go through the guarded stack from one `httpx.AsyncClient` limited to 100
connections, while the issuer rotates its key and then is down for 10 seconds. The keys stay inside the stale window
throughout (30 s), so: no valid request may be refused, no invalid one accepted, no 5xx at all, and the JWKS fetches
stay bounded by the cooldown, however many unknown kids arrive.

One known behaviour is kept out of the measurement: the rotation comes more than a cooldown after the last fetch,
because a new kid seen within the cooldown of a finished fetch is refused until the cooldown passes (asserted as the
rotation_within_cooldown row of test_faults.py).
"""

from __future__ import annotations

import itertools
import math
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field

import anyio
import httpx
import pytest
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from leak_scan import find_leaks
from mcp_access_guard.middleware.access import AccessJWTMiddleware
from mcp_access_guard.settings import CORSSettings, GuardConfig
from mcp_access_guard.stack import guard
from mcp_access_guard.testing import LocalAccess, SigningKey, serve
from support import RecordingApp

MAX_AGE = 2.0
COOLDOWN = 1.0
STALE_WINDOW = 30.0
OUTAGE_SECONDS = 10.0
WAVE = 100  # valid requests per wave, sent together over at most CONNECTIONS connections
INVALID_PER_WAVE = 20
CONNECTIONS = 100
USERS = [f"user{index}@example.com" for index in range(5)]


class OkApp(RecordingApp):
    async def answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"reached": True})(scope, receive, send)


def access_layer(app: ASGIApp) -> AccessJWTMiddleware:
    """The JWT layer inside a `guard()` stack, to read its key cache's fetch count."""
    layer = app
    while not isinstance(layer, AccessJWTMiddleware):
        layer = layer.app  # type: ignore[attr-defined]
    return layer


@dataclass
class Tally:
    requests: int = 0
    valid: int = 0
    valid_refused: int = 0
    invalid_accepted: int = 0
    server_errors: int = 0
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    bodies: list[bytes] = field(default_factory=list)


@pytest.mark.anyio
async def test_2000_valid_requests_across_a_rotation_and_a_10_second_outage() -> None:
    with LocalAccess() as issuer:
        config = issuer.config(keys_max_age=MAX_AGE, refetch_cooldown=COOLDOWN, stale_window=STALE_WINDOW)
        stack = guard(OkApp(), GuardConfig(access=config, cors=CORSSettings(allowed_hosts=("127.0.0.1",))))
        keys = access_layer(stack).verifier.keys
        old_key = issuer.current_key
        stranger = SigningKey(old_key.kid, SigningKey.generate().private_key)
        invalid = {
            "forged": [issuer.user_token(USERS[0], key=stranger)],
            "expired": [issuer.user_token(USERS[1], expires_in=-3600)],
            "wrong_audience": [issuer.user_token(USERS[2], claims={"aud": ["someone-else"]})],
            "org_token": [issuer.user_token(USERS[3], claims={"type": "org"})],
            "wrong_algorithm": [issuer.user_token(USERS[4], headers={"alg": "HS256"})],
            "garbage": ["not.a.token"],
        }
        # Each refused for a different reason; unknown kids are minted per request (each could cost a fetch).
        valid_pools = {"old": [issuer.user_token(user) for user in USERS for _ in range(4)]}
        tally = Tally()
        minted: list[str] = [*valid_pools["old"], *itertools.chain(*invalid.values())]

        async with (
            serve(stack) as url,
            httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=CONNECTIONS), timeout=30) as client,
        ):

            async def send(kind: str, token: str, valid: bool) -> None:
                response = await client.post("/mcp", headers={"Cf-Access-Jwt-Assertion": token})
                tally.requests += 1
                tally.valid += valid
                tally.statuses[(kind, response.status_code)] += 1
                tally.bodies.append(response.content)
                tally.valid_refused += valid and response.status_code != 200
                tally.invalid_accepted += not valid and response.status_code == 200
                tally.server_errors += response.status_code >= 500

            async def wave(pools: list[str]) -> None:
                tokens = itertools.cycle([token for pool in pools for token in valid_pools[pool]])
                bad = itertools.cycle(list(invalid.items()))
                async with anyio.create_task_group() as tasks:
                    for index in range(WAVE):
                        tasks.start_soon(send, "valid", next(tokens), True)
                        if index % (WAVE // INVALID_PER_WAVE) == 0:
                            kind, tokens_of_kind = next(bad)
                            tasks.start_soon(send, kind, tokens_of_kind[0], False)
                            unknown = issuer.user_token(headers={"kid": secrets.token_hex(16)})
                            minted.append(unknown)
                            tasks.start_soon(send, "unknown_kid", unknown, False)

            started = time.monotonic()
            for _ in range(3):
                await wave(["old"])

            # More than a cooldown after the last fetch (see the module docstring): the first new-key request fetches.
            await anyio.sleep(COOLDOWN + 0.1)
            new_key = issuer.rotate()
            valid_pools["new"] = [issuer.user_token(user, key=new_key) for user in USERS for _ in range(4)]
            minted += valid_pools["new"]
            for _ in range(2):
                await wave(["old", "new"])

            issuer.go_down()
            outage_started = time.monotonic()
            fetches_before_outage = keys.fetch_count
            for second in range(int(OUTAGE_SECONDS)):
                await wave(["old", "new"])
                await anyio.sleep(max(0.0, outage_started + second + 1 - time.monotonic()))
            outage = time.monotonic() - outage_started
            fetches_during_outage = keys.fetch_count - fetches_before_outage
            issuer.come_back()

            for _ in range(5):
                await wave(["old", "new"])
            elapsed = time.monotonic() - started

        fetches = keys.fetch_count
        print(
            f"\nload: {tally.requests} requests ({tally.valid} valid, {tally.requests - tally.valid} invalid), "
            f"valid refused {tally.valid_refused}, invalid accepted {tally.invalid_accepted}, "
            f"5xx {tally.server_errors}, JWKS fetches {fetches} ({fetches_during_outage} failed during the "
            f"{outage:.1f} s outage), {elapsed:.1f} s"
        )
        print(f"statuses: {sorted(tally.statuses.items())}")
        assert outage >= OUTAGE_SECONDS
        assert tally.valid == 20 * WAVE == 2000
        assert tally.requests - tally.valid == 20 * 2 * INVALID_PER_WAVE
        assert tally.valid_refused == 0
        assert tally.invalid_accepted == 0
        assert tally.server_errors == 0
        # At most one fetch per cooldown (max_age and 400 unknown kids notwithstanding), plus the first and rotation.
        assert fetches <= math.floor(elapsed / COOLDOWN) + 3
        assert fetches_during_outage <= math.floor(outage / COOLDOWN) + 2
        leaks = find_leaks([body.decode("latin-1") for body in tally.bodies], minted, [])
        leaks += [
            f"a whole token in a response body ({len(t)} characters)"
            for t in minted
            if any(t.encode() in b for b in tally.bodies)
        ]
        assert not leaks, leaks
