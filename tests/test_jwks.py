"""JWKSCache against a real key endpoint (LocalAccess over loopback HTTP), with a controlled clock for time."""

import logging
import secrets
from collections.abc import Iterator

import anyio
import anyio.lowlevel
import pytest

from mcp_access_guard.jwks import JWKSCache, KeysUnavailable
from mcp_access_guard.testing import Fault, LocalAccess, LocalAccessSaaS
from support import ManualClock

pytestmark = pytest.mark.anyio


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def issuer() -> Iterator[LocalAccess]:
    with LocalAccess() as running:
        yield running


def cache_for(issuer: LocalAccess, clock: ManualClock, **settings: float) -> JWKSCache:
    options = {"max_age": 300, "refetch_cooldown": 30, "stale_window": 3600, "timeout": 2, **settings}
    return JWKSCache(issuer.certs_url, clock=clock, **options)  # type: ignore[arg-type]


async def test_fetches_cloudflare_shaped_keys_once(issuer: LocalAccess, clock: ManualClock) -> None:
    cache = cache_for(issuer, clock)
    key = await cache.get(issuer.current_key.kid)
    assert key is not None
    assert key.public_numbers() == issuer.current_key.private_key.public_key().public_numbers()
    assert await cache.get(issuer.current_key.kid) is key
    assert cache.fetch_count == 1
    assert issuer.requests == 1
    await cache.aclose()


async def test_concurrent_first_requests_share_one_fetch(issuer: LocalAccess, clock: ManualClock) -> None:
    cache = cache_for(issuer, clock)
    results: list[object] = []

    async def ask() -> None:
        results.append(await cache.get(issuer.current_key.kid))

    async with anyio.create_task_group() as tasks:
        for _ in range(50):
            tasks.start_soon(ask)
    assert len(results) == 50
    assert all(result is results[0] for result in results)
    assert cache.fetch_count == 1
    await cache.aclose()


async def test_random_kid_flood_costs_at_most_one_fetch_per_cooldown(issuer: LocalAccess, clock: ManualClock) -> None:
    cache = cache_for(issuer, clock)
    await cache.get(issuer.current_key.kid)
    clock.advance(31)

    async def ask_random() -> None:
        assert await cache.get(secrets.token_hex(16)) is None

    async with anyio.create_task_group() as tasks:
        for _ in range(200):
            tasks.start_soon(ask_random)
    assert cache.fetch_count == 2
    # Still inside the cooldown: the missing kids stay missing without another fetch.
    clock.advance(29)
    for _ in range(100):
        assert await cache.get(secrets.token_hex(16)) is None
    assert cache.fetch_count == 2
    clock.advance(1)
    assert await cache.get(secrets.token_hex(16)) is None
    assert cache.fetch_count == 3
    await cache.aclose()


async def test_random_kids_arriving_while_the_waiters_of_a_fetch_drain_do_not_fetch_again(
    issuer: LocalAccess, clock: ManualClock
) -> None:
    # A finished fetch hands its lock to each waiter in turn, so the lock still looks busy for a while after it; a
    # made-up kid arriving then must still be held to the cooldown, not take the lock for a fetch of its own.
    cache = cache_for(issuer, clock)
    await cache.get(issuer.current_key.kid)
    clock.advance(31)
    issuer.fault = "slow"
    issuer.slow_seconds = 0.2
    asking = True

    async def ask_random() -> None:
        assert await cache.get(secrets.token_hex(16)) is None

    async with anyio.create_task_group() as tasks:

        async def keep_asking() -> None:
            while asking:
                tasks.start_soon(ask_random)
                await anyio.lowlevel.checkpoint()

        tasks.start_soon(keep_asking)
        await anyio.sleep(0.7)
        asking = False
    assert cache.fetch_count == 2
    await cache.aclose()


async def test_rotated_key_is_fetched_on_first_sight_and_old_key_kept(issuer: LocalAccess, clock: ManualClock) -> None:
    cache = cache_for(issuer, clock)
    old = issuer.current_key
    await cache.get(old.kid)
    clock.advance(60)
    new = issuer.rotate()
    assert await cache.get(new.kid) is not None
    assert await cache.get(old.kid) is not None
    assert cache.fetch_count == 2
    await cache.aclose()


