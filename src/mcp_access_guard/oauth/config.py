"""OAuth mode's settings: the Access for SaaS application users log in through (`AccessSaaSConfig`), and the
authorization server this process runs for MCP clients (`OAuthConfig`).

A bad value stops start-up with a message that names the setting as the operator wrote it: the keyword, the
environment variable (Cloudflare's own names: `ACCESS_CLIENT_ID`, `ACCESS_CLIENT_SECRET`, `ACCESS_AUTHORIZATION_URL`,
`ACCESS_TOKEN_URL`, `ACCESS_JWKS_URL`, `ACCESS_ISSUER`, `COOKIE_ENCRYPTION_KEY`; ours: `GUARD_PUBLIC_URL`,
`GUARD_OAUTH_STORE`) or the key of the `[oauth]` TOML table. Secrets never appear in a message or a repr.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import SplitResult, urlsplit

from ..config import ConfigError, check_number, check_whole, is_loopback
from ..policy import Rule
from .store import DEFAULT_STORE_URL

logger = logging.getLogger("mcp_access_guard")

# COOKIE_ENCRYPTION_KEY: the keys for cookies, state and secrets at rest are derived from it, so it must carry
# enough entropy on its own. `openssl rand -hex 32` (Cloudflare's advice) gives 64 characters.
MIN_SECRET_KEY_LENGTH = 32
_MIN_SECRET_KEY_DISTINCT_CHARACTERS = 8
DEFAULT_SCOPES = ("openid", "email", "profile")
CONSENT_MODES = ("always", "once")
# An Access for SaaS OIDC application's issuer is this path plus its client id.
CLOUDFLARE_OIDC_PATH = "/cdn-cgi/access/sso/oidc/"
MAX_ACCESS_TOKEN_TTL = 86_400
MAX_REFRESH_TOKEN_TTL = 365 * 86_400
# Dynamic registration: how many one address may make per hour, how many all addresses together may make per day,
# and how long a registration that never obtained a token is kept.
DEFAULT_REGISTRATION_RATE = 20
DEFAULT_REGISTRATION_CAP = 1000
DEFAULT_REGISTRATION_TTL = 86_400
# Schemes a browser handles itself, or that run code: never a client's private-use redirect scheme.
BROWSER_SCHEMES = frozenset(
    {
        "about",
        "blob",
        "chrome",
        "data",
        "file",
        "filesystem",
        "ftp",
        "http",
        "https",
        "intent",
        "javascript",
        "mailto",
        "vbscript",
        "view-source",
        "ws",
        "wss",
    }
)

UPSTREAM_ENVIRONMENT = {
    "client_id": "ACCESS_CLIENT_ID",
    "client_secret": "ACCESS_CLIENT_SECRET",
    "issuer": "ACCESS_ISSUER",
    "authorization_url": "ACCESS_AUTHORIZATION_URL",
    "token_url": "ACCESS_TOKEN_URL",
    "jwks_url": "ACCESS_JWKS_URL",
}
OAUTH_ENVIRONMENT = {
    "public_url": "GUARD_PUBLIC_URL",
    "secret_key": "COOKIE_ENCRYPTION_KEY",
    "store": "GUARD_OAUTH_STORE",
}
_UPSTREAM_TABLE_ONLY = ("scopes", "leeway", "timeout", "max_response_bytes")
_OAUTH_TABLE_ONLY = (
    "resource_path",
    "access_token_ttl",
    "refresh_token_ttl",
    "consent",
    "dynamic_registration",
    "allow",
    "redirect_hosts",
    "client_metadata_documents",
    "registration_rate",
    "registration_cap",
    "registration_ttl",
)
_RULE_FIELDS = ("emails", "email_domains", "service_tokens", "groups")

_HOST_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*")
# RFC 6749 section 3.3: a scope token is printable ASCII but space, '"' and '\'.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_CLIENT_ID = re.compile(r"[A-Za-z0-9._~-]{1,255}")
_RESOURCE_PATH = re.compile(r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+")
_PRIVATE_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")


def _names(names: Mapping[str, str] | None, key: str) -> str:
    return names.get(key, key) if names is not None else key


# -- values ------------------------------------------------------------------------------------------------------


def _text(value: Any, setting: str) -> str:
    """A non-empty string without spaces or control characters, stripped of surrounding whitespace."""
    if not isinstance(value, str):
        raise ConfigError(f"{setting} must be a string, not {type(value).__name__}")
    text = value.strip()
    if not text:
        raise ConfigError(f"{setting} is empty")
    if not text.isprintable() or any(char.isspace() for char in text):
        raise ConfigError(f"{setting} holds spaces or control characters")
    return text


def _url(value: Any, setting: str) -> SplitResult:
    """An https:// URL (plain http:// on a loopback host only), with no credentials, query or fragment."""
    text = _text(value, setting)
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number in range
    except ValueError as exc:
        raise ConfigError(f"{setting}={text!r} is not a valid URL ({exc})") from None
    if parts.username is not None or parts.password is not None:
        # Shown without its credentials: they are somebody's secret.
        raise ConfigError(f"{setting} holds credentials (user:password@); configure them elsewhere")
    if parts.scheme not in ("https", "http") or not host:
        raise ConfigError(f"{setting}={text!r}: expected an https:// URL")
    if parts.scheme == "http" and not is_loopback(host):
        raise ConfigError(f"{setting}={text!r}: plain http:// is only allowed for a loopback host; use https://")
    if not is_host(host):
        raise ConfigError(f"{setting}={text!r}: {host!r} is not a host name or an IP address")
    if "?" in text or "#" in text:
        raise ConfigError(f"{setting}={text!r}: expected no query (?) or fragment (#)")
    return parts


