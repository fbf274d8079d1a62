"""/token and /revoke over real HTTP: client authentication per registered method, the single-use code (a replay
revokes the grant), PKCE, the redirect URI, `resource`, refresh rotation with its grace and its reuse detection,
one rotation under concurrency, the upstream refresh and what its failures do, and revocation."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import httpx
import pytest

from mcp_access_guard import Rule
from mcp_access_guard.oauth import MemoryStore
from mcp_access_guard.oauth.grants import CODE_TTL, REFRESH_GRACE
from mcp_access_guard.oauth.records import CREDENTIAL
from mcp_access_guard.oauth.store.redis import RedisStore
from mcp_access_guard.testing import LocalAccessSaaS, SaaSUser, free_port
from oauth_harness import (
    SECRET_KEY,
    Deployment,
    Pkce,
    Registered,
    call_mcp,
    deployment,
    exchange,
    log_in,
    refresh,
    register,
    token_request,
    tokens_for,
)

pytestmark = pytest.mark.anyio

__all__ = ["SECRET_KEY"]  # declared for the leak scan

APP = "https://app.example.com/callback"


async def post(url: str, data: dict[str, str], headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(url, data=data, headers=headers or {})


async def works(site: Deployment, access_token: str) -> bool:
    response = await call_mcp(site.url, access_token)
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


def assert_token_error(response: httpx.Response, error: str, status: int = 400) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert response.headers["cache-control"] == "no-store"


# -- the authorization code -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["none", "client_secret_post", "client_secret_basic"])
async def test_code_exchange_for_each_client_authentication(local_access_saas: LocalAccessSaaS, method: str) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas, access_token_ttl=900) as site:
        client = await register(site.url, [APP], method=method)
        pkce = Pkce()
        callback = await log_in(site.url, client, pkce)
        response = await exchange(site.url, client, callback["code"], pkce)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert await works(site, answer["access_token"])
    assert response.headers["cache-control"] == "no-store"
    assert set(answer) == {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
    assert answer["token_type"] == "Bearer"
    assert answer["expires_in"] == 900
    assert answer["scope"] == "openid email profile"
    assert answer["access_token"].startswith("mag_at_")
    assert answer["refresh_token"].startswith("mag_rt_")
    assert CREDENTIAL.fullmatch(answer["access_token"])
    assert CREDENTIAL.fullmatch(answer["refresh_token"])


async def test_tokens_are_stored_only_as_hashes(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    store = MemoryStore()
    async with deployment(local_access_saas, store=store) as site:
        client = await register(site.url, [APP])
        answer = await tokens_for(site.url, client)
        answer = (await refresh(site.url, client, answer["refresh_token"])).json()
    everything = "".join(store._values) + "".join(store._counters)
    stored = b"".join(value for value, _ in store._values.values())
    for token in (answer["access_token"], answer["refresh_token"]):
        assert token not in everything
        assert token.encode() not in stored
    # The upstream refresh token is sealed as well.
    for request in local_access_saas.token_requests:
        upstream_refresh = request.form.get("refresh_token")
        if upstream_refresh:
            assert upstream_refresh.encode() not in stored


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


async def test_client_authentication_follows_the_registered_method(local_access_saas: LocalAccessSaaS) -> None:
    async with deployment(local_access_saas) as site:
        basic_client = await register(site.url, [APP], method="client_secret_basic")
        post_client = await register(site.url, [APP], method="client_secret_post")
        public = await register(site.url, [APP], method="none")
        assert basic_client.secret
        assert post_client.secret
        form = {"grant_type": "authorization_code", "code": "mag_ac_" + "A" * 43, "code_verifier": "v" * 43}
        token = f"{site.url}/token"
        wrong_basic = await post(token, form, basic(basic_client.client_id, "mag_cs_" + "x" * 43))
        basic_as_post = await post(
            token, {**form, "client_id": basic_client.client_id, "client_secret": basic_client.secret}
        )
        basic_without = await post(token, {**form, "client_id": basic_client.client_id})
        wrong_post = await post(token, {**form, "client_id": post_client.client_id, "client_secret": "nope"})
        post_as_basic = await post(token, form, basic(post_client.client_id, post_client.secret))
        public_with_secret = await post(token, {**form, "client_id": public.client_id, "client_secret": "anything"})
        both = await post(
            token,
            {**form, "client_id": basic_client.client_id, "client_secret": basic_client.secret},
            basic(basic_client.client_id, basic_client.secret),
        )
        mismatch = await post(
            token, {**form, "client_id": post_client.client_id}, basic(basic_client.client_id, basic_client.secret)
        )
        unknown = await post(token, {**form, "client_id": "no-such-client-0000000"})
        no_client = await post(token, form)
        garbled = await post(token, form, {"Authorization": "Basic !!!"})
        another_secret = await post(token, form, basic(basic_client.client_id, post_client.secret))
        # Each correct method gets past authentication to the grant (unknown code: invalid_grant).
        fine = [
            await post(token, form, basic(basic_client.client_id, basic_client.secret)),
            await post(token, {**form, "client_id": post_client.client_id, "client_secret": post_client.secret}),
            await post(token, {**form, "client_id": public.client_id}),
        ]
    for response in (wrong_basic, both, mismatch, garbled, another_secret):
        assert_token_error(response, "invalid_client", 401)
        assert response.headers["www-authenticate"] == 'Basic realm="oauth"'
    for response in (basic_as_post, basic_without, wrong_post, post_as_basic, public_with_secret, unknown, no_client):
        assert_token_error(response, "invalid_client", 401)
    for response in fine:
        assert_token_error(response, "invalid_grant")


async def test_a_replayed_code_is_refused_and_revokes_the_grant(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        pkce = Pkce()
        callback = await log_in(site.url, client, pkce)
        first = (await exchange(site.url, client, callback["code"], pkce)).json()
        assert await works(site, first["access_token"])
        replay = await exchange(site.url, client, callback["code"], pkce)
        access_after = await works(site, first["access_token"])
        refresh_after = await refresh(site.url, client, first["refresh_token"])
    assert_token_error(replay, "invalid_grant")
    assert not access_after
    assert_token_error(refresh_after, "invalid_grant")


async def test_concurrent_redemptions_of_one_code_give_one_answer(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        pkce = Pkce()
        callback = await log_in(site.url, client, pkce)
        answers = await asyncio.gather(*(exchange(site.url, client, callback["code"], pkce) for _ in range(6)))
        winners = [answer.json() for answer in answers if answer.status_code == 200]
        assert len(winners) == 1
        # The others were replays: the grant is revoked, the winner's token with it.
        assert not await works(site, winners[0]["access_token"])
    assert sorted(answer.status_code for answer in answers) == [200] + [400] * 5


async def test_a_wrong_or_missing_verifier_is_refused_and_the_code_survives(
    local_access_saas: LocalAccessSaaS,
) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        pkce = Pkce()
        callback = await log_in(site.url, client, pkce)
        wrong = await exchange(site.url, client, callback["code"], Pkce())
        missing = await token_request(
            site.url, client, grant_type="authorization_code", code=callback["code"], redirect_uri=APP
        )
        short = await exchange(site.url, client, callback["code"], Pkce(verifier="short"))
        # An attempt without the verifier cannot burn the code for the client that holds it.
        right = await exchange(site.url, client, callback["code"], pkce)
    assert_token_error(wrong, "invalid_grant")
    assert_token_error(missing, "invalid_request")
    assert_token_error(short, "invalid_request")
    assert right.status_code == 200


async def test_the_redirect_uri_must_be_the_one_used(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP, "https://app.example.com/other"])
        pkce = Pkce()
        callback = await log_in(site.url, client, pkce)
        other = await exchange(site.url, client, callback["code"], pkce, redirect_uri="https://app.example.com/other")
        form = {"grant_type": "authorization_code", "code": callback["code"], "code_verifier": pkce.verifier}
        left_out = await token_request(site.url, client, **form)
        right = await exchange(site.url, client, callback["code"], pkce)
    assert_token_error(other, "invalid_grant")
    assert_token_error(left_out, "invalid_grant")
    assert right.status_code == 200


async def test_a_code_of_another_client_is_refused(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site:
        victim = await register(site.url, [APP])
        thief = await register(site.url, [APP])
        pkce = Pkce()
        callback = await log_in(site.url, victim, pkce)
        stolen = await exchange(site.url, thief, callback["code"], pkce)
        right = await exchange(site.url, victim, callback["code"], pkce)
    assert_token_error(stolen, "invalid_grant")
    assert right.status_code == 200


async def test_a_token_for_another_resource_is_refused_before_anything_is_written(
    local_access_saas: LocalAccessSaaS,
) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        pkce = Pkce()
        callback = await log_in(site.url, client, pkce)
        other = await exchange(site.url, client, callback["code"], pkce, resource="https://other.example.com/mcp")
        garbage = await exchange(site.url, client, callback["code"], pkce, resource="not a url")
        right = await exchange(site.url, client, callback["code"], pkce, resource=f"{site.url}/mcp/")
        answer = right.json()
        refresh_other = await refresh(site.url, client, answer["refresh_token"], resource="https://other.example/mcp")
        refresh_right = await refresh(site.url, client, answer["refresh_token"], resource=f"{site.url}/mcp")
    assert_token_error(other, "invalid_target")
    assert_token_error(garbage, "invalid_target")
    assert right.status_code == 200
    assert_token_error(refresh_other, "invalid_target")
    assert refresh_right.status_code == 200


async def test_an_expired_code_is_refused(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    now = [time.monotonic()]
    async with deployment(local_access_saas, store=MemoryStore(clock=lambda: now[0])) as site:
        client = await register(site.url, [APP])
        pkce = Pkce()
        callback = await log_in(site.url, client, pkce)
        now[0] += CODE_TTL + 1
        late = await exchange(site.url, client, callback["code"], pkce)
    assert_token_error(late, "invalid_grant")


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"grant_type": "client_credentials"}, "unsupported_grant_type"),
        ({"grant_type": "password", "username": "a", "password": "b"}, "unsupported_grant_type"),
        ({}, "unsupported_grant_type"),
        ({"grant_type": "authorization_code", "code_verifier": "v" * 43}, "invalid_request"),
        ({"grant_type": "refresh_token"}, "invalid_request"),
        ({"grant_type": "refresh_token", "refresh_token": "not-ours"}, "invalid_grant"),
        ({"grant_type": "authorization_code", "code": "not-ours", "code_verifier": "v" * 43}, "invalid_grant"),
    ],
)
async def test_malformed_token_requests(local_access_saas: LocalAccessSaaS, form: dict[str, str], error: str) -> None:
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        response = await token_request(site.url, client, **form)
    assert_token_error(response, error)


async def test_unreadable_token_requests(local_access_saas: LocalAccessSaaS) -> None:
    async with deployment(local_access_saas) as site, httpx.AsyncClient() as http:
        client = await register(site.url, [APP])
        as_json = await http.post(f"{site.url}/token", json={"grant_type": "refresh_token", "client_id": "x"})
        repeated = await http.post(
            f"{site.url}/token",
            content=f"grant_type=refresh_token&client_id={client.client_id}&client_id=other",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        huge = await http.post(f"{site.url}/token", data={"x": "y" * 20_000})
    assert_token_error(as_json, "invalid_request")
    assert_token_error(repeated, "invalid_request")
    assert_token_error(huge, "invalid_request", 413)


async def test_a_client_that_did_not_register_refresh_cannot_refresh(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP], grant_types=["authorization_code"])
        answer = await tokens_for(site.url, client)
        response = await refresh(site.url, client, answer["refresh_token"])
    assert_token_error(response, "unauthorized_client")


# -- refresh --------------------------------------------------------------------------------------------------------


async def test_refresh_rotates_and_an_old_refresh_token_reused_revokes_the_grant(
    local_access_saas: LocalAccessSaaS,
) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        first = await tokens_for(site.url, client)
        second = (await refresh(site.url, client, first["refresh_token"])).json()
        third = (await refresh(site.url, client, second["refresh_token"])).json()
        assert len({first["refresh_token"], second["refresh_token"], third["refresh_token"]}) == 3
        assert len({first["access_token"], second["access_token"], third["access_token"]}) == 3
        assert await works(site, third["access_token"])
        # The first refresh token, two rotations old: a reuse. The grant goes, with every token of it.
        reused = await refresh(site.url, client, first["refresh_token"])
        current_after = await refresh(site.url, client, third["refresh_token"])
        access_after = await works(site, third["access_token"])
    assert_token_error(reused, "invalid_grant")
    assert_token_error(current_after, "invalid_grant")
    assert not access_after


async def test_the_previous_refresh_token_within_the_grace_gets_the_same_answer(
    local_access_saas: LocalAccessSaaS,
) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        first = await tokens_for(site.url, client)
        second = (await refresh(site.url, client, first["refresh_token"])).json()
        retried = await refresh(site.url, client, first["refresh_token"])
        assert retried.status_code == 200
        assert retried.json() == second
        assert await works(site, second["access_token"])
        # After the grace, the same retry is a reuse.
        clock = site.server.grants._clock
        site.server.grants._clock = lambda: clock() + REFRESH_GRACE + 1
        late = await refresh(site.url, client, first["refresh_token"])
        site.server.grants._clock = clock
        access_after = await works(site, second["access_token"])
    assert_token_error(late, "invalid_grant")
    assert not access_after


async def test_concurrent_refreshes_produce_one_rotation(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    local_access_saas.slow_seconds = 0.3
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        first = await tokens_for(site.url, client)
        upstream_refreshes_before = refreshes_at(local_access_saas)
        # Access answers slowly: every request arrives while the first is rotating.
        local_access_saas.fault = "slow"
        local_access_saas.fault_endpoints = {"token"}
        answers = await asyncio.gather(*(refresh(site.url, client, first["refresh_token"]) for _ in range(5)))
        local_access_saas.fault = None
        bodies = [answer.json() for answer in answers]
        assert [answer.status_code for answer in answers] == [200] * 5
        assert all(body == bodies[0] for body in bodies)
        assert refreshes_at(local_access_saas) == upstream_refreshes_before + 1
        # The one new refresh token works; the grant was not forked.
        assert (await refresh(site.url, client, bodies[0]["refresh_token"])).status_code == 200


def refreshes_at(saas: LocalAccessSaaS) -> int:
    return sum(1 for request in saas.token_requests if request.form.get("grant_type") == "refresh_token")


async def test_refresh_goes_upstream_first_and_takes_new_groups(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com", groups=["staff"])
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        first = await tokens_for(site.url, client)
        before = await site.server.authenticate_bearer(first["access_token"])
        # The identity provider now reports another group: Access's next id_token says so.
        upstream_user = SaaSUser("alice@example.com", groups=("staff", "admins"), subject=before.identity.subject)
        for upstream_grant in local_access_saas._refresh_tokens.values():
            upstream_grant.user = upstream_user
        second = (await refresh(site.url, client, first["refresh_token"])).json()
        after = await site.server.authenticate_bearer(second["access_token"])
        third = await refresh(site.url, client, second["refresh_token"])
    assert before.identity.groups == ("staff",)
    assert after.identity.groups == ("staff", "admins")
    assert third.status_code == 200
    assert refreshes_at(local_access_saas) == 2
    # Access rotates its refresh token too: the grant kept and used the new one.
    upstream_tokens = [r.form["refresh_token"] for r in local_access_saas.token_requests if "refresh_token" in r.form]
    assert len(set(upstream_tokens)) == 2


async def test_upstream_invalid_grant_revokes_our_grant(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        first = await tokens_for(site.url, client)
        local_access_saas.refresh_fault = "invalid_grant"
        refused = await refresh(site.url, client, first["refresh_token"])
        local_access_saas.refresh_fault = None
        again = await refresh(site.url, client, first["refresh_token"])
        access_after = await works(site, first["access_token"])
    assert_token_error(refused, "invalid_grant")
    assert_token_error(again, "invalid_grant")
    assert not access_after


async def test_a_transient_upstream_failure_revokes_nothing(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        first = await tokens_for(site.url, client)
        local_access_saas.fault = "http_500"
        local_access_saas.fault_endpoints = {"token"}
        failed = await refresh(site.url, client, first["refresh_token"])
        still = await works(site, first["access_token"])
        local_access_saas.fault = None
        # The same refresh token works once Access is back: nothing was rotated or revoked.
        recovered = await refresh(site.url, client, first["refresh_token"])
    assert_token_error(failed, "temporarily_unavailable", 503)
    assert still
    assert recovered.status_code == 200


async def test_a_refreshed_id_token_that_fails_revokes_the_grant(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        first = await tokens_for(site.url, client)
        local_access_saas.id_token_fault = "wrong_aud"
        refused = await refresh(site.url, client, first["refresh_token"])
        access_after = await works(site, first["access_token"])
    assert_token_error(refused, "invalid_grant")
    assert not access_after


async def test_without_an_upstream_refresh_token_refresh_stays_local(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    local_access_saas.issue_refresh_tokens = False
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        first = await tokens_for(site.url, client)
        second = await refresh(site.url, client, first["refresh_token"])
    assert second.status_code == 200
    assert refreshes_at(local_access_saas) == 0


async def test_refresh_rechecks_allow(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@corp.example", groups=["eng"])
    store = MemoryStore()
    port = free_port()
    async with deployment(local_access_saas, store=store, port=port) as site:
        client = await register(site.url, [APP])
        first = await tokens_for(site.url, client)
    # The operator tightens the rule and restarts on the same store: the grant can no longer be refreshed.
    async with deployment(local_access_saas, store=store, port=port, allow=Rule(groups=["admins"])) as site:
        refused = await refresh(site.url, client, first["refresh_token"])
        again = await refresh(site.url, client, first["refresh_token"])
    assert_token_error(refused, "invalid_grant")
    assert_token_error(again, "invalid_grant")


async def test_refresh_scope_and_client_checks(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        other = await register(site.url, [APP])
        first = await tokens_for(site.url, client, scope="openid email")
        wider = await refresh(site.url, client, first["refresh_token"], scope="openid email profile")
        stolen = await refresh(site.url, other, first["refresh_token"])
        narrower = await refresh(site.url, client, first["refresh_token"], scope="email")
    assert_token_error(wider, "invalid_scope")
    assert_token_error(stolen, "invalid_grant")
    assert narrower.status_code == 200
    assert narrower.json()["scope"] == "openid email"


# -- revocation -----------------------------------------------------------------------------------------------------


async def revoke(site: Deployment, client: Registered, token: str) -> httpx.Response:
    from oauth_harness import client_auth

    body, headers = client_auth(client, {"token": token})
    return await post(f"{site.url}/revoke", body, headers)


@pytest.mark.parametrize("which", ["access_token", "refresh_token"])
async def test_revoking_either_token_revokes_the_grant(local_access_saas: LocalAccessSaaS, which: str) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP], method="client_secret_basic")
        answer = await tokens_for(site.url, client)
        assert await works(site, answer["access_token"])
        revoked = await revoke(site, client, answer[which])
        access_after = await works(site, answer["access_token"])
        refresh_after = await refresh(site.url, client, answer["refresh_token"])
    assert revoked.status_code == 200
    assert not access_after
    assert_token_error(refresh_after, "invalid_grant")


async def test_revocation_answers_200_but_touches_only_the_clients_own(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site:
        owner = await register(site.url, [APP])
        stranger = await register(site.url, [APP])
        answer = await tokens_for(site.url, owner)
        unknown = await revoke(site, owner, "mag_at_" + "B" * 43)
        garbage = await revoke(site, owner, "whatever")
        foreign = await revoke(site, stranger, answer["access_token"])
        still = await works(site, answer["access_token"])
        unauthenticated = await post(f"{site.url}/revoke", {"token": answer["access_token"]})
        no_token = await revoke(site, owner, "")
        still_after = await works(site, answer["access_token"])
    assert [unknown.status_code, garbage.status_code, foreign.status_code] == [200, 200, 200]
    assert still
    assert_token_error(unauthenticated, "invalid_client", 401)
    assert no_token.status_code == 200
    assert still_after


# -- the store ------------------------------------------------------------------------------------------------------


async def test_store_down_is_503_never_500(local_access_saas: LocalAccessSaaS) -> None:
    # A Redis store pointed at a port where nothing listens: every operation really fails.
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    try:
        async with deployment(local_access_saas, store=store) as site, httpx.AsyncClient() as http:
            registration = await http.post(f"{site.url}/register", json={"redirect_uris": [APP]})
            authorize = await http.get(f"{site.url}/authorize?client_id=abcdefghijklmnopqrstuvwx")
            token = await http.post(
                f"{site.url}/token", data={"grant_type": "refresh_token", "client_id": "abcdefghijklmnopqrstuvwx"}
            )
            bearer = await call_mcp(site.url, "mag_at_" + "C" * 43)
    finally:
        await store.aclose()
    answers: dict[str, Any] = {"register": registration, "authorize": authorize, "token": token, "bearer": bearer}
    assert {name: response.status_code for name, response in answers.items()} == {name: 503 for name in answers}
    assert authorize.headers["content-type"].startswith("text/html")
    assert token.json()["error"] == "temporarily_unavailable"
