"""/authorize and the consent step, over real HTTP with a scripted browser: refusals as a page until the redirect URI
is the client's own and as a redirect after; the consent page's shape and headers; the CSRF and same-origin checks
of its POST; Access contacted only after an approval; remembered consent."""

from __future__ import annotations

import re
from urllib.parse import urlencode, urlsplit

import httpx
import pytest
from starlette.responses import Response

from mcp_access_guard.oauth import MemoryStore
from mcp_access_guard.oauth.consent import ConsentKeys
from mcp_access_guard.testing import LocalAccessSaaS
from oauth_browser import parse_forms
from oauth_harness import (
    SECRET_KEY,
    Pkce,
    Registered,
    authorize_url,
    browse,
    deployment,
    oauth_config,
    query_of,
    register,
)

pytestmark = pytest.mark.anyio

__all__ = ["SECRET_KEY"]  # declared for the leak scan

APP = "https://app.example.com/callback"


async def get(url: str, browser: httpx.AsyncClient | None = None) -> httpx.Response:
    if browser is not None:
        return await browser.get(url)
    async with httpx.AsyncClient() as http:
        return await http.get(url)


def assert_page_not_redirect(response: httpx.Response, status: int = 400) -> None:
    assert response.status_code == status
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["x-frame-options"] == "DENY"


def assert_error_redirect(response: httpx.Response, redirect_uri: str, error: str, issuer: str, state: str) -> None:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(redirect_uri + ("&" if "?" in redirect_uri else "?"))
    assert query_of(location) == {**query_of(redirect_uri), "error": error, "state": state, "iss": issuer}


# -- the consent page ---------------------------------------------------------------------------------------------


async def test_consent_page_shape_headers_and_cookie(local_access_saas: LocalAccessSaaS) -> None:
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP], client_name='<script>alert("x")</script> & co')
        response = await get(authorize_url(site.url, client, Pkce()))
    assert response.status_code == 200
    html = response.text
    (form,) = parse_forms(html)
    assert (form.method, form.action) == ("post", "/consent")
    assert set(form.hidden) == {"request", "csrf"}
    assert form.buttons == {"decision": ["approve", "deny"]}
    assert html.count("<form") == 1
    # Client-supplied text is escaped.
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in html
    # The redirect's host, the scopes, the resource.
    assert "app.example.com" in html
    assert "openid, email, profile" in html
    assert f"{site.url}/mcp" in html
    assert "on this computer" not in html
    headers = response.headers
    assert headers["x-frame-options"] == "DENY"
    csp = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert "form-action" not in csp
    assert headers["cache-control"] == "no-store"
    cookie = headers["set-cookie"]
    assert re.fullmatch(r"mag_browser=mag_br_[A-Za-z0-9_-]{43}; Path=/; HttpOnly; SameSite=Lax", cookie)
    # Access is not contacted before the person decides.
    assert local_access_saas.hits["authorization"] == 0


async def test_loopback_only_clients_get_a_warning(local_access_saas: LocalAccessSaaS) -> None:
    async with deployment(local_access_saas) as site:
        client = await register(site.url, ["http://127.0.0.1/callback"])
        response = await get(authorize_url(site.url, client, Pkce(), redirect_uri="http://127.0.0.1:51234/callback"))
    assert response.status_code == 200
    assert "receives the sign-in on this computer" in response.text
    assert "127.0.0.1:51234" in response.text


async def test_https_public_url_cookies_are_host_prefixed_and_secure(local_access_saas: LocalAccessSaaS) -> None:
    keys = ConsentKeys(oauth_config(local_access_saas, "https://mcp.example.com"))
    response = Response()
    keys.set_browser(response, keys.new_browser())
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("__Host-mag_browser=mag_br_")
    assert cookie.endswith("; Path=/; HttpOnly; SameSite=Lax; Secure")
    assert "Domain" not in cookie
    assert (keys.browser_cookie, keys.remembered_cookie) == ("__Host-mag_browser", "__Host-mag_consent")


# -- refusals before the redirect URI is known good: a page ---------------------------------------------------------