def is_host(host: str) -> bool:
    """A host name of letter-digit-hyphen labels, or an IP address."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return _HOST_NAME.fullmatch(host) is not None
    return True


def _origin(parts: SplitResult) -> str:
    """scheme://host[:port], lower-cased, without a default port."""
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    port = parts.port
    if port is not None and port != {"https": 443, "http": 80}[parts.scheme]:
        netloc += f":{port}"
    return f"{parts.scheme}://{netloc}"


def _endpoint(value: Any, setting: str) -> str:
    """An endpoint of the SaaS application: `<issuer>/<name>`."""
    parts = _url(value, setting)
    if not parts.path.strip("/") or parts.path.endswith("/"):
        raise ConfigError(f"{setting}={value.strip()!r}: expected the endpoint's full URL, with no trailing slash")
    return _origin(parts) + parts.path


def _issuer_url(value: Any, setting: str) -> str:
    parts = _url(value, setting)
    if parts.path.endswith("/"):
        raise ConfigError(f"{setting}={value.strip()!r}: an issuer has no trailing slash")
    return _origin(parts) + parts.path


def _parent(url: str) -> str:
    """The issuer an endpoint sits under: the URL without its last path segment."""
    return url.rsplit("/", 1)[0]


def _scopes(value: Any, setting: str) -> tuple[str, ...]:
    if isinstance(value, str):
        items: list[Any] = value.split()
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ConfigError(f"{setting} must be a list of scope names, not {type(value).__name__}")
    for item in items:
        if not isinstance(item, str) or not _SCOPE_TOKEN.fullmatch(item):
            raise ConfigError(f"{setting} holds {item!r}, which is not a scope name")
    scopes = tuple(dict.fromkeys(items))
    if "openid" not in scopes:
        raise ConfigError(f"{setting}={' '.join(scopes)!r}: must include openid, or Access sends no id_token")
    if "email" not in scopes:
        logger.warning("%s leaves out email: Access may then send no email, and every login would be refused", setting)
    return scopes


# -- the upstream: an Access for SaaS OIDC application -----------------------------------------------------------


