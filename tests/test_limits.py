"""Limits on failed credential checks, over real uvicorn: each counted credential (shared secret, direct pair, client
authentication at /token and /revoke, bearer token) is refused with 429 past the limit, the real credential too, and
from that address only; the address rule (CF-Connecting-IP only after the secret or from a trusted proxy, IPv6 by
/64); the window; bounded memory under a flood; one log line per window; counters shared through Redis; a store that
fails."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

import mcp_access_guard.limits as limits_module
from mcp_access_guard import GuardConfig, guard
from mcp_access_guard.identity import current_identity
from mcp_access_guard.limits import TUNNEL_PROVEN, AddressRule, FailedCredentialLimit, client_address, trusted_proxy
from mcp_access_guard.middleware.service_token import ServiceTokenMiddleware
from mcp_access_guard.oauth.store.redis import RedisStore
from mcp_access_guard.settings import LimitSettings, ServiceTokenSettings
from mcp_access_guard.testing import LocalAccessSaaS, free_port, serve
from oauth_harness import Pkce, client_auth, deployment, log_in, mcp_app, oauth_config, register, tokens_for
from redis_server import RedisServer, require_redis_server
from support import MCP_HEADERS, ManualClock, RecordingApp

pytestmark = pytest.mark.anyio

HEADER = "Cf-Access-Guard-Secret"
# Fresh random values each run: nothing secret is written into this file.
SECRET = secrets.token_hex(32)
WRONG = secrets.token_hex(32)
CLIENT_ID = f"{secrets.token_hex(16)}.access"
CLIENT_SECRET = secrets.token_hex(32)
LIMIT = 3
REFUSED = {"error": "too_many_requests"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


class OkApp(RecordingApp):
    """Answers 200 with the service-token principal bound for it, if any; counts the requests that reach it."""

    async def answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        identity = current_identity()
        await JSONResponse({"principal": identity.principal if identity else None})(scope, receive, send)


@asynccontextmanager
async def from_address(url: str, source: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose connections leave from `source` (any 127.x.y.z reaches the loopback server): a second peer."""
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(base_url=url, transport=transport) as client:
        yield client


@asynccontextmanager
async def two_peers(app: Any) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    async with serve(app) as url, from_address(url, "127.0.0.1") as first, from_address(url, "127.0.0.2") as second:
        yield first, second


def secret(value: str, connecting_ip: str | None = None) -> dict[str, str]:
    headers = {HEADER: value}
    if connecting_ip is not None:
        headers["CF-Connecting-IP"] = connecting_ip
    return headers


def assert_blocked(response: httpx.Response, window: float = 60) -> None:
    assert response.status_code == 429, response.text
    assert response.json() == REFUSED
    assert 1 <= int(response.headers["retry-after"]) <= window


def limit_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if getattr(record, "reason", None) == "failed_credential_limit"]


def reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.reason for record in caplog.records if hasattr(record, "reason")]


# -- the shared secret ----------------------------------------------------------------------------------------------


async def test_wrong_secrets_block_the_address_then_the_right_secret_is_refused_unchecked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = OkApp()
    limits = FailedCredentialLimit(LIMIT, 60)
    async with two_peers(ServiceTokenMiddleware(app, secrets=[SECRET], limits=limits)) as (first, second):
        for _ in range(LIMIT):
            assert (await first.get("/mcp", headers=secret(WRONG))).status_code == 403
        caplog.clear()
        assert_blocked(await first.get("/mcp", headers=secret(SECRET)))
        assert_blocked(await first.get("/mcp", headers=secret(WRONG)))
        # Nothing was compared: the only decisions logged are the limit's.
        assert set(reasons(caplog)) == {"failed_credential_limit"}
        assert app.hits == 0
        # Another address is not affected.
        assert (await second.get("/mcp", headers=secret(SECRET))).status_code == 200
        assert app.hits == 1


