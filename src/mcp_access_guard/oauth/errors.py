"""What can go wrong with the Access for SaaS application, sorted by what the authorization server answers for it.

Each `UpstreamError` carries `kind` and the OAuth `error` to send the MCP client (`oauth_error`): the user refused
by Access -> access_denied; Access unreachable or failing -> temporarily_unavailable; Access refusing our request
or answering something we cannot trust -> server_error. A configuration that cannot work stops start-up instead
(`UpstreamMisconfigured`, a `ConfigError`).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from ..config import ConfigError

UpstreamErrorKind = Literal["denied", "refused", "unavailable", "invalid"]
OAuthError = Literal["access_denied", "server_error", "temporarily_unavailable"]


class UpstreamMisconfigured(ConfigError):
    """The application's discovery document contradicts the configuration, or lacks what login needs."""


class UpstreamError(Exception):
    """A login or refresh through Access failed. `detail` is for logs: never a token, code or secret."""

    kind: ClassVar[UpstreamErrorKind]
    oauth_error: ClassVar[OAuthError]

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UpstreamDenied(UpstreamError):
    """Access refused the user (its policy, or the user cancelled): `error=access_denied` came back."""

    kind = "denied"
    oauth_error = "access_denied"


class UpstreamRefused(UpstreamError):
    """Access answered our request with an OAuth error: `error` is its code (invalid_grant, invalid_client, ...)."""

    kind = "refused"
    oauth_error = "server_error"

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail)
        self.error = error


class UpstreamUnavailable(UpstreamError):
    """No usable answer in time: refused connection, timeout, HTTP 5xx or 429, keys that cannot be fetched."""

    kind = "unavailable"
    oauth_error = "temporarily_unavailable"


class UpstreamInvalid(UpstreamError):
    """An answer that breaks the protocol (not JSON, no id_token, wrong state or iss): nothing in it is used."""

    kind = "invalid"
    oauth_error = "server_error"


IdTokenReason = Literal[
    "malformed",
    "unsupported_algorithm",
    "unknown_key",
    "bad_signature",
    "wrong_issuer",
    "wrong_audience",
    "wrong_authorized_party",
    "expired",
    "not_yet_valid",
    "missing_nonce",
    "wrong_nonce",
    "missing_subject",
    "wrong_subject",
    "missing_email",
]


class IdTokenRejected(UpstreamInvalid):
    """The id_token failed verification; `reason` is one stable string, logged with the detail."""

    def __init__(self, reason: IdTokenReason, detail: str = "") -> None:
        super().__init__(detail)
        self.reason: IdTokenReason = reason

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason
