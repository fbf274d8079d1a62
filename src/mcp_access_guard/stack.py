"""`guard()`: the five layers around an app, outermost first, in DESIGN.md's order."""

from __future__ import annotations

import logging
from operator import itemgetter, methodcaller

from starlette.types import ASGIApp, Receive, Scope, Send

from .config import ConfigError
from .middleware.access import AccessJWTMiddleware
from .middleware.cors import CORSAllowlistMiddleware
from .middleware.oauth import OAuthBearerMiddleware, OAuthEndpointsMiddleware
from .middleware.paths import HEALTH_PATH, PathAllowlistMiddleware
from .middleware.service_token import CLIENT_ID_HEADER, CLIENT_SECRET_HEADER, ServiceTokenMiddleware
from .middleware.sse import SSESessionMiddleware
from .middleware.tools import ToolPolicyMiddleware, websocket_routes
from .oauth.server import OAuthServer
from .settings import GuardConfig

logger = logging.getLogger("mcp_access_guard")


def guard(app: ASGIApp, config: GuardConfig) -> ASGIApp:
    """Wrap `app` so a request passes paths -> CORS -> shared secret -> Access JWT -> tool policy -> app, or in OAuth
    mode paths -> CORS -> shared secret -> the authorization server's endpoints -> OAuth bearer -> tool policy -> app.
    With no shared secret configured, that layer's place only takes the service-token headers off. Behind the
    credential layer, each HTTP+SSE session is bound to the caller who opened it.

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
    allowed_paths = config.paths.allow if config.paths is not None else ()
    own_origins: tuple[str, ...] = ()
    if config.oauth is not None:
        server = OAuthServer(config.oauth)
        app = OAuthEndpointsMiddleware(OAuthBearerMiddleware(app, server), server)
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
            app, header=secret.header, secrets=secret.secrets, client_credentials=secret.client_credentials
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
    return app


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