@dataclass(frozen=True, slots=True, init=False)
class AccessSaaSConfig:
    """The Access for SaaS (OIDC) application that logs users in and applies the Access policies.

    Give the endpoints as the Cloudflare dashboard lists them; the issuer is then the authorization URL without its
    last path segment (`https://<team>.cloudflareaccess.com/cdn-cgi/access/sso/oidc/<client_id>`). Endpoints left
    out are read from the issuer's discovery document, whose `issuer` must equal this one.
    """

    client_id: str
    client_secret: str = field(repr=False)
    issuer: str
    authorization_url: str | None
    token_url: str | None
    jwks_url: str | None
    scopes: tuple[str, ...]
    leeway: float
    # Each request to the application (discovery, keys, token) must be answered within this many seconds.
    timeout: float
    max_response_bytes: int

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        issuer: str | None = None,
        authorization_url: str | None = None,
        token_url: str | None = None,
        jwks_url: str | None = None,
        scopes: str | Iterable[str] = DEFAULT_SCOPES,
        leeway: float = 60,
        timeout: float = 10,
        max_response_bytes: int = 256 * 1024,
        names: Mapping[str, str] | None = None,
    ) -> None:
        """`names` says what to call each setting in an error message (`from_env` passes the variable names)."""
        client_id = _text(client_id, _names(names, "client_id"))
        if not _CLIENT_ID.fullmatch(client_id):
            raise ConfigError(f"{_names(names, 'client_id')}={client_id!r}: expected the application's client id")
        client_secret = _text(client_secret, _names(names, "client_secret"))
        authorization = (
            None if authorization_url is None else _endpoint(authorization_url, _names(names, "authorization_url"))
        )
        token = None if token_url is None else _endpoint(token_url, _names(names, "token_url"))
        jwks = None if jwks_url is None else _endpoint(jwks_url, _names(names, "jwks_url"))

        if issuer is not None:
            issuer = _issuer_url(issuer, _names(names, "issuer"))
            issuer_source = _names(names, "issuer")
        elif authorization is not None:
            issuer = _parent(authorization)
            issuer_source = f"{_names(names, 'authorization_url')} without its last path segment"
            if issuer.endswith(CLOUDFLARE_OIDC_PATH.rstrip("/")):
                raise ConfigError(
                    f"{_names(names, 'authorization_url')}={authorization!r} looks like the issuer itself: the "
                    f"authorization endpoint of an Access for SaaS application ends in /authorization"
                )
        else:
            raise ConfigError(
                f"{_names(names, 'authorization_url')} is not set (nor {_names(names, 'issuer')}): copy the "
                f"Authorization endpoint of the Access for SaaS application"
            )
        for key, url in (("authorization_url", authorization), ("token_url", token), ("jwks_url", jwks)):
            if url is not None and _parent(url) != issuer:
                raise ConfigError(
                    f"{_names(names, key)}={url!r} is not an endpoint of issuer {issuer} ({issuer_source}): copy "
                    f"every endpoint from the same Access for SaaS application"
                )
        cloudflare_client_id = issuer.partition(CLOUDFLARE_OIDC_PATH)[2]
        if cloudflare_client_id and cloudflare_client_id != client_id:
            raise ConfigError(
                f"{_names(names, 'client_id')}={client_id!r} is not the client id in issuer {issuer} "
                f"({issuer_source}): the two come from different Access for SaaS applications"
            )

        object.__setattr__(self, "client_id", client_id)
        object.__setattr__(self, "client_secret", client_secret)
        object.__setattr__(self, "issuer", issuer)
        object.__setattr__(self, "authorization_url", authorization)
        object.__setattr__(self, "token_url", token)
        object.__setattr__(self, "jwks_url", jwks)
        object.__setattr__(self, "scopes", _scopes(scopes, _names(names, "scopes")))
        object.__setattr__(self, "leeway", check_number(_names(names, "leeway"), leeway, 0, 600))
        object.__setattr__(self, "timeout", check_number(_names(names, "timeout"), timeout, 0.01, 120))
        object.__setattr__(
            self,
            "max_response_bytes",
            check_whole(_names(names, "max_response_bytes"), max_response_bytes, 1024, 16 * 1024 * 1024),
        )

    @property
    def discovery_url(self) -> str:
        return self.issuer + "/.well-known/openid-configuration"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AccessSaaSConfig:
        """`ACCESS_CLIENT_ID`, `ACCESS_CLIENT_SECRET`, `ACCESS_AUTHORIZATION_URL`, `ACCESS_TOKEN_URL`,
        `ACCESS_JWKS_URL` and, optionally, `ACCESS_ISSUER` (the names of Cloudflare's own demo)."""
        return cls.from_mapping({}, "environment", environ=os.environ if environ is None else environ)

    @classmethod
    def from_mapping(
        cls, table: Mapping[str, Any], where: str = "settings", *, environ: Mapping[str, str] | None = None
    ) -> AccessSaaSConfig:
        """From an `[oauth.upstream]` TOML table; what it leaves out is read from `environ` when given."""
        values, names = _read(table, where, "oauth.upstream", UPSTREAM_ENVIRONMENT, _UPSTREAM_TABLE_ONLY, environ)
        for required in ("client_id", "client_secret"):
            if required not in values:
                raise ConfigError(f"{names[required]} is not set")
        return cls(names=names, **values)


# -- this server: the authorization server for MCP clients -------------------------------------------------------


