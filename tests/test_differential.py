"""Differential test: `AccessVerifier` never accepts a token that PyJWT, given the same key and checks, rejects.

PyJWT is the reference for "a valid RS256 JWT for this audience and issuer". Our verifier may be stricter (it also
checks `type`, `typ`, canonical base64, duplicate keys, ...), never looser. Tokens come from Hypothesis (character
mutations, swapped segments, re-signed tokens with altered claims and headers, hand-written JSON) and from a fixed
list of hand-made cases. Both verifiers must accept the unmutated tokens, so a verifier that rejects everything fails.
"""

from __future__ import annotations

import base64
import hmac
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_access_guard import AccessConfig, AccessDenied, AccessVerifier
from mcp_access_guard.testing import DROP, LocalAccess, SigningKey, b64url

LEEWAY = 60
B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

# Placeholders, so that drawn examples print readably and are resolved against the running issuer.
AUD = "<AUD>"
AUD_UPPER = "<AUD-UPPER>"
ISS = "<ISS>"
ISS_UPPER = "<ISS-UPPER>"
ISS_HTTPS = "<ISS-HTTPS>"
KID = "<KID>"
KID_UPPER = "<KID-UPPER>"

# -- the two judges ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Judge:
    issuer: LocalAccess
    portal: BlockingPortal
    verifier: AccessVerifier
    public_key: RSAPublicKey
    # A key that is not published, under the published key's kid.
    rogue_key: SigningKey

    def __repr__(self) -> str:
        return "Judge(ours=AccessVerifier, reference=PyJWT)"

    def ours(self, token: str) -> bool:
        try:
            self.portal.call(self.verifier.verify, token)
        except AccessDenied:
            return False
        except Exception as exc:
            raise AssertionError(f"our verifier raised {exc!r}, not AccessDenied, for {describe(token)}") from exc
        return True

    def pyjwt(self, token: str) -> str | None:
        """None when PyJWT accepts the token, else why it refused."""
        try:
            jwt.decode(
                token,
                self.public_key,
                algorithms=["RS256"],
                audience=self.issuer.audience,
                issuer=self.issuer.url,
                leeway=LEEWAY,
                options={"require": ["exp"]},
            )
        except Exception as exc:  # PyJWT's own errors, and anything it lets escape (OverflowError, RecursionError, ...)
            return repr(exc)
        return None

    def check(self, token: str) -> bool:
        """Asserts the property for one token; returns our verdict."""
        # PyJWT runs before and after us: an exp check can only turn to "reject" as time passes, an nbf/iat check
        # only to "accept", so a second ticking over between the calls cannot fake a disagreement.
        refused_before = self.pyjwt(token)
        accepted = self.ours(token)
        accepted_again = self.ours(token)  # the second answer may come from the verifier's token cache
        refused_after = self.pyjwt(token)
        accepted_either_time = accepted or accepted_again
        if refused_before and refused_after:
            assert not accepted_either_time, (
                f"our verifier accepted a token PyJWT refuses with {refused_after}: {describe(token)}"
            )
        return accepted


def describe(token: str) -> str:
    """The decoded header and payload, for failure messages (test keys only, so nothing secret)."""
    parts = token.split(".")
    decoded = []
    for part in parts[:2]:
        try:
            decoded.append(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode("utf-8", "replace")[:600])
        except ValueError:
            decoded.append(f"<not base64: {part[:40]!r}>")
    return f"{len(parts)} segments, header and payload: {' . '.join(decoded)}"


async def _new_verifier(config: AccessConfig) -> AccessVerifier:
    # Built inside the portal's event loop, where its lock and HTTP client will live.
    return AccessVerifier(config)


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalAccess]:
    with LocalAccess() as local:
        yield local


@pytest.fixture(scope="module")
def judge(issuer: LocalAccess) -> Iterator[Judge]:
    # One event loop in a thread for the whole module: Hypothesis drives the async verifier synchronously.
    with start_blocking_portal(backend="asyncio") as portal:
        verifier = portal.call(_new_verifier, issuer.config(leeway=LEEWAY))
        try:
            public_key = issuer.current_key.private_key.public_key()
            rogue_key = SigningKey(kid=issuer.current_key.kid, private_key=SigningKey.generate().private_key)
            yield Judge(issuer, portal, verifier, public_key, rogue_key)
        finally:
            portal.call(verifier.aclose)