async def test_a_key_that_disappears_is_no_longer_trusted(issuer: LocalAccess, clock: ManualClock) -> None:
    cache = cache_for(issuer, clock)
    old = issuer.current_key
    new = issuer.rotate()
    assert await cache.get(old.kid) is not None
    issuer.drop(old.kid)
    clock.advance(301)  # past max_age: the next look refreshes
    assert await cache.get(new.kid) is not None
    assert await cache.get(old.kid) is None
    assert set(cache.kids) == {new.kid}
    await cache.aclose()


async def test_unchanged_keys_keep_their_identity_across_refreshes(issuer: LocalAccess, clock: ManualClock) -> None:
    cache = cache_for(issuer, clock)
    first = await cache.get(issuer.current_key.kid)
    clock.advance(301)
    assert await cache.get(issuer.current_key.kid) is first
    assert cache.fetch_count == 2
    await cache.aclose()


def break_issuer(issuer: LocalAccess, fault: Fault | None) -> None:
    if fault is None:
        issuer.go_down()
    else:
        issuer.fault = fault


FAULTS: list[Fault | None] = [None, "slow", "http_500", "garbage", "html", "empty", "non_rsa", "redirect", "huge"]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda fault: fault or "down")
async def test_stale_keys_serve_through_a_fault_then_fail_closed_then_recover(
    issuer: LocalAccess, clock: ManualClock, fault: Fault | None, caplog: pytest.LogCaptureFixture
) -> None:
    issuer.slow_seconds = 1.0
    issuer.huge_bytes = 1024 * 1024
    cache = cache_for(issuer, clock, timeout=0.3, stale_window=600)
    kid = issuer.current_key.kid
    good = await cache.get(kid)
    assert good is not None

    break_issuer(issuer, fault)
    clock.advance(301)  # keys are due for a refresh, which fails
    with caplog.at_level(logging.WARNING, logger="mcp_access_guard"):
        assert await cache.get(kid) is good
    assert "could not refresh Access signing keys" in caplog.text
    assert cache.fetch_count == 2

    clock.advance(598)  # still inside the stale window, and each retry waits out the cooldown
    assert await cache.get(kid) is good
    assert cache.fetch_count == 3

    clock.advance(2)  # past max_age + stale_window since the last good fetch: fail closed
    with pytest.raises(KeysUnavailable):
        await cache.get(kid)

    issuer.come_back()
    clock.advance(30)
    assert await cache.get(kid) is good
    assert cache.fetch_count == 4
    await cache.aclose()


async def test_down_at_start_up_fails_closed_and_recovers(issuer: LocalAccess, clock: ManualClock) -> None:
    issuer.go_down()
    cache = cache_for(issuer, clock)
    for _ in range(20):
        with pytest.raises(KeysUnavailable):
            await cache.get("any")
    assert cache.fetch_count == 1
    issuer.come_back()
    clock.advance(30)
    assert await cache.get(issuer.current_key.kid) is not None
    assert cache.fetch_count == 2
    await cache.aclose()


