"""AccessOIDC against `LocalAccessSaaS` over real loopback HTTP: discovery, the authorization request, the callback,
the code exchange with PKCE, state and nonce, both client authentication methods, refresh, and each failure kind."""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, urlsplit

import pytest

from mcp_access_guard import ConfigError, Rule
from mcp_access_guard.oauth import (
    AccessOIDC,
    AccessSaaSConfig,
    IdTokenRejected,
    UpstreamDenied,
    UpstreamInvalid,
    UpstreamMisconfigured,
    UpstreamRefused,
    UpstreamUnavailable,
)
from mcp_access_guard.testing import LocalAccessSaaS, SaaSUser
from oauth_support import CALLBACK, log_in, visit_authorization

pytestmark = pytest.mark.anyio

# Characters that form-encoding changes, so client_secret_basic must encode them (RFC 6749 2.3.1).
ODD_CLIENT_SECRET = "s3cret:with+plus%and/slash=" + "x" * 20


@pytest.fixture
async def oidc(local_access_saas: LocalAccessSaaS) -> AsyncIterator[AccessOIDC]:
    local_access_saas.login_as("Alice@Example.COM", groups=["eng", "ops"])
    client = AccessOIDC(local_access_saas.config(), redirect_uri=CALLBACK)
    yield client
    await client.aclose()


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


# -- discovery ---------------------------------------------------------------------------------------------------


async def test_discovery_is_read_once(local_access_saas: LocalAccessSaaS, oidc: AccessOIDC) -> None:
    first = await oidc.start()
    assert await oidc.start() is first
    await log_in(oidc)
    await log_in(oidc)
    assert local_access_saas.hits["discovery"] == 1
    assert first.issuer == local_access_saas.issuer
    assert first.token_endpoint == local_access_saas.token_url
    assert first.jwks_uri == local_access_saas.jwks_url
    assert first.userinfo_endpoint == local_access_saas.userinfo_url


async def test_a_discovery_issuer_other_than_the_configured_one_refuses_start(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC
) -> None:
    local_access_saas.discovery_issuer = "https://other.cloudflareaccess.com/cdn-cgi/access/sso/oidc/x"
    with pytest.raises(UpstreamMisconfigured) as refused:
        await oidc.start()
    assert isinstance(refused.value, ConfigError)
    message = str(refused.value)
    assert "names issuer 'https://other.cloudflareaccess.com/cdn-cgi/access/sso/oidc/x'" in message
    assert f"the configured issuer is {local_access_saas.issuer}" in message
    with pytest.raises(UpstreamMisconfigured):
        await oidc.authorization_request()
    assert local_access_saas.hits["authorization"] == 0


async def test_a_discovery_issuer_with_a_trailing_slash_refuses_start(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC
) -> None:
    local_access_saas.discovery_issuer = local_access_saas.issuer + "/"
    with pytest.raises(UpstreamMisconfigured):
        await oidc.start()


async def test_an_issuer_without_a_discovery_document_refuses_start(local_access_saas: LocalAccessSaaS) -> None:
    config = AccessSaaSConfig(
        local_access_saas.client_id, local_access_saas.client_secret, issuer=local_access_saas.url + "/elsewhere"
    )
    client = AccessOIDC(config, redirect_uri=CALLBACK)
    with pytest.raises(UpstreamMisconfigured, match="answered HTTP 404"):
        await client.start()
    await client.aclose()


async def test_the_endpoints_come_from_discovery_when_only_the_issuer_is_configured(
    local_access_saas: LocalAccessSaaS,
) -> None:
    local_access_saas.login_as("alice@example.com")
    config = AccessSaaSConfig(
        local_access_saas.client_id, local_access_saas.client_secret, issuer=local_access_saas.issuer
    )
    client = AccessOIDC(config, redirect_uri=CALLBACK)
    discovery = await client.start()
    assert (discovery.authorization_endpoint, discovery.token_endpoint, discovery.jwks_uri) == (
        local_access_saas.authorization_url,
        local_access_saas.token_url,
        local_access_saas.jwks_url,
    )
    assert (await log_in(client)).identity is not None
    await client.aclose()


