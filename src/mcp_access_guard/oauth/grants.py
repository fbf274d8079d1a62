"""Grants and the tokens issued under them: creating one at the callback, redeeming its code, rotating its refresh
token, revoking it, and looking up a bearer.

Every step that must happen once, whichever process gets there first, is one atomic store operation: a code is
spent by a compare-and-swap (so a second redemption is recognised, and revokes the grant), and a refresh claims the
grant record by a compare-and-swap before it goes upstream (so concurrent refreshes produce one rotation).
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, TypeVar

import anyio
from cachetools import LRUCache

from .. import metrics
from ..identity import AccessIdentity
from ..policy import Rule
from .config import OAuthConfig
from .crypto import DecryptionError, ValueCipher
from .errors import IdTokenRejected, UpstreamError, UpstreamRefused, UpstreamUnavailable
from .records import (
    ACCESS_TOKEN_PREFIX,
    CODE_PREFIX,
    REFRESH_TOKEN_PREFIX,
    AccessTokenRecord,
    CodeRecord,
    GrantRecord,
    Record,
    RefreshTokenRecord,
    access_token_key,
    code_challenge_of,
    code_key,
    grant_key,
    mint,
    refresh_token_key,
    well_formed,
)
from .store import OAuthStore
from .upstream import AccessOIDC

logger = logging.getLogger("mcp_access_guard")

R = TypeVar("R", bound=Record)
_LAYER = "oauth_token"
# An authorization code is good for this long; once spent it is remembered this long, to recognise a replay.
CODE_TTL = 120
CODE_REPLAY_WINDOW = 600
# The refresh token just replaced, presented again within this many seconds, gets the same answer again (a client
# that lost the answer to a network error retries); later, it is a reuse and revokes the grant.
REFRESH_GRACE = 30
# A refresh in progress holds the grant this long at most (the upstream refresh has its own, shorter, timeout);
# a process that died meanwhile leaves a claim that the next refresh takes over.
ROTATION_CLAIM_SECONDS = 30
_ROTATION_POLL = 0.05
# How many of the grants it revoked this process remembers, so the bearer layer's cache drops their tokens at once.
REVOCATION_MEMORY = 10_000
# Claims of the id_token not kept with the grant: one-time values of the login.
_LOGIN_ONLY_CLAIMS = ("nonce", "at_hash", "c_hash", "auth_time")


class TokenRefused(Exception):
    """The token endpoint's refusal: the OAuth `error`, a fixed description, the status, and the reason logged."""

    def __init__(self, error: str, reason: str, *, status: int = 400, description: str | None = None) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason
        self.status = status
        self.description = description or _DESCRIPTIONS.get(error, "the request was refused")


_DESCRIPTIONS = {
    "invalid_grant": "the grant is invalid, expired or revoked",
    "invalid_target": "the resource is not this server's",
    "invalid_scope": "the scope is beyond what was granted",
    "temporarily_unavailable": "try again shortly",
    "server_error": "the login provider refused the refresh",
}


# How long an access token's record outlives the token: a client presenting its own expired token is told
# `expired`, not `unknown`, so it is not counted as guessing against its address's limit on failed credentials.
EXPIRED_TOKEN_MEMORY = 86_400


class InvalidBearer(Exception):
    """A bearer token that does not authorise a request. `reason` is one stable string: malformed, unknown,
    expired, revoked, wrong_resource."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class BearerGrant:
    """What a valid access token stands for."""

    identity: AccessIdentity
    client_id: str
    resource: str
    expires_at: float
    grant_id: str


@dataclass(frozen=True, slots=True)
class IssuedTokens:
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_in: int
    scope: str

    def answer(self) -> dict[str, Any]:
        """The token endpoint's JSON (RFC 6749 5.1)."""
        document: dict[str, Any] = {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
        }
        if self.scope:
            document["scope"] = self.scope
        return document


class Grants:
    """The grant side of the authorization server, on one store."""

    def __init__(
        self,
        config: OAuthConfig,
        store: OAuthStore,
        upstream: AccessOIDC,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self._upstream = upstream
        self._clock = clock
        self._upstream_refresh = ValueCipher(config.secret_key, "upstream-refresh-token")
        self._reissue = ValueCipher(config.secret_key, "refresh-reissue")
        # Grants this process revoked lately (the latest REVOCATION_MEMORY): the bearer layer's cache drops their
        # tokens at once here; other processes see the revocation when their cached entry expires. A plain bounded
        # map: the bearer layer asks it on every request.
        self.revoked: LRUCache[str, bool] = LRUCache(maxsize=REVOCATION_MEMORY)

    # -- the callback: a new grant and its code ----------------------------------------------------------------

    async def create(
        self,
        *,
        client_id: str,
        identity: AccessIdentity,
        scopes: Iterable[str],
        resource: str,
        redirect_uri: str,
        redirect_uri_sent: bool,
        code_challenge: str,
        upstream_refresh_token: str | None,
    ) -> str:
        """Store a grant for `identity` and return our authorization code for it."""
        grant_id = secrets.token_urlsafe(18)
        key = grant_key(grant_id)
        claims = {name: value for name, value in identity.claims.items() if name not in _LOGIN_ONLY_CLAIMS}
        grant = GrantRecord(
            grant_id=grant_id,
            client_id=client_id,
            resource=resource,
            scopes=tuple(scopes),
            subject=identity.subject,
            email=identity.email or "",
            groups=tuple(identity.groups),
            issuer=identity.issuer,
            claims=claims,
            created_at=self._clock(),
            refresh_key=None,
            previous_refresh_key=None,
            rotated_at=0.0,
            rotating_since=None,
            reissue=None,
            upstream_refresh=self._seal_upstream(upstream_refresh_token, key),
        )
        # Until its code is redeemed, the grant lives as long as the code.
        await self.store.put(key, grant.to_bytes(), ttl=CODE_TTL)
        code = mint(CODE_PREFIX)
        record = CodeRecord(
            grant_id=grant_id,
            client_id=client_id,
            redirect_uri=redirect_uri,
            redirect_uri_sent=redirect_uri_sent,
            code_challenge=code_challenge,
            resource=resource,
            spent=False,
        )
        await self.store.put(code_key(code), record.to_bytes(), ttl=CODE_TTL)
        return code

    # -- /token: the authorization code ------------------------------------------------------------------------

    async def redeem(
        self, code: str, *, client_id: str, redirect_uri: str | None, code_verifier: str, resource: str | None
    ) -> IssuedTokens:
        """Tokens for a code, once. Everything is checked before anything is written; a code presented after it
        was spent revokes its grant (RFC 6749 4.1.2)."""
        if not well_formed(code, CODE_PREFIX):
            raise TokenRefused("invalid_grant", "malformed_code")
        key = code_key(code)
        raw = await self.store.get(key)
        record = _read(CodeRecord, raw)
        if raw is None or record is None:
            raise TokenRefused("invalid_grant", "unknown_code")
        if record.spent:
            metrics.replay("authorization_code")
            await self.revoke(record.grant_id, "code_replayed")
            raise TokenRefused("invalid_grant", "code_replayed")
        if record.client_id != client_id:
            raise TokenRefused("invalid_grant", "code_of_another_client")
        if record.redirect_uri_sent and redirect_uri != record.redirect_uri:
            raise TokenRefused("invalid_grant", "wrong_redirect_uri")
        if not record.redirect_uri_sent and redirect_uri is not None and redirect_uri != record.redirect_uri:
            raise TokenRefused("invalid_grant", "wrong_redirect_uri")
        if not secrets.compare_digest(code_challenge_of(code_verifier), record.code_challenge):
            raise TokenRefused("invalid_grant", "wrong_code_verifier")
        if record.resource != self.config.resource:
            raise TokenRefused("invalid_grant", "code_for_another_resource")
        if resource is not None and resource != record.resource:
            raise TokenRefused("invalid_target", "wrong_resource")

        spent = replace(record, spent=True).to_bytes()
        if not await self.store.compare_and_swap(key, raw, spent, ttl=CODE_REPLAY_WINDOW):
            # Spent (or gone) between our read and now: another redemption won.
            metrics.replay("authorization_code")
            await self.revoke(record.grant_id, "code_replayed")
            raise TokenRefused("invalid_grant", "code_replayed")

        gkey = grant_key(record.grant_id)
        grant_raw = await self.store.get(gkey)
        grant = _read(GrantRecord, grant_raw)
        if grant_raw is None or grant is None or grant.refresh_key is not None:
            raise TokenRefused("invalid_grant", "grant_gone")
        return await self._issue(grant, grant_raw, previous_refresh_key=None)

    # -- /token: the refresh token -----------------------------------------------------------------------------

    async def refresh(
        self, refresh_token: str, *, client_id: str, resource: str | None, scope: str | None
    ) -> IssuedTokens:
        """A new pair for the current refresh token of a grant (rotation); the same pair again for the one just
        replaced, within REFRESH_GRACE; for any older one, the grant revoked."""
        if not well_formed(refresh_token, REFRESH_TOKEN_PREFIX):
            raise TokenRefused("invalid_grant", "malformed_refresh_token")
        token_key = refresh_token_key(refresh_token)
        index = _read(RefreshTokenRecord, await self.store.get(token_key))
        if index is None:
            raise TokenRefused("invalid_grant", "unknown_refresh_token")
        gkey = grant_key(index.grant_id)
        deadline = self._clock() + ROTATION_CLAIM_SECONDS
        while True:
            raw = await self.store.get(gkey)
            grant = _read(GrantRecord, raw)
            if raw is None or grant is None:
                raise TokenRefused("invalid_grant", "revoked")
            if grant.client_id != client_id:
                raise TokenRefused("invalid_grant", "refresh_token_of_another_client")
            if grant.resource != self.config.resource:
                raise TokenRefused("invalid_grant", "grant_for_another_resource")
            if resource is not None and resource != grant.resource:
                raise TokenRefused("invalid_target", "wrong_resource")
            if scope is not None and not set(scope.split()) <= set(grant.scopes):
                raise TokenRefused("invalid_scope", "scope_not_granted")
            now = self._clock()
            if grant.refresh_key == token_key:
                if grant.rotating_since is not None and now - grant.rotating_since < ROTATION_CLAIM_SECONDS:
                    # Another request, here or in another process, is rotating this grant: its answer will be ours.
                    if now > deadline:
                        raise TokenRefused("temporarily_unavailable", "rotation_in_progress", status=503)
                    await anyio.sleep(_ROTATION_POLL)
                    continue
                claimed = replace(grant, rotating_since=now)
                claimed_raw = claimed.to_bytes()
                if not await self.store.compare_and_swap(gkey, raw, claimed_raw, ttl=self.config.refresh_token_ttl):
                    continue
                return await self._rotate(claimed, claimed_raw, token_key)
            if grant.previous_refresh_key == token_key and now - grant.rotated_at <= REFRESH_GRACE:
                again = self._reissued(grant, gkey)
                if again is not None:
                    self._log("allow", "refresh_retried", grant)
                    return again
            metrics.replay("refresh_token")
            await self.revoke(grant.grant_id, "refresh_token_reused")
            raise TokenRefused("invalid_grant", "refresh_token_reused")

    async def _rotate(self, grant: GrantRecord, claimed_raw: bytes, token_key: str) -> IssuedTokens:
        gkey = grant_key(grant.grant_id)
        upstream_token = self._open_upstream(grant.upstream_refresh, gkey)
        if upstream_token is not None:
            try:
                tokens = await self._upstream.refresh(upstream_token, subject=grant.subject)
            except UpstreamRefused as refused:
                if refused.error == "invalid_grant":
                    await self.revoke(grant.grant_id, "upstream_invalid_grant")
                    raise TokenRefused("invalid_grant", "upstream_invalid_grant") from None
                await self._release(grant, claimed_raw)
                raise TokenRefused("server_error", "upstream_refused", status=502) from None
            except IdTokenRejected:
                await self.revoke(grant.grant_id, "upstream_id_token_rejected")
                raise TokenRefused("invalid_grant", "upstream_id_token_rejected") from None
            except UpstreamUnavailable:
                await self._release(grant, claimed_raw)
                raise TokenRefused("temporarily_unavailable", "upstream_unavailable", status=503) from None
            except UpstreamError:
                await self._release(grant, claimed_raw)
                raise TokenRefused("server_error", "upstream_invalid", status=502) from None
            identity = tokens.identity
            if identity is not None:
                grant = replace(
                    grant,
                    email=identity.email or grant.email,
                    groups=tuple(identity.groups),
                    claims={k: v for k, v in identity.claims.items() if k not in _LOGIN_ONLY_CLAIMS},
                )
            grant = replace(grant, upstream_refresh=self._seal_upstream(tokens.refresh_token, gkey))
        if not self.allows(grant):
            await self.revoke(grant.grant_id, "not_allowed")
            raise TokenRefused("invalid_grant", "not_allowed")
        return await self._issue(grant, claimed_raw, previous_refresh_key=token_key)

    async def _release(self, grant: GrantRecord, claimed_raw: bytes) -> None:
        released = replace(grant, rotating_since=None).to_bytes()
        await self.store.compare_and_swap(
            grant_key(grant.grant_id), claimed_raw, released, ttl=self.config.refresh_token_ttl
        )

    async def _issue(
        self, grant: GrantRecord, expected_raw: bytes, *, previous_refresh_key: str | None
    ) -> IssuedTokens:
        """Mint a pair, index it, then make it the grant's current pair; if the grant changed meanwhile (revoked),
        the pair is withdrawn."""
        config = self.config
        now = self._clock()
        access_token, refresh_token = mint(ACCESS_TOKEN_PREFIX), mint(REFRESH_TOKEN_PREFIX)
        issued = IssuedTokens(access_token, refresh_token, config.access_token_ttl, " ".join(grant.scopes))
        gkey = grant_key(grant.grant_id)
        at_key, rt_key = access_token_key(access_token), refresh_token_key(refresh_token)
        at_record = AccessTokenRecord(grant.grant_id, grant.client_id, grant.resource, now + config.access_token_ttl)
        await self.store.put(at_key, at_record.to_bytes(), ttl=config.access_token_ttl + EXPIRED_TOKEN_MEMORY)
        await self.store.put(rt_key, RefreshTokenRecord(grant.grant_id).to_bytes(), ttl=config.refresh_token_ttl)
        current = replace(
            grant,
            refresh_key=rt_key,
            previous_refresh_key=previous_refresh_key,
            rotated_at=now,
            rotating_since=None,
            reissue=self._seal_reissue(issued, gkey) if previous_refresh_key is not None else None,
        )
        if not await self.store.compare_and_swap(gkey, expected_raw, current.to_bytes(), ttl=config.refresh_token_ttl):
            await self.store.delete(at_key)
            await self.store.delete(rt_key)
            raise TokenRefused("invalid_grant", "revoked")
        (metrics.grant_issued if previous_refresh_key is None else metrics.grant_refreshed)()
        self._log("allow", "tokens_issued" if previous_refresh_key is None else "refresh_rotated", grant)
        return issued

    # -- revocation --------------------------------------------------------------------------------------------

    async def revoke(self, grant_id: str, reason: str) -> None:
        """Revoke a grant and every token issued under it."""
        await self.store.delete(grant_key(grant_id))
        self.revoked[grant_id] = True
        metrics.grant_revoked(reason)
        logger.warning(
            "OAuth grant revoked (%s)", reason, extra={"layer": _LAYER, "decision": "deny", "reason": reason}
        )

    async def revoke_token(self, token: str, *, client_id: str) -> None:
        """RFC 7009: either token of a grant revokes the whole grant; a token that is unknown, or another client's,
        is ignored (the endpoint answers 200 whatever)."""
        grant_id: str | None = None
        if well_formed(token, ACCESS_TOKEN_PREFIX):
            access = _read(AccessTokenRecord, await self.store.get(access_token_key(token)))
            grant_id = access.grant_id if access is not None and access.client_id == client_id else None
        elif well_formed(token, REFRESH_TOKEN_PREFIX):
            index = _read(RefreshTokenRecord, await self.store.get(refresh_token_key(token)))
            grant = None if index is None else _read(GrantRecord, await self.store.get(grant_key(index.grant_id)))
            grant_id = grant.grant_id if grant is not None and grant.client_id == client_id else None
        if grant_id is not None:
            await self.revoke(grant_id, "revoked_by_client")

    # -- the bearer layer ---------------------------------------------------------------------------------------

    async def bearer(self, token: str) -> BearerGrant:
        if not well_formed(token, ACCESS_TOKEN_PREFIX):
            raise InvalidBearer("malformed")
        access = _read(AccessTokenRecord, await self.store.get(access_token_key(token)))
        if access is None:
            raise InvalidBearer("unknown")
        if access.expires_at <= self._clock():
            raise InvalidBearer("expired")
        if access.resource != self.config.resource:
            raise InvalidBearer("wrong_resource")
        grant = _read(GrantRecord, await self.store.get(grant_key(access.grant_id)))
        if grant is None or grant.client_id != access.client_id or grant.refresh_key is None:
            raise InvalidBearer("revoked")
        return BearerGrant(
            identity=identity_of(grant, expires_at=access.expires_at),
            client_id=grant.client_id,
            resource=access.resource,
            expires_at=access.expires_at,
            grant_id=grant.grant_id,
        )

    def allows(self, grant: GrantRecord) -> bool:
        allow: Rule | None = self.config.allow
        return allow is None or allow.matches(identity_of(grant, expires_at=0))

    # -- sealing -----------------------------------------------------------------------------------------------

    def _seal_upstream(self, token: str | None, gkey: str) -> str | None:
        if token is None:
            return None
        return _b64(self._upstream_refresh.encrypt(token.encode(), bound_to=gkey))

    def _open_upstream(self, sealed: str | None, gkey: str) -> str | None:
        if sealed is None:
            return None
        try:
            return self._upstream_refresh.decrypt(_unb64(sealed), bound_to=gkey).decode()
        except (DecryptionError, ValueError):
            # Sealed under another COOKIE_ENCRYPTION_KEY: refresh here without the upstream one.
            logger.warning("a grant's upstream refresh token does not open", extra={"layer": _LAYER})
            return None

    def _seal_reissue(self, issued: IssuedTokens, gkey: str) -> str:
        plain = json.dumps([issued.access_token, issued.refresh_token, issued.expires_in, issued.scope]).encode()
        return _b64(self._reissue.encrypt(plain, bound_to=gkey))

    def _reissued(self, grant: GrantRecord, gkey: str) -> IssuedTokens | None:
        if grant.reissue is None:
            return None
        try:
            access_token, refresh_token, expires_in, scope = json.loads(
                self._reissue.decrypt(_unb64(grant.reissue), bound_to=gkey)
            )
        except (DecryptionError, ValueError):
            return None
        return IssuedTokens(access_token, refresh_token, expires_in, scope)

    def _log(self, decision: str, reason: str, grant: GrantRecord) -> None:
        logger.info(
            "OAuth %s for client %s",
            reason.replace("_", " "),
            grant.client_id,
            extra={"layer": _LAYER, "decision": decision, "reason": reason, "principal": grant.email},
        )


def identity_of(grant: GrantRecord, *, expires_at: float) -> AccessIdentity:
    return AccessIdentity(
        subject=grant.subject,
        issuer=grant.issuer,
        expires_at=int(expires_at),
        email=grant.email,
        groups=grant.groups,
        claims=MappingProxyType(dict(grant.claims)),
        oauth_client_id=grant.client_id,
    )


def _read(kind: type[R], raw: bytes | None) -> R | None:
    if raw is None:
        return None
    try:
        return kind.from_bytes(raw)
    except (ValueError, TypeError):
        logger.warning("an unreadable %s in the OAuth store is ignored", kind.__name__, extra={"layer": _LAYER})
        return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)
