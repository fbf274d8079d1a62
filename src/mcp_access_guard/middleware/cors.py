"""CORS for MCP clients in the browser, plus the Origin and Host checks the MCP specification asks for.

Preflights and CORS response headers come from Starlette's `CORSMiddleware`; this layer adds what plain CORS does
not do: a request that carries an Origin not on the list is refused outright (DNS rebinding), and optionally so is
a Host that is not ours.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from typing import NamedTuple

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..audit import log_decision

LAYER = "cors"

DEFAULT_MCP_ORIGINS: tuple[str, ...] = (
    "https://claude.ai",
    "https://mcp.claude.ai",
    "https://chatgpt.com",
    "https://chat.openai.com",
    "https://platform.openai.com",
)
MCP_METHODS = ("GET", "POST", "DELETE", "OPTIONS")
MCP_REQUEST_HEADERS = (
    "Content-Type",
    "Authorization",
    "Accept",
    "Mcp-Session-Id",
    "Mcp-Protocol-Version",
    "Mcp-Method",
    "Mcp-Name",
    "Last-Event-ID",
)
MCP_EXPOSED_HEADERS = ("Mcp-Session-Id",)

# An origin as browsers serialise it: scheme, host, optional port; no path, no trailing slash.
_ORIGIN = re.compile(r"https?://(\[[0-9a-f:.]+\]|[a-z0-9\-.]+)(:[0-9]{1,5})?")
# Host names are whole DNS labels (no empty label, no trailing dot) or a bracketed IPv6 literal, lower-cased first.
_LABEL = r"[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?"
_NAME = rf"{_LABEL}(?:\.{_LABEL})*|\[[0-9a-f:.]+\]"
_PORT = r"(?::(?P<port>[0-9]{1,5}))?"
_HOST = re.compile(rf"(?P<name>{_NAME}){_PORT}")
_HOST_PATTERN = re.compile(rf"(?P<name>(?:\*\.)?{_NAME}){_PORT}")


class HostPattern(NamedTuple):
    name: str
    port: str | None

    @classmethod
    def parse(cls, pattern: str) -> HostPattern:
        match = _HOST_PATTERN.fullmatch(pattern.lower())
        if match is None:
            raise ValueError(f"allowed host {pattern!r} must be a name, [IPv6] or '*.domain', with an optional :port")
        return cls(match["name"], match["port"])

    def matches(self, name: str, port: str | None) -> bool:
        # A pattern without a port accepts any port (the proxy in front decides it); one with a port only that port.
        if self.port is not None and port != self.port:
            return False
        if self.name.startswith("*."):
            return name.endswith(self.name[1:])  # "*.example.com": one label or more, never the apex itself
        return name == self.name


def _validated_origins(origins: Iterable[str]) -> tuple[str, ...]:
    validated = []
    for origin in origins:
        normalised = origin.lower()
        # "null" (sandboxed frames, file: pages) is accepted only when listed; "*" would undo the rebinding check.
        if normalised != "null" and not _ORIGIN.fullmatch(normalised):
            raise ValueError(f"origin {origin!r} must be scheme://host[:port] with no path, or 'null'; no wildcards")
        validated.append(normalised)
    return tuple(validated)


def _is_allowed_host(values: list[str], patterns: Iterable[HostPattern]) -> bool:
    # Two Host headers, or a comma-joined X-Forwarded-Host chain, are ambiguous: refused, never guessed at.
    match = _HOST.fullmatch(values[0].lower()) if len(values) == 1 else None
    return match is not None and any(pattern.matches(match["name"], match["port"]) for pattern in patterns)


def _forbidden_origin() -> JSONResponse:
    return JSONResponse({"error": "origin_not_allowed"}, status_code=403, headers={"Vary": "Origin"})


class CORSAllowlistMiddleware:
    """Answer CORS preflights for allowed origins, refuse other origins with 403 and, optionally, other hosts with 421.

    A request with no `Origin` (a non-browser client) passes. With `trust_forwarded_host`, `X-Forwarded-Host` (set by
    a proxy you trust to overwrite it) is checked instead of `Host` when present.
    """

    def __init__(
        self,
        app: ASGIApp,
        allow_origins: Iterable[str] = DEFAULT_MCP_ORIGINS,
        allowed_hosts: Collection[str] | None = None,
        *,
        extra_origins: Iterable[str] = (),
        allow_credentials: bool = False,
        trust_forwarded_host: bool = False,
    ) -> None:
        if isinstance(allowed_hosts, str):
            raise ValueError("allowed_hosts must be a list of host names, not one string")
        self.app = app
        self.allow_origins = frozenset(_validated_origins([*allow_origins, *extra_origins]))
        self.allowed_hosts = None if allowed_hosts is None else tuple(HostPattern.parse(h) for h in allowed_hosts)
        self.trust_forwarded_host = trust_forwarded_host
        self.cors = CORSMiddleware(
            app,
            allow_origins=self.allow_origins,
            allow_methods=MCP_METHODS,
            allow_headers=MCP_REQUEST_HEADERS,
            allow_credentials=allow_credentials,
            expose_headers=MCP_EXPOSED_HEADERS,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        headers = Headers(scope=scope)
        if self.allowed_hosts is not None and not _is_allowed_host(self._host_values(headers), self.allowed_hosts):
            log_decision(scope, layer=LAYER, decision="deny", reason="host_not_allowed")
            await JSONResponse({"error": "misdirected_request"}, status_code=421)(scope, receive, send)
            return

        origins = headers.getlist("origin")
        if len(origins) > 1 or (origins and origins[0] not in self.allow_origins):
            log_decision(scope, layer=LAYER, decision="deny", reason="origin_not_allowed")
            await _forbidden_origin()(scope, receive, send)
            return

        is_preflight = bool(origins) and scope.get("method") == "OPTIONS" and "access-control-request-method" in headers
        if is_preflight:
            await self.cors(scope, receive, self._preflight_send(scope, send))
            return

        log_decision(scope, layer=LAYER, decision="allow", reason="origin_allowed" if origins else "no_origin")
        await self.cors(scope, receive, send)

    def _host_values(self, headers: Headers) -> list[str]:
        if self.trust_forwarded_host and "x-forwarded-host" in headers:
            return headers.getlist("x-forwarded-host")
        return headers.getlist("host")

    def _preflight_send(self, scope: Scope, send: Send) -> Send:
        # Starlette answers a preflight with a disallowed method or header 400 but keeps its Access-Control-* headers;
        # a refusal should carry none, so the browser gets nothing it could misread as permission.
        async def send_preflight(message: Message) -> None:
            if message["type"] == "http.response.start":
                allowed = message["status"] == 200
                reason = "preflight_allowed" if allowed else "preflight_refused"
                log_decision(scope, layer=LAYER, decision="allow" if allowed else "deny", reason=reason)
                if not allowed:
                    headers = MutableHeaders(scope=message)
                    for name in {key for key in headers if key.startswith("access-control-")}:
                        del headers[name]
            await send(message)

        return send_preflight
