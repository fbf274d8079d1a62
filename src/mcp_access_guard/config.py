"""Configuration values, their defaults, and their checks: a bad value stops start-up with a message that says
which setting is wrong and what was expected."""

from __future__ import annotations

import inspect
import ipaddress
import logging
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .jsonrpc import DEFAULT_MAX_BODY_BYTES
from .middleware.cors import DEFAULT_MCP_ORIGINS
from .middleware.service_token import DEFAULT_SECRET_HEADER
from .policy import Rule, ToolPolicy

logger = logging.getLogger("mcp_access_guard")

ACCESS_SUFFIX = ".cloudflareaccess.com"
CERTS_PATH = "/cdn-cgi/access/certs"

_AUD_TAG = re.compile(r"[0-9a-f]{64}")
_TEAM_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it and says what was expected."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalise_team_domain(value: str, setting: str = "team_domain") -> str:
    """`myteam`, `myteam.cloudflareaccess.com`, or a URL (custom domains too) -> the issuer origin."""
    raw = value.strip()
    if not raw:
        raise ConfigError(
            f"{setting} is empty: expected your team name, e.g. 'myteam' or 'https://myteam{ACCESS_SUFFIX}'"
        )
    if _TEAM_NAME.fullmatch(raw.lower()):
        raw = f"https://{raw.lower()}{ACCESS_SUFFIX}"
    elif "://" not in raw:
        raw = f"https://{raw}"
    try:
        parts = urlsplit(raw)
        host = parts.hostname or ""
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{setting}={value!r} is not a valid host or URL ({exc})") from None
    expected = f"expected 'myteam', 'myteam{ACCESS_SUFFIX}' or an https:// origin"
    if parts.scheme not in ("https", "http") or not host:
        raise ConfigError(f"{setting}={value!r}: {expected}")
    if parts.scheme == "http" and not is_loopback(host):
        raise ConfigError(f"{setting}={value!r}: plain http:// is only allowed for a loopback host; use https://")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"{setting}={value!r}: {expected}, with no path, query or credentials")
    netloc = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{netloc}{f':{port}' if port else ''}"


def normalise_audiences(value: str | Iterable[str], setting: str = "audiences") -> tuple[str, ...]:
    """One AUD tag, a comma-separated string of them, or a list of them -> a tuple, each checked."""
    items = value.split(",") if isinstance(value, str) else list(value)
    tags = tuple(dict.fromkeys(item.strip() for item in items if item.strip()))
    if not tags:
        raise ConfigError(f"{setting} is empty: expected the Application Audience (AUD) tag of your Access application")
    for tag in tags:
        if not tag.isprintable() or any(char.isspace() for char in tag):
            raise ConfigError(f"{setting} holds {tag!r}: an AUD tag has no spaces or control characters")
        if not _AUD_TAG.fullmatch(tag):
            logger.warning(
                "%s holds %r, which is not 64 lower-case hex characters as Cloudflare Access AUD tags are; "
                "tokens will only match it exactly",
                setting,
                tag,
            )
    return tags


@dataclass(frozen=True, slots=True, init=False)
class AccessConfig:
    """Where an Access application's tokens come from and what they must say."""

    team_domain: str
    audiences: tuple[str, ...]
    certs_url: str
    leeway: float
    # Keys are refetched after this long even when nothing asks for a new one, so that a key Cloudflare stops
    # publishing stops being trusted.
    keys_max_age: float
    # A kid we have not seen triggers at most one refetch per cooldown: it bounds what random kids can cost.
    refetch_cooldown: float
    # How long past `keys_max_age` the last good keys keep serving while the key endpoint fails.
    stale_window: float
    fetch_timeout: float
    max_certs_bytes: int
    max_token_bytes: int
    token_cache_size: int

    def __init__(
        self,
        team_domain: str,
        audiences: str | Iterable[str],
        *,
        certs_url: str | None = None,
        leeway: float = 60,
        keys_max_age: float = 300,
        refetch_cooldown: float = 30,
        stale_window: float = 3600,
        fetch_timeout: float = 5,
        max_certs_bytes: int = 256 * 1024,
        max_token_bytes: int = 32 * 1024,
        token_cache_size: int = 10_000,
    ) -> None:
        self._assign(locals(), _ARGUMENT_NAMES)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AccessConfig:
        """`TEAM_DOMAIN`, `POLICY_AUD` (comma-separated) and optionally `ACCESS_CERTS_URL`."""
        env = os.environ if environ is None else environ
        config = object.__new__(cls)
        values = {
            "team_domain": env.get("TEAM_DOMAIN", ""),
            "audiences": env.get("POLICY_AUD", ""),
            "certs_url": env.get("ACCESS_CERTS_URL") or None,
        }
        config._assign({**_DEFAULTS, **values}, _ENVIRONMENT_NAMES)
        return config

    def _assign(self, arguments: Mapping[str, Any], names: Mapping[str, str]) -> None:
        # `names` says what to call each setting in a message: the argument, or the environment variable.
        team = normalise_team_domain(arguments["team_domain"], names["team_domain"])
        certs_url = arguments["certs_url"]
        certs = normalise_certs_url(certs_url, names["certs_url"]) if certs_url else team + CERTS_PATH
        for name in _DURATIONS:
            if arguments[name] < 0:
                raise ConfigError(f"{name}={arguments[name]!r}: expected a number of seconds, 0 or more")
        for name in _POSITIVE:
            if arguments[name] <= 0:
                raise ConfigError(f"{name}={arguments[name]!r}: expected a number above 0")
        values = {
            **{name: arguments[name] for name in (*_DURATIONS, *_POSITIVE)},
            "team_domain": team,
            "audiences": normalise_audiences(arguments["audiences"], names["audiences"]),
            "certs_url": certs,
        }
        for name, item in values.items():
            object.__setattr__(self, name, item)

    @property
    def issuer(self) -> str:
        """`iss` must equal this exactly: the team domain's origin, no trailing slash."""
        return self.team_domain


