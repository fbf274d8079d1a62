"""The strict JWS core both token profiles stand on: a compact RS256 JWS in, its claims out, with the signature
checked under a key from a `JWKSCache`; and the claim readers the profiles share (numeric dates, text, groups).

What a token's claims must say is a profile's business: `verifier.py` holds the Access application token's,
`oauth/id_token.py` the Access for SaaS id_token's.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, NoReturn, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.hashes import SHA256

from .jwks import JWKSCache, KeysUnavailable

Reason = Literal[
    "missing",
    "malformed",
    "unsupported_algorithm",
    "unknown_key",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "wrong_issuer",
    "wrong_audience",
    "wrong_token_type",
    "keys_unavailable",
    "not_allowed",
]


class AccessDenied(Exception):
    """Verification failed. `reason` is one stable string; `detail` is for logs and never holds the token."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason: Reason = reason
        self.detail = detail


# Covariant: a problem with one of a few reasons is a problem of any profile whose reasons include them.
ReasonT = TypeVar("ReasonT", bound=str, covariant=True)
TimeReason = Literal["malformed", "expired", "not_yet_valid"]


@dataclass(frozen=True, slots=True)
class ClaimProblem(Generic[ReasonT]):
    """One thing wrong with a claim set: the reason a verifier gives for it, and the measured detail."""

    reason: ReasonT
    detail: str


_MAX_KID_LENGTH = 256
_KNOWN_HEADERS_LIMIT = 16
# Access never sends these; a token that does is trying to bring its own key or rules.
_REFUSED_HEADER_FIELDS = frozenset({"jku", "jwk", "x5u", "x5c", "crit", "b64"})
_MAX_DATE = 2**53
_SHOWN_LENGTH = 80
_ABSENT: Any = object()
_BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_SEXTET = {char: value for value, char in enumerate(_BASE64URL)}
# base64url to the standard alphabet, and '+', '/' and '=' to a byte strict decoding refuses: one alphabet, no
# padding, all checked in C.
_TO_STANDARD_ALPHABET = bytes.maketrans(b"-_+/=", b"+/!!!")
# By segment length modulo 4: the padding to add, and which bits of the last character encode nothing.
_PADDING = (b"", None, b"==", b"=")
_UNUSED_BITS = (0, None, 0b1111, 0b11)
_PKCS1V15 = PKCS1v15()
_SHA256 = SHA256()


def deny(reason: Reason, detail: str = "") -> NoReturn:
    raise AccessDenied(reason, detail)


def b64url_decode(segment: str) -> bytes:
    """Strict base64url: one alphabet, no padding, unused bits zero (one token, one spelling)."""
    remainder = len(segment) % 4
    padding, unused_bits = _PADDING[remainder], _UNUSED_BITS[remainder]
    if not segment or padding is None or unused_bits is None:
        deny("malformed", "a base64url segment is empty or has an impossible length")
    try:
        decoded = binascii.a2b_base64(
            segment.encode("ascii").translate(_TO_STANDARD_ALPHABET) + padding, strict_mode=True
        )
    except (UnicodeEncodeError, binascii.Error):
        deny("malformed", "a segment is not base64url")
    if _SEXTET[segment[-1]] & unused_bits:
        deny("malformed", "a base64url segment is not canonically encoded")
    return decoded


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("duplicate key")
    return document


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constants)


def json_object(segment: str, part: str) -> dict[str, Any]:
    """A base64url segment holding one strict UTF-8 JSON object: no duplicate keys, no NaN or Infinity."""
    try:
        document = _STRICT_JSON.decode(b64url_decode(segment).decode("utf-8"))
    except (ValueError, RecursionError):
        deny("malformed", f"the {part} is not strict UTF-8 JSON")
    if not isinstance(document, dict):
        deny("malformed", f"the {part} is not a JSON object")
    return document


def kid_from_header(segment: str) -> str:
    """The header's kid, once the header is known to ask for RS256 under a published key and nothing else."""
    header = json_object(segment, "header")
    if header.get("alg") != "RS256":
        deny("unsupported_algorithm", f"alg {str(header.get('alg'))[:20]!r}, only RS256 is accepted")
    if not _REFUSED_HEADER_FIELDS.isdisjoint(header):
        deny("malformed", f"header carries {sorted(_REFUSED_HEADER_FIELDS.intersection(header))}")
    if header.get("typ", "JWT") != "JWT":
        deny("malformed", "typ is not JWT")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > _MAX_KID_LENGTH:
        deny("malformed", "no usable kid")
    return kid


