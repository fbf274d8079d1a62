"""LocalAccessSaaS holds clients to what a real Access for SaaS application demands, so the tests built on it can
fail: PKCE, registered redirect URIs, one client authentication at a time, bearer-only userinfo."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest

from mcp_access_guard.testing import LocalAccessSaaS

pytestmark = pytest.mark.anyio

CALLBACK = "http://127.0.0.1:9/oauth/callback"
VERIFIER = "v" * 43


@pytest.fixture
async def browser() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def authorization_query(saas: LocalAccessSaaS, **changes: str | None) -> str:
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": saas.client_id,
        "redirect_uri": CALLBACK,
        "scope": "openid email",
        "state": "s" * 43,
        "nonce": "n" * 43,
        "code_challenge": base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode(),
        "code_challenge_method": "S256",
    }
    params.update(changes)
    return urlencode({name: value for name, value in params.items() if value is not None})


def redirected(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(CALLBACK + "?")
    return dict(parse_qsl(urlsplit(location).query))


async def code_for(saas: LocalAccessSaaS, browser: httpx.AsyncClient, **changes: str | None) -> str:
    response = await browser.get(f"{saas.authorization_url}?{authorization_query(saas, **changes)}")
    return redirected(response)["code"]


def credentials(saas: LocalAccessSaaS) -> dict[str, str]:
    return {"client_id": saas.client_id, "client_secret": saas.client_secret}


async def test_the_issuer_and_endpoints_are_shaped_like_cloudflares(
    local_access_saas: LocalAccessSaaS, browser: httpx.AsyncClient
) -> None:
    saas = local_access_saas
    assert saas.issuer == f"{saas.url}/cdn-cgi/access/sso/oidc/{saas.client_id}"
    document = (await browser.get(saas.discovery_url)).json()
    assert document["issuer"] == saas.issuer
    assert document["authorization_endpoint"] == saas.issuer + "/authorization"
    assert document["token_endpoint"] == saas.issuer + "/token"
    assert document["jwks_uri"] == saas.issuer + "/jwks"
    assert document["userinfo_endpoint"] == saas.issuer + "/userinfo"
    keys = (await browser.get(saas.jwks_url)).json()["keys"]
    assert [key["kid"] for key in keys] == [saas.current_key.kid]
    assert (await browser.get(saas.url + "/cdn-cgi/access/certs")).status_code == 404


@pytest.mark.parametrize(
    "changes",
    [{"code_challenge": None}, {"code_challenge_method": "plain"}, {"code_challenge_method": None}],
    ids=["no challenge", "plain", "no method"],
)
async def test_pkce_s256_is_required(
    changes: dict[str, str | None], local_access_saas: LocalAccessSaaS, browser: httpx.AsyncClient
) -> None:
    local_access_saas.login_as("alice@example.com")
    query = authorization_query(local_access_saas, **changes)
    answer = redirected(await browser.get(f"{local_access_saas.authorization_url}?{query}"))
    assert answer["error"] == "invalid_request"
    assert answer["state"] == "s" * 43


@pytest.mark.parametrize("changes", [{"redirect_uri": "https://evil.example/cb"}, {"client_id": "someone-else"}])
async def test_an_unregistered_redirect_uri_or_client_gets_a_page_not_a_redirect(
    changes: dict[str, str], browser: httpx.AsyncClient
) -> None:
    with LocalAccessSaaS(redirect_uris=[CALLBACK]) as saas:
        saas.login_as("alice@example.com")
        response = await browser.get(f"{saas.authorization_url}?{authorization_query(saas, **changes)}")
    assert response.status_code == 400
    assert "location" not in response.headers


async def test_a_verifier_without_a_challenge_is_refused(
    local_access_saas: LocalAccessSaaS, browser: httpx.AsyncClient
) -> None:
    local_access_saas.require_pkce = False
    local_access_saas.login_as("alice@example.com")
    code = await code_for(local_access_saas, browser, code_challenge=None, code_challenge_method=None)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK, "code_verifier": VERIFIER}
    response = await browser.post(local_access_saas.token_url, data={**form, **credentials(local_access_saas)})
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")


async def test_a_code_for_another_redirect_uri_is_refused(
    local_access_saas: LocalAccessSaaS, browser: httpx.AsyncClient
) -> None:
    local_access_saas.login_as("alice@example.com")
    code = await code_for(local_access_saas, browser)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK + "x", "code_verifier": VERIFIER}
    response = await browser.post(local_access_saas.token_url, data={**form, **credentials(local_access_saas)})
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")


async def test_one_client_authentication_at_a_time(
    local_access_saas: LocalAccessSaaS, browser: httpx.AsyncClient
) -> None:
    saas = local_access_saas
    saas.login_as("alice@example.com")
    form = {"grant_type": "authorization_code", "code": await code_for(saas, browser), "redirect_uri": CALLBACK}
    both = await browser.post(
        saas.token_url, data={**form, **credentials(saas)}, auth=(saas.client_id, saas.client_secret)
    )
    assert (both.status_code, both.json()["error"]) == (400, "invalid_request")
    neither = await browser.post(saas.token_url, data=form)
    assert (neither.status_code, neither.json()["error"]) == (401, "invalid_client")
    assert [request.client_auth for request in saas.token_requests] == ["both", "none"]
    assert all("client_secret" not in request.form for request in saas.token_requests)


async def test_a_method_the_application_does_not_offer_is_refused(
    local_access_saas: LocalAccessSaaS, browser: httpx.AsyncClient
) -> None:
    saas = local_access_saas
    saas.token_auth_methods = ("client_secret_post",)
    saas.login_as("alice@example.com")
    form = {"grant_type": "authorization_code", "code": await code_for(saas, browser), "redirect_uri": CALLBACK}
    response = await browser.post(saas.token_url, data=form, auth=(saas.client_id, saas.client_secret))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")


async def test_userinfo_takes_the_access_token(local_access_saas: LocalAccessSaaS, browser: httpx.AsyncClient) -> None:
    saas = local_access_saas
    saas.login_as("alice@example.com", groups=["eng"])
    form = {
        "grant_type": "authorization_code",
        "code": await code_for(saas, browser),
        "redirect_uri": CALLBACK,
        "code_verifier": VERIFIER,
    }
    tokens = (await browser.post(saas.token_url, data={**form, **credentials(saas)})).json()
    userinfo = await browser.get(saas.userinfo_url, headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert userinfo.json() == {"sub": saas.user.subject, "email": "alice@example.com", "groups": ["eng"]}  # type: ignore[union-attr]
    assert (await browser.get(saas.userinfo_url, headers={"Authorization": "Bearer nope"})).status_code == 401
    assert (await browser.get(saas.userinfo_url)).status_code == 401


async def test_nobody_signed_in_is_access_denied(
    local_access_saas: LocalAccessSaaS, browser: httpx.AsyncClient
) -> None:
    answer = redirected(
        await browser.get(f"{local_access_saas.authorization_url}?{authorization_query(local_access_saas)}")
    )
    assert answer["error"] == "access_denied"
    assert answer["iss"] == local_access_saas.issuer
