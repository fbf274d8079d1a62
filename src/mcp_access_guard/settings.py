"""Every layer's settings, and the one way they are read: a TOML file, then the environment for what the file leaves
out. Each key has one type, checked, and a message that names where a bad value came from (the file and key, or the
environment variable)."""

from __future__ import annotations

import logging
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .config import AccessConfig, ConfigError, check_whole
from .jsonrpc import DEFAULT_MAX_BODY_BYTES
from .limits import checked_limits, trusted_proxy
from .middleware.body_size import MAX_BODY_BYTES_LIMIT
from .middleware.budget import MAX_REQUESTS_PER_WINDOW
from .middleware.cors import DEFAULT_MCP_ORIGINS, HostPattern, validated_origins
from .middleware.paths import HEALTH_PATH, parse_allow_entry
from .middleware.service_token import DEFAULT_SECRET_HEADER, check_secret, check_secret_header
from .oauth.config import OAuthConfig
from .policy import Rule, ToolPolicy

logger = logging.getLogger("mcp_access_guard")

DEFAULT_PATHS = ("/mcp", HEALTH_PATH)
DEFAULT_FAILED_CREDENTIALS = 10
DEFAULT_FAILURE_WINDOW = 60.0
DEFAULT_TRACKED_ADDRESSES = 10_000


@dataclass(frozen=True, slots=True)
class PathSettings:
    """The path allow-list, outermost layer: everything else is 404."""

    allow: tuple[str, ...] = DEFAULT_PATHS
    # Under guard() /health is answered by the layer itself while it is in `allow`, so that a health check never
    # reaches the MCP app; the layer used alone passes it on by default, to an app that may have its own.
    health: bool = True


@dataclass(frozen=True, slots=True)
class CORSSettings:
    """Browser clients: CORS, Origin refusal and, optionally, a Host allow-list."""

    allow_origins: tuple[str, ...] = DEFAULT_MCP_ORIGINS
    extra_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] | None = None
    trust_forwarded_host: bool = False
    allow_credentials: bool = False


@dataclass(frozen=True, slots=True)
class ServiceTokenSettings:
    """The tunnel's shared secret and direct service-token pairs. The layer is on when either is configured."""

    header: str = DEFAULT_SECRET_HEADER
    secrets: tuple[str, ...] = field(default=(), repr=False)
    client_credentials: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def enabled(self) -> bool:
        return bool(self.secrets or self.client_credentials)


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """Limits on failed credential checks per client address (`limits.FailedCredentialLimit`); 0 failures turns the
    limit off. `trusted_proxies` (addresses or CIDRs) are the peers whose `CF-Connecting-IP` names the client.
    `requests_per_minute` is a budget per principal, counted in each process; 0 (the default) is off."""

    failed_credentials: int = DEFAULT_FAILED_CREDENTIALS
    failure_window: float = DEFAULT_FAILURE_WINDOW
    tracked_addresses: int = DEFAULT_TRACKED_ADDRESSES
    trusted_proxies: tuple[str, ...] = ()
    requests_per_minute: int = 0

    def __post_init__(self) -> None:
        checked_limits(self.failed_credentials, self.failure_window, self.tracked_addresses, self.trusted_proxies)
        check_whole("requests_per_minute", self.requests_per_minute, 0, MAX_REQUESTS_PER_WINDOW)


