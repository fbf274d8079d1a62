"""Proof that a request came through the operator's own tunnel or Worker, and direct service-token credentials.

Two modes, usable together:

- a shared secret in a header (name configurable) that the tunnel or Worker adds; several secrets may be valid at
  once, for rotation. Missing or wrong is 403, never 401: a 401 makes Cloudflare's Managed OAuth re-authenticate
  in a loop.
- `CF-Access-Client-Id` / `CF-Access-Client-Secret` pairs checked here, for an origin with no Access in front (a
  LAN, local development); a match binds the same service-token identity the JWT layer would produce. With no pair
  sent the request goes on without an identity, for the JWT layer after this one to decide.

Every credential header is removed before the request reaches the app. Secrets are kept only as SHA-256 digests
and compared with `hmac.compare_digest` against every configured value, so the time taken says nothing about which
one matched or how long they are.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..audit import log_decision
from ..identity import SERVICE_TOKEN_SUFFIX, AccessIdentity, bind_identity
from ..limits import TUNNEL_PROVEN, FailedCredentialLimit

LAYER = "service_token"
DEFAULT_SECRET_HEADER = "Cf-Access-Guard-Secret"
CLIENT_ID_HEADER = "cf-access-client-id"
CLIENT_SECRET_HEADER = "cf-access-client-secret"
_CLIENT_ID = CLIENT_ID_HEADER.encode()
_CLIENT_SECRET = CLIENT_SECRET_HEADER.encode()

SWAPPED_HINT = "CF-Access-Client-Id and CF-Access-Client-Secret look swapped: the client id ends in .access"
QUOTED_HINT = "a credential header carries stray quotes or whitespace; send the bare value"


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def _matches_any(candidate_digest: bytes, digests: Iterable[bytes]) -> bool:
    matched = False
    for digest in digests:
        matched |= hmac.compare_digest(candidate_digest, digest)
    return matched


def _looks_quoted(value: str) -> bool:
    return value[:1] in ("'", '"') or value[-1:] in ("'", '"') or any(char.isspace() for char in value)


MIN_SECRET_LENGTH = 16
# Headers that already mean something to a proxy, the server or another layer: a shared secret carried in one of them
# would be read, rewritten or forwarded by something else, or would make this layer strip what the app needs.
_RESERVED_HEADERS = frozenset(
    {
        "authorization",
        "cookie",
        "host",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-type",
        "origin",
        "forwarded",
        "cf-access-jwt-assertion",
        "cf-access-token",
        "cf-connecting-ip",
        "mcp-session-id",
        "mcp-protocol-version",
        CLIENT_ID_HEADER,
        CLIENT_SECRET_HEADER,
    }
)
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _check_configured(kind: str, value: str) -> None:
    if not isinstance(value, str) or not value or _looks_quoted(value):
        raise ValueError(f"a configured {kind} is empty or has stray quotes or whitespace")


def check_secret(kind: str, value: str) -> None:
    _check_configured(kind, value)
    if len(value) < MIN_SECRET_LENGTH:
        raise ValueError(f"a configured {kind} is shorter than {MIN_SECRET_LENGTH} characters: too easy to guess")


def check_secret_header(header: str) -> str:
    name = header.strip().lower() if isinstance(header, str) else ""
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"the shared-secret header {header!r} is not a valid header name")
    if name in _RESERVED_HEADERS or name.startswith(("x-forwarded-", "proxy-", "sec-")):
        raise ValueError(f"the shared-secret header {header!r} must not be a header with a meaning of its own")
    return name


def service_token_identity(client_id: str) -> AccessIdentity:
    """The identity of a service token, shaped exactly like the one the JWT layer builds from Access's token."""
    return AccessIdentity(
        subject="",
        issuer="local",
        expires_at=0,  # no expiry: the pair is valid for as long as it is configured
        email=None,
        common_name=client_id,
        claims=MappingProxyType({"common_name": client_id, "type": "app"}),
    )


