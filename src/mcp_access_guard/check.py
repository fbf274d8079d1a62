"""`mcp-access-guard check`: the diagnosis for "Access says 403 and I don't know why".

Three checks, each run when its input is given:

- the configuration, from `--config guard.toml` (`GuardConfig.from_toml`) or else the environment
  (`GuardConfig.from_env()`): is the team domain well-formed, can its signing keys be fetched (for real: how many,
  which kids), is every AUD tag 64 hex characters, and what would the stack leave open;
- `--token JWT` (`--token -` reads it from stdin, which keeps it out of shell history): the token is decoded without
  trusting it, to show its claims and measure what is wrong (expired how long ago, which audience, which issuer,
  which key), then the real `AccessVerifier` checks it against the real keys and its reason is explained;
- `--url URL` with a service token (`--client-id` / `--client-secret`, or `CF_ACCESS_CLIENT_ID` /
  `CF_ACCESS_CLIENT_SECRET`): the `curl -I` test of Cloudflare's service-token guide (HEAD, GET when HEAD is
  refused, redirects not followed), and what the answer means.

Each finding is one line: a mark (`ok`, `FAIL`, `warn`, or `info` for facts), what was found, and the fix. The exit
status is 0 only when no line says FAIL; warnings do not change it. No token, signature, shared secret or client
secret is ever printed: lines show claim values and shortened AUD tags and key ids, a URL is shown without its query
string, and every line also passes through a redactor that knows every secret this command was given.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import os
import re
import sys
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import httpx

from .config import (
    ACCESS_SUFFIX,
    AccessConfig,
    ConfigError,
    is_loopback,
    normalise_audiences,
    normalise_team_domain,
)
from .identity import SERVICE_TOKEN_SUFFIX, AccessIdentity
from .settings import GuardConfig
from .verifier import AccessDenied, AccessVerifier

Mark = Literal["ok", "FAIL", "warn", "info"]

_AUD_TAG = re.compile(r"[0-9a-f]{64}")
_ANY_CASE_AUD_TAG = re.compile(r"[0-9a-fA-F]{64}")
_LOGIN_PATH = "/cdn-cgi/access/login"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Cloudflare's answers when it cannot reach the origin (520-530 are its own; 530 with error 1033 is a tunnel that is
# not connected).
_ORIGIN_UNREACHABLE = frozenset({502, 503, 504, *range(520, 531)})
_SHORT = 7
_LONG_VALUE = 80
_DEFAULT_TIMEOUT = 10.0
_MIN_REDACTED_LENGTH = 4


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="GUARD_TOML",
        help="read the configuration from this TOML file (default: the environment, TEAM_DOMAIN, POLICY_AUD, ...)",
    )
    parser.add_argument(
        "--token",
        metavar="JWT",
        help="an Access token to diagnose; '-' reads it from stdin (keeps it out of shell history)",
    )
    parser.add_argument("--url", help="make the service-token test request to this URL of the application")
    parser.add_argument("--client-id", help="service token client id for --url (default: $CF_ACCESS_CLIENT_ID)")
    parser.add_argument(
        "--client-secret",
        help="service token client secret for --url (default: $CF_ACCESS_CLIENT_SECRET, which is safer: "
        "command-line arguments are visible to other users of the machine)",
    )
    parser.add_argument(
        "--timeout", type=float, default=_DEFAULT_TIMEOUT, help="seconds to wait for the --url answer (default: 10)"
    )


def run_check(args: argparse.Namespace) -> int:
    """Run the checks `args` ask for, print one line per finding, and return 0 only when none failed."""
    report = _Report()
    client_id = (args.client_id or os.environ.get("CF_ACCESS_CLIENT_ID") or "").strip() or None
    client_secret = (args.client_secret or os.environ.get("CF_ACCESS_CLIENT_SECRET") or "").strip() or None
    report.never_print(client_secret, os.environ.get("CF_ACCESS_CLIENT_SECRET"))
    if client_id and not client_id.endswith(SERVICE_TOKEN_SUFFIX):
        report.never_print(client_id)  # not shaped like an id: it may well be the secret, swapped
    token = sys.stdin.read() if args.token == "-" else args.token
    report.never_print(token, *(token or "").split("."))
    # Every secret is known to the redactor before the first line is printed.
    report.never_print(*(secret.strip() for secret in os.environ.get("GUARD_SECRETS", "").split(",")))
    if args.config:
        report.never_print(*_secrets_in_toml(args.config))
    with _library_logs_captured():
        anyio.run(_run, args, token, client_id, client_secret, report)
    report.summary()
    return 1 if report.failed else 0


async def _run(
    args: argparse.Namespace, token: str | None, client_id: str | None, client_secret: str | None, report: _Report
) -> None:
    config, verifier = await _check_configuration(args, report, configuration_needed=token is not None or not args.url)
    try:
        if token is not None:
            report.section("token")
            await _check_token(report, token, config, verifier)
        if args.url:
            report.section(f"service token test of {_without_query(args.url)}")
            await _check_url(report, args.url, client_id, client_secret, args.timeout)
    finally:
        if verifier is not None:
            await verifier.aclose()


# -- the report --------------------------------------------------------------------------------------------------


class _Report:
    """Prints findings as they are made, each through the redactor, and counts them."""

    def __init__(self) -> None:
        self.counts: dict[Mark, int] = {"ok": 0, "FAIL": 0, "warn": 0, "info": 0}
        self._secrets: set[str] = set()
        self._lines = 0

    def never_print(self, *values: str | None) -> None:
        # Very short values are left out: redacting "ab" everywhere would garble every line, and no real secret is
        # that short.
        self._secrets.update(value for value in values if value and len(value) >= _MIN_REDACTED_LENGTH)

    @property
    def failed(self) -> bool:
        return self.counts["FAIL"] > 0

    def section(self, title: str) -> None:
        self._write(f"\n{title}" if self._lines else title)

    def finding(self, mark: Mark, text: str) -> None:
        self.counts[mark] += 1
        self._write(f"  {mark:<5}{text}")

    def ok(self, text: str) -> None:
        self.finding("ok", text)

    def fail(self, text: str) -> None:
        self.finding("FAIL", text)

    def warn(self, text: str) -> None:
        self.finding("warn", text)

    def info(self, text: str) -> None:
        self.finding("info", text)

    def summary(self) -> None:
        failures, warnings = self.counts["FAIL"], self.counts["warn"]
        counted = f"{_plural(failures, 'failure')}, {_plural(warnings, 'warning')}"
        self._write(f"\nresult: {'FAIL' if failures else 'ok'} ({counted})")

    def _write(self, line: str) -> None:
        for secret in sorted(self._secrets, key=len, reverse=True):
            line = line.replace(secret, "[redacted]")
        self._lines += 1
        print(line, flush=True)


@contextmanager
def _library_logs_captured() -> Iterator[None]:
    """Keep the library's log records off the terminal: the ones that matter become findings here."""
    logger = logging.getLogger("mcp_access_guard")
    handler = _CapturedLogs()
    saved = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