# -- building tokens -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Moment:
    """A NumericDate relative to the current whole second; `text` sends it as a JSON string."""

    offset: int | float
    text: bool = False

    def resolve(self) -> Any:
        value = math.floor(time.time()) + self.offset
        return str(value) if self.text else value


def resolve(value: Any, issuer: LocalAccess) -> Any:
    if isinstance(value, Moment):
        return value.resolve()
    if isinstance(value, str):
        kid = issuer.current_key.kid
        for placeholder, meant in (
            (AUD, issuer.audience),
            (AUD_UPPER, issuer.audience.upper()),
            (ISS, issuer.url),
            (ISS_UPPER, issuer.url.upper()),
            (ISS_HTTPS, issuer.url.replace("http://", "https://")),
            (KID, kid),
            (KID_UPPER, kid.upper()),
        ):
            value = value.replace(placeholder, meant)
        return value
    if isinstance(value, list):
        return [resolve(item, issuer) for item in value]
    if isinstance(value, dict):
        return {resolve(name, issuer): resolve(item, issuer) for name, item in value.items()}
    return value


def resolve_fields(fields: dict[str, Any], issuer: LocalAccess) -> dict[str, Any]:
    return {name: value if value is DROP else resolve(value, issuer) for name, value in fields.items()}


def sign_raw(header: bytes, payload: bytes, key: SigningKey) -> str:
    """Sign exact bytes, for JSON that `json.dumps` would never write (duplicate keys, odd encodings, ...)."""
    signing_input = f"{b64url(header)}.{b64url(payload)}"
    signature = key.private_key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


def json_object(pairs: list[tuple[str, Any]]) -> str:
    """A JSON object from pairs, duplicates kept."""
    return "{" + ", ".join(f"{json.dumps(name)}: {json.dumps(value)}" for name, value in pairs) + "}"


@dataclass(frozen=True)
class Recipe:
    kind: str
    claims: dict[str, Any]
    headers: dict[str, Any]
    extra_claims: dict[str, Any] = field(default_factory=dict)
    extra_headers: dict[str, Any] = field(default_factory=dict)
    rogue: bool = False

    def mint(self, judge: Judge) -> str:
        issuer = judge.issuer
        mint = issuer.user_token if self.kind == "user" else issuer.service_token
        return mint(
            claims=resolve_fields(self.extra_claims | self.claims, issuer),
            headers=resolve_fields(self.extra_headers | self.headers, issuer),
            key=judge.rogue_key if self.rogue else None,
        )


# -- strategies ----------------------------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=4,
)
ODD_VALUES: list[Any] = [None, True, False, 0, 1, -1, "", "app", [], {}, [None], 10**400, -(10**400), 2**63, 1e308]
# json.dumps writes NaN and Infinity, which are not JSON; PyJWT reads them anyway.
odd_values = st.sampled_from(ODD_VALUES) | st.sampled_from([math.nan, math.inf, -math.inf])

# NumericDates around now and around the leeway on either side, as ints, floats and strings, plus far-off ones.
moments = st.builds(
    Moment,
    offset=st.one_of(
        st.builds(
            lambda edge, delta: edge + delta,
            st.sampled_from([-LEEWAY, 0, LEEWAY]),
            st.sampled_from([-2, -1, -0.5, -0.001, 0, 0.001, 0.5, 0.999, 1, 2]) | st.floats(-3, 3),
        ),
        st.integers(-(10**10), 10**10),
        st.floats(-(10**12), 10**12),
    ),
    text=st.sampled_from([False, False, False, True]),
)
numeric_dates = moments | odd_values | st.just(DROP)

