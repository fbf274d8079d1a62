"""The clients: dynamic registration (RFC 7591), the rules a redirect URI must meet, matching one at /authorize
(exactly, or on any port for a loopback URI, RFC 8252 7.3), and client authentication at /token and /revoke.

Redirect URIs: `https`; `http` on a loopback host only (`127.0.0.1`, `[::1]`, `localhost`); or a private-use scheme
(RFC 8252 7.1, e.g. Cursor's `cursor://...`) that is not one a browser handles itself. Never a fragment, user info,
dot segments, or anything on this server's own origin; and, when the operator lists `redirect_hosts`, only those.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol
from urllib.parse import SplitResult, unquote, unquote_plus, urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from ..audit import log_decision
from ..limits import client_address
from .config import BROWSER_SCHEMES, OAuthConfig, is_host
from .records import (
    CLIENT_AUTH_METHODS,
    CLIENT_SECRET_PREFIX,
    ClientRecord,
    client_key,
    hash_secret,
    mint,
    secret_matches,
)
from .store import OAuthStore
from .web import BadRequest, json_response, oauth_error, read_body

logger = logging.getLogger("mcp_access_guard")

_LAYER = "oauth_register"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
MAX_REDIRECT_URIS = 10
MAX_URI_LENGTH = 2000
MAX_CLIENT_NAME = 100
MAX_REGISTRATION_BYTES = 16 * 1024
GRANT_TYPES = ("authorization_code", "refresh_token")
_CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+(?: [\x21\x23-\x5b\x5d-\x7e]+)*")
_HOUR = 3600
_DAY = 86_400


class ClientAuthFailed(Exception):
    """invalid_client (RFC 6749 5.2); `basic` when the client tried the Authorization header, which then gets a
    `WWW-Authenticate: Basic` challenge."""

    def __init__(self, reason: str, *, basic: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.basic = basic

    def response(self) -> Response:
        headers = {"WWW-Authenticate": 'Basic realm="oauth"'} if self.basic else None
        return oauth_error("invalid_client", "client authentication failed", 401, headers)


# -- redirect URIs --------------------------------------------------------------------------------------------------


def redirect_uri_problem(uri: str, config: OAuthConfig) -> str | None:
    """Why `uri` cannot be a redirect URI of a client of this server, or None."""
    if not uri or len(uri) > MAX_URI_LENGTH or not uri.isascii() or not uri.isprintable():
        return "not_plain_ascii"
    if any(char.isspace() for char in uri) or "\\" in uri:
        return "not_plain_ascii"
    if "#" in uri:
        return "fragment"
    try:
        parts = urlsplit(uri)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "not_a_url"
    raw_scheme, colon, _ = uri.partition(":")
    if not colon or not _SCHEME.fullmatch(raw_scheme):
        # No scheme: a relative reference, which the browser would resolve against this server.
        return "not_a_url"
    if "@" in parts.netloc:
        return "user_info"
    if _has_dot_segments(parts.path):
        return "dot_segments"
    if parts.scheme in ("https", "http"):
        if not host or not parts.netloc or parts.netloc.endswith(":"):
            return "no_host"
        if not is_host(host):
            return "not_a_url"
        if parts.scheme == "http" and host not in LOOPBACK_HOSTS:
            return "http_not_loopback"
        if _own_origin(parts.scheme, host, port, config):
            return "own_origin"
    elif parts.scheme in BROWSER_SCHEMES:
        return "browser_scheme"
    if config.redirect_hosts is not None and not _listed(parts, config.redirect_hosts):
        return "not_in_redirect_hosts"
    return None


def _has_dot_segments(path: str) -> bool:
    return any(unquote(segment) in (".", "..") for segment in path.split("/"))


def _own_origin(scheme: str, host: str, port: int | None, config: OAuthConfig) -> bool:
    """Whether the browser sent to this address would reach this server. Every loopback host name reaches the
    same loopback server, so they count as one."""
    ours = urlsplit(config.public_url)
    our_host = ours.hostname or ""
    default = {"https": 443, "http": 80}
    same_port = (port or default[scheme]) == (ours.port or default[ours.scheme])
    if host in LOOPBACK_HOSTS and our_host in LOOPBACK_HOSTS:
        return same_port
    return scheme == ours.scheme and host == our_host and same_port


def _listed(parts: SplitResult, entries: tuple[str, ...]) -> bool:
    if parts.scheme not in ("https", "http"):
        return f"{parts.scheme}:" in entries
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    return any(
        shown == entry or (entry.startswith("*.") and shown.endswith(entry[1:]) and shown != entry[2:])
        for entry in entries
    )


def is_loopback_redirect(uri: str) -> bool:
    try:
        parts = urlsplit(uri)
        return parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS
    except ValueError:
        return False


def _without_port(uri: str) -> str:
    parts = urlsplit(uri)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    return parts._replace(netloc=netloc).geturl()


def matching_redirect_uri(client: ClientRecord, requested: str, config: OAuthConfig) -> bool:
    """`requested` is one of the client's redirect URIs, exactly; or, for a loopback one, on any port (RFC 8252
    7.3: the port is picked when the client starts), never this server's own."""
    if requested in client.redirect_uris:
        return redirect_uri_problem(requested, config) is None
    if not is_loopback_redirect(requested) or redirect_uri_problem(requested, config) is not None:
        return False
    bare = _without_port(requested)
    return any(is_loopback_redirect(uri) and _without_port(uri) == bare for uri in client.redirect_uris)