@dataclass(frozen=True, slots=True)
class GuardConfig:
    """Every layer's settings. The credential layer is one of two modes: `access` (Cloudflare Access in front, its
    assertion verified) or `oauth` (this server as the OAuth authorization server, Access for SaaS as the login).
    Every other field has a safe default; set `paths` or `cors` to None to leave that layer out. Neither mode leaves
    the server open, so it needs `dev=True` said out loud."""

    access: AccessConfig | None = None
    paths: PathSettings | None = PathSettings()
    cors: CORSSettings | None = CORSSettings()
    service_token: ServiceTokenSettings = ServiceTokenSettings()
    allow: Rule | None = None
    cookie: bool = False
    www_authenticate: str | None = None
    tools: ToolPolicy | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    dev: bool = False
    oauth: OAuthConfig | None = None
    limits: LimitSettings = LimitSettings()

    def __post_init__(self) -> None:
        if self.access is not None and self.oauth is not None:
            raise ConfigError(
                "both Access modes are configured: `access` (TEAM_DOMAIN, POLICY_AUD) verifies the assertion of a "
                "self-hosted Access app, `oauth` (ACCESS_CLIENT_ID, ...) runs the OAuth server for Access for SaaS; "
                "keep one"
            )
        if self.oauth is not None and (self.allow is not None or self.cookie or self.www_authenticate is not None):
            raise ConfigError(
                "allow, cookie and www_authenticate belong to the `access` mode; in OAuth mode use oauth.allow"
            )
        if self.access is None and self.oauth is None and not self.dev:
            raise ConfigError(
                "no Access configuration (team domain and audience): the server would be open to anyone. "
                "Set TEAM_DOMAIN and POLICY_AUD ([access] in TOML), or dev mode to run open on purpose"
            )
        check_whole("max_body_bytes", self.max_body_bytes, 1, MAX_BODY_BYTES_LIMIT)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        *,
        over: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> GuardConfig:
        """The precedence `serve` and `check` use: the TOML file at `path` when given, then the environment for every
        setting the file leaves out. With no file, the environment alone. `over` (tables shaped like the file's)
        wins over both: `serve --dev --oauth` puts its embedded login there."""
        env = os.environ if environ is None else environ
        document = _Document.from_env(env)
        if path is not None:
            document = _Document.from_toml(path).over(document)
        if over is not None:
            document = _Document.from_tables(over, document.where).over(document)
        return document.guard_config()

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> GuardConfig:
        """A TOML file shaped like `examples/guard.toml`, then the environment for what it leaves out (`load`'s
        precedence; pass `environ={}` for the file alone). Unknown keys are refused, so typos are not ignored."""
        return cls.load(path, environ)

    @classmethod
    def from_mapping(cls, document: Mapping[str, Any], where: str = "settings") -> GuardConfig:
        """From the tables a TOML file gives (see `examples/guard.toml`); `where` names the source in messages."""
        return _Document.from_tables(document, where).guard_config()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, restricted_tool: str | None = None) -> GuardConfig:
        """The variables listed in the README's configuration reference. `ALLOWED_EMAILS` restricts the tool named by
        `ALLOWED_EMAILS_TOOL`, or else by `restricted_tool`, as the reference deployments do for one costly tool."""
        env = os.environ if environ is None else environ
        return _Document.from_env(env, restricted_tool=restricted_tool).guard_config()


# -- where each value came from ------------------------------------------------------------------------------------

_TABLES = ("access", "oauth", "paths", "cors", "service_token", "limits", "tools", "prompts", "resources")
_TOP_LEVEL = ("dev", "max_body_bytes")
_RULE_KEYS = ("emails", "email_domains", "service_tokens", "groups")

