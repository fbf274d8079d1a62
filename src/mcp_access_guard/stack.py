"""`guard()`: the layers around an app, outermost first, in DESIGN.md's order."""

from __future__ import annotations

import logging
from operator import itemgetter, methodcaller

from starlette.types import ASGIApp, Receive, Scope, Send

from .config import ConfigError
from .limits import FailedCredentialLimit
from .middleware.access import AccessJWTMiddleware
from .middleware.body_size import BodySizeLimitMiddleware
from .middleware.budget import RequestBudgetMiddleware
from .middleware.cors import CORSAllowlistMiddleware
from .middleware.oauth import OAuthBearerMiddleware, OAuthEndpointsMiddleware
from .middleware.paths import HEALTH_PATH, PathAllowlistMiddleware
from .middleware.service_token import CLIENT_ID_HEADER, CLIENT_SECRET_HEADER, ServiceTokenMiddleware
from .middleware.sse import SSESessionMiddleware
from .middleware.tools import ToolPolicyMiddleware, websocket_routes
from .oauth.server import OAuthServer
from .oauth.store import MemoryStore
from .settings import GuardConfig

logger = logging.getLogger("mcp_access_guard")


def guard(app: ASGIApp, config: GuardConfig) -> ASGIApp:
    """Wrap `app` so a request passes body size -> paths -> CORS -> shared secret -> Access JWT -> tool policy -> app,
    or in OAuth mode body size -> paths -> CORS -> shared secret -> the authorization server's endpoints -> OAuth
    bearer -> tool policy -> app. With no shared secret configured, that layer's place only takes the service-token
    headers off. Behind the credential layer come the principal's request budget (when configured) and the binding of
    each HTTP+SSE session to the caller who opened it.

    One `FailedCredentialLimit` is shared by every layer that checks a guessable credential (shared secret, direct
    pairs, client authentication at /token and /revoke, bearer tokens). In OAuth mode with a SQLite or Redis store
    it counts there, so replicas count together.

    Built from the inside out: the last layer wrapped is the first a request meets.
    """
    if config.tools is not None:
        uninspectable = websocket_routes(app)
        if uninspectable:
            raise ConfigError(
                f"the tool policy cannot inspect the WebSocket transport, which this app serves at {uninspectable}: "
                "serve MCP over streamable HTTP or HTTP+SSE, or leave the tool policy out"
            )
        app = ToolPolicyMiddleware(app, config.tools, max_body_bytes=config.max_body_bytes)
    app = SSESessionMiddleware(app)
    if config.limits.requests_per_minute:
        # Right behind the credential layer, which binds the principal it counts, and before anything else is done.
        app = RequestBudgetMiddleware(app, config.limits.requests_per_minute)
    allowed_paths = config.paths.allow if config.paths is not None else ()
    own_origins: tuple[str, ...] = ()
    settings = config.limits
    limits = FailedCredentialLimit(
        settings.failed_credentials,
        settings.failure_window,
        tracked=settings.tracked_addresses,
        trusted_proxies=settings.trusted_proxies,
    )
    if config.oauth is not None:
        server = OAuthServer(config.oauth, limits=limits)
        if not isinstance(server.store, MemoryStore):
            # A MemoryStore is this process's alone (and sweeps its counters only when values are written).
            limits.count_in(server.store)
        app = OAuthEndpointsMiddleware(OAuthBearerMiddleware(app, server, limits=limits), server)
        # The authorization server's own endpoints are served, and its consent form posts from its own origin.
        allowed_paths = (*allowed_paths, *sorted(server.PATHS))
        own_origins = (config.oauth.public_url,)
    elif config.access is not None:
        app = AccessJWTMiddleware(
            app,
            config=config.access,
            allow=config.allow,
            cookie=config.cookie,
            www_authenticate=config.www_authenticate,
        )
    else:
        logger.warning("dev mode: no Cloudflare Access verification, this server answers anyone who reaches it")
    secret = config.service_token
    if secret.enabled:
        app = ServiceTokenMiddleware(
            app,
            header=secret.header,
            secrets=secret.secrets,
            client_credentials=secret.client_credentials,
            limits=limits,
        )
    else:
        app = DropServiceTokenHeaders(app)
    if config.cors is not None:
        cors = config.cors
        app = CORSAllowlistMiddleware(
            app,
            allow_origins=cors.allow_origins,
            allowed_hosts=cors.allowed_hosts,
            extra_origins=(*cors.extra_origins, *own_origins),
            allow_credentials=cors.allow_credentials,
            trust_forwarded_host=cors.trust_forwarded_host,
        )
    if config.paths is not None:
        # Taking /health off the list takes it off the server, whatever `health` says.
        health = config.paths.health and HEALTH_PATH in config.paths.allow
        app = PathAllowlistMiddleware(app, allow=allowed_paths, health=health)
    # Outermost, even outside the path allow-list: a framing that two hops could read differently (two lengths, a
    # length beside chunked) is refused before any layer interprets the request, on every path; and a 404 reads no
    # body either way, so being outside it costs a header scan, not a read.
    return BodySizeLimitMiddleware(app, config.max_body_bytes)


_SERVICE_TOKEN_HEADERS = frozenset({CLIENT_ID_HEADER.encode(), CLIENT_SECRET_HEADER.encode()})
_name = itemgetter(0)
_lower = methodcaller("lower")


class DropServiceTokenHeaders:
    """With the service-token layer off, `CF-Access-Client-Id` and `-Secret` still never reach the app, as with it
    on: a credential that nothing here checks is not the app's to read, log or pass on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = scope["headers"]
            # ASGI names are lower-case bytes; one that is not still must not slip through. Scanned in C (`map`),
            # not with a generator: this runs on every request.
            if not _SERVICE_TOKEN_HEADERS.isdisjoint(map(_lower, map(_name, headers))):
                kept = [(name, value) for name, value in headers if name.lower() not in _SERVICE_TOKEN_HEADERS]
                scope = {**scope, "headers": kept}
        await self.app(scope, receive, send)
