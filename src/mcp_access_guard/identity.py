"""Who the caller is, once a layer has proved it, and how tool code of any MCP framework gets at it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.authentication import AuthCredentials
from starlette.types import Scope

SCOPE_STATE_KEY = "access_identity"

_current_identity: ContextVar[AccessIdentity | None] = ContextVar("mcp_access_guard_identity", default=None)


@dataclass(frozen=True, slots=True)
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

    @property
    def is_service_token(self) -> bool:
        return self.email is None and bool(self.common_name)

    @property
    def principal(self) -> str:
        return self.email or self.common_name or self.subject

    def __repr__(self) -> str:
        kind = "service_token" if self.is_service_token else "user"
        return f"AccessIdentity({kind}={self.principal!r}, groups={self.groups!r}, expires_at={self.expires_at})"


def current_identity() -> AccessIdentity | None:
    """The identity of the caller whose request is being served, or None outside a guarded request."""
    return _current_identity.get()


def _as_authenticated_user(identity: AccessIdentity) -> AuthenticatedUser:
    # The SDK binds each session to (client_id, iss, subject); the principal keeps two callers apart.
    return AuthenticatedUser(
        AccessToken(
            token=identity.token,
            client_id=identity.principal,
            scopes=[],
            expires_at=identity.expires_at,
            subject=identity.subject or identity.principal,
            claims=dict(identity.claims),
        )
    )


@contextmanager
def bind_identity(scope: Scope, identity: AccessIdentity) -> Iterator[None]:
    """Make `identity` visible to everything downstream: our contextvar, the ASGI scope and the mcp SDK."""
    scope.setdefault("state", {})[SCOPE_STATE_KEY] = identity
    scope["user"] = _as_authenticated_user(identity)
    scope["auth"] = AuthCredentials([])
    identity_reset = _current_identity.set(identity)
    sdk_reset = auth_context_var.set(scope["user"])
    try:
        yield
    finally:
        auth_context_var.reset(sdk_reset)
        _current_identity.reset(identity_reset)