class _CapturedLogs(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def _warnings_logged() -> Iterator[list[str]]:
    """The warning messages the library logs inside the block."""
    logger = logging.getLogger("mcp_access_guard")
    handler = _CapturedLogs()
    logger.addHandler(handler)
    messages: list[str] = []
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        messages.extend(record.getMessage() for record in handler.records if record.levelno >= logging.WARNING)


# -- configuration -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SettingNames:
    """What the user calls each setting, so that a fix names the thing they edit."""

    team_domain: str
    audiences: str
    certs_url: str
    secrets: str
    allowed_hosts: str
    paths: str
    cors: str
    dev: str


_ENVIRONMENT_NAMES = _SettingNames(
    "TEAM_DOMAIN",
    "POLICY_AUD",
    "ACCESS_CERTS_URL",
    "GUARD_SECRETS",
    "GUARD_ALLOWED_HOSTS",
    "GUARD_PATHS",
    "",
    "GUARD_DEV",
)
_TOML_NAMES = _SettingNames(
    "[access] team_domain",
    "[access] audiences",
    "[access] certs_url",
    "[service_token] secrets",
    "[cors] allowed_hosts",
    "[paths] enabled",
    "[cors] enabled",
    "dev",
)
_CONFIGURATION_VARIABLES = ("TEAM_DOMAIN", "POLICY_AUD", "ACCESS_CERTS_URL", "GUARD_DEV")


async def _check_configuration(
    args: argparse.Namespace, report: _Report, *, configuration_needed: bool
) -> tuple[GuardConfig | None, AccessVerifier | None]:
    if args.config:
        report.section(f"configuration from {args.config}")
        names = _TOML_NAMES
        config = _load_toml(report, args.config)
    elif configuration_needed or any(os.environ.get(name) for name in _CONFIGURATION_VARIABLES):
        report.section("configuration from the environment")
        names = _ENVIRONMENT_NAMES
        config = _load_environment(report, os.environ)
    else:
        report.section("configuration")
        report.info("none given (--config, or TEAM_DOMAIN and POLICY_AUD): only the URL is checked")
        return None, None
    if config is None:
        return None, None
    if config.access is None:
        report.fail(
            f"dev mode ({names.dev}) with no Access configuration: nothing is verified, anyone who reaches the "
            f"server is let in. Turn dev mode off and set {names.team_domain} and {names.audiences}"
        )
        _report_stack(report, config, names)
        return config, None
    _report_team_domain(report, config.access, names)
    verifier = AccessVerifier(config.access)
    await _report_keys(report, verifier, names)
    _report_audiences(report, config.access.audiences, names)
    _report_stack(report, config, names)
    return config, verifier


def _load_toml(report: _Report, path: str) -> GuardConfig | None:
    try:
        with _warnings_logged():
            return GuardConfig.from_toml(path)
    except OSError as exc:
        report.fail(f"cannot read {path}: {exc.strerror or type(exc).__name__}")
    except ConfigError as exc:
        report.fail(str(exc))
    return None


def _secrets_in_toml(path: str) -> list[str]:
    """The shared and client secrets a TOML file holds, read before anything can echo them in an error."""
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError):
        return []
    table = document.get("service_token")
    if not isinstance(table, dict):
        return []
    found = table.get("secrets")
    shared = [found] if isinstance(found, str) else list(found) if isinstance(found, list) else []
    pairs = table.get("client_credentials")
    client = list(pairs.values()) if isinstance(pairs, dict) else []
    return [value for value in (*shared, *client) if isinstance(value, str)]


