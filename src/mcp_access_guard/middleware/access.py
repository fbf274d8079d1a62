"""Verifies the `Cf-Access-Jwt-Assertion` that Cloudflare Access attaches, and hands the caller's identity on."""

from __future__ import annotations

from starlette.requests import cookie_parser
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..audit import log_decision
from ..config import AccessConfig, ConfigError
from ..identity import bind_identity
from ..policy import Rule
from ..verifier import AccessDenied, AccessVerifier

ASSERTION_HEADER = b"cf-access-jwt-assertion"
ASSERTION_COOKIE = "CF_Authorization"
_LAYER = "access_jwt"

# 401 only when no credential came at all; 503 when we cannot tell, so that nothing is cached as a refusal.
_STATUS = {"missing": 401, "keys_unavailable": 503}
_BODY = {401: "unauthorized", 403: "forbidden", 503: "unavailable"}
# Close codes for a websocket refused before it is accepted: policy violation, or try again later.
_WEBSOCKET_CLOSE = {401: 1008, 403: 1008, 503: 1013}


class AccessJWTMiddleware:
    """Lets a request through only with a valid Access application token (and, if `allow` is set, a caller it
    matches). Identity reaches the app as `current_identity()`, `scope["state"]["access_identity"]`, and the mcp
    SDK's auth context."""

    def __init__(
        self,
        app: ASGIApp,
        verifier: AccessVerifier | None = None,
        *,
        config: AccessConfig | None = None,
        allow: Rule | None = None,
        cookie: bool = False,
        www_authenticate: str | None = None,
    ) -> None:
        if verifier is None:
            if config is None:
                raise ConfigError("AccessJWTMiddleware needs a verifier or a config: it cannot check tokens without")
            verifier = AccessVerifier(config)
        self.app = app
        self.verifier = verifier
        self.allow = allow
        self.cookie = cookie
        # Off by default: behind Access Managed OAuth the client's challenge must come from Cloudflare, not us.
        self.www_authenticate = www_authenticate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            identity = await self.verifier.verify(self._credential(scope))
        except AccessDenied as denied:
            log_decision(scope, layer=_LAYER, decision="deny", reason=denied.reason)
            await self._refuse(_STATUS.get(denied.reason, 403), scope, receive, send)
            return
        if self.allow is not None and not self.allow.matches(identity):
            log_decision(scope, layer=_LAYER, decision="deny", reason="not_allowed", principal=identity.principal)
            await self._refuse(403, scope, receive, send)
            return
        log_decision(scope, layer=_LAYER, decision="allow", reason="verified", principal=identity.principal)
        with bind_identity(scope, identity):
            await self.app(scope, receive, send)

    def _credential(self, scope: Scope) -> str | None:
        # One pass over the raw headers (names are lower-case bytes in ASGI): this runs on every request.
        assertion: bytes | None = None
        cookies: list[bytes] = []
        for name, value in scope["headers"]:
            if name == ASSERTION_HEADER:
                if assertion is not None:
                    raise AccessDenied("malformed", "more than one assertion header")
                assertion = value
            elif name == b"cookie":
                cookies.append(value)
        if assertion is not None:
            return assertion.decode("latin-1")
        if self.cookie and cookies:
            return cookie_parser(b"; ".join(cookies).decode("latin-1")).get(ASSERTION_COOKIE)
        return None

    async def _refuse(self, status: int, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": _WEBSOCKET_CLOSE[status]})
            return
        headers = {"WWW-Authenticate": self.www_authenticate} if status == 401 and self.www_authenticate else None
        await JSONResponse({"error": _BODY[status]}, status_code=status, headers=headers)(scope, receive, send)