async def test_a_missing_or_repeated_secret_is_not_a_guess_and_is_not_counted() -> None:
    app = OkApp()
    limits = FailedCredentialLimit(LIMIT, 60)
    async with two_peers(ServiceTokenMiddleware(app, secrets=[SECRET], limits=limits)) as (first, _):
        for _ in range(LIMIT * 3):
            assert (await first.get("/mcp")).status_code == 403
            repeated = [(HEADER, WRONG), (HEADER, WRONG)]
            assert (await first.get("/mcp", headers=repeated)).status_code == 403
        assert (await first.get("/mcp", headers=secret(SECRET))).status_code == 200


async def test_connecting_ip_from_an_untrusted_peer_without_the_secret_is_ignored() -> None:
    """A caller cannot pick the address it is counted under: each wrong secret names another CF-Connecting-IP, and
    all count against the peer."""
    limits = FailedCredentialLimit(LIMIT, 60)
    async with two_peers(ServiceTokenMiddleware(OkApp(), secrets=[SECRET], limits=limits)) as (first, second):
        for number in range(LIMIT):
            response = await first.get("/mcp", headers=secret(WRONG, f"203.0.113.{number + 1}"))
            assert response.status_code == 403
        assert_blocked(await first.get("/mcp", headers=secret(SECRET, "203.0.113.200")))
        assert (await second.get("/mcp", headers=secret(SECRET, "203.0.113.1"))).status_code == 200


async def test_a_trusted_proxy_names_the_client_by_connecting_ip() -> None:
    limits = FailedCredentialLimit(LIMIT, 60, trusted_proxies=["127.0.0.1/32"])
    async with two_peers(ServiceTokenMiddleware(OkApp(), secrets=[SECRET], limits=limits)) as (proxy, untrusted):
        for _ in range(LIMIT):
            assert (await proxy.get("/mcp", headers=secret(WRONG, "203.0.113.9"))).status_code == 403
        assert_blocked(await proxy.get("/mcp", headers=secret(SECRET, "203.0.113.9")))
        assert (await proxy.get("/mcp", headers=secret(SECRET, "203.0.113.10"))).status_code == 200
        # The proxy's own address is not the blocked one.
        assert (await proxy.get("/mcp", headers=secret(SECRET))).status_code == 200
        # From another peer the header names the client once the secret checked out: the same client, blocked.
        assert_blocked(await untrusted.get("/mcp", headers=secret(SECRET, "203.0.113.9")))
        assert (await untrusted.get("/mcp", headers=secret(SECRET))).status_code == 200


async def test_a_connecting_ip_that_is_not_one_valid_address_falls_back_to_the_peer() -> None:
    limits = FailedCredentialLimit(LIMIT, 60, trusted_proxies=["127.0.0.0/8"])
    async with two_peers(ServiceTokenMiddleware(OkApp(), secrets=[SECRET], limits=limits)) as (first, second):
        for value in ("not-an-address", "203.0.113.9, 203.0.113.10", "fe80::1%eth0"):
            assert (await first.get("/mcp", headers=secret(WRONG, value))).status_code == 403
        # Counted against the peer: blocked without the header, or with another junk value...
        assert_blocked(await first.get("/mcp", headers=secret(SECRET)))
        assert_blocked(await first.get("/mcp", headers=secret(SECRET, "01.2.3.4")))
        # ...or the header twice.
        twice = [(HEADER, SECRET), ("CF-Connecting-IP", "203.0.113.1"), ("CF-Connecting-IP", "203.0.113.2")]
        assert_blocked(await first.get("/mcp", headers=twice))
        # A valid address from the trusted proxy is its own client, and so is the other peer.
        assert (await first.get("/mcp", headers=secret(SECRET, "203.0.113.50"))).status_code == 200
        assert (await second.get("/mcp", headers=secret(SECRET))).status_code == 200


async def test_ipv6_addresses_are_counted_by_their_64() -> None:
    limits = FailedCredentialLimit(LIMIT, 60, trusted_proxies=["127.0.0.1"])
    async with two_peers(ServiceTokenMiddleware(OkApp(), secrets=[SECRET], limits=limits)) as (proxy, _):
        for address in ("2001:db8:1:2::1", "2001:db8:1:2:aaaa::2", "2001:db8:1:2:ffff:ffff:ffff:ffff"):
            assert (await proxy.get("/mcp", headers=secret(WRONG, address))).status_code == 403
        assert_blocked(await proxy.get("/mcp", headers=secret(SECRET, "2001:db8:1:2::99")))
        assert (await proxy.get("/mcp", headers=secret(SECRET, "2001:db8:1:3::1"))).status_code == 200


