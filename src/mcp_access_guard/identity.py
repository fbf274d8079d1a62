"""Who the caller is, once a layer has proved it, and how tool code of any MCP framework gets at it."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any

from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.authentication import AuthCredentials
from starlette.types import Scope

SCOPE_STATE_KEY = "access_identity"
# Every Cloudflare service-token client id ends in this.
SERVICE_TOKEN_SUFFIX = ".access"

_current_identity: ContextVar[AccessIdentity | None] = ContextVar("mcp_access_guard_identity", default=None)


@dataclass(frozen=True)
class AccessIdentity:
    """A caller that Cloudflare Access (or a configured service-token pair) vouched for."""

    subject: str
    issuer: str
    expires_at: int
    email: str | None = None
    common_name: str | None = None
    groups: tuple[str, ...] = ()
    country: str | None = None
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # The raw assertion, kept for linked-app forwarding; out of repr and equality so it never lands in a log.
    token: str = field(default="", compare=False)
    # Set when the caller came in OAuth mode: the client it authorised. There is then no assertion (`token` is
    # empty) and nothing to forward.
    oauth_client_id: str | None = None

    @property
    def is_service_token(self) -> bool:
        return self.email is None and bool(self.common_name)

    @property
    def principal(self) -> str:
        return self.email or self.common_name or self.subject

    @cached_property
    def _sdk_user(self) -> AuthenticatedUser:
        # Built once per identity, not per request: the verifier hands out the same identity for a cached token.
        # The SDK binds each session to (client_id, iss, subject); the principal keeps two callers apart.
        return AuthenticatedUser(
            AccessToken(
                token=self.token,
                client_id=self.principal,
                scopes=[],
                expires_at=self.expires_at,
                subject=self.subject or self.principal,
                claims=dict(self.claims),
            )
        )

    def __repr__(self) -> str:
        kind = "service_token" if self.is_service_token else "user"
        client = f", oauth_client_id={self.oauth_client_id!r}" if self.oauth_client_id is not None else ""
        return (
            f"AccessIdentity({kind}={self.principal!r}, groups={self.groups!r}, expires_at={self.expires_at}{client})"
        )


def current_identity() -> AccessIdentity | None:
    """The identity of the caller whose request is being served, or None outside a guarded request."""
    return _current_identity.get()


_NO_SCOPES = AuthCredentials([])


class _IdentityBinding:
    # Alive for the whole request: the two reset tokens held in slots, not in a tuple of their own.
    __slots__ = ("_identity", "_identity_reset", "_scope", "_sdk_reset")

    def __init__(self, scope: Scope, identity: AccessIdentity) -> None:
        self._scope = scope
        self._identity = identity

    def __enter__(self) -> None:
        identity, scope = self._identity, self._scope
        user = identity._sdk_user
        scope.setdefault("state", {})[SCOPE_STATE_KEY] = identity
        scope["user"] = user
        scope["auth"] = _NO_SCOPES
        self._identity_reset = _current_identity.set(identity)
        self._sdk_reset = auth_context_var.set(user)

    def __exit__(self, *exc: object) -> None:
        auth_context_var.reset(self._sdk_reset)
        _current_identity.reset(self._identity_reset)


def bind_identity(scope: Scope, identity: AccessIdentity) -> _IdentityBinding:
    """Make `identity` visible to everything downstream, inside a `with` block: our contextvar, the ASGI scope
    (`scope["state"]["access_identity"]`) and the mcp SDK's auth context (`scope["user"]`, `get_access_token()`)."""
    return _IdentityBinding(scope, identity)
