"""Cloudflare Access application tokens in, `AccessIdentity` out, or `AccessDenied` with one stable reason.

The signature, the header and the JSON are the strict JWS core's (`jws.py`); this module is the application
token's claim profile: `claim_problems` lists everything wrong with a claim set, and the verifier gives the first.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

from cachetools import LRUCache
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from . import metrics
from .config import AccessConfig
from .identity import AccessIdentity
from .jwks import JWKSCache
from .jws import (
    AccessDenied,
    ClaimProblem,
    JWSReader,
    Reason,
    audiences_of,
    deny,
    is_text,
    json_object,
    read_groups,
    shown,
    time_problems,
)

_STRING_CLAIMS = ("email", "common_name", "sub", "country", "jti")


def claim_problems(claims: Mapping[str, Any], config: AccessConfig, now: float) -> list[ClaimProblem[Reason]]:
    """Every reason an application token with these (signature-checked) claims is refused, in the order
    `AccessVerifier` checks them: the first is the reason it gives. Empty when the claims are acceptable."""
    return list(_problems(claims, config.issuer, frozenset(config.audiences), config.leeway, now))


def _problems(
    claims: Mapping[str, Any], issuer: str, audiences: frozenset[str], leeway: float, now: float
) -> Iterator[ClaimProblem[Reason]]:
    # A generator, so that the verifier stops at the first problem; flat, because it runs on every fresh token.
    iss = claims.get("iss")
    if iss != issuer:
        yield ClaimProblem("wrong_issuer", f"iss {shown(iss)}, expected {issuer!r}")
    token_type = claims.get("type")
    if token_type != "app":
        yield ClaimProblem("wrong_token_type", f"type {shown(token_type)}, not app (an org token is not one)")
    tags = audiences_of(claims)
    if tags is None or audiences.isdisjoint(tags):
        yield ClaimProblem("wrong_audience", f"aud {shown(claims.get('aud'))} names none of the configured tags")
    if "exp" not in claims:
        yield ClaimProblem("malformed", "no exp")
    yield from time_problems(claims, leeway, now)
    for name in _STRING_CLAIMS:
        if name in claims and not is_text(claims[name]):
            yield ClaimProblem("malformed", f"{name} is not a string of Unicode text")
    if not claims.get("email") and not claims.get("common_name"):
        yield ClaimProblem("malformed", "neither email nor common_name")


# A verified token's facts: the kid and key that checked its signature, and until when it stands. Text, a number and
# a key the collector does not track: once a collection has seen the tuple it untracks it, so a full cache of these
# costs every later garbage collection nothing (an identity is a dozen objects it would walk, 10,000 of them longer
# than the mcp SDK's own heap).
_Facts = tuple[str, RSAPublicKey, float]
# Identities handed out to the most recent callers, kept ready so a returning caller costs a lookup; any other cached
# token has its identity rebuilt from its own payload, already checked, without a signature check.
RECENT_IDENTITIES = 256


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
        self._jws = JWSReader(self.keys, max_token_bytes=config.max_token_bytes)
        self._audiences = frozenset(config.audiences)
        self._verified: LRUCache[str, _Facts] = LRUCache(maxsize=config.token_cache_size)
        self._recent: LRUCache[str, tuple[AccessIdentity, _Facts]] = LRUCache(
            maxsize=min(RECENT_IDENTITIES, config.token_cache_size)
        )
        metrics.watch_cache("verified_tokens", self, lambda verifier: len(verifier._verified))

    async def verify(self, token: str | None) -> AccessIdentity:
        if not token:
            deny("missing")
        started = time.perf_counter()
        path = "cached"
        try:
            recent = self._recent.get(token)
            if recent is not None:
                if await self._still_stands(recent[1]):
                    metrics.verification("access_jwt", path, "ok", started)
                    return recent[0]
            else:
                facts = self._verified.get(token)
                if facts is not None and await self._still_stands(facts):
                    identity = self._identity(token, json_object(token.split(".")[1], "payload"))
                    self._recent[token] = (identity, facts)
                    metrics.verification("access_jwt", path, "ok", started)
                    return identity
            path = "fresh"
            identity = await self._fresh(token)
        except AccessDenied as denied:
            metrics.verification("access_jwt", path, denied.reason, started)
            raise
        metrics.verification("access_jwt", path, "ok", started)
        return identity

    async def _fresh(self, token: str) -> AccessIdentity:
        self._recent.pop(token, None)
        self._verified.pop(token, None)
        signed = await self._jws.read(token)
        config = self.config
        problem = next(_problems(signed.claims, config.issuer, self._audiences, config.leeway, time.time()), None)
        if problem is not None:
            raise AccessDenied(problem.reason, problem.detail)
        identity = self._identity(token, signed.claims)
        facts = (signed.kid, signed.key, identity.expires_at + config.leeway)
        self._verified[token] = facts
        self._recent[token] = (identity, facts)
        return identity

    async def aclose(self) -> None:
        await self.keys.aclose()

    async def _still_stands(self, facts: _Facts) -> bool:
        # A cached token stands only until it expires, and while the key that signed it is still trusted.
        kid, key, valid_until = facts
        return valid_until > time.time() and await self._jws.key(kid) is key

    def _identity(self, token: str, claims: dict[str, Any]) -> AccessIdentity:
        email = claims.get("email")
        return AccessIdentity(
            subject=claims.get("sub") or "",
            issuer=self.config.issuer,
            expires_at=int(claims["exp"]),
            email=email.lower() if email else None,
            common_name=None if email else claims.get("common_name"),
            groups=read_groups(claims),
            country=claims.get("country"),
            claims=MappingProxyType(claims),
            token=token,
        )


__all__ = ["AccessDenied", "AccessVerifier", "ClaimProblem", "Reason", "claim_problems"]
