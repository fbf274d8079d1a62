"""Calling another Access-protected app as the current caller (Cloudflare's linked-app tokens)."""

from __future__ import annotations

from collections.abc import Generator, Iterable
from typing import Any

import httpx

from .config import is_loopback
from .identity import current_identity

FORWARDED_TOKEN_HEADER = "Cf-Access-Token"


class ForwardingRefused(RuntimeError):
    """A request to a linked app on behalf of a caller who signed in through OAuth mode: there is no Access
    assertion to forward, and the caller's bearer token belongs to this server alone."""


class AccessForwardingAuth(httpx.Auth):
    """Adds the caller's Access assertion as `Cf-Access-Token` to requests for the listed hosts, and to no others:
    only over https (plain http only to a loopback host), and only inside a guarded request. For a caller of OAuth
    mode a request to a listed host raises `ForwardingRefused` rather than going out without the caller's identity.

    httpx runs an Auth once per request, not once per redirect hop, and copies custom headers onto each hop. So a
    client that follows redirects must also run `check_hop` on every hop; `forwarding_client()` builds one that does.
    httpx's own default is not to follow redirects, which is safe as it is.
    """

    def __init__(self, hosts: Iterable[str]) -> None:
        if isinstance(hosts, str):
            raise TypeError("hosts takes a list of host names, not one string")
        self.hosts = frozenset(host.strip().lower().rstrip(".") for host in hosts)
        if not self.hosts or "" in self.hosts:
            raise ValueError("AccessForwardingAuth needs the host names the caller's token may be sent to")

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self._apply(request)
        yield request

    async def check_hop(self, request: httpx.Request) -> None:
        """A request event hook: takes the token off any hop to a host that may not have it."""
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
        secure = url.scheme == "https" or (url.scheme == "http" and is_loopback(host))
        return secure and host in self.hosts


def forwarding_client(hosts: Iterable[str], **client_options: Any) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` that forwards the caller's assertion to `hosts`, checked again on every redirect hop."""
    auth = AccessForwardingAuth(hosts)
    hooks = client_options.pop("event_hooks", {})
    hooks = {**hooks, "request": [*hooks.get("request", []), auth.check_hop]}
    return httpx.AsyncClient(auth=auth, event_hooks=hooks, **client_options)
