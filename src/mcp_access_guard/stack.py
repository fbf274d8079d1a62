"""`guard()`: the five layers around an app, outermost first, in DESIGN.md's order."""

from __future__ import annotations

import logging

from starlette.types import ASGIApp

from .middleware.access import AccessJWTMiddleware
from .middleware.cors import CORSAllowlistMiddleware
from .middleware.paths import HEALTH_PATH, PathAllowlistMiddleware
from .middleware.service_token import ServiceTokenMiddleware
from .middleware.tools import ToolPolicyMiddleware
from .settings import GuardConfig

logger = logging.getLogger("mcp_access_guard")


def guard(app: ASGIApp, config: GuardConfig) -> ASGIApp:
    """Wrap `app` so a request passes paths -> CORS -> shared secret -> Access JWT -> tool policy -> app.

    Built from the inside out: the last layer wrapped is the first a request meets.
    """
    if config.tools is not None:
        app = ToolPolicyMiddleware(app, config.tools, max_body_bytes=config.max_body_bytes)
    if config.access is not None:
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
    if config.cors is not None:
        cors = config.cors
        app = CORSAllowlistMiddleware(
            app,
            allow_origins=cors.allow_origins,
            allowed_hosts=cors.allowed_hosts,
            extra_origins=cors.extra_origins,
            allow_credentials=cors.allow_credentials,
            trust_forwarded_host=cors.trust_forwarded_host,
        )
    if config.paths is not None:
        # Taking /health off the list takes it off the server, whatever `health` says.
        health = config.paths.health and HEALTH_PATH in config.paths.allow
        app = PathAllowlistMiddleware(app, allow=config.paths.allow, health=health)
    return app