_DURATIONS = ("leeway", "keys_max_age", "refetch_cooldown", "stale_window")
_POSITIVE = ("fetch_timeout", "max_certs_bytes", "max_token_bytes", "token_cache_size")
_ARGUMENT_NAMES = {name: name for name in ("team_domain", "audiences", "certs_url")}
_ENVIRONMENT_NAMES = {"team_domain": "TEAM_DOMAIN", "audiences": "POLICY_AUD", "certs_url": "ACCESS_CERTS_URL"}
_DEFAULTS: Mapping[str, Any] = {
    name: parameter.default
    for name, parameter in inspect.signature(AccessConfig.__init__).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}


def normalise_certs_url(value: str, setting: str = "certs_url") -> str:
    try:
        parts = urlsplit(value.strip())
        host = parts.hostname or ""
    except ValueError as exc:
        raise ConfigError(f"{setting}={value!r} is not a valid URL ({exc})") from None
    if parts.scheme == "http" and not is_loopback(host):
        raise ConfigError(f"{setting}={value!r}: plain http:// is only allowed for a loopback host; use https://")
    if parts.scheme not in ("https", "http") or not host or parts.username or parts.password:
        raise ConfigError(f"{setting}={value!r}: expected an https:// URL of the certs endpoint")
    return value.strip()


# -- the whole stack ---------------------------------------------------------------------------------------------

DEFAULT_PATHS = ("/mcp", "/health")


@dataclass(frozen=True, slots=True)
class PathSettings:
    """The path allow-list, outermost layer: everything else is 404."""

    allow: tuple[str, ...] = DEFAULT_PATHS
    # Answer /health here, with no credential, so a health check never reaches the MCP app.
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
class GuardConfig:
    """Every layer's settings. Each field but `access` has a safe default; set `paths` or `cors` to None to leave
    that layer out. `access=None` leaves the server open, so it needs `dev=True` said out loud."""

    access: AccessConfig | None
    paths: PathSettings | None = PathSettings()
    cors: CORSSettings | None = CORSSettings()
    service_token: ServiceTokenSettings = ServiceTokenSettings()
    allow: Rule | None = None
    cookie: bool = False
    www_authenticate: str | None = None
    tools: ToolPolicy | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    dev: bool = False

    def __post_init__(self) -> None:
        if self.access is None and not self.dev:
            raise ConfigError(
                "no Access configuration (team domain and audience): the server would be open to anyone. "
                "Set TEAM_DOMAIN and POLICY_AUD ([access] in TOML), or dev mode to run open on purpose"
            )

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> GuardConfig:
        """Read a TOML file shaped like `examples/guard.toml`. Unknown keys are refused, so typos are not ignored."""
        with open(path, "rb") as file:
            try:
                document = tomllib.load(file)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        return cls.from_mapping(document, str(path))

    @classmethod
    def from_mapping(cls, document: Mapping[str, Any], where: str = "settings") -> GuardConfig:
        """From the tables a TOML file gives (see `examples/guard.toml`); `where` names the source in messages."""
        return _guard_config_from_tables(document, where)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, restricted_tool: str | None = None) -> GuardConfig:
        """The variables listed in the README's configuration reference. `ALLOWED_EMAILS` restricts the tool named by
        `ALLOWED_EMAILS_TOOL`, or else by `restricted_tool`, as the reference deployments do for one costly tool."""
        env = os.environ if environ is None else environ
        listed = {name: tuple(_split(env[name])) for name in _LIST_VARIABLES if env.get(name, "").strip()}
        dev = _flag(env, "GUARD_DEV")
        access = None if dev and not env.get("TEAM_DOMAIN") else AccessConfig.from_env(env)
        cors_settings: dict[str, Any] = {"trust_forwarded_host": _flag(env, "GUARD_TRUST_FORWARDED_HOST")}
        for variable, name in (
            ("GUARD_ALLOWED_ORIGINS", "allow_origins"),
            ("GUARD_EXTRA_ORIGINS", "extra_origins"),
            ("GUARD_ALLOWED_HOSTS", "allowed_hosts"),
        ):
            if variable in listed:
                cors_settings[name] = listed[variable]
        tools = None
        if "ALLOWED_EMAILS" in listed or "ALLOWED_EMAILS_TOOL" in env or restricted_tool:
            tool = env.get("ALLOWED_EMAILS_TOOL", "").strip() or restricted_tool
            if not tool:
                raise ConfigError("ALLOWED_EMAILS is set: ALLOWED_EMAILS_TOOL must name the tool it restricts")
            tools = ToolPolicy.from_env(tool, env)
        return cls(
            access=access,
            paths=PathSettings(allow=listed.get("GUARD_PATHS", DEFAULT_PATHS)),
            cors=CORSSettings(**cors_settings),
            service_token=ServiceTokenSettings(
                header=env.get("GUARD_SECRET_HEADER", DEFAULT_SECRET_HEADER),
                secrets=listed.get("GUARD_SECRETS", ()),
            ),
            tools=tools,
            dev=dev,
        )