def test_the_address_rule() -> None:
    def scope(peer: str, *headers: tuple[bytes, bytes], tunnel: bool = False) -> Scope:
        made: dict[str, Any] = {"type": "http", "client": (peer, 5000), "headers": list(headers)}
        if tunnel:
            made[TUNNEL_PROVEN] = True
        return made

    ip = b"cf-connecting-ip"
    behind_proxy = AddressRule([trusted_proxy("10.0.0.0/8"), trusted_proxy("2001:db8:ff::/48")])
    assert client_address(scope("198.51.100.7")) == "198.51.100.7"
    assert client_address(scope("::ffff:198.51.100.7")) == "198.51.100.7"
    assert client_address(scope("2001:db8::1")) == "2001:db8::/64"
    assert client_address(scope("198.51.100.7", (ip, b"203.0.113.1"))) == "198.51.100.7"
    assert client_address(scope("198.51.100.7", (ip, b"203.0.113.1"), tunnel=True)) == "203.0.113.1"
    assert behind_proxy(scope("10.1.2.3", (ip, b" 2001:db8:5:6:7::8 "))) == "2001:db8:5:6::/64"
    assert behind_proxy(scope("10.1.2.3", (ip, b"::ffff:203.0.113.4"))) == "203.0.113.4"
    assert behind_proxy(scope("10.1.2.3", (ip, b"x" * 100))) == "10.1.2.3"
    assert behind_proxy(scope("11.1.2.3", (ip, b"203.0.113.4"))) == "11.1.2.3"
    assert behind_proxy(scope("::ffff:10.1.2.3", (ip, b"203.0.113.4"))) == "203.0.113.4"
    assert behind_proxy(scope("2001:db8:ff:1::1", (ip, b"2001:DB8:0:0:1::1"))) == "2001:db8::/64"
    assert behind_proxy(scope("2001:db8:fe::1", (ip, b"203.0.113.4"))) == "2001:db8:fe::/64"
    assert client_address(scope("fe80::1:2:3:4%eth0")) == "fe80::/64"
    assert behind_proxy(scope("10.1.2.3", (ip, b"fe80::1%eth0"))) == "10.1.2.3"
    assert client_address({"type": "http", "headers": []}) == "unknown"
    assert client_address({"type": "http", "headers": [], "client": ("unix-peer\n", 0)}) == "unix-peer\\n"
    for bad in ("0.0.0.0/0", "::/0", "10.0.0.1/8", "not-a-network", "10.0.0.0/33"):
        with pytest.raises(ValueError, match="trusted proxy"):
            trusted_proxy(bad)


async def test_the_window_passing_lets_the_address_in_again() -> None:
    limits = FailedCredentialLimit(2, 1)
    async with two_peers(ServiceTokenMiddleware(OkApp(), secrets=[SECRET], limits=limits)) as (first, _):
        for _ in range(2):
            assert (await first.get("/mcp", headers=secret(WRONG))).status_code == 403
        blocked = await first.get("/mcp", headers=secret(SECRET))
        assert_blocked(blocked, window=1)
        await anyio.sleep(float(blocked.headers["retry-after"]) + 0.1)
        assert (await first.get("/mcp", headers=secret(SECRET))).status_code == 200


async def test_a_successful_check_does_not_reset_the_count() -> None:
    limits = FailedCredentialLimit(LIMIT, 60)
    async with two_peers(ServiceTokenMiddleware(OkApp(), secrets=[SECRET], limits=limits)) as (first, _):
        for _ in range(LIMIT - 1):
            assert (await first.get("/mcp", headers=secret(WRONG))).status_code == 403
            assert (await first.get("/mcp", headers=secret(SECRET))).status_code == 200
        assert (await first.get("/mcp", headers=secret(WRONG))).status_code == 403
        assert_blocked(await first.get("/mcp", headers=secret(SECRET)))