# variable -> (table, key, kind); table "" is the top level.
_ENVIRONMENT: Mapping[str, tuple[str, str, str]] = {
    "TEAM_DOMAIN": ("access", "team_domain", "text"),
    "POLICY_AUD": ("access", "audiences", "texts"),
    "ACCESS_CERTS_URL": ("access", "certs_url", "text"),
    "GUARD_DEV": ("", "dev", "flag"),
    "GUARD_PATHS": ("paths", "allow", "texts"),
    "GUARD_ALLOWED_ORIGINS": ("cors", "allow_origins", "texts"),
    "GUARD_EXTRA_ORIGINS": ("cors", "extra_origins", "texts"),
    "GUARD_ALLOWED_HOSTS": ("cors", "allowed_hosts", "texts"),
    "GUARD_TRUST_FORWARDED_HOST": ("cors", "trust_forwarded_host", "flag"),
    "GUARD_SECRET_HEADER": ("service_token", "header", "text"),
    "GUARD_SECRETS": ("service_token", "secrets", "texts"),
    "GUARD_FAILED_CREDENTIAL_LIMIT": ("limits", "failed_credentials", "whole"),
    "GUARD_FAILURE_WINDOW": ("limits", "failure_window", "number"),
    "GUARD_TRACKED_ADDRESSES": ("limits", "tracked_addresses", "whole"),
    "GUARD_TRUSTED_PROXIES": ("limits", "trusted_proxies", "texts"),
    "GUARD_REQUESTS_PER_MINUTE": ("limits", "requests_per_minute", "whole"),
}
# The restricted tool's rule, one variable per part of it.
_RULE_ENVIRONMENT = {
    "ALLOWED_EMAILS": "emails",
    "ALLOWED_EMAIL_DOMAINS": "email_domains",
    "ALLOWED_SERVICE_TOKENS": "service_tokens",
    "ALLOWED_GROUPS": "groups",
}
_SECRET_KEYS = frozenset({("service_token", "secrets"), ("service_token", "client_credentials")})
_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _env_value(env: Mapping[str, str], name: str, kind: str) -> Any:
    raw = env[name]
    if kind == "flag":
        value = raw.strip().lower()
        if value not in _FLAGS:
            raise ConfigError(f"{name}={raw!r}: expected true or false")
        return _FLAGS[value]
    if kind == "whole":
        value = raw.strip()
        # ASCII digits only (str.isdigit() would take "²"), and a length no setting needs before int() reads it; a
        # sign is read, so that a negative number is refused by the setting's range, which says what it should be.
        digits = value.removeprefix("-")
        if not (digits.isascii() and digits.isdigit() and len(digits) <= 18):
            raise ConfigError(f"{name}={raw[:40]!r}: expected a whole number")
        return int(value)
    if kind == "number":
        try:
            return float(raw.strip())
        except ValueError:
            raise ConfigError(f"{name}={raw[:40]!r}: expected a number") from None
    if kind == "text":
        if not raw.strip():
            raise ConfigError(f"{name} is set but blank: unset it, or give a value")
        return raw.strip()
    items = [item.strip() for item in raw.split(",")]
    if not all(items):
        # What "$NEW,$OLD" becomes when a variable is unset: never read as "fewer entries" or "off".
        raise ConfigError(f"{name} has an empty entry: check for a stray comma or an unset variable")
    return items


