"""The Access application's settings and the checks every setting shares: a bad value stops start-up with a message
that says which setting is wrong and what was expected."""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

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
    if not isinstance(value, str):
        raise ConfigError(f"{setting}={value!r}: expected a string")
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


def normalise_audiences(
    value: str | Iterable[str], setting: str = "audiences", *, warn: bool = True
) -> tuple[str, ...]:
    """One AUD tag, a comma-separated string of them, or a list of them -> a tuple, each checked. An empty entry
    (`"a,,b"`, what `"$NEW,$OLD"` becomes when one is unset) is refused rather than skipped."""
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ConfigError(f"{setting}: expected one AUD tag or a list of them, got {type(value).__name__}")
    if not all(isinstance(item, str) for item in items):
        raise ConfigError(f"{setting}: expected AUD tags as strings")
    stripped = [item.strip() for item in items]
    if not any(stripped):
        raise ConfigError(f"{setting} is empty: expected the Application Audience (AUD) tag of your Access application")
    if not all(stripped):
        raise ConfigError(f"{setting} has an empty entry: check for a stray comma or an unset variable")
    tags = tuple(dict.fromkeys(stripped))
    for tag in tags:
        if not tag.isprintable() or any(char.isspace() for char in tag):
            raise ConfigError(f"{setting} holds {tag!r}: an AUD tag has no spaces or control characters")
        if warn and not _AUD_TAG.fullmatch(tag):
            logger.warning(
                "%s holds %r, which is not 64 lower-case hex characters as Cloudflare Access AUD tags are; "
                "tokens will only match it exactly",
                setting,
                tag,
            )
    return tags


class _CheckedAudiences(tuple[str, ...]):
    """AUD tags already checked under the name of the setting they came from."""


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
        team_domain = normalise_team_domain(team_domain)
        # A frozen dataclass assigns through object.__setattr__; each field is checked on its own line.
        assign = object.__setattr__
        assign(self, "team_domain", team_domain)
        # from_env has checked (and warned about) its tags under the variable's name already.
        assign(self, "audiences", normalise_audiences(audiences, warn=not isinstance(audiences, _CheckedAudiences)))
        assign(self, "certs_url", team_domain + CERTS_PATH if certs_url is None else normalise_certs_url(certs_url))
        assign(self, "leeway", check_number("leeway", leeway, 0, 600))
        assign(self, "keys_max_age", check_number("keys_max_age", keys_max_age, 0, 86_400))
        assign(self, "refetch_cooldown", check_number("refetch_cooldown", refetch_cooldown, 0, 3600))
        assign(self, "stale_window", check_number("stale_window", stale_window, 0, 7 * 86_400))
        assign(self, "fetch_timeout", check_number("fetch_timeout", fetch_timeout, 0.01, 120))
        assign(self, "max_certs_bytes", check_whole("max_certs_bytes", max_certs_bytes, 1024, 16 * 1024 * 1024))
        assign(self, "max_token_bytes", check_whole("max_token_bytes", max_token_bytes, 1024, 1024 * 1024))
        assign(self, "token_cache_size", check_whole("token_cache_size", token_cache_size, 1, 1_000_000))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AccessConfig:
        """`TEAM_DOMAIN`, `POLICY_AUD` (comma-separated) and optionally `ACCESS_CERTS_URL`."""
        env = os.environ if environ is None else environ
        # Checked here first so that a message names the variable, not the argument.
        certs_url = env.get("ACCESS_CERTS_URL", "").strip()
        return cls(
            normalise_team_domain(env.get("TEAM_DOMAIN", ""), "TEAM_DOMAIN"),
            _CheckedAudiences(normalise_audiences(env.get("POLICY_AUD", ""), "POLICY_AUD")),
            certs_url=normalise_certs_url(certs_url, "ACCESS_CERTS_URL") if certs_url else None,
        )

    @property
    def issuer(self) -> str:
        """`iss` must equal this exactly: the team domain's origin, no trailing slash."""
        return self.team_domain


def check_number(setting: str, value: object, minimum: float, maximum: float) -> float:
    """A finite number within [minimum, maximum]; NaN and infinities are refused, as are booleans and strings."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{setting}={value!r}: expected a number from {minimum:g} to {maximum:g}")
    if not math.isfinite(value) or not minimum <= value <= maximum:
        raise ConfigError(f"{setting}={value!r}: expected a number from {minimum:g} to {maximum:g}")
    return value


def check_whole(setting: str, value: object, minimum: int, maximum: int) -> int:
    """A whole number within [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ConfigError(f"{setting}={value!r}: expected a whole number from {minimum} to {maximum}")
    return value


def normalise_certs_url(value: str, setting: str = "certs_url") -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{setting}={value!r}: expected a string")
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
