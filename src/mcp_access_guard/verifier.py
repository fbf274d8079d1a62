"""Cloudflare Access application tokens in, `AccessIdentity` out, or `AccessDenied` with one stable reason."""

from __future__ import annotations

import binascii
import json
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, NoReturn

from cachetools import LRUCache
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.hashes import SHA256

from .config import AccessConfig
from .identity import AccessIdentity
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


_MAX_KID_LENGTH = 256
_KNOWN_HEADERS_LIMIT = 16
# An Access token never carries these; a token that does is trying to bring its own key or rules.
_REFUSED_HEADER_FIELDS = frozenset({"jku", "jwk", "x5u", "x5c", "crit", "b64"})
_STRING_CLAIMS = ("email", "common_name", "sub", "country", "jti")
_MAX_DATE = 2**53
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


def _deny(reason: Reason, detail: str = "") -> NoReturn:
    raise AccessDenied(reason, detail)


def _b64url_decode(segment: str) -> bytes:
    remainder = len(segment) % 4
    padding, unused_bits = _PADDING[remainder], _UNUSED_BITS[remainder]
    if not segment or padding is None or unused_bits is None:
        _deny("malformed", "a base64url segment is empty or has an impossible length")
    try:
        decoded = binascii.a2b_base64(
            segment.encode("ascii").translate(_TO_STANDARD_ALPHABET) + padding, strict_mode=True
        )
    except (UnicodeEncodeError, binascii.Error):
        _deny("malformed", "a segment is not base64url")
    # Unused bits must be zero: one token, one spelling.
    if _SEXTET[segment[-1]] & unused_bits:
        _deny("malformed", "a base64url segment is not canonically encoded")
    return decoded


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("duplicate key")
    return document


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constants)


def _json_object(segment: str, part: str) -> dict[str, Any]:
    try:
        document = _STRICT_JSON.decode(_b64url_decode(segment).decode("utf-8"))
    except (ValueError, RecursionError):
        _deny("malformed", f"the {part} is not strict UTF-8 JSON")
    if not isinstance(document, dict):
        _deny("malformed", f"the {part} is not a JSON object")
    return document


def _numeric_date(claims: dict[str, Any], name: str) -> int | None:
    if name not in claims:
        return None
    value = claims[name]
    # Bounded so that arithmetic on it cannot overflow (NaN fails the comparison too).
    if isinstance(value, bool) or not isinstance(value, int | float) or not -_MAX_DATE <= value <= _MAX_DATE:
        _deny("malformed", f"{name} is not a number of seconds")
    return int(value)  # whole seconds, as PyJWT reads them


def _kid_from_header(segment: str) -> str:
    header = _json_object(segment, "header")
    if header.get("alg") != "RS256":
        _deny("unsupported_algorithm", f"alg {str(header.get('alg'))[:20]!r}, only RS256 is accepted")
    if not _REFUSED_HEADER_FIELDS.isdisjoint(header):
        _deny("malformed", f"header carries {sorted(_REFUSED_HEADER_FIELDS.intersection(header))}")
    if header.get("typ", "JWT") != "JWT":
        _deny("malformed", "typ is not JWT")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > _MAX_KID_LENGTH:
        _deny("malformed", "no usable kid")
    return kid


def _groups(claims: dict[str, Any]) -> tuple[str, ...]:
    # Groups arrive top-level or, from an OIDC identity provider's custom claims, under "custom".
    custom = claims.get("custom")
    groups = claims.get("groups", custom.get("groups") if isinstance(custom, dict) else None)
    if not isinstance(groups, list):
        return ()
    return tuple(group for group in groups if _is_text(group))


def _is_text(value: Any) -> bool:
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


@dataclass(frozen=True, slots=True)
class _Verified:
    identity: AccessIdentity
    kid: str
    key: RSAPublicKey
    valid_until: float