async def test_unknown_or_missing_client_is_a_page(local_access_saas: LocalAccessSaaS) -> None:
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        unknown = Registered("unknown-client-id-000000", APP, None, "none", {})
        for response in (
            await get(authorize_url(site.url, unknown, Pkce())),
            await get(authorize_url(site.url, client, Pkce(), client_id=None)),
            await get(authorize_url(site.url, client, Pkce(), client_id="https://evil.example/client.json")),
        ):
            assert_page_not_redirect(response)


LOOK_ALIKES = {
    "another host": "https://evil.example/callback",
    "suffix host": "https://app.example.com.evil.example/callback",
    "prefix host": "https://evilapp.example.com/callback",
    "user info": "https://app.example.com@evil.example/callback",
    "other path": "https://app.example.com/callback2",
    "sub path": "https://app.example.com/callback/extra",
    "dot segments": "https://app.example.com/callback/../evil",
    "encoded dot segments": "https://app.example.com/x/%2e%2e/callback",
    "trailing slash": "https://app.example.com/callback/",
    "added query": "https://app.example.com/callback?next=https://evil.example",
    "fragment": "https://app.example.com/callback#x",
    "other port": "https://app.example.com:8443/callback",
    "plain http": "http://app.example.com/callback",
    "upper-case path": "https://app.example.com/CALLBACK",
    "encoded path": "https://app.example.com/%63allback",
    "backslash": "https://app.example.com\\@evil.example/callback",
    "javascript": "javascript://app.example.com/callback",
    "empty": "",
}


@pytest.mark.parametrize("redirect_uri", LOOK_ALIKES.values(), ids=LOOK_ALIKES.keys())
async def test_unregistered_or_look_alike_redirect_uri_is_a_page(
    local_access_saas: LocalAccessSaaS, redirect_uri: str
) -> None:
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        response = await get(authorize_url(site.url, client, Pkce(), redirect_uri=redirect_uri))
    assert_page_not_redirect(response)
    assert "did not register" in response.text
    assert local_access_saas.hits["authorization"] == 0


LOOPBACK_REFUSED = {
    "another loopback name": "http://localhost:51234/callback",
    "another path": "http://127.0.0.1:51234/other",
    "https instead": "https://127.0.0.1:51234/callback",
    "look-alike host": "http://127.0.0.1.evil.example:51234/callback",
    "added query": "http://127.0.0.1:51234/callback?x=1",
}


@pytest.mark.parametrize("redirect_uri", LOOPBACK_REFUSED.values(), ids=LOOPBACK_REFUSED.keys())
async def test_loopback_matching_is_on_the_port_only(local_access_saas: LocalAccessSaaS, redirect_uri: str) -> None:
    async with deployment(local_access_saas) as site:
        client = await register(site.url, ["http://127.0.0.1/callback"])
        any_port = await get(authorize_url(site.url, client, Pkce(), redirect_uri="http://127.0.0.1:51234/callback"))
        refused = await get(authorize_url(site.url, client, Pkce(), redirect_uri=redirect_uri))
    assert any_port.status_code == 200
    assert_page_not_redirect(refused)


async def test_loopback_port_rule_never_reaches_our_own_port(local_access_saas: LocalAccessSaaS) -> None:
    async with deployment(local_access_saas) as site:
        port = urlsplit(site.url).port
        client = await register(site.url, ["http://127.0.0.1/callback", "http://localhost/callback"])
        ours = [
            await get(authorize_url(site.url, client, Pkce(), redirect_uri=f"http://{host}:{port}/callback"))
            for host in ("127.0.0.1", "localhost")
        ]
        registered_port = await register(site.url, ["http://localhost:4000/callback"])
        other_port = await get(
            authorize_url(site.url, registered_port, Pkce(), redirect_uri="http://localhost:4001/callback")
        )
    for response in ours:
        assert_page_not_redirect(response)
    # A registered port is matched on any port too (RFC 8252 7.3 asks the server to allow any).
    assert other_port.status_code == 200


async def test_redirect_uri_may_be_left_out_only_when_one_is_registered(local_access_saas: LocalAccessSaaS) -> None:
    async with deployment(local_access_saas) as site:
        one = await register(site.url, [APP])
        two = await register(site.url, [APP, "https://app.example.com/other"])
        portless = await register(site.url, ["http://127.0.0.1/callback"])
        implied = await get(authorize_url(site.url, one, Pkce()).replace("redirect_uri=", "x="))
        ambiguous = await get(authorize_url(site.url, two, Pkce()).replace("redirect_uri=", "x="))
        no_port = await get(authorize_url(site.url, portless, Pkce()).replace("redirect_uri=", "x="))
    assert implied.status_code == 200
    assert_page_not_redirect(ambiguous)
    assert_page_not_redirect(no_port)


