"""Configuration values, their defaults, and their checks: a bad value stops start-up with a message that says
which setting is wrong and what was expected."""

from __future__ import annotations

import inspect
import ipaddress
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger("mcp_access_guard")

ACCESS_SUFFIX = ".cloudflareaccess.com"
CERTS_PATH = "/cdn-cgi/access/certs"

_AUD_TAG = re.compile(r"[0-9a-f]{64}")
_TEAM_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it and says what was expected."""


def _is_loopback(host: str) -> bool:
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
    if parts.scheme == "http" and not _is_loopback(host):
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
        leeway = arguments["leeway"]
        keys_max_age = arguments["keys_max_age"]
        refetch_cooldown = arguments["refetch_cooldown"]
        stale_window = arguments["stale_window"]
        fetch_timeout = arguments["fetch_timeout"]
        max_certs_bytes = arguments["max_certs_bytes"]
        max_token_bytes = arguments["max_token_bytes"]
        token_cache_size = arguments["token_cache_size"]
        for name, number in (
            ("leeway", leeway),
            ("keys_max_age", keys_max_age),
            ("refetch_cooldown", refetch_cooldown),
            ("stale_window", stale_window),
        ):
            if number < 0:
                raise ConfigError(f"{name}={number!r}: expected a number of seconds, 0 or more")
        for name, number in (
            ("fetch_timeout", fetch_timeout),
            ("max_certs_bytes", max_certs_bytes),
            ("max_token_bytes", max_token_bytes),
            ("token_cache_size", token_cache_size),
        ):
            if number <= 0:
                raise ConfigError(f"{name}={number!r}: expected a number above 0")
        values = {
            "team_domain": team,
            "audiences": normalise_audiences(arguments["audiences"], names["audiences"]),
            "certs_url": certs,
            "leeway": leeway,
            "keys_max_age": keys_max_age,
            "refetch_cooldown": refetch_cooldown,
            "stale_window": stale_window,
            "fetch_timeout": fetch_timeout,
            "max_certs_bytes": max_certs_bytes,
            "max_token_bytes": max_token_bytes,
            "token_cache_size": token_cache_size,
        }
        for name, item in values.items():
            object.__setattr__(self, name, item)

    @property
    def issuer(self) -> str:
        """`iss` must equal this exactly: the team domain's origin, no trailing slash."""
        return self.team_domain


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
    if parts.scheme == "http" and not _is_loopback(host):
        raise ConfigError(f"{setting}={value!r}: plain http:// is only allowed for a loopback host; use https://")
    if parts.scheme not in ("https", "http") or not host or parts.username or parts.password:
        raise ConfigError(f"{setting}={value!r}: expected an https:// URL of the certs endpoint")
    return value.strip()
