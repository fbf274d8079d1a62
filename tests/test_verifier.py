"""AccessVerifier: each accepted shape and each refusal, with the reason it gives. Keys come over real HTTP."""

import base64
import gc
import json
import time
from collections.abc import AsyncIterator

import anyio
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from mcp_access_guard import AccessDenied, AccessVerifier
from mcp_access_guard.testing import DROP, LocalAccess, SigningKey, b64url
from mcp_access_guard.verifier import RECENT_IDENTITIES

pytestmark = pytest.mark.anyio

LEEWAY = 60


@pytest.fixture
async def verifier(local_access: LocalAccess) -> AsyncIterator[AccessVerifier]:
    verifier = AccessVerifier(local_access.config(leeway=LEEWAY))
    yield verifier
    await verifier.aclose()


async def refused(verifier: AccessVerifier, token: str | None) -> str:
    with pytest.raises(AccessDenied) as denied:
        await verifier.verify(token)
    return denied.value.reason


def resegment(token: str, header: bytes | None = None, payload: bytes | None = None) -> str:
    """Replace a token's header or payload bytes, keeping its (now wrong) signature."""
    head, body, signature = token.split(".")
    return ".".join([b64url(header) if header is not None else head, b64url(payload) if payload else body, signature])


# -- accepted ---------------------------------------------------------------------------------------------------


async def test_user_token_gives_the_user_identity(local_access: LocalAccess, verifier: AccessVerifier) -> None:
    token = local_access.user_token("Alice@Example.COM", groups=["eng", "admins"])
    identity = await verifier.verify(token)
    assert identity.email == "alice@example.com"
    assert identity.principal == "alice@example.com"
    assert not identity.is_service_token
    assert identity.common_name is None
    assert identity.groups == ("eng", "admins")
    assert identity.country == "US"
    assert identity.subject
    assert identity.issuer == local_access.url
    assert identity.expires_at > time.time()
    assert identity.claims["type"] == "app"
    with pytest.raises(TypeError):
        identity.claims["email"] = "mallory@example.com"  # type: ignore[index]
    assert token not in repr(identity)
    assert token.split(".")[2] not in repr(identity)


async def test_service_token_with_string_aud_and_no_nbf(local_access: LocalAccess, verifier: AccessVerifier) -> None:
    token = local_access.service_token("abc123.access")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert isinstance(claims["aud"], str)
    assert "nbf" not in claims
    assert "email" not in claims
    assert claims["sub"] == ""
    identity = await verifier.verify(token)
    assert identity.is_service_token
    assert identity.email is None
    assert identity.common_name == "abc123.access"
    assert identity.principal == "abc123.access"


async def test_groups_from_custom_claims(local_access: LocalAccess, verifier: AccessVerifier) -> None:
    identity = await verifier.verify(local_access.user_token(claims={"custom": {"groups": ["ops", 7]}}))
    assert identity.groups == ("ops",)


async def test_any_configured_audience_is_accepted(local_access: LocalAccess) -> None:
    other = "c" * 64
    verifier = AccessVerifier(local_access.config().__class__(local_access.url, [other, local_access.audience]))
    assert await verifier.verify(local_access.user_token(claims={"aud": ["x" * 64, local_access.audience]}))
    assert await verifier.verify(local_access.service_token(claims={"aud": other}))
    await verifier.aclose()


async def test_token_signed_by_the_previous_key_after_rotation(
    local_access: LocalAccess, verifier: AccessVerifier
) -> None:
    await verifier.verify(local_access.user_token())
    previous = local_access.current_key
    local_access.rotate()
    await verifier.keys.refresh()
    assert (await verifier.verify(local_access.user_token(key=previous))).email == "alice@example.com"
    assert (await verifier.verify(local_access.user_token("bob@example.com"))).email == "bob@example.com"


async def test_expiry_just_inside_the_leeway(local_access: LocalAccess, verifier: AccessVerifier) -> None:
    assert await verifier.verify(local_access.user_token(expires_in=-LEEWAY + 5))


async def test_nbf_and_iat_just_inside_the_leeway(local_access: LocalAccess, verifier: AccessVerifier) -> None:
    soon = int(time.time()) + LEEWAY - 5
    assert await verifier.verify(local_access.user_token(claims={"nbf": soon, "iat": soon}))