def _load_environment(report: _Report, env: Mapping[str, str]) -> GuardConfig | None:
    dev_without_access = env.get("GUARD_DEV", "").strip().lower() in ("1", "true", "yes") and not env.get("TEAM_DOMAIN")
    if not dev_without_access:
        # Each setting on its own first, so that every bad one is named, not only the first.
        well_formed = True
        checks: tuple[tuple[Callable[[str, str], object], str], ...] = (
            (normalise_team_domain, "TEAM_DOMAIN"),
            (normalise_audiences, "POLICY_AUD"),
        )
        for check, variable in checks:
            try:
                with _warnings_logged():
                    check(env.get(variable, ""), variable)
            except ConfigError as exc:
                report.fail(str(exc))
                well_formed = False
        if not well_formed:
            return None
    try:
        with _warnings_logged():
            return GuardConfig.from_env(env)
    except ConfigError as exc:
        report.fail(str(exc))
        return None


def _report_team_domain(report: _Report, access: AccessConfig, names: _SettingNames) -> None:
    issuer = access.issuer
    host = urlsplit(issuer).hostname or ""
    if host.endswith(ACCESS_SUFFIX):
        kind = f"team {host.removesuffix(ACCESS_SUFFIX)!r}"
    elif is_loopback(host):
        kind = "a loopback issuer (a local test issuer, not Cloudflare)"
    else:
        kind = "a custom team domain (it must be your Access team's domain, not the application's host name)"
    report.ok(f"{names.team_domain}: {kind}; tokens must carry iss {issuer} exactly")


async def _report_keys(report: _Report, verifier: AccessVerifier, names: _SettingNames) -> None:
    certs_url = verifier.config.certs_url
    with _warnings_logged() as problems:
        await verifier.keys.refresh()
    kids = verifier.keys.kids
    if not kids:
        reason = "; ".join(problems) or "no usable signing key"
        report.fail(f"keys: {reason}. {_keys_hint(reason, names)}")
        return
    for problem in problems:
        report.warn(f"keys: {problem}")
    report.ok(f"keys: {_plural(len(kids), 'signing key')} published at {certs_url} (kids {_short_list(kids)})")


def _keys_hint(reason: str, names: _SettingNames) -> str:
    if "Connect" in reason or "Timeout" in reason or "within" in reason:
        return f"Nothing answered there: check {names.team_domain} (or {names.certs_url}) and this machine's network"
    if "HTTP 3" in reason or "HTTP 404" in reason or "not JSON" in reason:
        return (
            f"That host serves no Access keys: {names.team_domain} must be your team domain "
            f"(myteam{ACCESS_SUFFIX} or the team's custom domain), not the application's host name"
        )
    return f"Check {names.team_domain} and {names.certs_url}"


def _report_audiences(report: _Report, audiences: Iterable[str], names: _SettingNames) -> None:
    tags = [tag for tag in audiences if _AUD_TAG.fullmatch(tag)]
    if tags:
        report.ok(f"{names.audiences}: {_plural(len(tags), 'AUD tag')} of 64 hex characters ({_short_list(tags)})")
    for tag in audiences:
        if _AUD_TAG.fullmatch(tag):
            continue
        if _ANY_CASE_AUD_TAG.fullmatch(tag):
            report.fail(
                f"{names.audiences}: {_short(tag)} has upper-case letters; tokens carry AUD tags in lower case and "
                f"are compared exactly, so it never matches: write it in lower case"
            )
        else:
            report.warn(
                f"{names.audiences}: {_short(tag, 24)!r} is {len(tag)} characters, not the 64 hex characters of an "
                f"Access AUD tag; only a token whose aud is exactly this matches. Copy the Application Audience "
                f"(AUD) Tag from the application's overview in Cloudflare Zero Trust"
            )