_LIST_VARIABLES = (
    "GUARD_PATHS",
    "GUARD_ALLOWED_ORIGINS",
    "GUARD_EXTRA_ORIGINS",
    "GUARD_ALLOWED_HOSTS",
    "GUARD_SECRETS",
    "ALLOWED_EMAILS",
)


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value not in ("", "0", "1", "true", "false", "yes", "no"):
        raise ConfigError(f"{name}={value!r}: expected true or false")
    return value in ("1", "true", "yes")


def _table(document: Mapping[str, Any], name: str, where: str, known: Iterable[str]) -> dict[str, Any] | None:
    table = document.get(name)
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [{name}] must be a table")
    unknown = set(table) - set(known)
    if unknown:
        raise ConfigError(f"{where}: [{name}] has unknown key(s) {sorted(unknown)}; known: {', '.join(known)}")
    return table


def _settings(kind: type[Any], table: Mapping[str, Any]) -> Any:
    return kind(**{name: tuple(value) if isinstance(value, list) else value for name, value in table.items()})


_ACCESS_KEYS = (
    *inspect.signature(AccessConfig.__init__).parameters.keys() - {"self"},
    "allow",
    "cookie",
    "www_authenticate",
)


def _guard_config_from_tables(document: Mapping[str, Any], where: str) -> GuardConfig:
    unknown = set(document) - {
        "access",
        "paths",
        "cors",
        "service_token",
        "tools",
        "prompts",
        "resources",
        "dev",
        "max_body_bytes",
    }
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {sorted(unknown)}")
    access_table = _table(document, "access", where, sorted(_ACCESS_KEYS))
    paths_table = _table(document, "paths", where, ("enabled", *PathSettings.__dataclass_fields__))
    cors_table = _table(document, "cors", where, ("enabled", *CORSSettings.__dataclass_fields__))
    secret_table = _table(document, "service_token", where, ServiceTokenSettings.__dataclass_fields__)
    tools_table = dict(document.get("tools") or {})
    default = tools_table.pop("default", "allow")
    try:
        access = dict(access_table or {})
        allow = access.pop("allow", None)
        jwt_options = {name: access.pop(name) for name in ("cookie", "www_authenticate") if name in access}
        paths = dict(paths_table or {})
        cors = dict(cors_table or {})
        has_policy = tools_table or document.get("prompts") or document.get("resources")
        return GuardConfig(
            access=AccessConfig(**access) if access_table is not None else None,
            paths=_settings(PathSettings, paths) if paths.pop("enabled", True) else None,
            cors=_settings(CORSSettings, cors) if cors.pop("enabled", True) else None,
            service_token=_settings(ServiceTokenSettings, secret_table or {}),
            allow=Rule(**allow) if allow is not None else None,
            tools=ToolPolicy.from_mapping(
                tools_table, default, prompts=document.get("prompts"), resources=document.get("resources")
            )
            if has_policy
            else None,
            max_body_bytes=document.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES),
            dev=document.get("dev", False),
            **jwt_options,
        )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where}: {exc}") from None