# -- refused ----------------------------------------------------------------------------------------------------


async def test_expiry_just_outside_the_leeway(local_access: LocalAccess, verifier: AccessVerifier) -> None:
    assert await refused(verifier, local_access.user_token(expires_in=-LEEWAY - 1)) == "expired"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
async def test_not_yet_valid_past_the_leeway(claim: str, local_access: LocalAccess, verifier: AccessVerifier) -> None:
    later = int(time.time()) + LEEWAY + 10
    assert await refused(verifier, local_access.user_token(claims={claim: later})) == "not_yet_valid"


@pytest.mark.parametrize("missing", [None, ""])
async def test_no_token(missing: str | None, verifier: AccessVerifier) -> None:
    assert await refused(verifier, missing) == "missing"


@pytest.mark.parametrize("alg", ["none", "None", "nOnE", "HS256", "RS384", "PS256", "ES256", None])
async def test_any_algorithm_but_rs256(alg: str | None, local_access: LocalAccess, verifier: AccessVerifier) -> None:
    token = local_access.user_token(headers={"alg": alg if alg else DROP})
    assert await refused(verifier, token) == "unsupported_algorithm"


async def test_alg_none_with_no_signature(local_access: LocalAccess, verifier: AccessVerifier) -> None:
    head, body, _ = local_access.user_token(headers={"alg": "none"}).split(".")
    assert await refused(verifier, f"{head}.{body}.") == "unsupported_algorithm"
    assert await refused(verifier, f"{head}.{body}") == "malformed"
    good_head = local_access.user_token().split(".")[0]
    assert await refused(verifier, f"{good_head}.{body}.") == "malformed"


@pytest.mark.parametrize("encoding", ["pem", "der", "jwk"])
async def test_hs256_signed_with_the_public_key_bytes(
    encoding: str, local_access: LocalAccess, verifier: AccessVerifier
) -> None:
    public_key = local_access.current_key.private_key.public_key()
    secret = {
        "pem": public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "der": public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        "jwk": json.dumps(local_access.current_key.jwk()).encode(),
    }[encoding]
    claims = jwt.decode(local_access.user_token(), options={"verify_signature": False})
    forged = _hs256(claims, secret, local_access.current_key.kid)
    assert await refused(verifier, forged) == "unsupported_algorithm"