class _Refusal(Exception):
    def __init__(self, reason: str, hint: str | None = None, *, guessed: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint
        # A value was sent and compared, and it did not match: a guess, which `limits` counts.
        self.guessed = guessed


class ServiceTokenMiddleware:
    """Require the tunnel's shared secret and/or check direct service-token pairs; refuse with 403.

    With `limits`, an address that failed too often is refused with 429 before anything is compared. A wrong shared
    secret is counted against the peer's address (or a trusted proxy's `CF-Connecting-IP`): the tunnel is not proven
    yet. Once the secret checks out, the caller is known by `CF-Connecting-IP`, for the pair check and every layer
    after this one.
    """

    def __init__(
        self,
        app: ASGIApp,
        header: str = DEFAULT_SECRET_HEADER,
        secrets: Iterable[str] = (),
        client_credentials: Mapping[str, str] | None = None,
        *,
        limits: FailedCredentialLimit | None = None,
    ) -> None:
        if isinstance(secrets, str):
            raise ValueError("secrets must be a list of secrets, not one string (each character would be a secret)")
        secrets = tuple(secrets)
        client_credentials = dict(client_credentials or {})
        if not secrets and not client_credentials:
            raise ValueError("ServiceTokenMiddleware needs secrets or client_credentials (fail closed)")
        for secret in secrets:
            check_secret("secret", secret)
        for client_id, client_secret in client_credentials.items():
            _check_configured("client id", client_id)
            check_secret("client secret", client_secret)
            if client_secret.endswith(SERVICE_TOKEN_SUFFIX) and not client_id.endswith(SERVICE_TOKEN_SUFFIX):
                raise ValueError("client_credentials look swapped: map the client id (ending in .access) to its secret")
        self.header = check_secret_header(header)
        self.app = app
        self._secret_digests = tuple(_digest(secret.encode()) for secret in secrets)
        self._credential_digests = tuple(
            (client_id, _digest(client_id.encode()), _digest(client_secret.encode()))
            for client_id, client_secret in client_credentials.items()
        )
        credential_headers = (self.header, CLIENT_ID_HEADER, CLIENT_SECRET_HEADER)
        self._removed_headers = frozenset(name.encode("latin-1") for name in credential_headers)
        self._secret_header = self.header.encode("latin-1")
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        admitted = await self._admit(scope, receive, send)
        if admitted is None:
            return
        scope, client_id = admitted
        if client_id is None:
            reason = "shared_secret" if self._secret_digests else "no_pair"
            log_decision(scope, layer=LAYER, decision="allow", reason=reason)
            await self.app(scope, receive, send)
            return
        log_decision(scope, layer=LAYER, decision="allow", reason="client_credentials", principal=client_id)
        with bind_identity(scope, service_token_identity(client_id)):
            await self.app(scope, receive, send)

    async def _admit(self, scope: Scope, receive: Receive, send: Send) -> tuple[Scope, str | None] | None:
        """The scope the app will get, without any credential header, and the client id of a valid pair (None when
        no pair came); or None once the request is answered with a refusal. Apart from `__call__`, so that what it
        reads is gone before the app runs: a request keeps fewer objects alive for the collector."""
        limits = self.limits
        if limits is not None and await _answered(limits.refusal(scope, layer=LAYER), scope, receive, send):
            return None
        shared_secrets, client_ids, client_secrets, passed_on = self._read(scope["headers"])
        try:
            if self._secret_digests:
                self._check_shared_secret(shared_secrets)
                # Through the operator's own tunnel or Worker: from here on the caller is CF-Connecting-IP.
                scope = {**scope, "headers": passed_on, TUNNEL_PROVEN: True}
                if limits is not None and await _answered(limits.refusal(scope, layer=LAYER), scope, receive, send):
                    return None
            else:
                scope = {**scope, "headers": passed_on}
            if not self._credential_digests:
                return scope, None
            return scope, self._check_client_credentials(client_ids, client_secrets)
        except _Refusal as refusal:
            log_decision(scope, layer=LAYER, decision="deny", reason=refusal.reason)
            if refusal.guessed and limits is not None:
                await limits.failed(scope)
            body: dict[str, Any] = {"error": "forbidden"}
            if refusal.hint:
                body["hint"] = refusal.hint
            await JSONResponse(body, status_code=403)(scope, receive, send)
            return None

    def _read(
        self, headers: Iterable[tuple[bytes, bytes]]
    ) -> tuple[list[bytes], list[bytes], list[bytes], list[tuple[bytes, bytes]]]:
        """Every value of each credential header (shared secret, client id, client secret), and the headers the app
        will get, without any of them: one pass over the raw headers (ASGI names are lower-case bytes)."""
        shared_secrets: list[bytes] = []
        client_ids: list[bytes] = []
        client_secrets: list[bytes] = []
        passed_on: list[tuple[bytes, bytes]] = []
        removed, secret_header = self._removed_headers, self._secret_header  # locals: this loop runs per header
        for header in headers:
            name = header[0]
            if name in removed:
                if name == secret_header:
                    shared_secrets.append(header[1])
                elif name == _CLIENT_ID:
                    client_ids.append(header[1])
                else:
                    client_secrets.append(header[1])
            elif name.islower() or name.lower() not in removed:
                # A name not in lower case breaks the ASGI rules; it is still not passed on if it names one of them.
                # The server's own pair is passed on, not a copy: the request holds one object fewer per header.
                passed_on.append(header)
        return shared_secrets, client_ids, client_secrets, passed_on

    def _check_shared_secret(self, values: list[bytes]) -> None:
        if not values:
            raise _Refusal("secret_missing")
        if len(values) > 1:
            raise _Refusal("secret_duplicated")
        if not _matches_any(_digest(values[0]), self._secret_digests):
            if _looks_quoted(values[0].decode("latin-1")):
                raise _Refusal("secret_quoted", QUOTED_HINT, guessed=True)
            raise _Refusal("secret_wrong", guessed=True)

    def _check_client_credentials(self, ids: list[bytes], secrets: list[bytes]) -> str | None:
        """The client id of a valid pair, None when no pair was sent; raises `_Refusal` for anything else."""
        if not ids and not secrets:
            return None
        if len(ids) > 1 or len(secrets) > 1:
            raise _Refusal("credentials_duplicated")
        if not ids or not secrets:
            raise _Refusal("credentials_incomplete")
        id_digest, secret_digest = _digest(ids[0]), _digest(secrets[0])
        matched_id = None
        for client_id, expected_id, expected_secret in self._credential_digests:
            # `&`, not `and`: both comparisons run for every pair, so timing does not tell which part was wrong.
            if hmac.compare_digest(id_digest, expected_id) & hmac.compare_digest(secret_digest, expected_secret):
                matched_id = client_id
        if matched_id is not None:
            return matched_id
        # Header bytes read as latin-1, as Starlette's `Headers` does: one character per byte that came over the wire.
        sent_id, sent_secret = ids[0].decode("latin-1"), secrets[0].decode("latin-1")
        if sent_secret.endswith(SERVICE_TOKEN_SUFFIX) and not sent_id.endswith(SERVICE_TOKEN_SUFFIX):
            raise _Refusal("credentials_swapped", SWAPPED_HINT, guessed=True)
        if _looks_quoted(sent_id) or _looks_quoted(sent_secret):
            raise _Refusal("credentials_quoted", QUOTED_HINT, guessed=True)
        raise _Refusal("credentials_wrong", guessed=True)


async def _answered(refusal: Response | None, scope: Scope, receive: Receive, send: Send) -> bool:
    if refusal is None:
        return False
    await refusal(scope, receive, send)
    return True
