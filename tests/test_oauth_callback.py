"""/oauth/callback over real HTTP against LocalAccessSaaS: the transaction taken once and bound to the browser that
approved; Access's answers mapped to the client (access_denied, server_error, temporarily_unavailable); the
`allow` rule applied before any grant; our code sent back with the client's state and our iss."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from mcp_access_guard import Rule
from mcp_access_guard.oauth import MemoryStore
from mcp_access_guard.oauth.records import CREDENTIAL
from mcp_access_guard.testing import IdTokenFault, LocalAccessSaaS
from oauth_browser import walk
from oauth_harness import SECRET_KEY, Pkce, authorize_url, browse, deployment, query_of, register

pytestmark = pytest.mark.anyio

__all__ = ["SECRET_KEY"]  # declared for the leak scan

APP = "https://app.example.com/callback"


def grants_in(store: MemoryStore) -> list[str]:
    return [key for key in store._values if key.startswith("grant:")]


async def test_the_client_gets_our_code_with_its_state_and_our_iss(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("Alice@Example.com")
    store = MemoryStore()
    async with deployment(local_access_saas, store=store) as site:
        client = await register(site.url, [APP])
        result = await browse(authorize_url(site.url, client, Pkce(), state="xyz"), APP)
    answer = query_of(result.final_url)
    assert set(answer) == {"code", "state", "iss"}
    assert (answer["state"], answer["iss"]) == ("xyz", site.url)
    assert CREDENTIAL.fullmatch(answer["code"])
    assert answer["code"].startswith("mag_ac_")
    assert answer["code"] not in "".join(store._values)
    # Our login at Access used state, nonce and PKCE, and the client secret at its token endpoint.
    (sent,) = local_access_saas.authorization_requests
    assert sent["code_challenge_method"] == "S256"
    assert sent["nonce"]
    (token_request,) = local_access_saas.token_requests
    assert token_request.authenticated
    assert token_request.form["code_verifier"]
    assert len(grants_in(store)) == 1


async def test_a_forwarded_access_link_fails_in_another_browser(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    store = MemoryStore()
    async with (
        deployment(local_access_saas, store=store) as site,
        httpx.AsyncClient() as consenting,
        httpx.AsyncClient() as other,
    ):
        client = await register(site.url, [APP])
        # The person approves; the link to Access is then opened in someone else's browser.
        to_access = await walk(
            authorize_url(site.url, client, Pkce()), stop_at=local_access_saas.authorization_url, http=consenting
        )
        elsewhere = await walk(to_access.final_url, stop_at=APP, http=other)
        # The transaction was consumed by that attempt: the consenting browser cannot finish it either.
        afterwards = await walk(to_access.final_url, stop_at=APP, http=consenting)
    assert elsewhere.last_response is not None
    assert elsewhere.last_response.status_code == 403
    assert "another browser" in elsewhere.last_response.text
    assert not elsewhere.final_url.startswith(APP)
    assert afterwards.last_response is not None
    assert afterwards.last_response.status_code == 400
    assert not afterwards.final_url.startswith(APP)
    assert grants_in(store) == []
    assert not [key for key in store._values if key.startswith("txn:")]


async def test_a_callback_is_good_once(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site, httpx.AsyncClient() as browser:
        client = await register(site.url, [APP])
        to_callback = await walk(
            authorize_url(site.url, client, Pkce()), stop_at=f"{site.url}/oauth/callback", http=browser
        )
        first = await browser.get(to_callback.final_url)
        replayed = await browser.get(to_callback.final_url)
    assert first.status_code == 302
    assert first.headers["location"].startswith(APP)
    assert replayed.status_code == 400
    assert "location" not in replayed.headers


@pytest.mark.parametrize(
    "query", ["", "?state=", "?state=made-up", "?code=x", "?state=a&state=b", "?state=" + "s" * 2000]
)
async def test_callbacks_without_a_transaction_are_a_page(local_access_saas: LocalAccessSaaS, query: str) -> None:
    async with deployment(local_access_saas) as site, httpx.AsyncClient() as browser:
        response = await browser.get(f"{site.url}/oauth/callback{query}")
    assert response.status_code == 400
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")


async def test_access_refusing_the_user_is_access_denied_for_the_client(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.allow = Rule(emails=["bob@example.com"])
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        result = await browse(authorize_url(site.url, client, Pkce(), state="s1"), APP)
    assert query_of(result.final_url) == {"error": "access_denied", "state": "s1", "iss": site.url}
    assert local_access_saas.hits["token"] == 0


async def test_our_allow_rule_refuses_before_any_grant(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("mallory@example.com")
    store = MemoryStore()
    async with deployment(local_access_saas, store=store, allow=Rule(email_domains=["corp.example"])) as site:
        client = await register(site.url, [APP])
        refused = await browse(authorize_url(site.url, client, Pkce(), state="s2"), APP)
        local_access_saas.login_as("carol@corp.example")
        admitted = await browse(authorize_url(site.url, client, Pkce(), state="s3"), APP)
    assert query_of(refused.final_url) == {"error": "access_denied", "state": "s2", "iss": site.url}
    assert set(query_of(admitted.final_url)) == {"code", "state", "iss"}
    assert len(grants_in(store)) == 1


@pytest.mark.parametrize("fault", ["wrong_nonce", "wrong_aud", "expired", "alg_none", "rogue_key", "missing_email"])
async def test_a_bad_id_token_is_server_error(local_access_saas: LocalAccessSaaS, fault: IdTokenFault) -> None:
    local_access_saas.login_as("alice@example.com")
    local_access_saas.id_token_fault = fault
    store = MemoryStore()
    async with deployment(local_access_saas, store=store) as site:
        client = await register(site.url, [APP])
        result = await browse(authorize_url(site.url, client, Pkce(), state="s4"), APP)
    assert query_of(result.final_url) == {"error": "server_error", "state": "s4", "iss": site.url}
    assert grants_in(store) == []


async def test_access_failing_at_the_code_exchange_is_temporarily_unavailable(
    local_access_saas: LocalAccessSaaS,
) -> None:
    local_access_saas.login_as("alice@example.com")
    local_access_saas.fault = "http_500"
    local_access_saas.fault_endpoints = {"token"}
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        result = await browse(authorize_url(site.url, client, Pkce(), state="s5"), APP)
    assert query_of(result.final_url) == {"error": "temporarily_unavailable", "state": "s5", "iss": site.url}


async def test_access_unreachable_at_approval_is_temporarily_unavailable(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    local_access_saas.go_down()
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        result = await browse(authorize_url(site.url, client, Pkce(), state="s6"), APP)
    assert query_of(result.final_url) == {"error": "temporarily_unavailable", "state": "s6", "iss": site.url}


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"iss": "https://other.example"}, "server_error"),
        ({"iss": None}, "server_error"),
        ({"error": "access_denied", "code": None}, "access_denied"),
        ({"error": "temporarily_unavailable", "code": None}, "temporarily_unavailable"),
        ({"error": "invalid_scope", "code": None}, "server_error"),
        ({"code": None}, "server_error"),
    ],
    ids=["wrong iss", "no iss", "access denied", "unavailable", "other error", "no code"],
)
async def test_what_access_sends_back_is_checked(
    local_access_saas: LocalAccessSaaS, change: dict[str, Any], error: str
) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site, httpx.AsyncClient() as browser:
        client = await register(site.url, [APP])
        to_callback = await walk(
            authorize_url(site.url, client, Pkce(), state="s7"), stop_at=f"{site.url}/oauth/callback", http=browser
        )
        params = {**query_of(to_callback.final_url), **change}
        response = await browser.get(
            f"{site.url}/oauth/callback", params={name: value for name, value in params.items() if value is not None}
        )
    assert response.status_code == 302
    assert query_of(response.headers["location"]) == {"error": error, "state": "s7", "iss": site.url}


async def test_a_client_without_state_gets_none_back(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        url = authorize_url(site.url, client, Pkce()).replace("state=client-state-1&", "")
        result = await browse(url, APP)
    assert set(query_of(result.final_url)) == {"code", "iss"}