def _hs256(claims: dict[str, object], secret: bytes, kid: str) -> str:
    # PyJWT refuses a public key as an HMAC secret; an attacker's own code does not.
    import hashlib
    import hmac

    head = b64url(json.dumps({"alg": "HS256", "kid": kid, "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(mac)}"


@pytest.mark.parametrize("kid", [DROP, "", None, 42, "k" * 300])
async def test_kid_required(kid: object, local_access: LocalAccess, verifier: AccessVerifier) -> None:
    assert await refused(verifier, local_access.user_token(headers={"kid": kid})) == "malformed"


async def test_unknown_kid(local_access: LocalAccess, verifier: AccessVerifier) -> None:
    stranger = SigningKey.generate()
    assert await refused(verifier, local_access.user_token(key=stranger)) == "unknown_key"


async def test_a_removed_kid_is_refused_even_when_cached(local_access: LocalAccess, verifier: AccessVerifier) -> None:
    old = local_access.current_key
    token = local_access.user_token(key=old)
    assert await verifier.verify(token)
    local_access.rotate()
    local_access.drop(old.kid)
    await verifier.keys.refresh()
    assert await refused(verifier, token) == "unknown_key"
    assert await refused(verifier, local_access.user_token(key=old)) == "unknown_key"


@pytest.mark.parametrize("field", ["jku", "jwk", "x5u", "x5c", "crit"])
async def test_headers_that_bring_their_own_key_or_rules(
    field: str, local_access: LocalAccess, verifier: AccessVerifier
) -> None:
    value = ["exp"] if field == "crit" else "https://evil.example/keys"
    assert await refused(verifier, local_access.user_token(headers={field: value})) == "malformed"


async def test_signature_from_another_key_under_a_published_kid(
    local_access: LocalAccess, verifier: AccessVerifier
) -> None:
    forger = SigningKey(kid=local_access.current_key.kid, private_key=SigningKey.generate().private_key)
    assert await refused(verifier, local_access.user_token(key=forger)) == "bad_signature"


async def test_one_flipped_bit_in_the_signature(local_access: LocalAccess, verifier: AccessVerifier) -> None:
    head, body, signature = local_access.user_token().split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[10] ^= 1
    assert await refused(verifier, f"{head}.{body}.{b64url(bytes(raw))}") == "bad_signature"


async def test_payload_swapped_between_two_valid_tokens(local_access: LocalAccess, verifier: AccessVerifier) -> None:
    alice = local_access.user_token("alice@example.com").split(".")
    mallory = local_access.user_token("mallory@example.com").split(".")
    assert await refused(verifier, ".".join([mallory[0], alice[1], mallory[2]])) == "bad_signature"


@pytest.mark.parametrize(
    "iss", ["{url}/", "{url}/cdn-cgi", "https://other.cloudflareaccess.com", "{URL}", None, ["{url}"]]
)
async def test_wrong_issuer(iss: object, local_access: LocalAccess, verifier: AccessVerifier) -> None:
    if isinstance(iss, str):
        iss = iss.format(url=local_access.url, URL=local_access.url.upper())
    elif isinstance(iss, list):
        iss = [local_access.url]
    token = local_access.user_token(claims={"iss": iss if iss is not None else DROP})
    assert await refused(verifier, token) == "wrong_issuer"


@pytest.mark.parametrize("token_type", ["org", "APP", "", None, 1])
async def test_not_an_application_token(
    token_type: object, local_access: LocalAccess, verifier: AccessVerifier
) -> None:
    token = local_access.user_token(claims={"type": token_type if token_type is not None else DROP})
    assert await refused(verifier, token) == "wrong_token_type"


@pytest.mark.parametrize("aud", [[], "x" * 64, ["x" * 64], None, [[None]], 5, {"aud": 1}])
async def test_wrong_audience(aud: object, local_access: LocalAccess, verifier: AccessVerifier) -> None:
    if aud == [[None]]:
        aud = [[local_access.audience]]
    token = local_access.user_token(claims={"aud": aud if aud is not None else DROP})
    assert await refused(verifier, token) == "wrong_audience"


@pytest.mark.parametrize("exp", [DROP, "9999999999", True, None, float("inf"), [1]])
async def test_exp_must_be_a_number(exp: object, local_access: LocalAccess, verifier: AccessVerifier) -> None:
    if exp == float("inf"):
        token = local_access.user_token()
        claims = jwt.decode(token, options={"verify_signature": False})
        payload = json.dumps(claims).replace(str(claims["exp"]), "1e999").encode()
        head = token.split(".")[0]
        forged = f"{head}.{b64url(payload)}"
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        signature = local_access.current_key.private_key.sign(forged.encode(), padding.PKCS1v15(), hashes.SHA256())
        token = f"{forged}.{b64url(signature)}"
    else:
        token = local_access.user_token(claims={"exp": exp})
    assert await refused(verifier, token) == "malformed"


async def test_neither_email_nor_common_name(local_access: LocalAccess, verifier: AccessVerifier) -> None:
    assert await refused(verifier, local_access.user_token(claims={"email": DROP})) == "malformed"


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda t: t + ".e30", id="four segments"),
        pytest.param(lambda t: t.rsplit(".", 1)[0], id="two segments"),
        pytest.param(lambda t: t + "=", id="padding"),
        pytest.param(lambda t: t.replace("-", "+").replace("_", "/"), id="standard alphabet"),
        pytest.param(lambda t: " " + t, id="leading space"),
        pytest.param(lambda t: t[:40] + "\n" + t[40:], id="line break"),
        pytest.param(lambda t: "." + t, id="empty first segment"),
        pytest.param(lambda t: t + "A", id="impossible length"),
        pytest.param(lambda t: t + "x" * 40_000, id="100 kB"),
        pytest.param(lambda t: "é" + t, id="non-ascii"),
        pytest.param(lambda t: t.replace(".", ".é", 1), id="non-ascii in the payload"),
        pytest.param(lambda t: t + "é", id="non-ascii in the signature"),
    ],
)
async def test_not_a_compact_jws(mangle: object, local_access: LocalAccess, verifier: AccessVerifier) -> None:
    token = local_access.user_token(claims={"sub": "-_-_" * 10})  # makes sure both '-' and '_' appear
    mangled = mangle(token)  # type: ignore[operator]
    assert mangled != token
    assert await refused(verifier, mangled) in {"malformed", "bad_signature"}