async def test_zero_turns_the_limit_off() -> None:
    limits = FailedCredentialLimit(0, 60)
    async with two_peers(ServiceTokenMiddleware(OkApp(), secrets=[SECRET], limits=limits)) as (first, _):
        for _ in range(20):
            assert (await first.get("/mcp", headers=secret(WRONG))).status_code == 403
        assert (await first.get("/mcp", headers=secret(SECRET))).status_code == 200
    assert limits.tracked_addresses == 0


async def test_the_refusal_is_logged_once_per_window_and_every_429_is_a_decision(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    logged: list[bool] = []
    real = limits_module.log_decision

    def recording(scope: Scope, **fields: Any) -> None:
        logged.append(fields["log"])
        real(scope, **fields)

    monkeypatch.setattr(limits_module, "log_decision", recording)
    caplog.set_level(logging.WARNING, logger="mcp_access_guard")
    limits = FailedCredentialLimit(2, 1)
    async with two_peers(ServiceTokenMiddleware(OkApp(), secrets=[SECRET], limits=limits)) as (first, _):
        for _ in range(2):
            await first.get("/mcp", headers=secret(WRONG))
        for _ in range(4):
            last = await first.get("/mcp", headers=secret(SECRET))
            assert last.status_code == 429
        assert len(limit_records(caplog)) == 1
        assert logged == [True, False, False, False]
        await anyio.sleep(float(last.headers["retry-after"]) + 0.1)
        for _ in range(2):
            await first.get("/mcp", headers=secret(WRONG))
        for _ in range(2):
            assert (await first.get("/mcp", headers=secret(SECRET))).status_code == 429
    assert len(limit_records(caplog)) == 2
    assert logged == [True, False, False, False, True, False]
    record = limit_records(caplog)[0]
    assert record.levelno == logging.WARNING
    assert (record.layer, record.decision) == ("service_token", "deny")


# -- direct service-token pairs -------------------------------------------------------------------------------------


async def test_wrong_pairs_block_the_address_then_the_right_pair_is_refused() -> None:
    app = OkApp()
    limits = FailedCredentialLimit(LIMIT, 60)
    middleware = ServiceTokenMiddleware(app, client_credentials={CLIENT_ID: CLIENT_SECRET}, limits=limits)
    right = {"CF-Access-Client-Id": CLIENT_ID, "CF-Access-Client-Secret": CLIENT_SECRET}
    wrong = {**right, "CF-Access-Client-Secret": WRONG}
    async with two_peers(middleware) as (first, second):
        for _ in range(LIMIT):
            assert (await first.get("/mcp", headers=wrong)).status_code == 403
        assert_blocked(await first.get("/mcp", headers=right))
        # With no pair at all the blocked address is still refused: it is the address that is blocked.
        assert_blocked(await first.get("/mcp"))
        answer = await second.get("/mcp", headers=right)
        assert answer.status_code == 200
        assert answer.json() == {"principal": CLIENT_ID}
    assert app.hits == 1


async def test_after_the_secret_pair_failures_count_against_connecting_ip() -> None:
    """The secret proves the tunnel: a wrong pair behind it blocks the CF-Connecting-IP it came from, not the tunnel's
    own address that every caller shares."""
    limits = FailedCredentialLimit(LIMIT, 60)
    middleware = ServiceTokenMiddleware(
        OkApp(), secrets=[SECRET], client_credentials={CLIENT_ID: CLIENT_SECRET}, limits=limits
    )
    right = {"CF-Access-Client-Id": CLIENT_ID, "CF-Access-Client-Secret": CLIENT_SECRET}
    wrong = {**right, "CF-Access-Client-Secret": WRONG}
    async with two_peers(middleware) as (tunnel, _):
        for _ in range(LIMIT):
            assert (await tunnel.get("/mcp", headers={**secret(SECRET, "198.51.100.7"), **wrong})).status_code == 403
        assert_blocked(await tunnel.get("/mcp", headers={**secret(SECRET, "198.51.100.7"), **right}))
        assert (await tunnel.get("/mcp", headers={**secret(SECRET, "198.51.100.8"), **right})).status_code == 200
        assert (await tunnel.get("/mcp", headers={**secret(SECRET), **right})).status_code == 200


# -- OAuth: client authentication at /token and /revoke, and bearer tokens ------------------------------------------


async def test_failed_client_authentication_at_token_blocks_the_address(
    local_access_saas: LocalAccessSaaS, caplog: pytest.LogCaptureFixture
) -> None:
    limits = FailedCredentialLimit(LIMIT, 60)
    options = {"server_options": {"limits": limits}, "bearer": {"limits": limits}}
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas, **options) as site:
        client = await register(site.url, method="client_secret_post")
        pkce = Pkce()
        code = (await log_in(site.url, client, pkce))["code"]
        exchange = {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": pkce.verifier,
            "redirect_uri": client.redirect_uri,
        }
        form, headers = client_auth(client, exchange)
        async with from_address(site.url, "127.0.0.1") as first, from_address(site.url, "127.0.0.2") as second:
            for _ in range(LIMIT - 1):
                wrong = await first.post("/token", data={**form, "client_secret": WRONG})
                assert wrong.status_code == 401
                assert wrong.json()["error"] == "invalid_client"
            unknown = await first.post("/token", data={**form, "client_id": secrets.token_urlsafe(18)})
            assert unknown.status_code == 401
            caplog.clear()
            assert_blocked(await first.post("/token", data=form, headers=headers))
            assert_blocked(await first.post("/revoke", data=client_auth(client, {"token": "x"})[0]))
            assert set(reasons(caplog)) == {"failed_credential_limit"}
            # The code was never looked at: from another address it is still good.
            redeemed = await second.post("/token", data=form, headers=headers)
            assert redeemed.status_code == 200, redeemed.text