async def test_non_rsa_and_malformed_entries_are_skipped(issuer: LocalAccess, clock: ManualClock) -> None:
    good = issuer.current_key.jwk()
    entries = [
        {"kid": "ec", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
        {**good, "kid": "hs", "alg": "HS256"},
        {**good, "kid": "enc", "use": "enc"},
        {**good, "kid": ""},
        {**good, "kid": "broken", "n": "!!!"},
        "not an object",
        good,
    ]
    from mcp_access_guard.jwks import _parse_keys

    assert set(_parse_keys({"keys": entries})) == {good["kid"]}


async def test_a_kid_published_twice_is_trusted_under_neither(issuer: LocalAccess) -> None:
    from mcp_access_guard.jwks import _parse_keys

    first = issuer.current_key.jwk()
    second = issuer.rotate().jwk()
    second["kid"] = first["kid"]
    assert _parse_keys({"keys": [first, second]}) == {}


async def test_refresh_ignores_the_cooldown(issuer: LocalAccess, clock: ManualClock) -> None:
    cache = cache_for(issuer, clock)
    await cache.get(issuer.current_key.kid)
    new = issuer.rotate()
    await cache.refresh()
    assert new.kid in cache.kids
    assert cache.fetch_count == 2
    await cache.aclose()


async def test_a_request_arriving_during_the_first_fetch_waits_for_it(issuer: LocalAccess, clock: ManualClock) -> None:
    issuer.fault = "slow"
    issuer.slow_seconds = 0.3
    cache = cache_for(issuer, clock, timeout=5)
    kid = issuer.current_key.kid
    keys: list[object] = []

    async def ask() -> None:
        keys.append(await cache.get(kid))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(ask)
        await anyio.sleep(0.1)  # the first fetch is in flight, and has started the cooldown
        tasks.start_soon(ask)
    assert len(keys) == 2
    assert keys[0] is not None
    assert keys[1] is keys[0]
    assert cache.fetch_count == 1
    await cache.aclose()


async def test_a_request_with_a_known_key_does_not_wait_for_a_refresh(issuer: LocalAccess, clock: ManualClock) -> None:
    cache = cache_for(issuer, clock, timeout=5)
    kid = issuer.current_key.kid
    first = await cache.get(kid)
    issuer.fault = "slow"
    issuer.slow_seconds = 1.0
    clock.advance(301)  # due for a refresh, which will be slow
    answered: list[str] = []

    async def ask(who: str, delay: float) -> None:
        await anyio.sleep(delay)
        assert await cache.get(kid) is first
        answered.append(who)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(ask, "refresher", 0)  # starts the refresh and waits for it
        tasks.start_soon(ask, "later", 0.2)  # arrives while it is in flight: served from the current keys at once
    assert answered == ["later", "refresher"]
    assert cache.fetch_count == 2
    await cache.aclose()


async def test_a_rotation_right_after_a_routine_fetch_is_picked_up_at_once(
    issuer: LocalAccess, clock: ManualClock
) -> None:
    cache = cache_for(issuer, clock)
    await cache.get(issuer.current_key.kid)
    new = issuer.rotate()
    clock.advance(1)  # well inside the cooldown
    assert await cache.get(new.kid) is not None
    assert cache.fetch_count == 2
    # That fetch was for an unknown kid, so made-up kids now wait out the cooldown: a flood still costs nothing.
    for _ in range(50):
        assert await cache.get(secrets.token_hex(16)) is None
    assert cache.fetch_count == 2
    await cache.aclose()


@pytest.mark.parametrize(
    ("fault", "kind", "status"),
    [
        (None, "unreachable", None),
        ("slow", "timeout", None),
        ("http_500", "http_status", 500),
        ("redirect", "http_status", 302),
        ("garbage", "not_json", None),
        ("html", "not_json", None),
        ("empty", "no_usable_key", None),
        ("non_rsa", "no_usable_key", None),
        ("huge", "too_large", None),
    ],
    ids=lambda value: str(value),
)
async def test_each_failed_fetch_says_what_kind_of_failure_it_was(
    issuer: LocalAccess, clock: ManualClock, fault: Fault | None, kind: str, status: int | None
) -> None:
    issuer.slow_seconds = 1.0
    issuer.huge_bytes = 8192
    cache = JWKSCache(issuer.certs_url, clock=clock, timeout=0.3, max_bytes=4096)
    await cache.refresh()
    assert cache.last_failure is None

    break_issuer(issuer, fault)
    await cache.refresh()
    failure = cache.last_failure
    assert failure is not None
    assert (failure.kind, failure.status) == (kind, status)
    assert failure.detail == str(failure)
    assert cache.kids == (issuer.current_key.kid,)  # the last good keys stay

    issuer.come_back()
    await cache.refresh()
    assert cache.last_failure is None  # a good fetch clears it
    await cache.aclose()


async def test_keys_are_asked_for_uncompressed(local_access_saas: LocalAccessSaaS) -> None:
    # A key server that compresses for clients that accept it (as CDNs do): the bounded raw read must get JSON.
    local_access_saas.compress = True
    cache = JWKSCache(local_access_saas.jwks_url)
    try:
        assert await cache.get(local_access_saas.current_key.kid) is not None
        assert cache.last_failure is None
    finally:
        await cache.aclose()