def redirect_shown(uri: str) -> str:
    """Where a redirect URI sends the browser, for the consent page: its host, or its scheme for an app."""
    parts = urlsplit(uri)
    if parts.scheme in ("https", "http"):
        host = parts.hostname or ""
        return f"{host}:{parts.port}" if parts.port else host
    return f"{parts.scheme}: (an app on this device)"


# -- the registry ---------------------------------------------------------------------------------------------------


class RegistrationRefused(Exception):
    def __init__(self, error: str, reason: str, description: str) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason
        self.description = description


class ClientDocuments(Protocol):
    """Where clients whose id is an https URL come from (`cimd.ClientMetadataFetcher`)."""

    async def client(self, url: str) -> ClientRecord | None: ...

    async def aclose(self) -> None: ...


class Clients:
    """Registered clients in the store; client metadata documents through `documents` when enabled."""

    def __init__(
        self,
        config: OAuthConfig,
        store: OAuthStore,
        *,
        documents: ClientDocuments | None = None,
        clock: Callable[[], float] = time.time,
        addresses: Callable[[Scope], str] = client_address,
    ) -> None:
        self.config = config
        self.store = store
        self.documents = documents
        self._clock = clock
        # What a registering caller is counted by: the same address rule as the failed-credential limit.
        self._address = addresses

    async def get(self, client_id: str) -> ClientRecord | None:
        """The client, or None when it is unknown (or its metadata document cannot be had: logged)."""
        if self.documents is not None and client_id.startswith("https://"):
            return await self.documents.client(client_id)
        if not _CLIENT_ID.fullmatch(client_id):
            return None
        raw = await self.store.get(client_key(client_id))
        if raw is None:
            return None
        try:
            client = ClientRecord.from_bytes(raw)
        except (ValueError, TypeError):
            return None
        return client if client.client_id == client_id else None

    async def mark_used(self, client: ClientRecord) -> None:
        """A client that obtained tokens is kept as long as a refresh token could be: its registration no longer
        expires unused."""
        if client.client_id.startswith("https://"):
            return
        used = replace(client, used=True)
        await self.store.put(client_key(client.client_id), used.to_bytes(), ttl=self.config.refresh_token_ttl)

    # -- /register ----------------------------------------------------------------------------------------------

    async def register(self, request: Request) -> Response:
        content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type != "application/json":
            return self._refused(request, "invalid_client_metadata", "not_json", "the body must be JSON")
        try:
            body = await read_body(request, MAX_REGISTRATION_BYTES)
        except BadRequest as bad:
            return self._refused(request, "invalid_client_metadata", bad.reason, "the body is too large", bad.status)
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, ValueError, RecursionError):
            document = None
        if not isinstance(document, dict):
            return self._refused(request, "invalid_client_metadata", "not_json", "the body must be a JSON object")
        try:
            client = self._client_from(document)
        except RegistrationRefused as refused:
            return self._refused(request, refused.error, refused.reason, refused.description)

        per_address = await self.store.increment(f"register_addr:{self._address(request.scope)}", window=_HOUR)
        if per_address > self.config.registration_rate:
            return self._too_many(request, "registration_rate")
        if await self.store.increment("register_all", window=_DAY) > self.config.registration_cap:
            return self._too_many(request, "registration_cap")

        secret = None
        if client.auth_method != "none":
            secret = mint(CLIENT_SECRET_PREFIX)
            client = replace(client, secret_hash=hash_secret(secret))
        await self.store.put(client_key(client.client_id), client.to_bytes(), ttl=self.config.registration_ttl)
        log_decision(request.scope, layer=_LAYER, decision="allow", reason="registered", principal=client.client_id)
        answer: dict[str, Any] = {
            "client_id": client.client_id,
            "client_id_issued_at": client.issued_at,
            "redirect_uris": list(client.redirect_uris),
            "token_endpoint_auth_method": client.auth_method,
            "grant_types": list(client.grant_types),
            "response_types": ["code"],
        }
        if client.name is not None:
            answer["client_name"] = client.name
        if client.scope is not None:
            answer["scope"] = client.scope
        if secret is not None:
            answer["client_secret"] = secret
            answer["client_secret_expires_at"] = 0
        return json_response(answer, 201)

    def _client_from(self, document: Mapping[str, Any]) -> ClientRecord:
        uris = document.get("redirect_uris")
        if not isinstance(uris, list) or not uris or len(uris) > MAX_REDIRECT_URIS:
            raise RegistrationRefused(
                "invalid_redirect_uri", "redirect_uris", f"redirect_uris must list 1 to {MAX_REDIRECT_URIS} URIs"
            )
        for uri in uris:
            problem = redirect_uri_problem(uri, self.config) if isinstance(uri, str) else "not_a_string"
            if problem is not None:
                raise RegistrationRefused("invalid_redirect_uri", f"redirect_uri_{problem}", _URI_PROBLEMS[problem])
        method = document.get("token_endpoint_auth_method", "client_secret_basic")
        if method not in CLIENT_AUTH_METHODS:
            raise RegistrationRefused(
                "invalid_client_metadata",
                "auth_method",
                "token_endpoint_auth_method must be none, client_secret_post or client_secret_basic",
            )
        grant_types = document.get("grant_types", list(GRANT_TYPES))
        if (
            not isinstance(grant_types, list)
            or "authorization_code" not in grant_types
            or not set(grant_types) <= set(GRANT_TYPES)
        ):
            raise RegistrationRefused(
                "invalid_client_metadata", "grant_types", "grant_types must be authorization_code and refresh_token"
            )
        response_types = document.get("response_types", ["code"])
        if response_types != ["code"]:
            raise RegistrationRefused("invalid_client_metadata", "response_types", "response_types must be ['code']")
        name = document.get("client_name")
        if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > MAX_CLIENT_NAME):
            raise RegistrationRefused(
                "invalid_client_metadata", "client_name", f"client_name must be text of at most {MAX_CLIENT_NAME}"
            )
        scope = document.get("scope")
        if scope is not None and (not isinstance(scope, str) or len(scope) > 1000 or not _SCOPE.fullmatch(scope)):
            raise RegistrationRefused("invalid_client_metadata", "scope", "scope must be space-separated scope names")
        return ClientRecord(
            client_id=secrets.token_urlsafe(18),
            redirect_uris=tuple(dict.fromkeys(uris)),
            auth_method=method,
            secret_hash=None,
            name=" ".join(name.split()) if name is not None else None,
            scope=scope,
            grant_types=tuple(dict.fromkeys(grant_types)),
            issued_at=int(self._clock()),
            used=False,
        )

    def _refused(self, request: Request, error: str, reason: str, description: str, status: int = 400) -> Response:
        log_decision(request.scope, layer=_LAYER, decision="deny", reason=reason)
        return oauth_error(error, description, status)

    def _too_many(self, request: Request, reason: str) -> Response:
        log_decision(request.scope, layer=_LAYER, decision="deny", reason=reason)
        retry = _HOUR if reason == "registration_rate" else _DAY
        return oauth_error("temporarily_unavailable", "too many registrations", 429, {"Retry-After": str(retry)})

    # -- client authentication ------------------------------------------------------------------------------------

    async def authenticate(self, request: Request, form: Mapping[str, str]) -> ClientRecord:
        """The client a token or revocation request comes from, authenticated by the method it registered."""
        headers = request.headers.getlist("authorization")
        basic: tuple[str, str] | None = None
        if len(headers) > 1:
            raise ClientAuthFailed("several_authorization_headers", basic=True)
        if headers:
            basic = _basic_credentials(headers[0])
        posted_secret = form.get("client_secret")
        if basic is not None and posted_secret is not None:
            raise ClientAuthFailed("two_authentication_methods", basic=True)
        form_client_id = form.get("client_id")
        if basic is not None and form_client_id is not None and form_client_id != basic[0]:
            raise ClientAuthFailed("client_id_mismatch", basic=True)
        client_id = basic[0] if basic is not None else form_client_id
        if not client_id:
            raise ClientAuthFailed("no_client_id", basic=basic is not None)
        client = await self.get(client_id)
        if client is None:
            raise ClientAuthFailed("unknown_client", basic=basic is not None)
        method = (
            "client_secret_basic" if basic is not None else "none" if posted_secret is None else "client_secret_post"
        )
        if method != client.auth_method:
            raise ClientAuthFailed("wrong_authentication_method", basic=basic is not None)
        if method != "none":
            presented = basic[1] if basic is not None else posted_secret or ""
            if client.secret_hash is None or not secret_matches(presented, client.secret_hash):
                raise ClientAuthFailed("wrong_client_secret", basic=basic is not None)
        return client


def _basic_credentials(header: str) -> tuple[str, str]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        raise ClientAuthFailed("not_basic_authentication", basic=True)
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ClientAuthFailed("malformed_basic_authentication", basic=True) from None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise ClientAuthFailed("malformed_basic_authentication", basic=True)
    # RFC 6749 2.3.1: each part form-encoded before the base64.
    return unquote_plus(client_id), unquote_plus(secret)


_URI_PROBLEMS = {
    "not_a_string": "each redirect URI must be a string",
    "not_plain_ascii": "a redirect URI must be plain ASCII without spaces",
    "fragment": "a redirect URI must not have a fragment",
    "not_a_url": "a redirect URI must be an absolute URI",
    "user_info": "a redirect URI must not hold user information",
    "dot_segments": "a redirect URI must not hold dot segments",
    "no_host": "an http(s) redirect URI needs a host",
    "http_not_loopback": "plain http is only allowed for a loopback redirect URI (127.0.0.1, [::1], localhost)",
    "own_origin": "a redirect URI must not point at this server",
    "browser_scheme": "that scheme cannot be a redirect URI",
    "not_in_redirect_hosts": "the redirect URI's host is not allowed by this server",
}