def _report_stack(report: _Report, config: GuardConfig, names: _SettingNames) -> None:
    """What the layers around the app would leave open."""
    if config.paths is None:
        report.warn(
            f"path allow-list off ({names.paths or 'paths=None'}): every path of the app is reachable, not just "
            f"/mcp and /health; turn it on, listing any other path the app needs"
        )
    else:
        report.ok(f"paths: only {', '.join(config.paths.allow)} are served, everything else is 404")
    if config.cors is None:
        report.warn(
            f"browser-origin layer off ({names.cors or 'cors=None'}): a web page on any site can make a visitor's "
            f"browser call this server, and nothing checks Host; turn it on"
        )
    elif config.cors.allowed_hosts is None:
        report.warn(
            f"{names.allowed_hosts} unset: any Host is answered. If the mcp SDK's own Host check is off "
            f"(enable_dns_rebinding_protection=False, as behind a tunnel), nothing checks Host: set it to your public "
            f"host name"
        )
    else:
        report.ok(f"hosts: only {', '.join(config.cors.allowed_hosts)} are answered; browser origins are checked")
    shared = config.service_token
    if shared.enabled:
        pairs = len(shared.client_credentials)
        direct = f", {_plural(pairs, 'direct service-token pair')}" if pairs else ""
        report.ok(
            f"shared secret: {_plural(len(shared.secrets), 'secret')} accepted in {shared.header}{direct}; requests "
            f"that did not come through your tunnel or Worker are refused"
        )
    else:
        report.warn(
            f"no shared secret ({names.secrets}): anyone who can reach the origin directly, around the tunnel, can "
            f"present an Access token captured elsewhere; a secret your tunnel or Worker adds proves the request came "
            f"through it"
        )
    if config.allow is not None:
        report.ok("allow rule: only callers it matches are let in, whatever Access admits")
    if config.cookie:
        report.info(
            "the CF_Authorization cookie is read when the header is missing; Cloudflare does not guarantee it "
            "reaches the origin, the Cf-Access-Jwt-Assertion header is what to rely on"
        )
    policy = config.tools
    if policy is None or (policy.default == "allow" and not policy.rules):
        report.info("no tool policy: every caller Access lets in may use every tool")
    else:
        restricted = ", ".join(sorted(policy.rules)) or "none"
        report.ok(f"tool policy: restricted tools {restricted}; tools without a rule: {policy.default}")


# -- the token ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Untrusted:
    """What the token says about itself, before anything about it is believed."""

    header: dict[str, Any]
    claims: dict[str, Any]
    problem: str | None = None  # why it cannot be read at all


# What people paste around a token, and what to say about it.
_WRAPPERS = (
    (
        "bearer ",
        "pasted with a 'Bearer ' prefix: Cf-Access-Jwt-Assertion carries the bare token ('Bearer ' belongs "
        "only in an Authorization header)",
    ),
    ("cf-access-jwt-assertion:", "pasted with its header name"),
    ("cf_authorization=", "pasted as a cookie (CF_Authorization=...)"),
)


def _unwrap_token(report: _Report, raw: str) -> str:
    token = raw.strip()
    changed = True
    while changed:
        changed = False
        if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
            token = token[1:-1].strip()
            report.warn("the token was pasted inside quotes; a header or cookie must carry it without them")
            changed = True
        for prefix, what in _WRAPPERS:
            if token.lower().startswith(prefix):
                token = token[len(prefix) :].strip().removesuffix(";")
                report.warn(f"the token was {what}; checking what follows it")
                changed = True
    return token


async def _check_token(report: _Report, raw: str, config: GuardConfig | None, verifier: AccessVerifier | None) -> None:
    token = _unwrap_token(report, raw)
    if not token:
        report.fail("the token is empty")
        return
    untrusted = _decode_untrusted(token)
    if untrusted.problem is None:
        report.info(f"header (not yet trusted): {_describe_header(untrusted.header)}")
        report.info(f"claims (not yet trusted): {_describe_claims(untrusted.claims)}")
    if verifier is None or config is None or config.access is None:
        report.fail(
            (f"{untrusted.problem}; " if untrusted.problem else "")
            + "cannot verify it: no usable Access configuration (see above)"
        )
        return
    access = config.access
    now = time.time()
    problems = _claim_problems(untrusted.claims, access, now) if untrusted.problem is None else {}
    try:
        identity = await verifier.verify(token)
    except AccessDenied as denied:
        report.fail(f"token refused ({denied.reason}): {_explain(denied, untrusted, problems, verifier)}")
        for reason, problem in problems.items():
            if reason != denied.reason:
                report.fail(f"also ({reason}): {problem}")
        return
    _report_identity(report, identity, config, now)