class _Document:
    """Settings as TOML tables, with the name of where each value came from, for messages."""

    def __init__(
        self,
        tables: dict[str, dict[str, Any]],
        sources: dict[tuple[str, str], str],
        environ: Mapping[str, str],
        where: str = "environment",
    ) -> None:
        # Table "" holds the top-level keys. OAuth mode's settings are read by its own reader, from the [oauth] table
        # and then `environ` for what it leaves out, so the environment is kept whole beside the tables.
        self.tables = tables
        self.sources = sources
        self.environ = environ
        self.where = where

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, restricted_tool: str | None = None) -> _Document:
        tables: dict[str, dict[str, Any]] = {}
        sources: dict[tuple[str, str], str] = {}
        # An empty variable counts as unset (as container tools write them); one with only blanks or commas does not.
        for name, (table, key, kind) in _ENVIRONMENT.items():
            if env.get(name, "") != "":
                tables.setdefault(table, {})[key] = _env_value(env, name, kind)
                sources[(table, key)] = name
        tool = env.get("ALLOWED_EMAILS_TOOL", "").strip() or restricted_tool
        rule = {
            key: _env_value(env, name, "texts") for name, key in _RULE_ENVIRONMENT.items() if env.get(name, "") != ""
        }
        if rule or "ALLOWED_EMAILS_TOOL" in env or restricted_tool:
            if not tool:
                raise ConfigError("ALLOWED_EMAILS is set: ALLOWED_EMAILS_TOOL must name the tool it restricts")
            # With the tool named and no list set, nobody may use it.
            tables["tools"] = {tool: {key: rule.get(key, []) for key in _RULE_KEYS}}
            sources[("tools", tool)] = "ALLOWED_EMAILS"
        if env.get("ACCESS_CLIENT_ID", "").strip():
            tables["oauth"] = {}  # OAuth mode, read from the environment alone
        return cls(tables, sources, env)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> _Document:
        try:
            with open(path, "rb") as file:
                document = tomllib.load(file)
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        return cls.from_tables(document, str(path))

    @classmethod
    def from_tables(cls, document: Mapping[str, Any], where: str) -> _Document:
        unknown = set(document) - {*_TABLES, *_TOP_LEVEL}
        if unknown:
            raise ConfigError(f"{where}: unknown top-level key(s) {sorted(unknown)}")
        tables: dict[str, dict[str, Any]] = {"": {}}
        sources: dict[tuple[str, str], str] = {}
        for key, value in document.items():
            if key in _TOP_LEVEL:
                tables[""][key] = value
                sources[("", key)] = f"{where}: {key}"
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{key}] must be a table")
            tables[key] = dict(value)
            for inner in value:
                sources[(key, inner)] = f"{where}: [{key}] {inner}"
        return cls(tables, sources, {}, where)

    def over(self, fallback: _Document) -> _Document:
        """These settings, with `fallback`'s for every key these leave out (a tool's rule counts as one key)."""
        tables = {name: dict(table) for name, table in fallback.tables.items()}
        for name, table in self.tables.items():
            tables.setdefault(name, {}).update(table)
        return _Document(tables, {**fallback.sources, **self.sources}, fallback.environ, self.where)

    # -- reading, each value checked against its one type --------------------------------------------------------

    def guard_config(self) -> GuardConfig:
        top = _Table(self, "")
        dev = top.flag("dev", False)
        max_body_bytes = check_whole(
            top.source("max_body_bytes"), top.whole("max_body_bytes", DEFAULT_MAX_BODY_BYTES), 1, MAX_BODY_BYTES_LIMIT
        )
        top.finish()

        access = _Table(self, "access")
        allow = access.rule("allow")
        cookie = access.flag("cookie", False)
        www_authenticate = access.text("www_authenticate", None)
        oauth_config = self._oauth_config()
        access_config = None if (dev or oauth_config is not None) and access.empty else self._access_config(access)

        paths = _Table(self, "paths")
        # A layer that is off still has its keys read and checked: a mistake there is reported, not hidden.
        paths_on = paths.flag("enabled", True)
        path_settings = PathSettings(
            allow=paths.texts("allow", DEFAULT_PATHS, each=parse_allow_entry), health=paths.flag("health", True)
        )
        paths.finish()

        cors = _Table(self, "cors")
        cors_on = cors.flag("enabled", True)
        cors_settings = CORSSettings(
            allow_origins=cors.texts("allow_origins", DEFAULT_MCP_ORIGINS, each=_one_origin),
            extra_origins=cors.texts("extra_origins", (), each=_one_origin),
            allowed_hosts=cors.texts("allowed_hosts", None, nonempty=True, each=HostPattern.parse),
            trust_forwarded_host=cors.flag("trust_forwarded_host", False),
            allow_credentials=cors.flag("allow_credentials", False),
        )
        cors.finish()

        secret = _Table(self, "service_token")
        service_token = ServiceTokenSettings(
            header=secret.text("header", DEFAULT_SECRET_HEADER, each=check_secret_header),
            # An empty list would switch the layer off: leave the key out for that, never configure it empty.
            secrets=secret.texts("secrets", (), nonempty=True, each=_one_secret),
            client_credentials=secret.text_mapping("client_credentials"),
        )
        secret.finish()

        return GuardConfig(
            access=access_config,
            paths=path_settings if paths_on else None,
            cors=cors_settings if cors_on else None,
            service_token=service_token,
            allow=allow,
            cookie=cookie,
            www_authenticate=www_authenticate,
            tools=self._tool_policy(),
            max_body_bytes=max_body_bytes,
            dev=dev,
            oauth=oauth_config,
            limits=self._limit_settings(),
        )

    def _limit_settings(self) -> LimitSettings:
        limits = _Table(self, "limits")
        try:
            settings = LimitSettings(
                failed_credentials=limits.whole("failed_credentials", DEFAULT_FAILED_CREDENTIALS),
                failure_window=limits.number("failure_window", DEFAULT_FAILURE_WINDOW),
                tracked_addresses=limits.whole("tracked_addresses", DEFAULT_TRACKED_ADDRESSES),
                trusted_proxies=limits.texts("trusted_proxies", (), each=trusted_proxy),
                requests_per_minute=limits.whole("requests_per_minute", 0),
            )
        except ConfigError as exc:
            raise _named(exc, limits, tuple(LimitSettings.__dataclass_fields__)) from None
        limits.finish()
        return settings

    def _oauth_config(self) -> OAuthConfig | None:
        table = self.tables.get("oauth")
        if table is None:
            return None
        return OAuthConfig.from_mapping(table, self.where, environ=self.environ)

    def _access_config(self, access: _Table) -> AccessConfig:
        team_domain = access.text("team_domain", None)
        audiences = access.texts("audiences", None, allow_one=True)
        for key, value, variable in (
            ("team_domain", team_domain, "TEAM_DOMAIN"),
            ("audiences", audiences, "POLICY_AUD"),
        ):
            if value is None:
                raise ConfigError(
                    f"{variable} is empty ([access] {key} in TOML): without a team domain and audience the server "
                    "would be open to anyone; set both, or dev mode to run open on purpose"
                )
        certs_url = access.text("certs_url", None)
        try:
            config = AccessConfig(
                team_domain,
                audiences,
                certs_url=certs_url,
                leeway=access.number("leeway", 60),
                keys_max_age=access.number("keys_max_age", 300),
                refetch_cooldown=access.number("refetch_cooldown", 30),
                stale_window=access.number("stale_window", 3600),
                fetch_timeout=access.number("fetch_timeout", 5),
                max_certs_bytes=access.whole("max_certs_bytes", 256 * 1024),
                max_token_bytes=access.whole("max_token_bytes", 32 * 1024),
                token_cache_size=access.whole("token_cache_size", 10_000),
            )
        except ConfigError as exc:
            raise _named(exc, access, tuple(AccessConfig.__dataclass_fields__)) from None
        access.finish()
        return config

    def _tool_policy(self) -> ToolPolicy | None:
        families: dict[str, dict[str, dict[str, list[str]]]] = {}
        default: Literal["allow", "deny"] = "allow"
        for family in ("tools", "prompts", "resources"):
            table = _Table(self, family)
            if family == "tools":
                default = "deny" if table.choice("default", "allow", ("allow", "deny")) == "deny" else "allow"
            families[family] = {name: table.rule_fields(name) for name in table.remaining()}
            table.finish()
        if not any(families.values()) and default == "allow":
            return None
        return ToolPolicy.from_mapping(
            families["tools"], default, prompts=families["prompts"] or None, resources=families["resources"] or None
        )