async def test_non_canonical_base64_in_the_signature(local_access: LocalAccess, verifier: AccessVerifier) -> None:
    head, body, signature = local_access.user_token().split(".")
    # 256 bytes encode to 342 characters with 2 unused bits at the end; setting one gives the same bytes.
    last = signature[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(last) | 1]
    assert twin != last
    assert base64.urlsafe_b64decode(signature[:-1] + twin + "==") == base64.urlsafe_b64decode(signature + "==")
    assert await refused(verifier, f"{head}.{body}.{signature[:-1]}{twin}") == "malformed"


@pytest.mark.parametrize(
    "header",
    [
        b"[]",
        b'"RS256"',
        b"{not json",
        b'{"alg":"RS256","alg":"none","kid":"k"}',
        b'\xef\xbb\xbf{"alg":"RS256","kid":"k"}',
        '{"alg":"RS256","kid":"k"}'.encode("utf-16"),
        b'{"alg":"RS256","kid":NaN}',
        b"[" * 5000 + b"]" * 5000,
    ],
    ids=["array", "string", "broken", "duplicate alg", "bom", "utf-16", "nan", "deep"],
)
async def test_header_that_is_not_one_strict_json_object(
    header: bytes, local_access: LocalAccess, verifier: AccessVerifier
) -> None:
    assert await refused(verifier, resegment(local_access.user_token(), header=header)) == "malformed"


async def test_payload_with_duplicate_keys_is_refused_even_when_signed(
    local_access: LocalAccess, verifier: AccessVerifier
) -> None:
    good = jwt.decode(local_access.user_token(), options={"verify_signature": False})
    text = json.dumps(good)[:-1] + ', "email": "mallory@example.com"}'
    head = b64url(json.dumps({"alg": "RS256", "kid": local_access.current_key.kid, "typ": "JWT"}).encode())
    signing_input = f"{head}.{b64url(text.encode())}"
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signature = local_access.current_key.private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    assert await refused(verifier, f"{signing_input}.{b64url(signature)}") == "malformed"


async def test_keys_unavailable_when_the_endpoint_was_never_reached(local_access: LocalAccess) -> None:
    local_access.go_down()
    verifier = AccessVerifier(local_access.config())
    assert await refused(verifier, local_access.user_token()) == "keys_unavailable"
    await verifier.aclose()


# -- the verified-token cache -----------------------------------------------------------------------------------


async def test_cached_token_returns_the_same_identity(local_access: LocalAccess, verifier: AccessVerifier) -> None:
    token = local_access.user_token()
    first = await verifier.verify(token)
    assert await verifier.verify(token) is first


async def test_cached_token_is_never_served_past_exp_plus_leeway(local_access: LocalAccess) -> None:
    verifier = AccessVerifier(local_access.config(leeway=0))
    token = local_access.user_token(expires_in=2)
    identity = await verifier.verify(token)
    assert await verifier.verify(token) is identity
    await anyio.sleep(identity.expires_at - time.time() + 0.05)
    assert await refused(verifier, token) == "expired"
    await verifier.aclose()


async def test_cache_is_bounded(local_access: LocalAccess) -> None:
    verifier = AccessVerifier(local_access.config(token_cache_size=3))
    tokens = [local_access.user_token(f"user{n}@example.com") for n in range(10)]
    for token in tokens:
        await verifier.verify(token)
    assert len(verifier._verified) == 3
    assert (await verifier.verify(tokens[0])).email == "user0@example.com"
    await verifier.aclose()


async def crowd_out(local_access: LocalAccess, verifier: AccessVerifier) -> None:
    """Verify enough other callers that an earlier one is no longer among the recent identities."""
    for n in range(RECENT_IDENTITIES):
        await verifier.verify(local_access.user_token(f"crowd{n}@example.com"))