@pytest.mark.parametrize("fault", ["down", "http_500", "slow"])
async def test_discovery_unavailable_is_not_remembered(fault: str, local_access_saas: LocalAccessSaaS) -> None:
    client = AccessOIDC(local_access_saas.config(timeout=0.5), redirect_uri=CALLBACK)
    if fault == "down":
        local_access_saas.go_down()
    else:
        local_access_saas.fault = fault  # type: ignore[assignment]
        local_access_saas.slow_seconds = 2
    with pytest.raises(UpstreamUnavailable) as failed:
        await client.start()
    assert failed.value.oauth_error == "temporarily_unavailable"
    local_access_saas.come_back()
    assert (await client.start()).issuer == local_access_saas.issuer
    await client.aclose()


async def test_discovery_offering_neither_secret_method_refuses_start(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC
) -> None:
    local_access_saas.token_auth_methods = ("private_key_jwt",)
    with pytest.raises(UpstreamMisconfigured, match="neither client_secret_post nor client_secret_basic"):
        await oidc.start()


# -- the authorization request -----------------------------------------------------------------------------------


async def test_the_authorization_request_carries_state_nonce_pkce_and_scopes(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC
) -> None:
    request = await oidc.authorization_request()
    assert request.url.startswith(local_access_saas.authorization_url + "?")
    params = dict(parse_qsl(urlsplit(request.url).query))
    assert params == {
        "response_type": "code",
        "client_id": local_access_saas.client_id,
        "redirect_uri": CALLBACK,
        "scope": "openid email profile",
        "state": request.state,
        "nonce": request.nonce,
        "code_challenge": s256(request.code_verifier),
        "code_challenge_method": "S256",
    }
    # 32 random bytes each: 256 bits, 43 base64url characters.
    assert len(request.state) == len(request.nonce) == len(request.code_verifier) == 43
    other = await oidc.authorization_request()
    assert len({request.state, request.nonce, request.code_verifier, other.state, other.nonce}) == 5
    for secret in (request.state, request.nonce, request.code_verifier):
        assert secret not in repr(request)


async def test_scopes_come_from_the_configuration(local_access_saas: LocalAccessSaaS) -> None:
    client = AccessOIDC(local_access_saas.config(scopes=["openid", "email", "groups"]), redirect_uri=CALLBACK)
    params = dict(parse_qsl(urlsplit((await client.authorization_request()).url).query))
    assert params["scope"] == "openid email groups"
    await client.aclose()


# -- the code exchange -------------------------------------------------------------------------------------------


async def test_a_login_uses_state_nonce_pkce_and_the_client_secret(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC
) -> None:
    callback = await visit_authorization(oidc)
    sent = local_access_saas.authorization_requests[-1]
    assert sent["state"] == callback.request.state
    assert sent["nonce"] == callback.request.nonce
    assert sent["code_challenge"] == s256(callback.request.code_verifier)
    assert sent["redirect_uri"] == CALLBACK
    assert callback.params["state"] == callback.request.state
    assert callback.params["iss"] == local_access_saas.issuer

    code = await oidc.authorization_code(callback.params, state=callback.request.state)
    tokens = await oidc.exchange(code, code_verifier=callback.request.code_verifier, nonce=callback.request.nonce)

    exchange = local_access_saas.token_requests[-1]
    assert exchange.client_auth == "client_secret_post"
    assert exchange.authenticated
    assert exchange.form["grant_type"] == "authorization_code"
    assert exchange.form["code"] == code
    assert exchange.form["code_verifier"] == callback.request.code_verifier
    assert exchange.form["redirect_uri"] == CALLBACK
    assert exchange.form["client_id"] == local_access_saas.client_id

    identity = tokens.identity
    assert identity is not None
    assert identity.email == "alice@example.com"
    assert identity.groups == ("eng", "ops")
    assert identity.issuer == local_access_saas.issuer
    assert identity.subject == local_access_saas.user.subject  # type: ignore[union-attr]
    assert identity.claims["nonce"] == callback.request.nonce
    assert not identity.token, "the id_token is not kept on the identity"
    assert tokens.access_token
    assert tokens.refresh_token
    assert tokens.expires_in == 3600
    assert tokens.access_token not in repr(tokens)
    assert tokens.refresh_token not in repr(tokens)