class _Table:
    """One table being read: each key taken once with its type checked; `finish` refuses the keys nobody took."""

    def __init__(self, document: _Document, name: str) -> None:
        self.name = name
        self.values = dict(document.tables.get(name, {}))
        self.empty = not self.values
        self._sources = document.sources

    def source(self, key: str) -> str:
        return self._sources.get((self.name, key), f"[{self.name}] {key}" if self.name else key)

    def _take(self, key: str) -> Any:
        return self.values.pop(key, None)

    def _wrong(self, key: str, value: Any, expected: str) -> ConfigError:
        # A secret is never echoed, even a malformed one: the message may end up in a log.
        shown = type(value).__name__ if (self.name, key) in _SECRET_KEYS else repr(value)[:60]
        return ConfigError(f"{self.source(key)}: expected {expected}, got {shown}")

    def flag(self, key: str, default: bool) -> bool:
        value = self._take(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._wrong(key, value, "true or false (unquoted)")
        return value

    def _check(self, key: str, value: str, each: Callable[[str], object] | None) -> str:
        # The layer's own check, run now so that a bad value stops start-up with its source named.
        if each is not None:
            try:
                each(value)
            except ValueError as exc:
                raise ConfigError(f"{self.source(key)}: {exc}") from None
        return value

    def text(self, key: str, default: Any, *, each: Callable[[str], object] | None = None) -> Any:
        value = self._take(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value.strip():
            raise self._wrong(key, value, "a non-empty string")
        return self._check(key, value.strip(), each)

    def texts(
        self,
        key: str,
        default: Any,
        *,
        nonempty: bool = False,
        allow_one: bool = False,
        each: Callable[[str], object] | None = None,
    ) -> Any:
        value = self._take(key)
        if value is None:
            return default
        if allow_one and isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
            raise self._wrong(key, value, "a list of non-empty strings")
        if nonempty and not value:
            raise ConfigError(f"{self.source(key)} is an empty list: leave the key out instead")
        return tuple(self._check(key, item.strip(), each) for item in value)

    def number(self, key: str, default: float) -> float:
        value = self._take(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self._wrong(key, value, "a finite number")
        return value

    def whole(self, key: str, default: int) -> int:
        value = self._take(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(key, value, "a whole number")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self._take(key)
        if value is None:
            return default
        if value not in choices:
            raise self._wrong(key, value, " or ".join(f'"{choice}"' for choice in choices))
        return str(value)

    def text_mapping(self, key: str) -> dict[str, str]:
        value = self._take(key)
        if value is None:
            return {}
        if (
            not isinstance(value, dict)
            or not value
            or not all(isinstance(item, str) and item.strip() for item in (*value, *value.values()))
        ):
            raise self._wrong(key, value, "a non-empty table of client id = secret strings")
        for client_secret in value.values():
            self._check(key, client_secret, _one_client_secret)
        return dict(value)

    def rule_fields(self, key: str) -> dict[str, list[str]]:
        value = self._take(key)
        if not isinstance(value, dict):
            raise self._wrong(key, value, "a table of emails, email_domains, service_tokens and groups")
        unknown = set(value) - set(_RULE_KEYS)
        if unknown:
            raise ConfigError(f"{self.source(key)}: unknown field(s) {sorted(unknown)}; known: {', '.join(_RULE_KEYS)}")
        fields: dict[str, list[str]] = {}
        for part, items in value.items():
            if not isinstance(items, list) or not all(isinstance(item, str) and item.strip() for item in items):
                raise self._wrong(key, items, f"{part} as a list of non-empty strings")
            fields[part] = [item.strip() for item in items]
        return fields

    def rule(self, key: str) -> Rule | None:
        if key not in self.values:
            return None
        return Rule(**self.rule_fields(key))

    def remaining(self) -> list[str]:
        return list(self.values)

    def finish(self) -> None:
        if self.values:
            raise ConfigError(f"unknown key(s) {', '.join(self.source(key) for key in sorted(self.values))}")


def _one_origin(origin: str) -> None:
    validated_origins([origin])


def _one_secret(secret: str) -> None:
    check_secret("secret", secret)


def _one_client_secret(secret: str) -> None:
    check_secret("client secret", secret)


def _named(error: ConfigError, table: _Table, keys: tuple[str, ...]) -> ConfigError:
    """`error`, whose message names an argument (`leeway=nan: ...`), with where that value came from in front."""
    message = str(error)
    for key in keys:
        if message.startswith((f"{key}=", f"{key} ")):
            return ConfigError(f"{table.source(key)}{message.removeprefix(key)}")
    return error