async def test_failed_client_authentication_at_revoke_counts(local_access_saas: LocalAccessSaaS) -> None:
    """/revoke authenticates the client as /token does, and its failures count the same."""
    limits = FailedCredentialLimit(LIMIT, 60)
    async with deployment(local_access_saas, server_options={"limits": limits}) as site:
        client = await register(site.url, method="client_secret_basic")
        form, headers = client_auth(client, {"token": "anything"})
        wrong = client_auth(replace(client, secret=WRONG), {"token": "anything"})[1]
        async with from_address(site.url, "127.0.0.1") as first, from_address(site.url, "127.0.0.2") as second:
            for _ in range(LIMIT):
                assert (await first.post("/revoke", data=form, headers=wrong)).status_code == 401
            assert_blocked(await first.post("/revoke", data=form, headers=headers))
            assert (await second.post("/revoke", data=form, headers=headers)).status_code == 200


async def test_bad_bearer_tokens_block_the_address_then_the_real_token_is_refused(
    local_access_saas: LocalAccessSaaS,
) -> None:
    limits = FailedCredentialLimit(LIMIT, 60)
    options = {"server_options": {"limits": limits}, "bearer": {"limits": limits}}
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas, **options) as site:
        access_token = (await tokens_for(site.url, await register(site.url)))["access_token"]
        bearer = {**MCP_HEADERS, "MCP-Protocol-Version": "2025-06-18", "Authorization": f"Bearer {access_token}"}
        async with from_address(site.url, "127.0.0.1") as first, from_address(site.url, "127.0.0.2") as second:
            for bad in ("mag_at_" + secrets.token_urlsafe(32), "not-one-of-ours", "mag_at_" + secrets.token_urlsafe(8)):
                refused = await first.post(
                    "/mcp", json=INITIALIZE, headers={**bearer, "Authorization": f"Bearer {bad}"}
                )
                assert refused.status_code == 401
            assert_blocked(await first.post("/mcp", json=INITIALIZE, headers=bearer))
            # The token endpoint is closed to the address too.
            assert_blocked(await first.post("/token", data={"grant_type": "refresh_token"}))
            assert (await second.post("/mcp", json=INITIALIZE, headers=bearer)).status_code == 200


