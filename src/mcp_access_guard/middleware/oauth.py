"""OAuth mode's two layers: the authorization server's endpoints in front of the app, and the bearer check that
turns `Authorization: Bearer` into the same identity the Access JWT layer gives."""

from __future__ import annotations

import logging
import random
import time
from time import perf_counter

from cachetools import LRUCache
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import metrics
from ..audit import log_decision
from ..config import ConfigError
from ..identity import SCOPE_STATE_KEY, AccessIdentity, bind_identity
from ..limits import FailedCredentialLimit
from ..oauth.errors import UpstreamUnavailable
from ..oauth.grants import BearerGrant, InvalidBearer
from ..oauth.server import OAuthServer
from ..oauth.store import StoreUnavailable
from ..policy import Rule

logger = logging.getLogger("mcp_access_guard")

_LAYER = "oauth_bearer"
# A revocation in another process is seen here when the cached lookup expires (this process's own at once): never
# later than this.
MAX_CACHE_TTL = 300.0
_AUTHORIZATION = b"authorization"
_BODY = {401: "unauthorized", 403: "forbidden", 503: "unavailable"}
# The bearer refusals that look like guessing, and count against the address's limit on failed credentials.
_GUESSES = frozenset({"malformed", "unknown"})
_WEBSOCKET_CLOSE = {401: 1008, 403: 1008, 503: 1013}


