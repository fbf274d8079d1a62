"""Client ID metadata documents: a `client_id` that is an https URL names a JSON document, published by the client,
that describes it (its name and redirect URIs). Used when `OAuthConfig(client_metadata_documents=True)`.

Fetching a URL a stranger chose is a server-side request forgery risk, so: https only; the host's addresses are
resolved first and every one must be public (no private, loopback, link-local, multicast or reserved address; a
testing switch admits loopback), and the connection goes to the address checked (no second resolution); no
redirects; at most 5 KiB within 10 seconds; the document's `client_id` must equal the URL. Documents are cached as
their Cache-Control says, within bounds, in a bounded cache; a failure is cached briefly too.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import ssl
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
import httpx
from cachetools import TLRUCache

from .clients import GRANT_TYPES, MAX_CLIENT_NAME, MAX_REDIRECT_URIS, redirect_uri_problem
from .config import OAuthConfig
from .records import ClientRecord

logger = logging.getLogger("mcp_access_guard")

_LAYER = "oauth_client_metadata"
MAX_DOCUMENT_BYTES = 5 * 1024
FETCH_TIMEOUT = 10.0
DEFAULT_CACHE_SECONDS = 300
MAX_CACHE_SECONDS = 86_400
FAILURE_CACHE_SECONDS = 30
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,10})\"?\s*(?:,|$)", re.IGNORECASE)


class ClientMetadataRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def client_id_url_problem(url: str) -> str | None:
    """Why `url` cannot be a client ID metadata document's URL, or None."""
    if len(url) > 2000 or not url.isascii() or not url.isprintable() or any(char.isspace() for char in url):
        return "not_plain_ascii"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        return "not_a_url"
    if parts.scheme != "https" or not parts.hostname:
        return "not_https"
    if "#" in url:
        return "fragment"
    if "@" in parts.netloc:
        return "user_info"
    if parts.path in ("", "/"):
        return "no_path"
    if any(unquote(segment) in (".", "..") for segment in parts.path.split("/")):
        return "dot_segments"
    return None