def _decode_untrusted(token: str) -> _Untrusted:
    segments = token.split(".")
    if len(segments) != 3:
        return _Untrusted({}, {}, f"not a JWT: {_looks_like(token, segments)}")
    parts: list[dict[str, Any]] = []
    for position, segment in (("header (part 1)", segments[0]), ("payload (part 2)", segments[1])):
        try:
            document = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            return _Untrusted({}, {}, f"not a JWT: its {position} is not base64url-encoded JSON (pasted in part?)")
        if not isinstance(document, dict):
            return _Untrusted({}, {}, f"not a JWT: its {position} is JSON but not an object")
        parts.append(document)
    header, claims = parts
    if not segments[2]:
        return _Untrusted(header, claims, "the signature (part 3) is empty: the token is unsigned")
    return _Untrusted(header, claims)


def _looks_like(token: str, segments: list[str]) -> str:
    count = f"{_plural(len(segments), 'part')} separated by '.', where a JWT has 3 (header.payload.signature)"
    if len(segments) == 5:
        return f"{count}; 5 parts is an encrypted JWE, which Access does not send"
    if token.endswith(SERVICE_TOKEN_SUFFIX):
        return f"{count}; it looks like a service token's client id"
    if _ANY_CASE_AUD_TAG.fullmatch(token):
        return f"{count}; 64 hex characters look like a service token's client secret or an AUD tag"
    return count


def _describe_header(header: Mapping[str, Any]) -> str:
    described = [f"{name} {_show(header[name])}" for name in ("alg", "kid", "typ") if name in header]
    others = sorted(set(header) - {"alg", "kid", "typ"})
    if others:
        described.append(f"also {', '.join(others)}")
    return ", ".join(described) or "empty"


_SHOWN_CLAIMS = ("type", "iss", "aud", "email", "common_name", "sub", "country", "groups")
_DATE_CLAIMS = ("exp", "nbf", "iat")


def _describe_claims(claims: Mapping[str, Any]) -> str:
    now = time.time()
    described = [f"{name} {_show(claims[name])}" for name in _SHOWN_CLAIMS if name in claims]
    for name in _DATE_CLAIMS:
        moment = _number(claims.get(name))
        if moment is not None:
            described.append(f"{name} {_utc(moment)} ({_relative(moment, now)})")
        elif name in claims:
            described.append(f"{name} {_show(claims[name])}")
    # Other claims by name only: identity_nonce and custom claims are nobody's business in a terminal.
    others = sorted(set(claims) - {*_SHOWN_CLAIMS, *_DATE_CLAIMS})
    if others:
        described.append(f"also {', '.join(others)}")
    return ", ".join(described) or "none"


def _claim_problems(claims: Mapping[str, Any], access: AccessConfig, now: float) -> dict[str, str]:
    """Every claim that would fail, measured, keyed by the verifier's reason for it. Untrusted: for explaining."""
    problems: dict[str, str] = {}
    issuer = _issuer_problem(claims.get("iss"), access.issuer)
    if issuer:
        problems["wrong_issuer"] = issuer
    if claims.get("type") != "app":
        problems["wrong_token_type"] = _type_problem(claims.get("type"))
    audience = _audience_problem(claims.get("aud"), access.audiences)
    if audience:
        problems["wrong_audience"] = audience
    expires_at = _number(claims.get("exp"))
    if expires_at is None:
        problems["malformed"] = "it has no exp (expiry) as a number of seconds"
    elif expires_at <= now - access.leeway:
        problems["expired"] = (
            f"expired {_duration(now - expires_at)} ago (exp {_utc(expires_at)}; {access.leeway:g} s of clock skew "
            f"allowed): tokens last as long as the Access application's session duration; sign in again for a fresh "
            f"one"
        )
    for name in ("nbf", "iat"):
        moment = _number(claims.get(name))
        if moment is not None and moment > now + access.leeway:
            problems["not_yet_valid"] = (
                f"{name} is {_duration(moment - now)} in the future ({_utc(moment)}): the clock of this machine or "
                f"of whatever made the token is wrong"
            )
    if not claims.get("email") and not claims.get("common_name"):
        problems.setdefault("malformed", "it has neither email (a user) nor common_name (a service token)")
    return problems


def _issuer_problem(iss: Any, expected: str) -> str | None:
    if iss == expected:
        return None
    if not isinstance(iss, str) or not iss:
        return f"it has no issuer (iss); Access tokens carry {expected}"
    if iss.rstrip("/") == expected:
        return (
            f"issuer {iss} has a trailing slash; the expected issuer {expected} has none, and they must match exactly"
        )
    if iss.lower() == expected.lower():
        return f"issuer {iss} differs from {expected} in letter case; they must match exactly"
    theirs, ours = urlsplit(iss), urlsplit(expected)
    if theirs.netloc.lower() == ours.netloc.lower() and theirs.scheme != ours.scheme:
        return f"issuer {iss} uses {theirs.scheme}:// where the expected issuer {expected} uses {ours.scheme}://"
    their_host, our_host = theirs.hostname or "", ours.hostname or ""
    if their_host.endswith(ACCESS_SUFFIX) and our_host.endswith(ACCESS_SUFFIX):
        return (
            f"issuer {iss} is another team ({their_host.removesuffix(ACCESS_SUFFIX)!r}, configured "
            f"{our_host.removesuffix(ACCESS_SUFFIX)!r}): the team domain names the wrong team, or the token is "
            f"another team's"
        )
    return (
        f"issuer {iss} is not the configured team domain {expected}: the token comes from another issuer, or the "
        f"team domain is set wrong (a custom team domain must be configured as that domain)"
    )


