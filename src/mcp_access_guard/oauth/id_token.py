"""The Access for SaaS id_token's claim profile: on top of the strict JWS core (RS256 only, a kid the application's
JWKS publishes, the signature), the claims OIDC Core 3.1.3.7 asks a client to check, and those the guard needs."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, cast

from ..identity import AccessIdentity
from ..jwks import JWKSCache
from ..jws import AccessDenied, ClaimProblem, JWSReader, audiences_of, is_text, read_groups, shown, time_problems
from .errors import IdTokenReason, IdTokenRejected, UpstreamUnavailable

logger = logging.getLogger("mcp_access_guard")

_LAYER = "oauth_upstream"
_JWS_REASONS = frozenset({"malformed", "unsupported_algorithm", "unknown_key", "bad_signature"})


def id_token_problems(
    claims: Mapping[str, Any],
    *,
    issuer: str,
    client_id: str,
    nonce: str | None,
    subject: str | None = None,
    leeway: float,
    now: float,
) -> list[ClaimProblem[IdTokenReason]]:
    """Every reason an id_token with these (signature-checked) claims is refused, in the order `IdTokenVerifier`
    checks them. `nonce` is the one sent with the authorization request (None after a refresh, whose id_token need
    not carry one); `subject`, after a refresh, the subject of the login it continues."""
    return list(_problems(claims, issuer, client_id, nonce, subject, leeway, now))


def _problems(
    claims: Mapping[str, Any],
    issuer: str,
    client_id: str,
    nonce: str | None,
    subject: str | None,
    leeway: float,
    now: float,
) -> Iterator[ClaimProblem[IdTokenReason]]:
    iss = claims.get("iss")
    if iss != issuer:
        yield ClaimProblem("wrong_issuer", f"iss {shown(iss)}, expected {issuer!r}")
    audiences = audiences_of(claims)
    if audiences is None or client_id not in audiences:
        yield ClaimProblem("wrong_audience", f"aud {shown(claims.get('aud'))} does not name our client id")
    # With several audiences, azp says which one the token was issued to; when present it must be us.
    azp = claims.get("azp")
    if (audiences is not None and len(audiences) > 1 and azp is None) or (azp is not None and azp != client_id):
        yield ClaimProblem("wrong_authorized_party", f"azp {shown(azp)} with aud {shown(claims.get('aud'))}")
    for name in ("exp", "iat"):
        if name not in claims:
            yield ClaimProblem("malformed", f"no {name}")
    yield from time_problems(claims, leeway, now)
    if nonce is not None:
        sent_back = claims.get("nonce")
        if sent_back is None:
            yield ClaimProblem("missing_nonce", "no nonce, though one was sent")
        elif not isinstance(sent_back, str) or not hmac.compare_digest(sent_back.encode(), nonce.encode()):
            yield ClaimProblem("wrong_nonce", "nonce is not the one sent with this login")
    sub = claims.get("sub")
    if not sub:
        yield ClaimProblem("missing_subject", "no sub")
    elif not is_text(sub):
        yield ClaimProblem("malformed", "sub is not a string of Unicode text")
    elif subject is not None and sub != subject:
        yield ClaimProblem("wrong_subject", "sub is not the subject of the login this refresh continues")
    email = claims.get("email")
    if not email:
        yield ClaimProblem("missing_email", "no email")
    elif not is_text(email) or "@" not in email:
        yield ClaimProblem("malformed", f"email {shown(email)} is not an address")


class IdTokenVerifier:
    """Verifies the id_tokens of one Access for SaaS application, under the keys of its own JWKS."""

    def __init__(
        self, *, issuer: str, client_id: str, keys: JWKSCache, leeway: float = 60, max_token_bytes: int = 32 * 1024
    ) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self.keys = keys
        self.leeway = leeway
        self._jws = JWSReader(keys, max_token_bytes=max_token_bytes)

    async def verify(self, id_token: str, *, nonce: str | None, subject: str | None = None) -> AccessIdentity:
        """The identity the id_token vouches for. Raises `IdTokenRejected`, or `UpstreamUnavailable` when the
        application's keys cannot be fetched."""
        try:
            signed = await self._jws.read(id_token)
        except AccessDenied as denied:
            if denied.reason == "keys_unavailable":
                self._log("keys_unavailable", denied.detail)
                raise UpstreamUnavailable("the application's signing keys could not be fetched") from None
            reason = cast(IdTokenReason, denied.reason) if denied.reason in _JWS_REASONS else "malformed"
            raise self._rejected(reason, denied.detail) from None
        claims = signed.claims
        problem = next(_problems(claims, self.issuer, self.client_id, nonce, subject, self.leeway, time.time()), None)
        if problem is not None:
            raise self._rejected(problem.reason, problem.detail)
        return AccessIdentity(
            subject=claims["sub"],
            issuer=self.issuer,
            expires_at=int(claims["exp"]),
            email=claims["email"].lower(),
            groups=read_groups(claims),
            claims=MappingProxyType(claims),
        )

    def _rejected(self, reason: IdTokenReason, detail: str) -> IdTokenRejected:
        self._log(reason, detail)
        return IdTokenRejected(reason, detail)

    def _log(self, reason: str, detail: str) -> None:
        logger.warning(
            "refused an id_token from Access for SaaS (%s): %s",
            reason,
            detail,
            extra={"layer": _LAYER, "decision": "deny", "reason": reason},
        )