@dataclass(frozen=True, slots=True)
class SignedClaims:
    """The payload of a token whose signature checked out, and the key that checked it."""

    claims: dict[str, Any]
    kid: str
    key: RSAPublicKey


class JWSReader:
    """Compact RS256 JWS tokens, signed under a key that `keys` publishes. Says nothing about the claims."""

    def __init__(self, keys: JWKSCache, *, max_token_bytes: int) -> None:
        self.keys = keys
        self.max_token_bytes = max_token_bytes
        # A key signs every token with the same header; one already seen on a signature-checked token need not be
        # parsed again. Only such headers get in, so this holds a handful of entries.
        self._known_headers: dict[str, str] = {}

    async def key(self, kid: str) -> RSAPublicKey | None:
        try:
            return await self.keys.get(kid)
        except KeysUnavailable:
            deny("keys_unavailable", "no signing keys within the stale window")

    async def read(self, token: str) -> SignedClaims:
        if not isinstance(token, str) or len(token) > self.max_token_bytes or not token.isascii():
            deny("malformed", "not an ASCII string of acceptable size")
        segments = token.split(".")
        if len(segments) != 3:
            deny("malformed", "not three segments")
        header_segment, payload_segment, signature_segment = segments

        kid = self._known_headers.get(header_segment) or kid_from_header(header_segment)
        key = await self.key(kid)
        if key is None:
            deny("unknown_key", "kid is not among the published keys")
        signature = b64url_decode(signature_segment)
        try:
            key.verify(signature, f"{header_segment}.{payload_segment}".encode("ascii"), _PKCS1V15, _SHA256)
        except InvalidSignature:
            deny("bad_signature")

        claims = json_object(payload_segment, "payload")
        if len(self._known_headers) >= _KNOWN_HEADERS_LIMIT:
            self._known_headers.clear()
        self._known_headers[header_segment] = kid
        return SignedClaims(claims, kid, key)


# -- claim readers both profiles share ---------------------------------------------------------------------------


def seconds(value: Any) -> int | None:
    """A numeric date in whole seconds (as PyJWT reads them), or None when it is not one. Bounded so that
    arithmetic on it cannot overflow; NaN fails the comparison too."""
    # Exact types: JSON gives int or float, and a bool is no date.
    if (type(value) is int or type(value) is float) and -_MAX_DATE <= value <= _MAX_DATE:
        return int(value)
    return None


def time_problems(claims: Mapping[str, Any], leeway: float, now: float) -> Iterator[ClaimProblem[TimeReason]]:
    """exp, then nbf and iat, where present, each with `leeway` of clock skew."""
    exp = claims.get("exp", _ABSENT)
    if exp is not _ABSENT:
        expires_at = seconds(exp)
        if expires_at is None:
            yield ClaimProblem("malformed", "exp is not a number of seconds")
        elif expires_at <= now - leeway:
            yield ClaimProblem("expired", f"{now - expires_at:.0f} s ago")
    for name in ("nbf", "iat"):
        value = claims.get(name, _ABSENT)
        if value is not _ABSENT:
            moment = seconds(value)
            if moment is None:
                yield ClaimProblem("malformed", f"{name} is not a number of seconds")
            elif moment > now + leeway:
                yield ClaimProblem("not_yet_valid", f"{name} is {moment - now:.0f} s ahead")


def is_text(value: Any) -> bool:
    # JSON's \ud800 escapes decode to lone surrogates, which are not text: anything that encodes the value later
    # (a log handler, a response) would fail on it.
    if not isinstance(value, str):
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def audiences_of(claims: Mapping[str, Any]) -> list[str] | None:
    """`aud` as a list of strings (a plain string is one audience), or None when it is neither."""
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience
    if not isinstance(audiences, list) or not all(isinstance(item, str) for item in audiences):
        return None
    return audiences


def read_groups(claims: Mapping[str, Any]) -> tuple[str, ...]:
    # Groups arrive top-level or, from an OIDC identity provider's custom claims, under "custom".
    custom = claims.get("custom")
    groups = claims.get("groups", custom.get("groups") if isinstance(custom, dict) else None)
    if not isinstance(groups, list):
        return ()
    return tuple(group for group in groups if is_text(group))


def shown(value: Any) -> str:
    """A claim value for a log detail: repr'd (control characters escaped) and cut short."""
    text = repr(value)
    return text if len(text) <= _SHOWN_LENGTH else text[:_SHOWN_LENGTH] + "..."