async def test_repeated_parameters_are_a_page(local_access_saas: LocalAccessSaaS) -> None:
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        url = authorize_url(site.url, client, Pkce()) + "&" + urlencode({"redirect_uri": "https://evil.example/cb"})
        response = await get(url)
    assert_page_not_redirect(response)


# -- refusals after: a redirect to the client, with its state and our iss ---------------------------------------------


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"code_challenge": None, "code_challenge_method": None}, "invalid_request"),
        ({"code_challenge": None}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": "s256"}, "invalid_request"),
        ({"code_challenge": "too-short"}, "invalid_request"),
        ({"code_challenge": "A" * 42 + "!"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": None}, "unsupported_response_type"),
        ({"response_type": "code id_token"}, "unsupported_response_type"),
        ({"resource": "https://other.example.com/mcp"}, "invalid_target"),
        ({"resource": "RESOURCE/other"}, "invalid_target"),
        ({"resource": "RESOURCE?x=1"}, "invalid_target"),
        ({"resource": "RESOURCE#x"}, "invalid_target"),
        ({"resource": "not a url"}, "invalid_target"),
    ],
    ids=[
        "no PKCE",
        "no challenge",
        "no method",
        "plain",
        "lower-case s256",
        "short challenge",
        "bad characters",
        "token",
        "no response_type",
        "hybrid",
        "another resource",
        "a sub-resource",
        "resource with query",
        "resource with fragment",
        "resource not a URL",
    ],
)
async def test_refusals_after_the_redirect_uri_go_back_to_the_client(
    local_access_saas: LocalAccessSaaS, params: dict[str, str | None], error: str
) -> None:
    async with deployment(local_access_saas) as site:
        redirect_uri = "https://app.example.com/callback?tenant=7"
        client = await register(site.url, [redirect_uri])
        resolved = {
            name: value.replace("RESOURCE", f"{site.url}/mcp") if value else value for name, value in params.items()
        }
        response = await get(authorize_url(site.url, client, Pkce(), state="s-42", **resolved))
    assert_error_redirect(response, redirect_uri, error, site.url, "s-42")
    assert local_access_saas.hits["authorization"] == 0


@pytest.mark.parametrize(
    "resource", [None, "RESOURCE", "RESOURCE/", "http://127.0.0.1:PORT/mcp".upper().replace("HTTP", "http")]
)
async def test_our_resource_in_its_spellings(local_access_saas: LocalAccessSaaS, resource: str | None) -> None:
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        port = str(urlsplit(site.url).port)
        spelled = resource.replace("RESOURCE", f"{site.url}/mcp").replace("PORT", port) if resource else None
        if spelled is not None and spelled.endswith("/MCP"):
            spelled = spelled[:-4] + "/mcp"
        response = await get(authorize_url(site.url, client, Pkce(), resource=spelled))
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("requested", "shown"),
    [
        ("openid email profile", "openid, email, profile"),
        (None, "use of this server's tools"),
        ("openid offline_access made-up", "openid"),
        ("profile email", "email, profile"),
    ],
)
async def test_scopes_we_support_are_granted_and_others_left_out(
    local_access_saas: LocalAccessSaaS, requested: str | None, shown: str
) -> None:
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        response = await get(authorize_url(site.url, client, Pkce(), scope=requested))
    assert response.status_code == 200
    assert f"<dt>Access requested</dt><dd>{shown}</dd>" in response.text


async def test_an_over_long_state_is_refused_without_echoing_it(local_access_saas: LocalAccessSaaS) -> None:
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        response = await get(authorize_url(site.url, client, Pkce(), state="s" * 1025))
    assert response.status_code == 302
    assert query_of(response.headers["location"]) == {"error": "invalid_request", "iss": site.url}


# -- the consent POST ---------------------------------------------------------------------------------------------