async def test_a_caller_crowded_out_of_the_recent_identities_gets_an_equal_identity_back(
    local_access: LocalAccess, verifier: AccessVerifier
) -> None:
    token = local_access.user_token("Alice@Example.com", groups=["eng"], claims={"custom": {"team": ["a", "b"]}})
    first = await verifier.verify(token)
    await crowd_out(local_access, verifier)
    # Rebuilt from the cached token's own payload: equal in every field, and kept ready again.
    again = await verifier.verify(token)
    assert again is not first
    assert again == first
    assert dict(again.claims) == dict(first.claims)
    assert again.claims["custom"] == {"team": ["a", "b"]}
    assert again.token == token
    assert await verifier.verify(token) is again


async def test_a_crowded_out_token_is_never_served_past_exp_plus_leeway(local_access: LocalAccess) -> None:
    verifier = AccessVerifier(local_access.config(leeway=0))
    token = local_access.user_token(expires_in=3)
    identity = await verifier.verify(token)
    await crowd_out(local_access, verifier)
    await anyio.sleep(identity.expires_at - time.time() + 0.05)
    assert await refused(verifier, token) == "expired"
    await verifier.aclose()


async def test_a_crowded_out_token_whose_key_was_removed_is_refused(
    local_access: LocalAccess, verifier: AccessVerifier
) -> None:
    old = local_access.current_key
    token = local_access.user_token(key=old)
    assert await verifier.verify(token)
    await crowd_out(local_access, verifier)
    local_access.rotate()
    local_access.drop(old.kid)
    await verifier.keys.refresh()
    assert await refused(verifier, token) == "unknown_key"


async def test_cached_tokens_past_the_recent_ones_hold_nothing_the_collector_walks(
    local_access: LocalAccess, verifier: AccessVerifier
) -> None:
    # A full garbage collection walks every tracked object: thousands of cached identities would stall the event
    # loop for as long as the mcp SDK's whole heap does. The cache's own entries must be flat.
    await crowd_out(local_access, verifier)
    gc.collect()
    entries = list(verifier._verified.values())
    assert len(entries) == RECENT_IDENTITIES
    assert not [entry for entry in entries if gc.is_tracked(entry)]


@pytest.mark.parametrize(
    "claims",
    [
        {"nbf": None},
        {"iat": None},
        {"exp": 10**400},
        {"exp": -(10**400)},
        {"nbf": 10**400},
        {"sub": None},
        {"jti": 5},
        {"email": None},
    ],
    ids=["nbf null", "iat null", "exp huge", "exp hugely negative", "nbf huge", "sub null", "jti number", "email null"],
)
async def test_claims_of_the_wrong_type_are_malformed(
    claims: dict[str, object], local_access: LocalAccess, verifier: AccessVerifier
) -> None:
    assert await refused(verifier, local_access.user_token(claims=claims)) == "malformed"


async def test_aud_list_with_a_non_string_beside_the_right_tag(
    local_access: LocalAccess, verifier: AccessVerifier
) -> None:
    token = local_access.user_token(claims={"aud": [local_access.audience, 5]})
    assert await refused(verifier, token) == "wrong_audience"


async def test_unencoded_payload_header_is_refused(local_access: LocalAccess, verifier: AccessVerifier) -> None:
    assert await refused(verifier, local_access.user_token(headers={"b64": False})) == "malformed"


async def test_fractional_exp_counts_in_whole_seconds(local_access: LocalAccess, verifier: AccessVerifier) -> None:
    exp = int(time.time()) - LEEWAY + 0.999
    assert await refused(verifier, local_access.user_token(claims={"exp": exp})) == "expired"


@pytest.mark.parametrize("claim", ["email", "common_name", "sub", "country"])
async def test_a_lone_surrogate_is_not_text(claim: str, local_access: LocalAccess, verifier: AccessVerifier) -> None:
    token = local_access.user_token(claims={claim: "\ud800@example.com"})
    assert await refused(verifier, token) == "malformed"


async def test_groups_that_are_not_text_are_dropped(local_access: LocalAccess, verifier: AccessVerifier) -> None:
    identity = await verifier.verify(local_access.user_token(groups=["eng", "\udfff", "ops"]))
    assert identity.groups == ("eng", "ops")