class AccessVerifier:
    """Verifies `Cf-Access-Jwt-Assertion` tokens for one Access application (one team, one or more AUD tags)."""

    def __init__(self, config: AccessConfig, *, keys: JWKSCache | None = None) -> None:
        self.config = config
        self.keys = keys or JWKSCache(
            config.certs_url,
            max_age=config.keys_max_age,
            refetch_cooldown=config.refetch_cooldown,
            stale_window=config.stale_window,
            timeout=config.fetch_timeout,
            max_bytes=config.max_certs_bytes,
        )
        self._audiences = frozenset(config.audiences)
        self._verified: LRUCache[str, _Verified] = LRUCache(maxsize=config.token_cache_size)
        # Access signs every token under a key with the same header; one already seen on a valid token need not be
        # parsed again. Only a signature-checked header gets in, so this holds a handful of entries.
        self._known_headers: dict[str, str] = {}

    async def verify(self, token: str | None) -> AccessIdentity:
        if not token:
            _deny("missing")
        verified = self._verified.get(token)
        if verified is not None:
            # A cached token stands only until it expires, and while the key that signed it is still trusted.
            if verified.valid_until > time.time() and await self._key(verified.kid) is verified.key:
                return verified.identity
            self._verified.pop(token, None)
        verified = await self._verify_uncached(token)
        self._verified[token] = verified
        return verified.identity

    async def aclose(self) -> None:
        await self.keys.aclose()

    async def _key(self, kid: str) -> RSAPublicKey | None:
        try:
            return await self.keys.get(kid)
        except KeysUnavailable:
            _deny("keys_unavailable", "no signing keys within the stale window")

    async def _verify_uncached(self, token: str) -> _Verified:
        if not isinstance(token, str) or len(token) > self.config.max_token_bytes or not token.isascii():
            _deny("malformed", "not an ASCII string of acceptable size")
        segments = token.split(".")
        if len(segments) != 3:
            _deny("malformed", "not three segments")
        header_segment, payload_segment, signature_segment = segments

        kid = self._known_headers.get(header_segment) or _kid_from_header(header_segment)
        key = await self._key(kid)
        if key is None:
            _deny("unknown_key", "kid is not among the published keys")
        signature = _b64url_decode(signature_segment)
        try:
            key.verify(signature, f"{header_segment}.{payload_segment}".encode("ascii"), _PKCS1V15, _SHA256)
        except InvalidSignature:
            _deny("bad_signature")

        claims = _json_object(payload_segment, "payload")
        identity = self._identity(claims, token)
        if len(self._known_headers) >= _KNOWN_HEADERS_LIMIT:
            self._known_headers.clear()
        self._known_headers[header_segment] = kid
        return _Verified(identity, kid, key, valid_until=identity.expires_at + self.config.leeway)

    def _identity(self, claims: dict[str, Any], token: str) -> AccessIdentity:
        if claims.get("iss") != self.config.issuer:
            _deny("wrong_issuer")
        if claims.get("type") != "app":
            _deny("wrong_token_type", "type is not app (an org token is not an application token)")
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience
        if (
            not isinstance(audiences, list)
            or not all(isinstance(tag, str) for tag in audiences)
            or self._audiences.isdisjoint(audiences)
        ):
            _deny("wrong_audience")

        now = time.time()
        leeway = self.config.leeway
        expires_at = _numeric_date(claims, "exp")
        if expires_at is None:
            _deny("malformed", "no exp")
        if expires_at <= now - leeway:
            _deny("expired", f"{now - expires_at:.0f} s ago")
        for name in ("nbf", "iat"):
            moment = _numeric_date(claims, name)
            if moment is not None and moment > now + leeway:
                _deny("not_yet_valid", f"{name} is {moment - now:.0f} s ahead")

        for name in _STRING_CLAIMS:
            if name in claims and not _is_text(claims[name]):
                _deny("malformed", f"{name} is not a string of Unicode text")
        email = claims.get("email")
        common_name = claims.get("common_name")
        if not email and not common_name:
            _deny("malformed", "neither email nor common_name")
        return AccessIdentity(
            subject=claims.get("sub") or "",
            issuer=self.config.issuer,
            expires_at=expires_at,
            email=email.lower() if email else None,
            common_name=None if email else common_name,
            groups=_groups(claims),
            country=claims.get("country"),
            claims=MappingProxyType(claims),
            token=token,
        )