async def test_client_secret_basic_where_discovery_offers_only_that() -> None:
    with LocalAccessSaaS(client_secret=ODD_CLIENT_SECRET) as saas:
        saas.token_auth_methods = ("client_secret_basic",)
        saas.login_as("alice@example.com")
        client = AccessOIDC(saas.config(), redirect_uri=CALLBACK)
        assert (await client.start()).token_endpoint_auth_method == "client_secret_basic"
        tokens = await log_in(client)
        await client.aclose()
    assert tokens.identity is not None
    exchange = saas.token_requests[-1]
    assert (exchange.client_auth, exchange.authenticated) == ("client_secret_basic", True)
    assert "client_id" not in exchange.form


async def test_client_secret_post_where_discovery_offers_both_or_says_nothing() -> None:
    with LocalAccessSaaS(client_secret=ODD_CLIENT_SECRET) as saas:
        saas.advertise_token_auth_methods = False
        saas.login_as("alice@example.com")
        client = AccessOIDC(saas.config(), redirect_uri=CALLBACK)
        assert (await log_in(client)).identity is not None
        await client.aclose()
    assert saas.token_requests[-1].client_auth == "client_secret_post"
    assert saas.token_requests[-1].authenticated


async def test_a_wrong_client_secret_is_refused(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    client = AccessOIDC(local_access_saas.config(client_secret="not-the-secret"), redirect_uri=CALLBACK)
    with pytest.raises(UpstreamRefused) as refused:
        await log_in(client)
    assert (refused.value.error, refused.value.oauth_error) == ("invalid_client", "server_error")
    await client.aclose()


async def test_a_code_is_single_use(oidc: AccessOIDC) -> None:
    callback = await visit_authorization(oidc)
    code = await oidc.authorization_code(callback.params, state=callback.request.state)
    request = callback.request
    await oidc.exchange(code, code_verifier=request.code_verifier, nonce=request.nonce)
    with pytest.raises(UpstreamRefused) as refused:
        await oidc.exchange(code, code_verifier=request.code_verifier, nonce=request.nonce)
    assert refused.value.error == "invalid_grant"


async def test_the_provider_enforces_pkce(oidc: AccessOIDC) -> None:
    callback = await visit_authorization(oidc)
    code = await oidc.authorization_code(callback.params, state=callback.request.state)
    other_verifier = (await oidc.authorization_request()).code_verifier
    with pytest.raises(UpstreamRefused) as refused:
        await oidc.exchange(code, code_verifier=other_verifier, nonce=callback.request.nonce)
    assert refused.value.error == "invalid_grant"


@pytest.mark.parametrize("fault", ["down", "http_500", "slow"])
async def test_the_token_endpoint_unavailable(fault: str, local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    client = AccessOIDC(local_access_saas.config(timeout=0.5), redirect_uri=CALLBACK)
    callback = await visit_authorization(client)
    code = await client.authorization_code(callback.params, state=callback.request.state)
    if fault == "down":
        local_access_saas.go_down()
    else:
        local_access_saas.fault = fault  # type: ignore[assignment]
        local_access_saas.fault_endpoints = {"token"}
        local_access_saas.slow_seconds = 2
    with pytest.raises(UpstreamUnavailable) as failed:
        await client.exchange(code, code_verifier=callback.request.code_verifier, nonce=callback.request.nonce)
    assert failed.value.oauth_error == "temporarily_unavailable"
    await client.aclose()


async def test_signing_keys_unavailable_is_unavailable_not_a_bad_token(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC
) -> None:
    local_access_saas.fault = "http_500"
    local_access_saas.fault_endpoints = {"jwks"}
    with pytest.raises(UpstreamUnavailable):
        await log_in(oidc)


async def test_answers_are_asked_for_uncompressed_so_the_size_bound_holds(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC
) -> None:
    # A server that compresses for clients that accept it: ours must not ask, or the bounded raw read (and the
    # key cache sharing its HTTP client) would get gzip bytes where JSON belongs.
    local_access_saas.compress = True
    assert (await log_in(oidc)).identity is not None


# -- the callback ------------------------------------------------------------------------------------------------


async def test_access_refusing_the_user_is_access_denied(local_access_saas: LocalAccessSaaS, oidc: AccessOIDC) -> None:
    local_access_saas.allow = Rule(email_domains=["corp.example"])
    callback = await visit_authorization(oidc)
    assert callback.params["error"] == "access_denied"
    with pytest.raises(UpstreamDenied) as denied:
        await oidc.authorization_code(callback.params, state=callback.request.state)
    assert denied.value.oauth_error == "access_denied"
    assert local_access_saas.hits["token"] == 0


async def test_a_policy_callable_admits_by_group(local_access_saas: LocalAccessSaaS, oidc: AccessOIDC) -> None:
    local_access_saas.allow = lambda identity: "ops" in identity.groups
    assert (await log_in(oidc)).identity is not None
    local_access_saas.login_as("bob@example.com", groups=["eng"])
    with pytest.raises(UpstreamDenied):
        await log_in(oidc)


async def test_a_callback_with_another_state_is_refused(oidc: AccessOIDC) -> None:
    callback = await visit_authorization(oidc)
    other = await oidc.authorization_request()
    with pytest.raises(UpstreamInvalid, match="state"):
        await oidc.authorization_code(callback.params, state=other.state)
    with pytest.raises(UpstreamInvalid, match="state"):
        await oidc.authorization_code({k: v for k, v in callback.params.items() if k != "state"}, state=other.state)


async def test_a_callback_from_another_issuer_is_refused(oidc: AccessOIDC) -> None:
    callback = await visit_authorization(oidc)
    mixed_up = {**callback.params, "iss": "https://evil.example/cdn-cgi/access/sso/oidc/x"}
    with pytest.raises(UpstreamInvalid, match="iss"):
        await oidc.authorization_code(mixed_up, state=callback.request.state)


async def test_a_callback_without_the_iss_the_application_promises_is_refused(oidc: AccessOIDC) -> None:
    callback = await visit_authorization(oidc)
    without = {k: v for k, v in callback.params.items() if k != "iss"}
    with pytest.raises(UpstreamInvalid, match="no iss"):
        await oidc.authorization_code(without, state=callback.request.state)


async def test_no_iss_on_the_callback_where_the_application_sends_none(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC
) -> None:
    local_access_saas.iss_in_authorization_response = False
    callback = await visit_authorization(oidc)
    assert "iss" not in callback.params
    code = await oidc.authorization_code(callback.params, state=callback.request.state)
    tokens = await oidc.exchange(code, code_verifier=callback.request.code_verifier, nonce=callback.request.nonce)
    assert tokens.identity is not None


async def test_an_error_from_access_that_is_not_a_refusal(oidc: AccessOIDC) -> None:
    request = await oidc.authorization_request()
    discovery = await oidc.start()
    params = {"state": request.state, "iss": discovery.issuer, "error": "temporarily_unavailable"}
    with pytest.raises(UpstreamUnavailable):
        await oidc.authorization_code(params, state=request.state)
    with pytest.raises(UpstreamRefused) as refused:
        await oidc.authorization_code({**params, "error": "invalid_request"}, state=request.state)
    assert refused.value.oauth_error == "server_error"


# -- refresh -----------------------------------------------------------------------------------------------------


async def test_refresh_with_a_new_id_token(local_access_saas: LocalAccessSaaS, oidc: AccessOIDC) -> None:
    login = await log_in(oidc)
    assert login.identity is not None
    assert login.refresh_token
    refreshed = await oidc.refresh(login.refresh_token, subject=login.identity.subject)
    assert refreshed.identity is not None
    assert refreshed.identity.email == "alice@example.com"
    assert refreshed.identity.subject == login.identity.subject
    assert refreshed.refresh_token
    assert refreshed.refresh_token != login.refresh_token
    assert refreshed.access_token != login.access_token
    sent = local_access_saas.token_requests[-1]
    assert (sent.form["grant_type"], sent.form["refresh_token"], sent.authenticated) == (
        "refresh_token",
        login.refresh_token,
        True,
    )
    # Access rotated it: the old one is spent.
    with pytest.raises(UpstreamRefused) as refused:
        await oidc.refresh(login.refresh_token, subject=login.identity.subject)
    assert refused.value.error == "invalid_grant"


async def test_refresh_without_a_new_id_token(local_access_saas: LocalAccessSaaS, oidc: AccessOIDC) -> None:
    local_access_saas.id_token_on_refresh = False
    login = await log_in(oidc)
    assert login.identity is not None
    assert login.refresh_token
    refreshed = await oidc.refresh(login.refresh_token, subject=login.identity.subject)
    assert refreshed.identity is None
    assert refreshed.access_token


async def test_refresh_without_rotation_keeps_the_refresh_token(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC
) -> None:
    local_access_saas.rotate_refresh_tokens = False
    login = await log_in(oidc)
    assert login.identity is not None
    assert login.refresh_token
    refreshed = await oidc.refresh(login.refresh_token, subject=login.identity.subject)
    assert refreshed.refresh_token == login.refresh_token
    assert (await oidc.refresh(login.refresh_token, subject=login.identity.subject)).access_token


async def test_refresh_refused_by_access(local_access_saas: LocalAccessSaaS, oidc: AccessOIDC) -> None:
    login = await log_in(oidc)
    assert login.identity is not None
    assert login.refresh_token
    local_access_saas.refresh_fault = "invalid_grant"
    with pytest.raises(UpstreamRefused) as refused:
        await oidc.refresh(login.refresh_token, subject=login.identity.subject)
    assert (refused.value.kind, refused.value.error) == ("refused", "invalid_grant")


async def test_no_refresh_token_where_access_issues_none(local_access_saas: LocalAccessSaaS, oidc: AccessOIDC) -> None:
    local_access_saas.issue_refresh_tokens = False
    assert (await log_in(oidc)).refresh_token is None


async def test_a_refreshed_id_token_for_another_subject_is_refused(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC
) -> None:
    login = await log_in(oidc)
    assert login.identity is not None
    mallory = SaaSUser(email="mallory@example.com", subject="mallory-subject")
    with pytest.raises(IdTokenRejected) as rejected:
        await oidc.verify_id_token(
            local_access_saas.id_token(mallory, nonce=None), nonce=None, subject=login.identity.subject
        )
    assert rejected.value.reason == "wrong_subject"


# -- nothing secret in the log -----------------------------------------------------------------------------------


async def test_nothing_secret_is_logged(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="mcp_access_guard"):
        callback = await visit_authorization(oidc)
        code = await oidc.authorization_code(callback.params, state=callback.request.state)
        tokens = await oidc.exchange(code, code_verifier=callback.request.code_verifier, nonce=callback.request.nonce)
        assert tokens.refresh_token
        local_access_saas.refresh_fault = "invalid_grant"
        with pytest.raises(UpstreamRefused):
            await oidc.refresh(tokens.refresh_token, subject="x")
        local_access_saas.id_token_fault = "wrong_nonce"
        with pytest.raises(IdTokenRejected):
            await log_in(oidc)
    logged = "\n".join(f"{record.getMessage()} {vars(record)}" for record in caplog.records)
    assert "invalid_grant" in logged
    secrets = [
        local_access_saas.client_secret,
        callback.request.state,
        callback.request.nonce,
        callback.request.code_verifier,
        code,
        tokens.access_token,
        tokens.refresh_token,
    ]
    for secret in secrets:
        assert secret not in logged