audience_strings = st.sampled_from(
    [AUD, AUD_UPPER, f" {AUD}", f"{AUD} ", f"{AUD}x", f"x{AUD}", "", "*", f"{AUD},{AUD}"]
)
audiences = st.one_of(
    audience_strings,
    st.lists(audience_strings | json_scalars | st.just([AUD]) | st.just({AUD: True}), max_size=4),
    st.builds(lambda rest: [AUD, *rest], st.lists(json_scalars, max_size=2)),
    odd_values,
    st.just({AUD: AUD}),
    st.just(DROP),
)
issuers = (
    st.sampled_from([ISS, f"{ISS}/", f" {ISS}", f"{ISS} ", ISS_UPPER, ISS_HTTPS, [ISS], {ISS: ISS}, DROP])
    | odd_values
    | st.text(max_size=12)
)
token_types = st.sampled_from(["app", "org", "APP", "app ", "", ["app"], {"app": 1}, DROP]) | odd_values
emails = st.sampled_from(["Alice@Example.COM", "", "bob@example.com", ["alice@example.com"], DROP]) | json_scalars
common_names = st.sampled_from(["88bf3b6d86161464f6509f7219099e57.access", "", DROP]) | json_scalars
string_claims = st.sampled_from(["", "some-id", DROP]) | odd_values | json_values

CLAIM_VARIANTS: dict[str, st.SearchStrategy[Any]] = {
    "aud": audiences,
    "iss": issuers,
    "exp": numeric_dates,
    "nbf": numeric_dates,
    "iat": numeric_dates,
    "type": token_types,
    "email": emails,
    "common_name": common_names,
    "sub": string_claims,
    "jti": string_claims,
    "groups": json_values,
    "custom": json_values,
    "identity_nonce": string_claims,
    "country": string_claims,
}

HEADER_VARIANTS: dict[str, st.SearchStrategy[Any]] = {
    "alg": st.sampled_from(["RS256", "rs256", "RS384", "RS512", "PS256", "ES256", "HS256", "none", "None", ""])
    | odd_values
    | st.just(DROP),
    "kid": st.sampled_from([KID, f"{KID} ", KID_UPPER, f"{KID}{KID}", "unknown", "x" * 300, [KID], DROP])
    | json_scalars,
    "typ": st.sampled_from(["JWT", "jwt", "JWS", "at+jwt", "", DROP]) | json_scalars,
    "b64": st.sampled_from([False, True]) | json_scalars,
    "crit": st.sampled_from([["b64"], [], ["exp"], "b64"]) | json_values,
    "jku": st.just("https://attacker.example/keys") | json_scalars,
    "jwk": st.just({"kty": "RSA", "e": "AQAB", "n": "AA"}) | json_scalars,
    "x5u": json_scalars,
    "x5c": st.just(["MIIB"]) | json_scalars,
    "cty": st.sampled_from(["JWT", "json"]) | json_scalars,
}


def some_of(variants: dict[str, st.SearchStrategy[Any]], at_most: int) -> st.SearchStrategy[dict[str, Any]]:
    # A few fields at a time: with all of them altered at once nearly every token fails on the first check.
    names = st.lists(st.sampled_from(sorted(variants)), max_size=at_most, unique=True)
    return names.flatmap(lambda chosen: st.fixed_dictionaries({name: variants[name] for name in chosen}))


claim_overrides = some_of(CLAIM_VARIANTS, at_most=3)
header_overrides = some_of(HEADER_VARIANTS, at_most=2)
# Fields no Access token has, by any name, in the claims and in the header.
extra_fields = st.dictionaries(st.text(max_size=6), json_values, max_size=1)

plain_recipes = st.builds(Recipe, kind=st.sampled_from(["user", "service"]), claims=st.just({}), headers=st.just({}))
altered_recipes = st.builds(
    Recipe,
    kind=st.sampled_from(["user", "service"]),
    claims=claim_overrides,
    headers=header_overrides,
    extra_claims=extra_fields,
    extra_headers=extra_fields,
    rogue=st.integers(0, 9).map(lambda draw: draw == 0),
)


@dataclass(frozen=True)
class Edit:
    """One character edit in one segment; `where` is reduced modulo the segment's length."""

    segment: int
    action: str
    where: int
    char: str

    def apply(self, parts: list[str]) -> None:
        text = parts[self.segment]
        if self.action == "insert":
            index = self.where % (len(text) + 1)
            parts[self.segment] = text[:index] + self.char + text[index:]
            return
        if not text:
            return
        index = self.where % len(text)
        if self.action == "delete":
            parts[self.segment] = text[:index] + text[index + 1 :]
        elif self.action == "flip":
            # Another character of the alphabet: still base64url, so the damage reaches the decoder or the signature.
            flipped = B64URL_ALPHABET[(B64URL_ALPHABET.find(text[index]) + 1 + ord(self.char)) % 64]
            parts[self.segment] = text[:index] + flipped + text[index + 1 :]
        else:
            parts[self.segment] = text[:index] + self.char + text[index + 1 :]