def _type_problem(token_type: Any) -> str:
    if token_type == "org":
        return (
            "this is an org token (type org): the team-wide session token from the CF_Authorization cookie on "
            f"<team>{ACCESS_SUFFIX}, not an application token. Use the token Access sends to the application: the "
            "Cf-Access-Jwt-Assertion header, or the CF_Authorization cookie on the application's own host name"
        )
    if token_type is None:
        return "it has no type claim; Access application tokens carry type app"
    return f"type {_show(token_type)}, where an Access application token has type app"


def _audience_problem(aud: Any, configured: tuple[str, ...]) -> str | None:
    tags = [aud] if isinstance(aud, str) else aud
    if not isinstance(tags, list) or not tags or not all(isinstance(tag, str) for tag in tags):
        return f"its aud is {_show(aud)}, not an AUD tag or a list of them"
    if not set(tags).isdisjoint(configured):
        return None
    keep = _distinguishing_length([*tags, *configured])
    return (
        f"audience {_short_list(tags, keep)} is not one of the configured ones ({_short_list(configured, keep)}): "
        f"the token is for another Access application. Add this application's AUD tag to the configuration, or get "
        f"a token for the application that is configured"
    )


def _explain(denied: AccessDenied, untrusted: _Untrusted, problems: Mapping[str, str], verifier: AccessVerifier) -> str:
    """The verifier's reason, in words and figures."""
    reason = denied.reason
    if reason == "malformed":
        return untrusted.problem or problems.get("malformed") or denied.detail or "not a well-formed Access token"
    if reason in problems:
        return problems[reason]
    kid = untrusted.header.get("kid")
    if reason == "unsupported_algorithm":
        return _algorithm_problem(untrusted.header.get("alg"))
    if reason == "unknown_key":
        published = verifier.keys.kids
        explanation = (
            f"signed by key {_show(kid)}, which is not among the {_plural(len(published), 'key')} "
            f"{verifier.config.certs_url} publishes now ({_short_list(published)})"
        )
        if untrusted.claims.get("iss") == verifier.config.issuer:
            return (
                f"{explanation}: a key that is no longer published. After a key rotation Access keeps the previous "
                f"key for 7 days, then tokens it signed stop working; sign in again for a fresh token"
            )
        return f"{explanation}, and its issuer is not {verifier.config.issuer}: another team or issuer signed it"
    if reason == "bad_signature":
        return (
            f"the signature does not match the published key {_show(kid)}: the token was changed after it was signed "
            f"(or cut short when copied), or someone else signed it under that key id"
        )
    if reason == "keys_unavailable":
        return "the signing keys could not be fetched (see keys above), so no token can be verified"
    if reason == "missing":
        return "the token is empty"
    return denied.detail or reason


def _algorithm_problem(alg: Any) -> str:
    if isinstance(alg, str) and alg.lower() == "none":
        return (
            "alg none means unsigned: anyone could have written these claims. Access signs with RS256 only, so this "
            "token did not come from Cloudflare Access"
        )
    if isinstance(alg, str) and alg.upper().startswith("HS"):
        return (
            f"alg {alg} is a shared-secret signature; Access signs with RS256 only, so this token did not come from "
            f"Cloudflare Access"
        )
    return f"alg {_show(alg)}; Access signs with RS256 only"


def _report_identity(report: _Report, identity: AccessIdentity, config: GuardConfig, now: float) -> None:
    remaining = identity.expires_at - now
    if remaining > 0:
        expiry = f"expires in {_duration(remaining)}"
    else:
        expiry = f"expired {_duration(-remaining)} ago, within the allowed clock skew"
    if identity.is_service_token:
        who = (
            f"service token {identity.common_name} (its common_name is its identity: service-token tokens carry no "
            f"email)"
        )
    else:
        details = [f"sub {identity.subject}"] if identity.subject else []
        if identity.country:
            details.append(f"country {identity.country}")
        if identity.groups:
            details.append(f"groups {', '.join(identity.groups)}")
        who = f"user {identity.email}" + (f" ({', '.join(details)})" if details else "")
    report.ok(f"token passes: {who}; {expiry} ({_utc(identity.expires_at)})")
    if remaining <= 0:
        report.warn("the token is past its exp: it is accepted only thanks to the allowed clock skew")
    if config.allow is not None:
        if config.allow.matches(identity):
            report.ok(f"the allow rule admits {identity.principal}")
        else:
            report.fail(
                f"not_allowed: the allow rule does not include {identity.principal}, so the guard answers 403 although "
                f"Access let them in; add them to the allow rule"
            )
    policy = config.tools
    if policy is not None and policy.rules:
        denied = sorted(name for name, rule in policy.rules.items() if not rule.matches(identity))
        allowed = sorted(set(policy.rules) - set(denied))
        report.info(
            f"tool policy for {identity.principal}: may use {', '.join(allowed) or 'none'} of the restricted tools; "
            f"not {', '.join(denied) or 'none'} (those look like unknown tools to them)"
        )