async def consent_form(site_url: str, client: Registered, browser: httpx.AsyncClient) -> dict[str, str]:
    response = await browser.get(authorize_url(site_url, client, Pkce(), state="st"))
    assert response.status_code == 200
    (form,) = parse_forms(response.text)
    return dict(form.hidden)


async def test_deny_goes_back_to_the_client_and_never_to_access(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        result = await browse(authorize_url(site.url, client, Pkce(), state="mine"), APP, decision="deny")
    assert query_of(result.final_url) == {"error": "access_denied", "state": "mine", "iss": site.url}
    assert result.consent_pages == 1
    # Only the discovery document, read at start-up: no login, no token request.
    assert {endpoint for endpoint, count in local_access_saas.hits.items() if count} == {"discovery"}


async def test_approve_goes_to_access_with_a_single_use_transaction(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    store = MemoryStore()
    async with deployment(local_access_saas, store=store) as site, httpx.AsyncClient() as browser:
        client = await register(site.url, [APP])
        hidden = await consent_form(site.url, client, browser)
        approved = await browser.post(f"{site.url}/consent", data={**hidden, "decision": "approve"})
    assert approved.status_code == 302
    location = approved.headers["location"]
    assert location.startswith(local_access_saas.authorization_url + "?")
    upstream = query_of(location)
    assert upstream["code_challenge_method"] == "S256"
    assert upstream["redirect_uri"] == f"{site.url}/oauth/callback"
    assert len(upstream["state"]) >= 43
    assert len(upstream["nonce"]) >= 43
    transactions = [key for key in store._values if key.startswith("txn:")]
    assert len(transactions) == 1
    # Keyed by a hash: the state itself is nowhere in the store.
    assert upstream["state"] not in transactions[0]
    assert upstream["state"].encode() not in b"".join(value for value, _ in store._values.values())


async def test_consent_post_without_its_csrf_value_is_refused(local_access_saas: LocalAccessSaaS) -> None:
    async with deployment(local_access_saas) as site, httpx.AsyncClient() as browser:
        client = await register(site.url, [APP])
        hidden = await consent_form(site.url, client, browser)
        without = await browser.post(f"{site.url}/consent", data={"request": hidden["request"], "decision": "approve"})
        empty = await browser.post(f"{site.url}/consent", data={**hidden, "csrf": "", "decision": "approve"})
        wrong = await browser.post(f"{site.url}/consent", data={**hidden, "csrf": "A" * 43, "decision": "approve"})
    for response in (without, empty, wrong):
        assert_page_not_redirect(response, 403)
    assert local_access_saas.hits["authorization"] == 0


async def test_consent_post_from_another_browser_is_refused(local_access_saas: LocalAccessSaaS) -> None:
    async with deployment(local_access_saas) as site, httpx.AsyncClient() as victim, httpx.AsyncClient() as other:
        client = await register(site.url, [APP])
        hidden = await consent_form(site.url, client, victim)
        # The form's values, posted by a browser that did not load it (no cookie, or its own).
        no_cookie = await other.post(f"{site.url}/consent", data={**hidden, "decision": "approve"})
        await consent_form(site.url, client, other)
        own_cookie = await other.post(f"{site.url}/consent", data={**hidden, "decision": "approve"})
    assert_page_not_redirect(no_cookie, 403)
    assert_page_not_redirect(own_cookie, 403)
    assert local_access_saas.hits["authorization"] == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://localhost:1"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
    ids=["foreign origin", "null origin", "other loopback origin", "cross-site fetch", "same-site fetch"],
)
async def test_consent_post_from_another_origin_is_refused(
    local_access_saas: LocalAccessSaaS, headers: dict[str, str]
) -> None:
    async with deployment(local_access_saas) as site, httpx.AsyncClient() as browser:
        client = await register(site.url, [APP])
        hidden = await consent_form(site.url, client, browser)
        refused = await browser.post(f"{site.url}/consent", data={**hidden, "decision": "approve"}, headers=headers)
    assert_page_not_redirect(refused, 403)
    assert local_access_saas.hits["authorization"] == 0


async def test_consent_post_from_our_own_page_is_accepted(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site, httpx.AsyncClient() as browser:
        client = await register(site.url, [APP])
        hidden = await consent_form(site.url, client, browser)
        accepted = await browser.post(
            f"{site.url}/consent",
            data={**hidden, "decision": "approve"},
            headers={"Origin": site.url, "Sec-Fetch-Site": "same-origin"},
        )
    assert accepted.status_code == 302
    assert accepted.headers["location"].startswith(local_access_saas.authorization_url)


@pytest.mark.parametrize("change", ["tampered", "missing", "no decision", "odd decision", "json"])
async def test_consent_posts_that_cannot_be_read(local_access_saas: LocalAccessSaaS, change: str) -> None:
    async with deployment(local_access_saas) as site, httpx.AsyncClient() as browser:
        client = await register(site.url, [APP])
        hidden = await consent_form(site.url, client, browser)
        data = {**hidden, "decision": "approve"}
        if change == "tampered":
            data["request"] = hidden["request"][:-4] + ("AAAA" if not hidden["request"].endswith("AAAA") else "BBBB")
        elif change == "missing":
            del data["request"]
        elif change == "no decision":
            del data["decision"]
        elif change == "odd decision":
            data["decision"] = "maybe"
        if change == "json":
            response = await browser.post(f"{site.url}/consent", json=data)
        else:
            response = await browser.post(f"{site.url}/consent", data=data)
    assert_page_not_redirect(response)
    assert local_access_saas.hits["authorization"] == 0


async def test_an_expired_consent_page_is_refused(
    local_access_saas: LocalAccessSaaS, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from mcp_access_guard.oauth import consent

    async with deployment(local_access_saas) as site, httpx.AsyncClient() as browser:
        client = await register(site.url, [APP])
        hidden = await consent_form(site.url, client, browser)
        later = time.time() + consent.CONSENT_PAGE_TTL + 1
        monkeypatch.setattr(consent, "time", type("Clock", (), {"time": staticmethod(lambda: later)}))
        response = await browser.post(f"{site.url}/consent", data={**hidden, "decision": "approve"})
    assert_page_not_redirect(response)
    assert "expired" in response.text


# -- remembered consent ---------------------------------------------------------------------------------------------


async def test_consent_once_is_remembered_per_client_and_redirect(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas, consent="once") as site, httpx.AsyncClient() as browser:
        client = await register(site.url, [APP, "https://app.example.com/other"])
        other_client = await register(site.url, [APP])
        first = await browse(authorize_url(site.url, client, Pkce()), "https://app.example.com/", browser=browser)
        again = await browse(authorize_url(site.url, client, Pkce()), "https://app.example.com/", browser=browser)
        other_redirect = await browse(
            authorize_url(site.url, client, Pkce(), redirect_uri="https://app.example.com/other"),
            "https://app.example.com/",
            browser=browser,
        )
        other = await browse(authorize_url(site.url, other_client, Pkce()), "https://app.example.com/", browser=browser)
        cookie_name = "mag_consent"
        (remembered,) = [cookie for cookie in browser.cookies.jar if cookie.name == cookie_name]
        signed = remembered.value
        assert signed
        # A forged remembered-consent cookie counts for nothing.
        remembered.value = signed[:-2] + ("xx" if not signed.endswith("xx") else "yy")
        forged = await browse(authorize_url(site.url, client, Pkce()), "https://app.example.com/", browser=browser)
        # The browser restarted: session cookies gone, the remembered consent kept; the login is bound to a new
        # browser value set on the way to Access.
        (remembered,) = [cookie for cookie in browser.cookies.jar if cookie.name == cookie_name]
        browser.cookies.jar.clear()
        browser.cookies.jar.set_cookie(remembered)
        restarted = await browse(authorize_url(site.url, client, Pkce()), "https://app.example.com/", browser=browser)
    walks = (first, again, other_redirect, other, forged, restarted)
    assert [walk.consent_pages for walk in walks] == [1, 0, 1, 1, 1, 0]
    assert all("code" in query_of(walk.final_url) for walk in walks)


async def test_consent_always_asks_every_time(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site, httpx.AsyncClient() as browser:
        client = await register(site.url, [APP])
        walks = [
            await browse(authorize_url(site.url, client, Pkce()), APP, browser=browser),
            await browse(authorize_url(site.url, client, Pkce()), APP, browser=browser),
        ]
    assert [walk.consent_pages for walk in walks] == [1, 1]
    assert "mag_consent" not in browser.cookies
