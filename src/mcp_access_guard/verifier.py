"""Cloudflare Access application tokens in, `AccessIdentity` out, or `AccessDenied` with one stable reason."""

from __future__ import annotations

import binascii
import json
import math
import re
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


# Three base64url segments, no padding, nothing else. Checked in C by the regex engine, not char by char.
_COMPACT_JWS = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")
_MAX_KID_LENGTH = 256
# An Access token never carries these; a token that does is trying to bring its own key or rules.
_REFUSED_HEADER_FIELDS = frozenset({"jku", "jwk", "x5u", "x5c", "crit"})
_BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_SEXTET = {char: value for value, char in enumerate(_BASE64URL)}
_TO_STANDARD_ALPHABET = bytes.maketrans(b"-_", b"+/")
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
    if padding is None or unused_bits is None:
        _deny("malformed", "a base64url segment has an impossible length")
    # Unused bits must be zero: one token, one spelling.
    if _SEXTET[segment[-1]] & unused_bits:
        _deny("malformed", "a base64url segment is not canonically encoded")
    return binascii.a2b_base64(segment.encode("ascii").translate(_TO_STANDARD_ALPHABET) + padding, strict_mode=True)


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


def _numeric_date(claims: dict[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        _deny("malformed", f"{name} is not a number of seconds")
    return value


def _string_claim(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is not None and not isinstance(value, str):
        _deny("malformed", f"{name} is not a string")
    return value


def _groups(claims: dict[str, Any]) -> tuple[str, ...]:
    # Groups arrive top-level or, from an OIDC identity provider's custom claims, under "custom".
    custom = claims.get("custom")
    groups = claims.get("groups", custom.get("groups") if isinstance(custom, dict) else None)
    if not isinstance(groups, list):
        return ()
    return tuple(group for group in groups if isinstance(group, str))


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
        if not isinstance(token, str) or len(token) > self.config.max_token_bytes:
            _deny("malformed", "not a string of acceptable size")
        compact = _COMPACT_JWS.fullmatch(token)
        if compact is None:
            _deny("malformed", "not three base64url segments")
        header_segment, payload_segment, signature_segment = compact.groups()

        header = _json_object(header_segment, "header")
        if header.get("alg") != "RS256":
            _deny("unsupported_algorithm", f"alg {str(header.get('alg'))[:20]!r}, only RS256 is accepted")
        if not _REFUSED_HEADER_FIELDS.isdisjoint(header):
            _deny("malformed", f"header carries {sorted(_REFUSED_HEADER_FIELDS.intersection(header))}")
        if header.get("typ", "JWT") != "JWT":
            _deny("malformed", "typ is not JWT")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > _MAX_KID_LENGTH:
            _deny("malformed", "no usable kid")

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
        return _Verified(identity, kid, key, valid_until=identity.expires_at + self.config.leeway)

    def _identity(self, claims: dict[str, Any], token: str) -> AccessIdentity:
        if claims.get("iss") != self.config.issuer:
            _deny("wrong_issuer")
        if claims.get("type") != "app":
            _deny("wrong_token_type", "type is not app (an org token is not an application token)")
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience
        if not isinstance(audiences, list) or self._audiences.isdisjoint(
            tag for tag in audiences if isinstance(tag, str)
        ):
            _deny("wrong_audience")

        now = time.time()
        leeway = self.config.leeway
        expires_at = _numeric_date(claims, "exp", required=True)
        assert expires_at is not None
        if expires_at <= now - leeway:
            _deny("expired", f"{now - expires_at:.0f} s ago")
        for name in ("nbf", "iat"):
            moment = _numeric_date(claims, name, required=False)
            if moment is not None and moment > now + leeway:
                _deny("not_yet_valid", f"{name} is {moment - now:.0f} s ahead")

        email = _string_claim(claims, "email")
        common_name = _string_claim(claims, "common_name")
        if not email and not common_name:
            _deny("malformed", "neither email nor common_name")
        return AccessIdentity(
            subject=_string_claim(claims, "sub") or "",
            issuer=self.config.issuer,
            expires_at=int(expires_at),
            email=email.lower() if email else None,
            common_name=None if email else common_name,
            groups=_groups(claims),
            country=_string_claim(claims, "country"),
            claims=MappingProxyType(claims),
            token=token,
        )