# -- the service-token test request ------------------------------------------------------------------------------


async def _check_url(
    report: _Report, url: str, client_id: str | None, client_secret: str | None, time_limit: float
) -> None:
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        parts, host = urlsplit(""), ""
    if parts.scheme not in ("http", "https") or not host:
        report.fail(f"--url {_without_query(url)}: expected an https:// URL of the application")
        return
    shown_url = _without_query(url)
    if parts.scheme == "http" and not is_loopback(host) and client_secret:
        report.fail(
            f"{shown_url}: refusing to send a client secret over plain http:// to another machine; use https://"
        )
        return
    if bool(client_id) != bool(client_secret):
        missing = (
            "--client-secret (or CF_ACCESS_CLIENT_SECRET)" if client_id else "--client-id (or CF_ACCESS_CLIENT_ID)"
        )
        report.fail(f"a service token needs both its client id and its secret: {missing} is missing")
        return
    headers: dict[str, str] = {}
    swapped = False
    if client_id and client_secret:
        swapped = _report_credential_shape(report, client_id, client_secret)
        headers = {"CF-Access-Client-Id": client_id, "CF-Access-Client-Secret": client_secret}
    else:
        report.warn(
            "no service token (--client-id / --client-secret or CF_ACCESS_CLIENT_ID / CF_ACCESS_CLIENT_SECRET): the "
            "request goes without one, to see what guards the URL"
        )
    try:
        # httpx's timeout bounds each read; this bounds the whole exchange.
        with anyio.fail_after(time_limit):
            method, status, location = await _service_token_request(url, headers, time_limit)
    except TimeoutError:
        report.fail(f"{shown_url}: no answer within {time_limit:g} s; check the host name and this machine's network")
        return
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        report.fail(f"{shown_url}: no answer ({type(exc).__name__}); check the host name and this machine's network")
        return
    except UnicodeError:
        report.fail("the client id or secret holds characters an HTTP header cannot carry; copy it again")
        return
    _explain_answer(report, f"{method} {shown_url} answered {status}", status, location, bool(headers), swapped)


def _report_credential_shape(report: _Report, client_id: str, client_secret: str) -> bool:
    """Warn about credentials that cannot be right; True when they look swapped."""
    if client_secret.endswith(SERVICE_TOKEN_SUFFIX) and not client_id.endswith(SERVICE_TOKEN_SUFFIX):
        report.warn(
            "the client id and secret look swapped: the secret ends in .access, as client ids do "
            "(CF-Access-Client-Id takes the id, CF-Access-Client-Secret the secret)"
        )
        return True
    if not client_id.endswith(SERVICE_TOKEN_SUFFIX):
        report.warn("the client id does not end in .access, as Cloudflare's client ids do: is it the whole id?")
    else:
        report.info(f"service token client id {_short(client_id)}{SERVICE_TOKEN_SUFFIX}")
    if any(char in "'\"" for char in (client_id[0], client_id[-1], client_secret[0], client_secret[-1])):
        report.warn("the client id or secret starts or ends with a quote: send the bare values")
    return False


async def _service_token_request(url: str, headers: Mapping[str, str], read_limit: float) -> tuple[str, int, str]:
    """HEAD, or GET when HEAD is refused, without following redirects or reading the body (it may be a stream)."""
    user_agent = f"mcp-access-guard/{version('mcp-access-guard')} check"
    async with httpx.AsyncClient(
        follow_redirects=False, timeout=read_limit, headers={"User-Agent": user_agent}
    ) as client:
        for method in ("HEAD", "GET"):
            async with client.stream(method, url, headers=dict(headers)) as response:
                if method == "HEAD" and response.status_code in (405, 501):
                    continue
                return method, response.status_code, response.headers.get("location", "")
    raise AssertionError("unreachable: GET always returns")