def _store_url(value: Any, setting: str) -> str:
    """`memory:`, `sqlite:///relative/path`, `sqlite:////absolute/path`, `redis://...` or `rediss://...`, checked
    for shape here so the message names the setting; `open_store` builds the store from it."""
    text = _text(value, setting)
    expected = "expected memory:, sqlite:///PATH, redis://HOST[:PORT][/DB] or rediss://..."
    if text == "memory:":
        return text
    if text.startswith("sqlite:///"):
        path = text.removeprefix("sqlite:///")
        if not path or "?" in path or "#" in path or path.endswith("/"):
            raise ConfigError(f"{setting}={text!r}: {expected}, where PATH names a file")
        return text
    scheme = text.partition("://")[0]
    if scheme in ("redis", "rediss"):
        try:
            parts = urlsplit(text)
            host = parts.hostname or ""
            parts.port  # noqa: B018 -- raises ValueError on a bad port
        except ValueError:
            raise ConfigError(f"{setting}={_without_credentials(text)!r}: {expected}") from None
        database = parts.path.removeprefix("/")
        if not host or not is_host(host) or (database and not database.isdigit()) or parts.fragment:
            raise ConfigError(f"{setting}={_without_credentials(text)!r}: {expected}")
        if scheme == "redis" and not is_loopback(host):
            logger.warning(
                "%s uses redis:// to %s: grants cross the network unencrypted; prefer rediss://", setting, host
            )
        return text
    raise ConfigError(f"{setting}={_without_credentials(text)!r}: {expected}")


def _without_credentials(url: str) -> str:
    scheme, separator, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{separator}{authority}{slash}{path}"


def _public_url(value: Any, setting: str) -> str:
    parts = _url(value, setting)
    if parts.path not in ("", "/"):
        raise ConfigError(
            f"{setting}={value.strip()!r}: expected the origin clients reach this server at (https://host[:port]), "
            f"with no path: the endpoints sit at fixed paths under it"
        )
    return _origin(parts)


def _secret_key(value: Any, setting: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{setting} must be a string, not {type(value).__name__}")
    key = value.strip()
    generate = "generate one with: openssl rand -hex 32"
    if len(key) < MIN_SECRET_KEY_LENGTH:
        raise ConfigError(
            f"{setting} is too short ({len(key)} characters, {MIN_SECRET_KEY_LENGTH} at least); {generate}"
        )
    if not key.isprintable() or len(set(key)) < _MIN_SECRET_KEY_DISTINCT_CHARACTERS:
        raise ConfigError(f"{setting} does not look random (a placeholder?); {generate}")
    return key


def _resource_path(value: Any, setting: str) -> str:
    text = _text(value, setting)
    if not _RESOURCE_PATH.fullmatch(text) or any(segment in (".", "..") for segment in text.split("/")):
        raise ConfigError(f"{setting}={text!r}: expected a path such as /mcp, with no query or trailing slash")
    return text


def _rule(value: Any, setting: str) -> Rule:
    if isinstance(value, Rule):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{setting} must be a Rule (a table of {', '.join(_RULE_FIELDS)}), not {type(value).__name__}"
        )
    unknown = sorted(set(value) - set(_RULE_FIELDS))
    if unknown:
        raise ConfigError(f"{setting} has unknown key(s) {unknown}; known: {', '.join(_RULE_FIELDS)}")
    for key, items in value.items():
        if not isinstance(items, list) or not all(isinstance(item, str) and item.strip() for item in items):
            raise ConfigError(f"{setting}.{key} must be a list of non-empty strings")
    return Rule(**value)


def _redirect_hosts(value: Any, setting: str) -> tuple[str, ...]:
    """Where clients may have the browser sent back: host names (`claude.ai`), every subdomain of one
    (`*.example.com`), loopback hosts (`localhost`, `127.0.0.1`, `[::1]`) or a private-use scheme (`cursor:`)."""
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        raise ConfigError(f"{setting} must be a list of hosts or schemes (e.g. ['claude.ai', 'cursor:'])")
    entries = [_redirect_host(item, setting) for item in value]
    if not entries:
        raise ConfigError(f"{setting} is empty: leave it out to allow every redirect host, or list some")
    return tuple(dict.fromkeys(entries))


