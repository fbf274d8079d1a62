"""CORS for MCP clients in the browser, plus the Origin and Host checks the MCP specification asks for.

Preflights are answered by Starlette's `CORSMiddleware`; other requests get exactly the response headers it would
add, appended here (on every request, Starlette's general path costs several times as much). This layer adds what
plain CORS does not do: a request that carries an Origin not on the list is refused outright (DNS rebinding), and
optionally so is a Host that is not ours.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from typing import NamedTuple

from starlette.datastructures import MutableHeaders
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

# The request headers this layer reads, and the response headers Starlette's simple-request path sets.
_READ = frozenset((b"host", b"x-forwarded-host", b"origin", b"access-control-request-method"))
_SET_ON_RESPONSE = frozenset(
    (b"access-control-allow-origin", b"access-control-allow-credentials", b"access-control-expose-headers", b"vary")
)
_VARY_ORIGIN = (b"vary", b"Origin")


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


def validated_origins(origins: Iterable[str]) -> tuple[str, ...]:
    validated = []
    for origin in origins:
        normalised = origin.lower()
        # "null" (sandboxed frames, file: pages) is accepted only when listed; "*" would undo the rebinding check.
        if normalised != "null" and not _ORIGIN.fullmatch(normalised):
            raise ValueError(f"origin {origin!r} must be scheme://host[:port] with no path, or 'null'; no wildcards")
        validated.append(normalised)
    return tuple(validated)


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
        self.allow_origins = frozenset(validated_origins([*allow_origins, *extra_origins]))
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
        # Host values that match without parsing: a listed name with no wildcard, exactly as sent (lower-case).
        self._exact_hosts = frozenset(
            (pattern.name if pattern.port is None else f"{pattern.name}:{pattern.port}").encode()
            for pattern in self.allowed_hosts or ()
            if not pattern.name.startswith("*.")
        )
        # Per allowed origin, pre-encoded, the headers Starlette's CORSMiddleware appends to a simple response.
        simple = [(name.lower().encode(), value.encode()) for name, value in self.cors.simple_headers.items()]
        self._simple_headers = {
            origin.encode(): (*simple, (b"access-control-allow-origin", origin.encode()), _VARY_ORIGIN)
            for origin in self.allow_origins
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        # One pass over the raw headers (ASGI names are lower-case bytes) instead of a `Headers` and several scans.
        raw_headers = scope["headers"]
        if type(raw_headers) is not list:
            # As Starlette's `Headers(scope=...)` does: a tuple or one-shot iterable becomes a list others can reread.
            raw_headers = scope["headers"] = list(raw_headers)
        host = forwarded_host = origin = None
        host_count = forwarded_count = origin_count = 0
        has_request_method = False
        for name, value in raw_headers:
            if name not in _READ:
                continue
            if name == b"host":
                host, host_count = value, host_count + 1
            elif name == b"origin":
                origin, origin_count = value, origin_count + 1
            elif name == b"x-forwarded-host":
                forwarded_host, forwarded_count = value, forwarded_count + 1
            else:
                has_request_method = True

        if self.allowed_hosts is not None:
            if self.trust_forwarded_host and forwarded_count:
                host, host_count = forwarded_host, forwarded_count
            # Two Host headers, or two X-Forwarded-Host headers, are ambiguous: refused, never guessed at.
            if host is None or host_count > 1 or not self._is_allowed_host(host, self.allowed_hosts):
                log_decision(scope, layer=LAYER, decision="deny", reason="host_not_allowed")
                await JSONResponse({"error": "misdirected_request"}, status_code=421)(scope, receive, send)
                return

        if origin_count > 1 or (origin is not None and origin not in self._simple_headers):
            log_decision(scope, layer=LAYER, decision="deny", reason="origin_not_allowed")
            await _forbidden_origin()(scope, receive, send)
            return

        if origin is not None and has_request_method and scope.get("method") == "OPTIONS":
            await self.cors(scope, receive, self._preflight_send(scope, send))
            return

        log_decision(scope, layer=LAYER, decision="allow", reason="no_origin" if origin is None else "origin_allowed")
        if scope["type"] == "http":
            await self.app(scope, receive, self._simple_send(origin, send))
        else:
            await self.app(scope, receive, send)  # Starlette's CORSMiddleware passes websockets through untouched

    def _is_allowed_host(self, value: bytes, patterns: Iterable[HostPattern]) -> bool:
        if value in self._exact_hosts:  # the usual case: exactly a listed name, already lower-case
            return True
        # A comma-joined X-Forwarded-Host chain fails the pattern: as ambiguous as a repeated header.
        match = _HOST.fullmatch(value.decode("latin-1").lower())
        return match is not None and any(pattern.matches(match["name"], match["port"]) for pattern in patterns)

    def _simple_send(self, origin: bytes | None, send: Send) -> Send:
        # Exactly what Starlette's CORSMiddleware does to a response that is not a preflight: for an allowed Origin its
        # simple headers and the origin mirrored back, and `Vary: Origin` whether or not an Origin came.
        added = (_VARY_ORIGIN,) if origin is None else self._simple_headers[origin]
        return _SimpleSend(self, origin, added, send)

    def _add_like_starlette(self, message: Message, origin: bytes | None) -> None:
        # Starlette's `CORSMiddleware.send`, for a request whose Origin (if any) is already known to be allowed.
        headers = MutableHeaders(scope=message)
        if origin is not None:
            headers.update(self.cors.simple_headers)
            headers["Access-Control-Allow-Origin"] = origin.decode("latin-1")
        headers["Vary"] = ", ".join([*headers.getlist("Vary"), "Origin"])

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


class _SimpleSend:
    """The `send` of a request that is not a preflight (see `CORSAllowlistMiddleware._simple_send`). One object, not
    a closure and its cells: it lives as long as the request, and every such object is one more for the collector."""

    __slots__ = ("_added", "_layer", "_origin", "_send")

    def __init__(
        self, layer: CORSAllowlistMiddleware, origin: bytes | None, added: tuple[tuple[bytes, bytes], ...], send: Send
    ) -> None:
        self._layer, self._origin, self._added, self._send = layer, origin, added, send

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = message["headers"] = [*message.get("headers", ())]  # a list, as Starlette leaves it
            for name, _ in headers:
                if name in _SET_ON_RESPONSE:
                    # The app set one of them itself: Starlette's replace-and-merge rules decide, as before.
                    self._layer._add_like_starlette(message, self._origin)
                    break
            else:
                headers += self._added
        await self._send(message)