class OAuthEndpointsMiddleware:
    """Requests for the authorization server's paths (`server.PATHS`) go to `server`; everything else to `app`.

    On the ASGI lifespan it reads Access's discovery document once the app has started (a wrong issuer fails the
    start-up; Access out of reach is logged and tried again at the first login) and closes the server at shutdown.
    """

    def __init__(self, app: ASGIApp, server: OAuthServer) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
            return
        if scope["type"] in ("http", "websocket") and scope["path"] in self.server.PATHS:
            await self.server(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _lifespan_send(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                try:
                    await self.server.start()
                except UpstreamUnavailable:
                    logger.warning(
                        "Access for SaaS cannot be reached at start-up; the first login will try again",
                        extra={"layer": _LAYER},
                    )
                except ConfigError as misconfigured:
                    await send({"type": "lifespan.startup.failed", "message": str(misconfigured)})
                    return
            elif message["type"] == "lifespan.shutdown.complete":
                await self.server.aclose()
            await send(message)

        return lifespan_send


class _MalformedAuthorization(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OAuthBearerMiddleware:
    """Lets a request through only with a valid access token of `server` in `Authorization: Bearer` (never a query
    parameter or a cookie), for a caller the server's `allow` rule (and this layer's own `allow`, when given)
    admits, re-checked on every request.

    The identity is bound exactly as the Access JWT layer binds it (`current_identity()`, the mcp SDK's auth
    context, `scope["state"]`), with `oauth_client_id` set; the Authorization header is removed before the app.
    Token lookups are cached for up to `cache_ttl` seconds (at most `cache_size` tokens; each entry a random part of
    a quarter less, so that entries made together do not expire together): that is how long a grant revoked by
    another process stays usable here; one revoked by this process is dropped at once. `cache_ttl=0` turns the cache
    off.

    No token: 401 with `WWW-Authenticate: Bearer resource_metadata=...`. A bad, expired or revoked token: 401 with
    `error="invalid_token"` (`invalid_request` for a malformed header). Refused by `allow`: 403. Store down: 503.
    With `limits`, each token that is not one of ours (malformed, or never issued) counts against the caller's
    address, and an address past the limit gets 429 before its token is even read. Our own tokens, expired, revoked
    or for another resource, do not count: clients present those in the ordinary course.
    """

    def __init__(
        self,
        app: ASGIApp,
        server: OAuthServer,
        *,
        allow: Rule | None = None,
        cache_ttl: float = 5.0,
        cache_size: int = 10_000,
        limits: FailedCredentialLimit | None = None,
    ) -> None:
        if not 0 <= cache_ttl <= MAX_CACHE_TTL or cache_size < 1:
            raise ConfigError(
                f"OAuthBearerMiddleware: cache_ttl must be 0 to {MAX_CACHE_TTL:g} seconds, cache_size 1 or more"
            )
        self.app = app
        self.server = server
        self.rules = tuple(rule for rule in (server.config.allow, allow) if rule is not None)
        # Looked-up grants, each with the moment (monotonic) it must be looked up again.
        self._cache: LRUCache[str, tuple[BearerGrant, float]] | None = (
            LRUCache(maxsize=cache_size) if cache_ttl > 0 else None
        )
        self._cache_ttl = cache_ttl
        self._challenge = f'Bearer resource_metadata="{server.resource_metadata_url}"'
        self.limits = limits
        if self._cache is not None:
            metrics.watch_cache("oauth_bearer_tokens", self, lambda layer: len(layer._cache or ()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        limits = self.limits
        if limits is not None:
            blocked = limits.refusal(scope, layer=_LAYER)
            if blocked is not None:
                await blocked(scope, receive, send)
                return
        try:
            token, other_headers = _bearer_token(scope)
        except _MalformedAuthorization as malformed:
            log_decision(scope, layer=_LAYER, decision="deny", reason=malformed.reason)
            await self._refuse(401, scope, receive, send, error="invalid_request")
            return
        if token is None:
            bound = scope.get("state", {}).get(SCOPE_STATE_KEY)
            if bound is not None and bound.is_service_token:
                # A direct CF-Access-Client-Id/Secret pair the service-token layer has checked: machines keep using it.
                await self._admit(scope, receive, send, bound, "service_token_pair")
                return
            log_decision(scope, layer=_LAYER, decision="deny", reason="missing")
            await self._refuse(401, scope, receive, send)
            return
        try:
            grant = await self._grant(token)
        except InvalidBearer as invalid:
            log_decision(scope, layer=_LAYER, decision="deny", reason=invalid.reason)
            if limits is not None and invalid.reason in _GUESSES:
                await limits.failed(scope)
            await self._refuse(401, scope, receive, send, error="invalid_token")
            return
        except StoreUnavailable as failure:
            logger.error("the OAuth store is unavailable: %s", failure, extra={"layer": _LAYER})
            log_decision(scope, layer=_LAYER, decision="deny", reason="store_unavailable")
            await self._refuse(503, scope, receive, send)
            return
        # The bearer is ours: it never reaches the app, and so never tool code or a downstream call.
        await self._admit({**scope, "headers": other_headers}, receive, send, grant.identity, "verified")

    async def _admit(self, scope: Scope, receive: Receive, send: Send, identity: AccessIdentity, reason: str) -> None:
        if self.rules and not all(rule.matches(identity) for rule in self.rules):
            log_decision(scope, layer=_LAYER, decision="deny", reason="not_allowed", principal=identity.principal)
            await self._refuse(403, scope, receive, send)
            return
        log_decision(scope, layer=_LAYER, decision="allow", reason=reason, principal=identity.principal)
        with bind_identity(scope, identity):
            await self.app(scope, receive, send)

    async def _grant(self, token: str) -> BearerGrant:
        started = perf_counter()
        path = "cached"
        cache = self._cache
        try:
            # Keyed by the token itself, as the Access JWT layer's cache is: this process holds it anyway while the
            # request lasts; the store only ever sees its hash.
            if cache is not None and (entry := cache.get(token)) is not None:
                grant, look_again_at = entry
                if grant.grant_id in self.server.grants.revoked:
                    cache.pop(token, None)
                    raise InvalidBearer("revoked")
                if grant.expires_at <= time.time():
                    cache.pop(token, None)
                    raise InvalidBearer("expired")
                if time.monotonic() < look_again_at:
                    metrics.verification(_LAYER, path, "ok", started)
                    return grant
            path = "fresh"
            grant = await self.server.authenticate_bearer(token)
        except InvalidBearer as invalid:
            metrics.verification(_LAYER, path, invalid.reason, started)
            raise
        except StoreUnavailable:
            metrics.verification(_LAYER, path, "store_unavailable", started)
            raise
        if cache is not None:
            # Up to a quarter less, at random: entries made together (clients reconnecting at once) would otherwise
            # all go back to the store together, every cache_ttl, and queue there.
            cache[token] = (grant, time.monotonic() + self._cache_ttl * (1 - random.random() / 4))  # noqa: S311
        metrics.verification(_LAYER, path, "ok", started)
        return grant

    async def _refuse(self, status: int, scope: Scope, receive: Receive, send: Send, error: str | None = None) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": _WEBSOCKET_CLOSE[status]})
            return
        headers = {}
        if status == 401:
            headers["WWW-Authenticate"] = (
                f'Bearer error="{error}", resource_metadata="{self.server.resource_metadata_url}"'
                if error is not None
                else self._challenge
            )
        await JSONResponse({"error": _BODY[status]}, status_code=status, headers=headers)(scope, receive, send)


def _bearer_token(scope: Scope) -> tuple[str | None, list[tuple[bytes, bytes]]]:
    """The bearer token, if one came, and the headers without it (this runs on every request: one pass to find it,
    slices for the rest)."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    found = -1
    for position, (name, _) in enumerate(headers):
        if name == _AUTHORIZATION:
            if found >= 0:
                raise _MalformedAuthorization("several_authorization_headers")
            found = position
    if found < 0:
        return None, headers
    scheme, _, token = headers[found][1].decode("latin-1").partition(" ")
    if scheme.lower() != "bearer":
        raise _MalformedAuthorization("not_bearer")
    token = token.strip(" ")
    if not token or " " in token:
        raise _MalformedAuthorization("malformed")
    return token, headers[:found] + headers[found + 1 :]