def _redirect_host(item: Any, setting: str) -> str:
    entry = _text(item, setting).lower().rstrip(".")
    expected = "expected a host name, '*.' and a domain, an IP address ('[::1]' for IPv6) or a scheme ('cursor:')"
    if entry.endswith(":"):
        scheme = entry[:-1]
        if not _PRIVATE_SCHEME.fullmatch(scheme) or scheme in BROWSER_SCHEMES:
            raise ConfigError(f"{setting} holds {entry!r}: {expected}; http and https are given as hosts")
        return entry
    if entry.startswith("[") and entry.endswith("]"):
        try:
            ipaddress.IPv6Address(entry[1:-1])
        except ValueError:
            raise ConfigError(f"{setting} holds {entry!r}: {expected}") from None
        return entry
    host = entry.removeprefix("*.")
    wildcard = host != entry
    if ":" in host or not is_host(host) or (wildcard and (host.count(".") < 1 or _is_ip(host))):
        raise ConfigError(f"{setting} holds {entry!r}: {expected}")
    return entry


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True, init=False)
class OAuthConfig:
    """OAuth mode: this server is the OAuth 2.1 authorization server for MCP clients, and logs users in through
    `upstream`. `public_url` is where clients reach it, said explicitly (never guessed from Host or
    X-Forwarded-*); it is the issuer of our tokens, exactly, and `public_url + resource_path` the protected resource.
    `secret_key` is COOKIE_ENCRYPTION_KEY, the same on every replica.
    """

    public_url: str
    upstream: AccessSaaSConfig
    secret_key: str = field(repr=False)
    store: str
    resource_path: str
    access_token_ttl: int
    refresh_token_ttl: int
    # always: the consent page on every authorization; once: a browser's approval of a client is remembered.
    consent: Literal["always", "once"]
    dynamic_registration: bool
    allow: Rule | None
    # None: any redirect URI that passes the rules; else each must be on one of these hosts (or schemes).
    redirect_hosts: tuple[str, ...] | None
    # Client ID metadata documents: a client_id that is an https URL, fetched (off by default).
    client_metadata_documents: bool
    registration_rate: int
    registration_cap: int
    registration_ttl: int

    def __init__(
        self,
        public_url: str,
        upstream: AccessSaaSConfig,
        *,
        secret_key: str,
        store: str | None = None,
        resource_path: str = "/mcp",
        access_token_ttl: int = 3600,
        refresh_token_ttl: int = 30 * 86_400,
        consent: Literal["always", "once"] = "always",
        dynamic_registration: bool = True,
        allow: Rule | None = None,
        redirect_hosts: Iterable[str] | None = None,
        client_metadata_documents: bool = False,
        registration_rate: int = DEFAULT_REGISTRATION_RATE,
        registration_cap: int = DEFAULT_REGISTRATION_CAP,
        registration_ttl: int = DEFAULT_REGISTRATION_TTL,
        names: Mapping[str, str] | None = None,
    ) -> None:
        """`names` says what to call each setting in an error message (`from_env` passes the variable names)."""
        if not isinstance(upstream, AccessSaaSConfig):
            raise ConfigError(f"{_names(names, 'upstream')} must be an AccessSaaSConfig, not {type(upstream).__name__}")
        if consent not in CONSENT_MODES:
            raise ConfigError(f"{_names(names, 'consent')}={consent!r}: expected one of {', '.join(CONSENT_MODES)}")
        if not isinstance(dynamic_registration, bool):
            raise ConfigError(f"{_names(names, 'dynamic_registration')} must be true or false")
        if not isinstance(client_metadata_documents, bool):
            raise ConfigError(f"{_names(names, 'client_metadata_documents')} must be true or false")

        object.__setattr__(self, "public_url", _public_url(public_url, _names(names, "public_url")))
        object.__setattr__(self, "upstream", upstream)
        object.__setattr__(self, "secret_key", _secret_key(secret_key, _names(names, "secret_key")))
        object.__setattr__(
            self, "store", DEFAULT_STORE_URL if store is None else _store_url(store, _names(names, "store"))
        )
        object.__setattr__(self, "resource_path", _resource_path(resource_path, _names(names, "resource_path")))
        object.__setattr__(
            self,
            "access_token_ttl",
            check_whole(_names(names, "access_token_ttl"), access_token_ttl, 1, MAX_ACCESS_TOKEN_TTL),
        )
        object.__setattr__(
            self,
            "refresh_token_ttl",
            check_whole(_names(names, "refresh_token_ttl"), refresh_token_ttl, 1, MAX_REFRESH_TOKEN_TTL),
        )
        object.__setattr__(self, "consent", consent)
        object.__setattr__(self, "dynamic_registration", dynamic_registration)
        object.__setattr__(self, "allow", None if allow is None else _rule(allow, _names(names, "allow")))
        object.__setattr__(
            self,
            "redirect_hosts",
            None if redirect_hosts is None else _redirect_hosts(redirect_hosts, _names(names, "redirect_hosts")),
        )
        object.__setattr__(self, "client_metadata_documents", client_metadata_documents)
        object.__setattr__(
            self, "registration_rate", check_whole(_names(names, "registration_rate"), registration_rate, 1, 10_000)
        )
        object.__setattr__(
            self, "registration_cap", check_whole(_names(names, "registration_cap"), registration_cap, 1, 1_000_000)
        )
        object.__setattr__(
            self,
            "registration_ttl",
            check_whole(_names(names, "registration_ttl"), registration_ttl, 60, MAX_REFRESH_TOKEN_TTL),
        )

    def __repr__(self) -> str:
        return (
            f"OAuthConfig(public_url={self.public_url!r}, upstream={self.upstream!r}, "
            f"store={_without_credentials(self.store)!r}, resource_path={self.resource_path!r}, "
            f"access_token_ttl={self.access_token_ttl}, refresh_token_ttl={self.refresh_token_ttl}, "
            f"consent={self.consent!r}, dynamic_registration={self.dynamic_registration}, allow={self.allow!r}, "
            f"redirect_hosts={self.redirect_hosts!r}, client_metadata_documents={self.client_metadata_documents}, "
            f"registration_rate={self.registration_rate}, registration_cap={self.registration_cap}, "
            f"registration_ttl={self.registration_ttl})"
        )

    @property
    def issuer(self) -> str:
        """Our authorization server's issuer: `public_url`, exactly (clients compare it as a string)."""
        return self.public_url

    @property
    def resource(self) -> str:
        return self.public_url + self.resource_path

    @property
    def callback_url(self) -> str:
        """The redirect URL to register in the Access for SaaS application."""
        return self.public_url + "/oauth/callback"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OAuthConfig:
        """`GUARD_PUBLIC_URL`, `COOKIE_ENCRYPTION_KEY`, optionally `GUARD_OAUTH_STORE`, and the upstream's
        variables (see `AccessSaaSConfig.from_env`)."""
        return cls.from_mapping({}, "environment", environ=os.environ if environ is None else environ)

    @classmethod
    def from_mapping(
        cls, table: Mapping[str, Any], where: str = "settings", *, environ: Mapping[str, str] | None = None
    ) -> OAuthConfig:
        """From an `[oauth]` TOML table (with `[oauth.upstream]` inside); what it leaves out is read from
        `environ` when given, so secrets can stay out of the file."""
        upstream_table = table.get("upstream", {})
        if not isinstance(upstream_table, Mapping):
            raise ConfigError(f"{where}: [oauth.upstream] must be a table")
        own = {key: value for key, value in table.items() if key != "upstream"}
        values, names = _read(own, where, "oauth", OAUTH_ENVIRONMENT, _OAUTH_TABLE_ONLY, environ)
        for required in ("public_url", "secret_key"):
            if required not in values:
                raise ConfigError(f"{names[required]} is not set")
        upstream = AccessSaaSConfig.from_mapping(upstream_table, where, environ=environ)
        return cls(upstream=upstream, names=names, **values)