edits = st.builds(
    Edit,
    segment=st.integers(0, 2),
    action=st.sampled_from(["flip", "replace", "insert", "delete"]),
    where=st.integers(0, 10**6) | st.sampled_from([0, -1, -2]),
    char=st.sampled_from([*B64URL_ALPHABET, "=", ".", "+", "/", " ", "\n", "\x00", "é", "~"]),
)

# A layout is a list of (token, segment) picks from three tokens: either header, payload and signature each from
# any of them, or any segments in any order and number.
layouts = st.one_of(
    st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)).map(
        lambda tokens: [(tokens[0], 0), (tokens[1], 1), (tokens[2], 2)]
    ),
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=0, max_size=5),
)

# Raw JSON twists, applied to the header or the payload text before signing.
RAW_TWISTS = (
    "duplicate_first",
    "duplicate_last",
    "bom",
    "whitespace",
    "trailing_comma",
    "trailing_data",
    "array",
    "nan",
    "utf16",
    "invalid_utf8",
    "deep",
    "escaped_name",
)


def twist(pairs: list[tuple[str, Any]], how: str, name: str, value: Any) -> bytes:
    text = json_object(pairs)
    if how == "duplicate_first":
        text = json_object([(name, value), *pairs])
    elif how == "duplicate_last":
        text = json_object([*pairs, (name, value)])
    elif how == "bom":
        return b"\xef\xbb\xbf" + text.encode()
    elif how == "whitespace":
        text = f" \n\t{text}\r\n "
    elif how == "trailing_comma":
        text = text[:-1] + ",}"
    elif how == "trailing_data":
        text = text + "{}"
    elif how == "array":
        text = f"[{text}]"
    elif how == "nan":
        text = text[:-1] + ', "x": NaN}'
    elif how == "utf16":
        return text.encode("utf-16")
    elif how == "invalid_utf8":
        return text[:-1].encode() + b', "x": "\xff"}'
    elif how == "deep":
        text = text[:-1] + ', "x": ' + "[" * 3000 + "]" * 3000 + "}"
    elif how == "escaped_name":
        # The same names, spelled with JSON escapes: equal once parsed.
        text = text.replace('"type"', '"\\u0074ype"').replace('"alg"', '"\\u0061lg"')
    return text.encode()


SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- the property --------------------------------------------------------------------------------------------------


def test_unmutated_tokens_pass_both(judge: Judge) -> None:
    issuer = judge.issuer
    for token in (
        issuer.user_token(),
        issuer.user_token("Carol@Example.com", groups=["admins"]),
        issuer.user_token(claims={"aud": [issuer.audience, "another-tag"]}),
        issuer.service_token(),
        issuer.service_token(claims={"aud": [issuer.audience]}),
    ):
        assert judge.pyjwt(token) is None, describe(token)
        assert judge.check(token), describe(token)


@settings(SETTINGS, max_examples=800)
@given(recipe=altered_recipes)
def test_resigned_tokens(judge: Judge, recipe: Recipe) -> None:
    judge.check(recipe.mint(judge))


@settings(SETTINGS, max_examples=500)
@given(recipe=plain_recipes | altered_recipes, changes=st.lists(edits, min_size=1, max_size=3))
def test_character_edits(judge: Judge, recipe: Recipe, changes: list[Edit]) -> None:
    parts = recipe.mint(judge).split(".")
    for change in changes:
        change.apply(parts)
    judge.check(".".join(parts))


@settings(SETTINGS, max_examples=200)
@given(recipes=st.lists(plain_recipes | altered_recipes, min_size=3, max_size=3), layout=layouts)
def test_swapped_segments(judge: Judge, recipes: list[Recipe], layout: list[Any]) -> None:
    tokens = [recipe.mint(judge).split(".") for recipe in recipes]
    judge.check(".".join(tokens[token][segment] for token, segment in layout))