def _explain_answer(
    report: _Report, shown: str, status: int, location: str, with_credentials: bool, swapped: bool
) -> None:
    if 200 <= status < 300:
        if with_credentials:
            report.ok(f"{shown}: the service token works; Access let it through and the origin answered")
        else:
            report.fail(
                f"{shown} with no credential at all: nothing guards this URL. Is the Access application on this host "
                f"name and path, or does a Bypass policy match it?"
            )
    elif status in _REDIRECTS:
        _explain_redirect(report, shown, location, with_credentials)
    elif status == 403:
        if not with_credentials:
            report.ok(f"{shown}: refused without a credential, so something guards it; pass a service token to test it")
            return
        looks = " (and they look swapped here)" if swapped else ""
        report.fail(
            f"{shown}: the service token was refused. Likely: the client id and secret are swapped{looks}, wrong or "
            f"revoked (a secret is shown only once: if unsure, create a new one), or the application's policy is an "
            f"Allow policy where a Service Auth policy is needed to admit a service token. (This guard's own layers "
            f"answer 403 too; the origin's log names the reason)"
        )
    elif status == 401:
        report.fail(
            f"{shown}: asked for credentials. Either Access Managed OAuth fronts this application (clients sign in "
            f"with OAuth, not a service token), or the origin got no Cf-Access-Jwt-Assertion: is Access in front of "
            f"this host name at all?"
        )
    elif status in _ORIGIN_UNREACHABLE:
        report.fail(
            f"{shown}: Cloudflare could not reach the origin (530 is usually a tunnel that is not connected; 502 an "
            f"origin that is down or a wrong service URL in the tunnel's configuration)"
        )
    elif 400 <= status < 500:
        report.ok(
            f"{shown}: Access let the request through; the origin answered {status} to a plain request, as an MCP "
            f"endpoint does (it expects a JSON-RPC POST)"
        )
    else:
        report.fail(f"{shown}: an answer this check cannot explain")


def _explain_redirect(report: _Report, shown: str, location: str, with_credentials: bool) -> None:
    target = _without_query(location) if location else "nowhere (no Location)"
    if not _is_access_login(location):
        report.warn(
            f"{shown}, a redirect to {target} (not followed): use the URL the redirect points to, e.g. https:// "
            f"instead of http://"
        )
    elif with_credentials:
        report.fail(
            f"{shown}, a redirect to the Access login page ({target}): the policy that matched is not a Service Auth "
            f"policy (an Allow policy asks a person to sign in). Add a policy with the Service Auth action that "
            f"includes this service token; if there is one, the client id or secret was not recognised"
        )
    else:
        report.ok(f"{shown}, a redirect to the Access login page: Access guards this URL; pass a service token to test")


def _is_access_login(location: str) -> bool:
    try:
        parts = urlsplit(location)
        host = parts.hostname or ""
    except ValueError:
        return False
    return parts.path.startswith(_LOGIN_PATH) or host.endswith(ACCESS_SUFFIX)


# -- formatting --------------------------------------------------------------------------------------------------


def _without_query(url: str) -> str:
    """A URL fit to print: no credentials, query or fragment (Access login redirects carry a token in the query)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an unparsable URL)"
    if not parts.scheme:
        return parts.path or "(empty)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _short(value: str, keep: int = _SHORT) -> str:
    return value if len(value) <= keep + 3 else value[:keep] + "…"


def _distinguishing_length(values: list[str]) -> int:
    """Enough leading characters that two different values never print alike."""
    keep = _SHORT
    for index, value in enumerate(values):
        for other in values[index + 1 :]:
            if value != other:
                keep = max(keep, _common_prefix_length(value, other) + 1)
    return keep


def _common_prefix_length(first: str, second: str) -> int:
    length = 0
    while length < min(len(first), len(second)) and first[length] == second[length]:
        length += 1
    return length


def _short_list(values: Iterable[str], keep: int = _SHORT) -> str:
    return ", ".join(_short(value, keep) for value in values) or "none"


def _show(value: Any) -> str:
    if value == "":
        return '""'
    if isinstance(value, str):
        return _short(value) if _ANY_CASE_AUD_TAG.fullmatch(value) else _cut(value)
    if isinstance(value, list):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    return _cut(json.dumps(value))


def _cut(text: str) -> str:
    return text if len(text) <= _LONG_VALUE else text[:_LONG_VALUE] + "…"


def _number(value: Any) -> float | None:
    """A claim as a number of seconds, or None when it is not one."""
    if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < 2**53:
        return float(value)
    return None


def _utc(moment: float) -> str:
    try:
        return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"{moment:.0f} (out of range)"


def _relative(moment: float, now: float) -> str:
    return f"in {_duration(moment - now)}" if moment >= now else f"{_duration(now - moment)} ago"


def _duration(seconds: float) -> str:
    """3 h 12 min, 59 min 58 s, 12 s, 2 d 3 h: the two largest units, rounded down."""
    whole = int(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


__all__ = ["add_check_arguments", "run_check"]
