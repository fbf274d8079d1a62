"""Calling another Access-protected app as the current caller (Cloudflare's linked-app tokens)."""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Generator, Iterable
from typing import Any

import httpx

from .config import is_loopback
from .identity import current_identity

logger = logging.getLogger("mcp_access_guard")

FORWARDED_TOKEN_HEADER = "Cf-Access-Token"
_DEFAULT_PORTS = {"https": 443, "http": 80}


class ForwardingRefused(RuntimeError):
    """A request to a linked app on behalf of a caller who signed in through OAuth mode: there is no Access
    assertion to forward, and the caller's bearer token belongs to this server alone."""


class AccessForwardingAuth(httpx.Auth):
    """Adds the caller's Access assertion as `Cf-Access-Token` to requests for the listed services, and to no others:
    only over https, or plain http to a loopback host; only inside a guarded request. For a caller of OAuth mode, a
    request to a listed service raises `ForwardingRefused` rather than going out without the caller's identity.

    A service is a host and a port: `reports.example.com` is that host on the default port (443 for https),
    `127.0.0.1:8001` that port only. Another port on a listed host is another service and gets nothing.

    Plain http carries the token in clear text, so it goes only to the loopback host named, never through a proxy:
    while the environment names an http proxy (HTTP_PROXY, ALL_PROXY), which this auth cannot see whether the client
    uses, nothing is added to a plain-http request. `forwarding_client()` sends those requests directly and is not
    held back by this.

    httpx runs an Auth once per request, not once per redirect hop, and copies custom headers onto each hop. So a
    client that follows redirects must also run `check_hop` on every hop; `forwarding_client()` builds one that does.
    httpx's own default is not to follow redirects, which is safe as it is.
    """

    def __init__(self, hosts: Iterable[str]) -> None:
        if isinstance(hosts, str):
            raise TypeError("hosts takes a list of host names, not one string")
        self.services = frozenset(_service(entry) for entry in hosts)
        if not self.services:
            raise ValueError("AccessForwardingAuth needs the host names the caller's token may be sent to")
        self.hosts = frozenset(host for host, _ in self.services)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self._apply(request)
        yield request

    async def check_hop(self, request: httpx.Request) -> None:
        """A request event hook: takes the token off any hop to a service that may not have it."""
        self._apply(request)

    def _apply(self, request: httpx.Request) -> None:
        request.headers.pop(FORWARDED_TOKEN_HEADER, None)
        identity = current_identity()
        if identity is None or not self._may_receive(request.url):
            return
        if identity.oauth_client_id is not None:
            raise ForwardingRefused(
                "the caller signed in through OAuth mode: there is no Access assertion to forward to a linked app"
            )
        if identity.token:
            request.headers[FORWARDED_TOKEN_HEADER] = identity.token

    def _may_receive(self, url: httpx.URL) -> bool:
        host = url.host.lower().rstrip(".")
        if url.scheme == "http":
            if not is_loopback(host) or not self._sent_directly(url):
                return False
        elif url.scheme != "https":
            return False
        if url.port is None:
            return (host, None) in self.services or (host, _DEFAULT_PORTS[url.scheme]) in self.services
        return (host, url.port) in self.services

    def _sent_directly(self, url: httpx.URL) -> bool:
        proxies = urllib.request.getproxies_environment()
        if "http" in proxies or "all" in proxies:
            logger.warning(
                "not forwarding the caller's token to %s: plain http while the environment names a proxy; use "
                "forwarding_client(), which sends loopback requests directly",
                url.host,
                extra={"layer": "downstream", "decision": "deny", "reason": "proxy_in_environment"},
            )
            return False
        return True


class _DirectLoopbackAuth(AccessForwardingAuth):
    """`forwarding_client`'s: its client sends plain http to the listed loopback hosts with no proxy."""

    def _sent_directly(self, url: httpx.URL) -> bool:
        return True


def forwarding_client(hosts: Iterable[str], **client_options: Any) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` that forwards the caller's assertion to `hosts` (see `AccessForwardingAuth`), checked
    again on every redirect hop. Plain http to a listed loopback host goes directly, never through a proxy from the
    environment or from `proxy=` (a proxy's loopback is not ours); with your own `transport=`, that is yours to do,
    and plain http gets the token only while the environment names no proxy."""
    hooks = client_options.pop("event_hooks", {})
    if "transport" in client_options:
        auth = AccessForwardingAuth(hosts)
    else:
        auth = _DirectLoopbackAuth(hosts)
        loopback = sorted(host for host in auth.hosts if is_loopback(host))
        direct = {f"http://{f'[{host}]' if ':' in host else host}": httpx.AsyncHTTPTransport() for host in loopback}
        client_options["mounts"] = {**client_options.get("mounts", {}), **direct}
    hooks = {**hooks, "request": [*hooks.get("request", []), auth.check_hop]}
    return httpx.AsyncClient(auth=auth, event_hooks=hooks, **client_options)


def _service(entry: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]:port` or a bare IPv6 address -> (lower-case host, port or None for the default)."""
    if not isinstance(entry, str):
        raise TypeError(f"hosts holds {entry!r}: expected host names")
    text = entry.strip().lower()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"hosts holds {entry!r}: expected host or host:port")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, None
    host = host.rstrip(".")
    if not host or any(char in host for char in "/@?#[] ") or (port_text is not None and not port_text.isdigit()):
        raise ValueError(f"hosts holds {entry!r}: expected host or host:port, with no scheme or path")
    port = int(port_text) if port_text is not None else None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"hosts holds {entry!r}: a port is from 1 to 65535")
    return host, port