@settings(SETTINGS, max_examples=300)
@given(
    in_header=st.booleans(),
    how=st.sampled_from(RAW_TWISTS),
    name=st.sampled_from(["alg", "kid", "typ", "aud", "iss", "exp", "type", "email", "new"]),
    value=st.sampled_from(["none", "HS256", "wrong", "org", 0, None, [], AUD, ISS, KID]),
)
def test_hand_written_json(judge: Judge, in_header: bool, how: str, name: str, value: Any) -> None:
    issuer = judge.issuer
    now = math.floor(time.time())
    header = [("alg", "RS256"), ("kid", issuer.current_key.kid), ("typ", "JWT")]
    payload = [
        ("aud", [issuer.audience]),
        ("email", "alice@example.com"),
        ("exp", now + 3600),
        ("iat", now),
        ("nbf", now),
        ("iss", issuer.url),
        ("type", "app"),
        ("sub", "7335d417-61da-459d-899c-0a01c76a4ec4"),
    ]
    value = resolve(value, issuer)
    if in_header:
        token = sign_raw(twist(header, how, name, value), json_object(payload).encode(), issuer.current_key)
    else:
        token = sign_raw(json_object(header).encode(), twist(payload, how, name, value), issuer.current_key)
    judge.check(token)


# -- hand-made cases -----------------------------------------------------------------------------------------------

Builder = Callable[[Judge], str]


def _hs256_with_public_key(judge: Judge) -> str:
    issuer = judge.issuer
    # The classic confusion: the public key's PEM used as an HMAC secret.
    pem = issuer.current_key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64url(json.dumps({"alg": "HS256", "kid": issuer.current_key.kid, "typ": "JWT"}).encode())
    body = issuer.user_token().split(".")[1]
    signature = hmac.new(pem, f"{header}.{body}".encode(), "sha256").digest()
    return f"{header}.{body}.{b64url(signature)}"


def _resigned(
    claims: dict[str, Any] | None = None, headers: dict[str, Any] | None = None, *, kind: str = "user"
) -> Builder:
    def build(judge: Judge) -> str:
        return Recipe(kind, claims or {}, headers or {}).mint(judge)

    return build


def _edited(edit: Callable[[str], str]) -> Builder:
    return lambda judge: edit(judge.issuer.user_token())


def _raw(header: list[tuple[str, Any]], payload: list[tuple[str, Any]]) -> Builder:
    def build(judge: Judge) -> str:
        issuer = judge.issuer
        resolved_header = [(name, resolve(value, issuer)) for name, value in header]
        resolved_payload = [(name, resolve(value, issuer)) for name, value in payload]
        return sign_raw(
            json_object(resolved_header).encode(), json_object(resolved_payload).encode(), issuer.current_key
        )

    return build


def _last_char_bumped(segment: str) -> str:
    # Changes only the unused low bits of the last character when the length leaves some: non-canonical base64.
    return segment[:-1] + B64URL_ALPHABET[B64URL_ALPHABET.index(segment[-1]) + 1]


_VALID_HEADER = [("alg", "RS256"), ("kid", KID), ("typ", "JWT")]
_VALID_PAYLOAD: list[tuple[str, Any]] = [
    ("aud", [AUD]),
    ("email", "alice@example.com"),
    ("exp", Moment(3600)),
    ("iat", Moment(0)),
    ("iss", ISS),
    ("type", "app"),
]

