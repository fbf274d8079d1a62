"""The Access for SaaS id_token: each fault `LocalAccessSaaS` can put in one, refused with its own stable reason,
through a whole login over real HTTP (discovery, authorization, code exchange, keys from the application's jwks).
The reason goes to the `mcp_access_guard` log; the token never does."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import pytest

from mcp_access_guard import AccessConfig
from mcp_access_guard.oauth import AccessOIDC, IdTokenRejected, id_token_problems
from mcp_access_guard.testing import DROP, IdTokenFault, LocalAccessSaaS
from mcp_access_guard.verifier import claim_problems
from oauth_support import CALLBACK, log_in, visit_authorization

pytestmark = pytest.mark.anyio


@pytest.fixture
async def oidc(local_access_saas: LocalAccessSaaS) -> AsyncIterator[AccessOIDC]:
    local_access_saas.login_as("alice@example.com")
    client = AccessOIDC(local_access_saas.config(), redirect_uri=CALLBACK)
    yield client
    await client.aclose()


async def refusal(
    saas: LocalAccessSaaS, oidc: AccessOIDC, caplog: pytest.LogCaptureFixture, fault: IdTokenFault
) -> str:
    """Log in with `fault` in the id_token; the reason it is refused for, once the log is checked."""
    saas.id_token_fault = fault
    with caplog.at_level(logging.WARNING, logger="mcp_access_guard"), pytest.raises(IdTokenRejected) as rejected:
        await log_in(oidc)
    reason = rejected.value.reason
    assert rejected.value.oauth_error == "server_error"
    logged = [record for record in caplog.records if getattr(record, "reason", None) == reason]
    assert logged, f"no log record with reason {reason}"
    assert logged[-1].name == "mcp_access_guard"
    assert logged[-1].levelno == logging.WARNING
    return reason


# -- accepted ----------------------------------------------------------------------------------------------------


async def test_aud_as_a_string(local_access_saas: LocalAccessSaaS, oidc: AccessOIDC) -> None:
    tokens = await log_in(oidc)
    assert tokens.identity is not None
    assert tokens.identity.claims["aud"] == local_access_saas.client_id


async def test_aud_as_a_list(local_access_saas: LocalAccessSaaS, oidc: AccessOIDC) -> None:
    local_access_saas.audience_as_list = True
    tokens = await log_in(oidc)
    assert tokens.identity is not None
    assert tokens.identity.claims["aud"] == [local_access_saas.client_id]


async def test_several_audiences_with_azp_naming_us(local_access_saas: LocalAccessSaaS, oidc: AccessOIDC) -> None:
    client_id = local_access_saas.client_id
    local_access_saas.login_as("alice@example.com", claims={"aud": ["another-app", client_id], "azp": client_id})
    assert (await log_in(oidc)).identity is not None


async def test_email_is_lower_cased_and_groups_read_as_the_jwt_layer_reads_them(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC
) -> None:
    local_access_saas.login_as("Alice@Example.COM", claims={"custom": {"groups": ["eng", 7, "ops"]}})
    identity = (await log_in(oidc)).identity
    assert identity is not None
    assert identity.email == "alice@example.com"
    assert identity.groups == ("eng", "ops")
    assert not identity.is_service_token


async def test_a_rotated_key_is_fetched_and_accepted(local_access_saas: LocalAccessSaaS, oidc: AccessOIDC) -> None:
    assert (await log_in(oidc)).identity is not None
    fetches = oidc.keys.fetch_count
    local_access_saas.rotate()
    assert (await log_in(oidc)).identity is not None
    assert oidc.keys.fetch_count == fetches + 1


async def test_expiry_and_issue_time_within_the_leeway(local_access_saas: LocalAccessSaaS, oidc: AccessOIDC) -> None:
    now = int(time.time())
    local_access_saas.login_as("alice@example.com", claims={"exp": now - 30, "iat": now + 30})
    assert (await log_in(oidc)).identity is not None


# -- refused, each fault with its own reason ---------------------------------------------------------------------


async def test_wrong_issuer(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC, caplog: pytest.LogCaptureFixture
) -> None:
    assert await refusal(local_access_saas, oidc, caplog, "wrong_iss") == "wrong_issuer"


async def test_wrong_audience(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC, caplog: pytest.LogCaptureFixture
) -> None:
    assert await refusal(local_access_saas, oidc, caplog, "wrong_aud") == "wrong_audience"


async def test_wrong_audience_in_a_list(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC, caplog: pytest.LogCaptureFixture
) -> None:
    local_access_saas.audience_as_list = True
    assert await refusal(local_access_saas, oidc, caplog, "wrong_aud") == "wrong_audience"


async def test_several_audiences_without_azp(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC, caplog: pytest.LogCaptureFixture
) -> None:
    assert await refusal(local_access_saas, oidc, caplog, "several_aud_without_azp") == "wrong_authorized_party"


async def test_azp_naming_another_client(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC, caplog: pytest.LogCaptureFixture
) -> None:
    assert await refusal(local_access_saas, oidc, caplog, "wrong_azp") == "wrong_authorized_party"


async def test_missing_nonce(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC, caplog: pytest.LogCaptureFixture
) -> None:
    assert await refusal(local_access_saas, oidc, caplog, "missing_nonce") == "missing_nonce"


async def test_wrong_nonce(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC, caplog: pytest.LogCaptureFixture
) -> None:
    assert await refusal(local_access_saas, oidc, caplog, "wrong_nonce") == "wrong_nonce"


async def test_the_nonce_of_another_login(local_access_saas: LocalAccessSaaS, oidc: AccessOIDC) -> None:
    # A genuine id_token, replayed into another login: its nonce is that login's.
    first = await visit_authorization(oidc)
    second = await visit_authorization(oidc)
    code = await oidc.authorization_code(first.params, state=first.request.state)
    with pytest.raises(IdTokenRejected) as rejected:
        await oidc.exchange(code, code_verifier=first.request.code_verifier, nonce=second.request.nonce)
    assert rejected.value.reason == "wrong_nonce"


async def test_expired(local_access_saas: LocalAccessSaaS, oidc: AccessOIDC, caplog: pytest.LogCaptureFixture) -> None:
    assert await refusal(local_access_saas, oidc, caplog, "expired") == "expired"


async def test_issued_in_the_future(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC, caplog: pytest.LogCaptureFixture
) -> None:
    assert await refusal(local_access_saas, oidc, caplog, "issued_in_the_future") == "not_yet_valid"


async def test_alg_none(local_access_saas: LocalAccessSaaS, oidc: AccessOIDC, caplog: pytest.LogCaptureFixture) -> None:
    assert await refusal(local_access_saas, oidc, caplog, "alg_none") == "unsupported_algorithm"


async def test_hs256_signed_with_the_client_secret(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC, caplog: pytest.LogCaptureFixture
) -> None:
    assert await refusal(local_access_saas, oidc, caplog, "hs256") == "unsupported_algorithm"


async def test_unknown_kid(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC, caplog: pytest.LogCaptureFixture
) -> None:
    assert await refusal(local_access_saas, oidc, caplog, "unknown_kid") == "unknown_key"


async def test_rogue_key_under_a_known_kid(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC, caplog: pytest.LogCaptureFixture
) -> None:
    assert await refusal(local_access_saas, oidc, caplog, "rogue_key") == "bad_signature"


async def test_missing_subject(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC, caplog: pytest.LogCaptureFixture
) -> None:
    assert await refusal(local_access_saas, oidc, caplog, "missing_sub") == "missing_subject"


async def test_missing_email(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC, caplog: pytest.LogCaptureFixture
) -> None:
    assert await refusal(local_access_saas, oidc, caplog, "missing_email") == "missing_email"


async def test_a_key_no_longer_published(local_access_saas: LocalAccessSaaS, oidc: AccessOIDC) -> None:
    user = local_access_saas.user
    assert user is not None
    signed_by_the_old_key = local_access_saas.id_token(user, nonce="n")
    assert (await oidc.verify_id_token(signed_by_the_old_key, nonce="n")).email == "alice@example.com"
    old = local_access_saas.current_key
    local_access_saas.rotate()
    local_access_saas.drop(old.kid)
    await oidc.keys.refresh()
    with pytest.raises(IdTokenRejected) as rejected:
        await oidc.verify_id_token(signed_by_the_old_key, nonce="n")
    assert rejected.value.reason == "unknown_key"


async def test_no_expiry(local_access_saas: LocalAccessSaaS, oidc: AccessOIDC) -> None:
    local_access_saas.login_as("alice@example.com", claims={"exp": DROP})
    with pytest.raises(IdTokenRejected) as rejected:
        await log_in(oidc)
    assert rejected.value.reason == "malformed"


async def test_the_token_is_never_logged(
    local_access_saas: LocalAccessSaaS, oidc: AccessOIDC, caplog: pytest.LogCaptureFixture
) -> None:
    signed: list[str] = []
    sign = local_access_saas.sign

    def keep(*args: object, **kwargs: object) -> str:
        token = sign(*args, **kwargs)  # type: ignore[arg-type]
        signed.append(token)
        return token

    local_access_saas.sign = keep  # type: ignore[method-assign]
    for fault in ("wrong_nonce", "expired", "rogue_key", "wrong_iss"):
        await refusal(local_access_saas, oidc, caplog, fault)  # type: ignore[arg-type]
    logged = "\n".join(f"{record.getMessage()} {vars(record)}" for record in caplog.records)
    assert len(signed) == 4
    for token in signed:
        for part in token.split("."):
            assert part not in logged


# -- the profile, beside the application token's -----------------------------------------------------------------


def test_id_token_problems_lists_every_problem_in_order() -> None:
    now = time.time()
    claims = {"iss": "https://elsewhere", "aud": ["a", "b"], "exp": now - 3600, "iat": now, "nonce": "n2"}
    problems = id_token_problems(claims, issuer="https://issuer", client_id="c", nonce="n1", leeway=60, now=now)
    assert [problem.reason for problem in problems] == [
        "wrong_issuer",
        "wrong_audience",
        "wrong_authorized_party",
        "expired",
        "wrong_nonce",
        "missing_subject",
        "missing_email",
    ]


def test_an_id_token_is_not_an_application_token() -> None:
    # The same claims pass one profile and fail the other: an id_token has no type app, an application token no
    # client id as its audience.
    now = time.time()
    claims = {"iss": "https://issuer", "aud": "c", "exp": now + 600, "iat": now, "sub": "s", "email": "a@b.example"}
    assert id_token_problems(claims, issuer="https://issuer", client_id="c", nonce=None, leeway=60, now=now) == []
    config = AccessConfig("http://127.0.0.1:1", ["c" * 64])
    reasons = {problem.reason for problem in claim_problems(claims, config, now)}
    assert {"wrong_issuer", "wrong_token_type", "wrong_audience"} <= reasons