def _read(
    table: Mapping[str, Any],
    where: str,
    table_name: str,
    environment: Mapping[str, str],
    table_only: tuple[str, ...],
    environ: Mapping[str, str] | None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The values a table gives and, for what it leaves out, those the environment gives; with each one's name."""
    unknown = sorted(set(table) - {*environment, *table_only})
    if unknown:
        known = ", ".join((*environment, *table_only))
        raise ConfigError(f"{where}: [{table_name}] has unknown key(s) {unknown}; known: {known}")
    values: dict[str, Any] = {}
    names: dict[str, str] = {}
    for key, value in table.items():
        values[key] = value
        names[key] = f"{where}: [{table_name}] {key}"
    for key, variable in environment.items():
        if key in values:
            continue
        if environ is not None and environ.get(variable, "").strip():
            values[key] = environ[variable]
            names[key] = variable
        else:
            # Named for a message about it being left out, or about the others it must agree with.
            names[key] = _unset_name(key, where, table_name, variable, environ)
    return values, names


def _unset_name(key: str, where: str, table_name: str, variable: str, environ: object) -> str:
    if where == "environment":
        return variable
    return f"{where}: [{table_name}] {key}" + (f" (or {variable})" if environ is not None else "")


__all__ = [
    "CONSENT_MODES",
    "DEFAULT_SCOPES",
    "MIN_SECRET_KEY_LENGTH",
    "AccessSaaSConfig",
    "OAuthConfig",
]