HAND_MADE: dict[str, Builder] = {
    "alg none, empty signature": lambda judge: ".".join(
        [b64url(b'{"alg":"none","typ":"JWT"}'), judge.issuer.user_token().split(".")[1], ""]
    ),
    "alg none, with signature": _resigned(headers={"alg": "none"}),
    "HS256 keyed with the public key": _hs256_with_public_key,
    "unpublished key under the published kid": lambda judge: judge.issuer.user_token(key=judge.rogue_key),
    "signature of another token": lambda judge: ".".join(
        judge.issuer.user_token().split(".")[:2] + judge.issuer.user_token("bob@example.com").split(".")[2:]
    ),
    "exp at now - leeway": _resigned({"exp": Moment(-LEEWAY)}),
    "exp at now - leeway + 1": _resigned({"exp": Moment(-LEEWAY + 1)}),
    "exp at now - leeway + 0.999 (fractional)": _resigned({"exp": Moment(-LEEWAY + 0.999)}),
    "exp as a string": _resigned({"exp": Moment(3600, text=True)}),
    "exp true": _resigned({"exp": True}),
    "exp 10**400": _resigned({"exp": 10**400}),
    "exp -10**400": _resigned({"exp": -(10**400)}),
    "exp null": _resigned({"exp": None}),
    "exp missing": _resigned({"exp": DROP}),
    "nbf at now + leeway": _resigned({"nbf": Moment(LEEWAY)}),
    "nbf at now + leeway + 1": _resigned({"nbf": Moment(LEEWAY + 1)}),
    "nbf null": _resigned({"nbf": None}),
    "nbf 10**400": _resigned({"nbf": 10**400}),
    "iat at now + leeway + 1": _resigned({"iat": Moment(LEEWAY + 1)}),
    "iat null": _resigned({"iat": None}),
    "iat as a string": _resigned({"iat": Moment(0, text=True)}),
    "iat -10**400": _resigned({"iat": -(10**400)}),
    "aud list with a non-string beside the right tag": _resigned({"aud": [AUD, 5]}),
    "aud list with null beside the right tag": _resigned({"aud": [AUD, None]}),
    "aud list nested": _resigned({"aud": [[AUD]]}),
    "aud object": _resigned({"aud": {AUD: True}}),
    "aud empty list": _resigned({"aud": []}),
    "aud missing": _resigned({"aud": DROP}),
    "aud upper-cased": _resigned({"aud": AUD_UPPER}),
    "iss over https": _resigned({"iss": ISS_HTTPS}),
    "kid upper-cased": _resigned(headers={"kid": KID_UPPER}),
    "iss with a trailing slash": _resigned({"iss": f"{ISS}/"}),
    "iss in a list": _resigned({"iss": [ISS]}),
    "iss missing": _resigned({"iss": DROP}),
    "sub null": _resigned({"sub": None}),
    "sub a number": _resigned({"sub": 5}),
    "jti a number": _resigned({"jti": 5}),
    "jti null": _resigned({"jti": None}),
    "type org": _resigned({"type": "org"}),
    "service token with nbf null": _resigned({"nbf": None}, kind="service"),
    "header b64 false": _resigned(headers={"b64": False}),
    "header b64 false, listed in crit": _resigned(headers={"b64": False, "crit": ["b64"]}),
    "header crit exp": _resigned(headers={"crit": ["exp"]}),
    "header jku": _resigned(headers={"jku": "https://attacker.example/keys"}),
    "header kid a number": _resigned(headers={"kid": 5}),
    "header kid missing": _resigned(headers={"kid": DROP}),
    "header alg missing": _resigned(headers={"alg": DROP}),
    "header typ at+jwt": _resigned(headers={"typ": "at+jwt"}),
    "duplicate aud, wrong one last": _raw(_VALID_HEADER, [*_VALID_PAYLOAD, ("aud", "wrong")]),
    "duplicate aud, right one last": _raw(_VALID_HEADER, [("aud", "wrong"), *_VALID_PAYLOAD]),
    "duplicate exp, expired one first": _raw(_VALID_HEADER, [("exp", 1), *_VALID_PAYLOAD]),
    "duplicate alg, none last": _raw([*_VALID_HEADER, ("alg", "none")], _VALID_PAYLOAD),
    "duplicate kid": _raw([("kid", "other"), *_VALID_HEADER], _VALID_PAYLOAD),
    "non-canonical signature base64": _edited(
        lambda token: token.rpartition(".")[0] + "." + _last_char_bumped(token.rpartition(".")[2])
    ),
    "padded signature": _edited(lambda token: token + "=="),
    "four segments": _edited(lambda token: token + ".AAAA"),
    "surrounding whitespace": _edited(lambda token: f" {token}\n"),
    "header and payload swapped": _edited(lambda token: ".".join(token.split(".")[i] for i in (1, 0, 2))),
    "empty payload": _edited(lambda token: ".".join([token.split(".")[0], "", token.split(".")[2]])),
}


@pytest.mark.parametrize("build", HAND_MADE.values(), ids=HAND_MADE.keys())
def test_hand_made_cases(judge: Judge, build: Builder) -> None:
    judge.check(build(judge))
