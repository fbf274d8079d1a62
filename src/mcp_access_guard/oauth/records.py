"""What the authorization server keeps in its store, and the credentials it hands out.

Credentials are opaque: a recognisable prefix and 256 random bits. The store only ever sees their `secret_key_id`
hashes as keys; a record never holds a credential in the clear (the one answer kept for a refresh retried within the
grace period, and the upstream refresh token, are sealed with `ValueCipher`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, Self, get_type_hints

from .store import secret_key_id

ACCESS_TOKEN_PREFIX = "mag_at_"
REFRESH_TOKEN_PREFIX = "mag_rt_"
CODE_PREFIX = "mag_ac_"
CLIENT_SECRET_PREFIX = "mag_cs_"
BROWSER_PREFIX = "mag_br_"
# Every credential the server mints: a prefix, then token_urlsafe(32) (43 characters).
CREDENTIAL = re.compile(r"mag_(?:at|rt|ac|cs|br)_[A-Za-z0-9_-]{43}")

ClientAuthMethod = Literal["none", "client_secret_basic", "client_secret_post"]
CLIENT_AUTH_METHODS: tuple[ClientAuthMethod, ...] = ("none", "client_secret_post", "client_secret_basic")


def mint(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def well_formed(credential: str, prefix: str) -> bool:
    return credential.startswith(prefix) and CREDENTIAL.fullmatch(credential) is not None


def code_challenge_of(verifier: str) -> str:
    """PKCE S256 (RFC 7636 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def hash_secret(secret: str) -> str:
    """Client secrets at rest: 256 random bits, so one round of SHA-256 is enough."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(presented: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(presented).encode(), stored_hash.encode())


def access_token_key(token: str) -> str:
    return secret_key_id("at", token)


def refresh_token_key(token: str) -> str:
    return secret_key_id("rt", token)


def code_key(code: str) -> str:
    return secret_key_id("code", code)


def transaction_key(state: str) -> str:
    return secret_key_id("txn", state)


def grant_key(grant_id: str) -> str:
    return f"grant:{grant_id}"


def client_key(client_id: str) -> str:
    return f"client:{hashlib.sha256(client_id.encode()).hexdigest()}"


class Record:
    """JSON in the store: compact, keys sorted, tuples back as tuples. Fields that hold a secret, or the hash or
    sealed form of one, stay out of the repr."""

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()  # type: ignore[call-overload]

    @classmethod
    def from_bytes(cls, raw: bytes) -> Self:
        """Raises ValueError for anything that is not a record of this kind."""
        try:
            document = json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ValueError("not JSON") from None
        if not isinstance(document, dict):
            raise ValueError("not an object")
        values: dict[str, Any] = {}
        for name, is_tuple in _layout(cls):
            if name not in document:
                raise ValueError(f"no {name}")
            value = document[name]
            if is_tuple and isinstance(value, list):
                value = tuple(value)
            values[name] = value
        return cls(**values)


_LAYOUTS: dict[type, tuple[tuple[str, bool], ...]] = {}


def _layout(kind: type) -> tuple[tuple[str, bool], ...]:
    """A record's fields, and which of them are tuples: read once per kind (resolving the hints costs about a
    millisecond, on every store read, such as each bearer lookup the bearer layer's cache misses)."""
    layout = _LAYOUTS.get(kind)
    if layout is None:
        hints = get_type_hints(kind)
        layout = tuple((item.name, "tuple" in str(hints[item.name])) for item in fields(kind))
        _LAYOUTS[kind] = layout
    return layout


@dataclass(frozen=True, slots=True)
class ClientRecord(Record):
    """A registered client. `used` turns true with its first token, and keeps the registration from expiring."""

    client_id: str
    redirect_uris: tuple[str, ...]
    auth_method: str
    secret_hash: str | None = field(repr=False)
    name: str | None
    scope: str | None
    grant_types: tuple[str, ...]
    issued_at: int
    used: bool


@dataclass(frozen=True, slots=True)
class TransactionRecord(Record):
    """One approved authorization on its way through Access, kept (sealed) under its upstream `state`."""

    client_id: str
    redirect_uri: str
    redirect_uri_sent: bool
    client_state: str | None = field(repr=False)
    code_challenge: str
    scopes: tuple[str, ...]
    resource: str
    nonce: str = field(repr=False)
    code_verifier: str = field(repr=False)
    browser_hash: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class CodeRecord(Record):
    """Our authorization code; `spent` once redeemed, kept a while so that a replay is recognised."""

    grant_id: str
    client_id: str
    redirect_uri: str
    redirect_uri_sent: bool
    code_challenge: str
    resource: str
    spent: bool


@dataclass(frozen=True, slots=True)
class GrantRecord(Record):
    """One user's authorization of one client. Deleting it revokes every token issued under it.

    `refresh_key` is the store key of the current refresh token (None until the code is redeemed);
    `previous_refresh_key` the one it replaced at `rotated_at`, whose reuse within the grace period gets `reissue`
    (the sealed answer) again. `rotating_since` marks a refresh in progress: the compare-and-swap that set it is the
    lock that keeps concurrent refreshes, in any process, to one rotation.
    """

    grant_id: str
    client_id: str
    resource: str
    scopes: tuple[str, ...]
    subject: str
    email: str
    groups: tuple[str, ...]
    issuer: str
    claims: dict[str, Any]
    created_at: float
    refresh_key: str | None = field(repr=False)
    previous_refresh_key: str | None = field(repr=False)
    rotated_at: float
    rotating_since: float | None
    reissue: str | None = field(repr=False)
    upstream_refresh: str | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class AccessTokenRecord(Record):
    grant_id: str
    client_id: str
    resource: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class RefreshTokenRecord(Record):
    grant_id: str