async def test_registration_counts_by_the_same_address_rule(local_access_saas: LocalAccessSaaS) -> None:
    limits = FailedCredentialLimit(LIMIT, 60, trusted_proxies=["127.0.0.1/32"])
    async with deployment(local_access_saas, server_options={"limits": limits}, registration_rate=2) as site:
        document = {"redirect_uris": ["http://127.0.0.1:9/callback"], "token_endpoint_auth_method": "none"}
        async with from_address(site.url, "127.0.0.1") as proxy:
            for expected in (201, 201, 429):
                answer = await proxy.post("/register", json=document, headers={"CF-Connecting-IP": "203.0.113.7"})
                assert answer.status_code == expected
            answer = await proxy.post("/register", json=document, headers={"CF-Connecting-IP": "203.0.113.8"})
            assert answer.status_code == 201


# -- through guard() -----------------------------------------------------------------------------------------------


def oauth_guard(saas: LocalAccessSaaS, port: int, **overrides: Any) -> Any:
    settings: dict[str, Any] = {
        "service_token": ServiceTokenSettings(secrets=(SECRET,)),
        "limits": LimitSettings(failed_credentials=LIMIT),
    }
    config = oauth_config(saas, f"http://127.0.0.1:{port}", **overrides)
    return guard(mcp_app(), GuardConfig(oauth=config, **{**settings}))


async def test_guard_counts_bearer_failures_behind_the_secret_by_connecting_ip(
    local_access_saas: LocalAccessSaaS,
) -> None:
    port = free_port()
    async with serve(oauth_guard(local_access_saas, port), port=port) as url, from_address(url, "127.0.0.1") as tunnel:
        headers = {**MCP_HEADERS, **secret(SECRET, "198.51.100.20"), "Authorization": "Bearer mag_at_nothing"}
        for _ in range(LIMIT):
            assert (await tunnel.post("/mcp", json=INITIALIZE, headers=headers)).status_code == 401
        assert_blocked(await tunnel.post("/mcp", json=INITIALIZE, headers=headers))
        assert_blocked(await tunnel.post("/token", data={"grant_type": "refresh_token"}, headers=headers))
        other = {**headers, "CF-Connecting-IP": "198.51.100.21"}
        assert (await tunnel.post("/mcp", json=INITIALIZE, headers=other)).status_code == 401
        # The tunnel's own address was never counted: a wrong secret from it is a plain 403.
        assert (await tunnel.post("/mcp", json=INITIALIZE, headers=secret(WRONG))).status_code == 403


async def test_guard_shares_counters_through_redis(local_access_saas: LocalAccessSaaS, tmp_path: Path) -> None:
    redis = RedisServer(require_redis_server(), tmp_path)
    redis.start()
    try:
        ports = free_port(), free_port()
        apps = [oauth_guard(local_access_saas, port, store=redis.url) for port in ports]
        async with serve(apps[0], port=ports[0]) as first, serve(apps[1], port=ports[1]) as second:
            headers = {**MCP_HEADERS, **secret(SECRET, "198.51.100.30"), "Authorization": "Bearer mag_at_nothing"}
            async with httpx.AsyncClient(headers=headers) as http:
                for url in (first, first, second):
                    assert (await http.post(f"{url}/mcp", json=INITIALIZE)).status_code == 401
                # The second replica saw one failure, the store three: it refuses the address.
                assert_blocked(await http.post(f"{second}/mcp", json=INITIALIZE))
                # The first learns of it at the address's next failure there.
                assert (await http.post(f"{first}/mcp", json=INITIALIZE)).status_code == 401
                assert_blocked(await http.post(f"{first}/mcp", json=INITIALIZE))
    finally:
        redis.stop()


async def test_guard_with_a_memory_store_counts_per_process(local_access_saas: LocalAccessSaaS) -> None:
    port = free_port()
    async with serve(oauth_guard(local_access_saas, port), port=port) as url, httpx.AsyncClient() as http:
        headers = {**MCP_HEADERS, **secret(SECRET, "198.51.100.40"), "Authorization": "Bearer mag_at_nothing"}
        for _ in range(LIMIT):
            await http.post(f"{url}/mcp", json=INITIALIZE, headers=headers)
        assert_blocked(await http.post(f"{url}/mcp", json=INITIALIZE, headers=headers))


async def test_a_failing_store_falls_back_to_this_process(caplog: pytest.LogCaptureFixture) -> None:
    limits = FailedCredentialLimit(LIMIT, 60)
    # Nothing listens on this port: every increment fails, as with Redis down.
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout=1)
    limits.count_in(store)
    try:
        async with two_peers(ServiceTokenMiddleware(OkApp(), secrets=[SECRET], limits=limits)) as (first, second):
            for _ in range(LIMIT):
                assert (await first.get("/mcp", headers=secret(WRONG))).status_code == 403
            assert_blocked(await first.get("/mcp", headers=secret(SECRET)))
            assert (await second.get("/mcp", headers=secret(SECRET))).status_code == 200
    finally:
        await store.aclose()
    failures = [record for record in caplog.records if "counted per process" in record.getMessage()]
    assert len(failures) == 1
    assert failures[0].levelno == logging.ERROR


# -- memory under a flood -------------------------------------------------------------------------------------------


def _scope(address: str) -> Scope:
    return {"type": "http", "client": (address, 40000), "headers": [], "path": "/mcp"}


async def test_a_flood_of_rotating_addresses_stays_bounded_and_keeps_a_block() -> None:
    clock = ManualClock()
    limits = FailedCredentialLimit(LIMIT, 60, tracked=1000, clock=clock)
    victim, partial = _scope("198.51.100.1"), _scope("198.51.100.2")
    for _ in range(LIMIT):
        await limits.failed(victim)
    await limits.failed(partial)
    for number in range(50_000):
        await limits.failed(_scope(f"10.{number >> 16}.{(number >> 8) & 255}.{number & 255}"))
        clock.advance(0.0005)
    assert limits.tracked_addresses <= 1000 + 1
    assert limits.refusal(victim, layer="test") is not None
    # What the flood bought: the partial count was dropped, so that address starts again from nothing.
    for _ in range(LIMIT - 1):
        await limits.failed(partial)
    assert limits.refusal(partial, layer="test") is None
    # Blocked addresses are bounded too, each one costing the flood a full count of failures.
    for number in range(3000):
        for _ in range(LIMIT):
            await limits.failed(_scope(f"172.16.{number >> 8}.{number & 255}"))
    assert limits.tracked_addresses <= 2 * 1000


async def test_a_real_http_flood_stays_bounded_and_keeps_a_block() -> None:
    limits = FailedCredentialLimit(LIMIT, 60, tracked=50, trusted_proxies=["127.0.0.1/32"])
    async with two_peers(ServiceTokenMiddleware(OkApp(), secrets=[SECRET], limits=limits)) as (proxy, _):
        for _ in range(LIMIT):
            await proxy.get("/mcp", headers=secret(WRONG, "198.51.100.9"))
        for number in range(400):
            flood = await proxy.get("/mcp", headers=secret(WRONG, f"2001:db8:{number:x}::1"))
            assert flood.status_code == 403
        assert limits.tracked_addresses <= 50 + 1
        assert_blocked(await proxy.get("/mcp", headers=secret(SECRET, "198.51.100.9")))
        assert (await proxy.get("/mcp", headers=secret(SECRET, "198.51.100.10"))).status_code == 200


async def test_a_websocket_from_a_blocked_address_is_refused_before_its_secret_is_read() -> None:
    limits = FailedCredentialLimit(1, 60)
    app = OkApp()
    layer = ServiceTokenMiddleware(app, secrets=[SECRET], limits=limits)
    await limits.failed(_scope("198.51.100.60"))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(HEADER.lower().encode(), SECRET.encode())]
    scope = {"type": "websocket", "path": "/mcp", "headers": headers, "client": ("198.51.100.60", 1)}
    await layer(scope, receive, send)
    assert sent[0]["type"] == "websocket.http.response.start"
    assert sent[0]["status"] == 429
    assert 1 <= int(dict(sent[0]["headers"])[b"retry-after"]) <= 60
    assert app.hits == 0