class ClientMetadataFetcher:
    """Fetches and caches client ID metadata documents. `allow_loopback` and `verify` (an `ssl.SSLContext`) exist
    for tests, which serve documents on a loopback https server with their own certificate."""

    def __init__(
        self,
        config: OAuthConfig,
        *,
        allow_loopback: bool = False,
        verify: ssl.SSLContext | bool = True,
        cache_size: int = 1000,
        timeout: float = FETCH_TIMEOUT,
        max_bytes: int = MAX_DOCUMENT_BYTES,
    ) -> None:
        self.config = config
        self.allow_loopback = allow_loopback
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._verify = verify
        self._client: httpx.AsyncClient | None = None
        self._cache: TLRUCache[str, tuple[ClientRecord | None, float]] = TLRUCache(
            maxsize=cache_size, ttu=lambda _url, entry, _now: entry[1], timer=time.monotonic
        )
        self.fetches = 0

    def __repr__(self) -> str:
        return f"ClientMetadataFetcher(allow_loopback={self.allow_loopback})"

    async def client(self, url: str) -> ClientRecord | None:
        """The client the document at `url` describes, or None (logged) when it cannot be used."""
        cached = self._cache.get(url)
        if cached is not None:
            return cached[0]
        try:
            record, lifetime = await self._fetch(url)
        except ClientMetadataRefused as refused:
            logger.warning(
                "refused the client metadata document of a client (%s)",
                refused.reason,
                extra={"layer": _LAYER, "decision": "deny", "reason": refused.reason},
            )
            record, lifetime = None, FAILURE_CACHE_SECONDS
        if lifetime > 0:
            self._cache[url] = (record, time.monotonic() + lifetime)
        return record

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _fetch(self, url: str) -> tuple[ClientRecord, float]:
        problem = client_id_url_problem(url)
        if problem is not None:
            raise ClientMetadataRefused(f"url_{problem}")
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or 443
        self.fetches += 1
        try:
            with anyio.fail_after(self.timeout):
                body, cache_control = await self._get(url, await self._public_addresses(host, port))
        except TimeoutError:
            raise ClientMetadataRefused("timeout") from None
        record = self._record(url, body)
        return record, _lifetime(cache_control)

    async def _public_addresses(self, host: str, port: int) -> list[str]:
        """Every address the host resolves to, once each is known to be public."""
        try:
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            raise ClientMetadataRefused("unresolvable") from None
        addresses = [str(info[4][0]) for info in infos]
        if not addresses:
            raise ClientMetadataRefused("unresolvable")
        for address in addresses:
            if not self._permitted(address):
                raise ClientMetadataRefused("private_address")
        return list(dict.fromkeys(addresses))

    def _permitted(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback:
            return self.allow_loopback
        return ip.is_global and not ip.is_multicast

    async def _get(self, url: str, addresses: list[str]) -> tuple[bytes, str]:
        """The document, from the first of the checked addresses that accepts a connection (never a name
        resolved again, so a rebinding DNS answer cannot swap in another address)."""
        for address in addresses:
            try:
                return await self._get_from(url, address)
            except httpx.ConnectError:
                continue
            except httpx.HTTPError as exc:
                raise ClientMetadataRefused(f"fetch_failed_{type(exc).__name__}") from None
        raise ClientMetadataRefused("fetch_failed_ConnectError")

    async def _get_from(self, url: str, address: str) -> tuple[bytes, str]:
        parts = urlsplit(url)
        host = parts.hostname or ""
        literal = f"[{address}]" if ":" in address else address
        pinned = parts._replace(netloc=f"{literal}:{parts.port or 443}").geturl()
        client = await self._http()
        async with client.stream(
            "GET",
            pinned,
            headers={"Host": parts.netloc, "Accept": "application/json"},
            extensions={"sni_hostname": host},
        ) as response:
            if response.status_code != 200:
                # Redirects included: never followed.
                raise ClientMetadataRefused(f"http_{response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > self.max_bytes:
                    raise ClientMetadataRefused("too_large")
            return bytes(body), response.headers.get("cache-control", "")

    async def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            verify = self._verify

            def build() -> httpx.AsyncClient:
                return httpx.AsyncClient(
                    verify=verify,
                    follow_redirects=False,
                    timeout=self.timeout,
                    trust_env=False,
                    headers={"Accept-Encoding": "identity"},
                )

            self._client = await anyio.to_thread.run_sync(build)
        return self._client

    def _record(self, url: str, body: bytes) -> ClientRecord:
        try:
            document: Any = json.loads(body)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ClientMetadataRefused("not_json") from None
        if not isinstance(document, dict):
            raise ClientMetadataRefused("not_json")
        if document.get("client_id") != url:
            raise ClientMetadataRefused("client_id_mismatch")
        uris = document.get("redirect_uris")
        if not isinstance(uris, list) or not uris or len(uris) > MAX_REDIRECT_URIS:
            raise ClientMetadataRefused("redirect_uris")
        for uri in uris:
            if not isinstance(uri, str) or redirect_uri_problem(uri, self.config) is not None:
                raise ClientMetadataRefused("redirect_uri")
        if document.get("token_endpoint_auth_method", "none") != "none":
            # A document cannot hold a secret; private_key_jwt is not supported here.
            raise ClientMetadataRefused("auth_method")
        grant_types = document.get("grant_types", list(GRANT_TYPES))
        if not isinstance(grant_types, list) or "authorization_code" not in grant_types:
            raise ClientMetadataRefused("grant_types")
        name = document.get("client_name")
        if name is not None and (not isinstance(name, str) or len(name) > MAX_CLIENT_NAME):
            raise ClientMetadataRefused("client_name")
        return ClientRecord(
            client_id=url,
            redirect_uris=tuple(uris),
            auth_method="none",
            secret_hash=None,
            name=" ".join(name.split()) if name else None,
            scope=None,
            grant_types=tuple(grant for grant in GRANT_TYPES if grant in grant_types),
            issued_at=int(time.time()),
            used=True,
        )


def _lifetime(cache_control: str) -> float:
    """Seconds to keep a document: none for no-store or no-cache, else max-age within bounds, else a default."""
    directives = cache_control.lower()
    if "no-store" in directives or "no-cache" in directives:
        return 0
    match = _MAX_AGE.search(directives)
    if match is None:
        return DEFAULT_CACHE_SECONDS
    return min(int(match.group(1)), MAX_CACHE_SECONDS)
