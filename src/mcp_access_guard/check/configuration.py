"""The configuration `serve` would run with (`GuardConfig.load`: the file, then the environment for what it leaves
out): is the team domain well-formed, can its keys be fetched (for real: how many, which kids), is every AUD tag 64
hex characters, would the stack build, and what would it leave open."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..config import ACCESS_SUFFIX, AccessConfig, ConfigError, is_loopback
from ..jwks import KeyFetchFailure
from ..settings import GuardConfig
from ..stack import guard
from ..verifier import AccessVerifier
from .oauth import check_oauth
from .report import ANY_CASE_AUD_TAG, AUD_TAG, Report, plural, short, short_list


@dataclass(frozen=True)
class SettingNames:
    """What the user calls each setting, so that a fix names the thing they edit."""

    team_domain: str
    audiences: str
    certs_url: str
    secrets: str
    allowed_hosts: str
    dev: str
    failed_credentials: str


ENVIRONMENT_NAMES = SettingNames(
    "TEAM_DOMAIN",
    "POLICY_AUD",
    "ACCESS_CERTS_URL",
    "GUARD_SECRETS",
    "GUARD_ALLOWED_HOSTS",
    "GUARD_DEV",
    "GUARD_FAILED_CREDENTIAL_LIMIT",
)
TOML_NAMES = SettingNames(
    "[access] team_domain",
    "[access] audiences",
    "[access] certs_url",
    "[service_token] secrets",
    "[cors] allowed_hosts",
    "dev",
    "[limits] failed_credentials",
)
_CONFIGURATION_VARIABLES = ("TEAM_DOMAIN", "POLICY_AUD", "ACCESS_CERTS_URL", "GUARD_DEV", "ACCESS_CLIENT_ID")


async def check_configuration(
    report: Report, config_path: str | None, environ: Mapping[str, str], *, needed: bool
) -> tuple[GuardConfig | None, AccessVerifier | None]:
    """The configuration and a verifier for it, each None when there is none to use. Its secrets are handed to the
    redactor before anything about it is printed."""
    if config_path:
        report.section(f"configuration from {config_path}")
        names = TOML_NAMES
    elif needed or any(environ.get(name) for name in _CONFIGURATION_VARIABLES):
        report.section("configuration from the environment")
        names = ENVIRONMENT_NAMES
    else:
        report.section("configuration")
        report.info("none given (--config, or TEAM_DOMAIN and POLICY_AUD): only the URL is checked")
        return None, None
    try:
        config = GuardConfig.load(config_path, environ)
    except ConfigError as exc:
        report.fail(str(exc))
        return None, None
    shared = config.service_token
    # Client ids too: a pair written the wrong way round has its secret on the left.
    report.never_print(*shared.secrets, *shared.client_credentials, *shared.client_credentials.values())
    if config.oauth is not None:
        report.never_print(config.oauth.upstream.client_secret, config.oauth.secret_key)
        await check_oauth(report, config, config.oauth)
        report_stack(report, config, names)
        return config, None
    if config.access is None:
        report.fail(
            f"dev mode ({names.dev}) with no Access configuration: nothing is verified, anyone who reaches the "
            f"server is let in. Turn dev mode off and set {names.team_domain} and {names.audiences}"
        )
        report_stack(report, config, names)
        return config, None
    report_team_domain(report, config.access, names)
    verifier = AccessVerifier(config.access)
    await report_keys(report, verifier, names)
    report_audiences(report, config.access.audiences, names)
    report_stack(report, config, names)
    return config, verifier


def report_team_domain(report: Report, access: AccessConfig, names: SettingNames) -> None:
    issuer = access.issuer
    host = urlsplit(issuer).hostname or ""
    if host.endswith(ACCESS_SUFFIX):
        kind = f"team {host.removesuffix(ACCESS_SUFFIX)!r}"
    elif is_loopback(host):
        kind = "a loopback issuer (a local test issuer, not Cloudflare)"
    else:
        kind = "a custom team domain (it must be your Access team's domain, not the application's host name)"
    report.ok(f"{names.team_domain}: {kind}; tokens must carry iss {issuer} exactly")


async def report_keys(report: Report, verifier: AccessVerifier, names: SettingNames) -> None:
    await verifier.keys.refresh()
    failure = verifier.keys.last_failure
    if failure is not None:
        report.fail(f"keys: {failure.detail}. {_keys_hint(failure, names)}")
        return
    kids = verifier.keys.kids
    report.ok(
        f"keys: {plural(len(kids), 'signing key')} published at {verifier.config.certs_url} (kids {short_list(kids)})"
    )


def _keys_hint(failure: KeyFetchFailure, names: SettingNames) -> str:
    if failure.kind in ("unreachable", "timeout"):
        return f"Nothing answered there: check {names.team_domain} (or {names.certs_url}) and this machine's network"
    status = failure.status or 0
    if failure.kind == "not_json" or (failure.kind == "http_status" and (300 <= status < 400 or status == 404)):
        return (
            f"That host serves no Access keys: {names.team_domain} must be your team domain "
            f"(myteam{ACCESS_SUFFIX} or the team's custom domain), not the application's host name"
        )
    return f"Check {names.team_domain} and {names.certs_url}"


def report_audiences(report: Report, audiences: Iterable[str], names: SettingNames) -> None:
    tags = [tag for tag in audiences if AUD_TAG.fullmatch(tag)]
    if tags:
        report.ok(f"{names.audiences}: {plural(len(tags), 'AUD tag')} of 64 hex characters ({short_list(tags)})")
    for tag in audiences:
        if AUD_TAG.fullmatch(tag):
            continue
        if ANY_CASE_AUD_TAG.fullmatch(tag):
            report.fail(
                f"{names.audiences}: {short(tag)} has upper-case letters; tokens carry AUD tags in lower case and "
                f"are compared exactly, so it never matches: write it in lower case"
            )
        else:
            report.warn(
                f"{names.audiences}: {short(tag, 24)!r} is {len(tag)} characters, not the 64 hex characters of an "
                f"Access AUD tag; only a token whose aud is exactly this matches. Copy the Application Audience "
                f"(AUD) Tag from the application's overview in Cloudflare Zero Trust"
            )


async def _no_app(scope: object, receive: object, send: object) -> None:
    """Stands in for the MCP app while the stack is built to see whether it builds."""


def report_stack(report: Report, config: GuardConfig, names: SettingNames) -> None:
    """Whether `serve` would build the stack from this, and what the layers would leave open."""
    try:
        guard(_no_app, config)
    except ValueError as exc:
        report.fail(f"serve would refuse this configuration: {exc}")
    if config.paths is None:
        report.warn(
            "path allow-list off ([paths] enabled): every path of the app is reachable, not just /mcp and /health; "
            "turn it on, listing any other path the app needs"
        )
    else:
        own = " and the authorization server's" if config.oauth is not None else ""
        report.ok(f"paths: only {', '.join(config.paths.allow)}{own} are served, everything else is 404")
    if config.cors is None:
        report.warn(
            "browser-origin layer off ([cors] enabled): a web page on any site can make a visitor's browser call "
            "this server, and nothing checks Host; turn it on"
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
        direct = f", {plural(pairs, 'direct service-token pair')}" if pairs else ""
        report.ok(
            f"shared secret: {plural(len(shared.secrets), 'secret')} accepted in {shared.header}{direct}; requests "
            f"that did not come through your tunnel or Worker are refused"
        )
    else:
        report.warn(
            f"no shared secret ({names.secrets}): anyone who can reach the origin directly, around the tunnel, can "
            f"present an Access token captured elsewhere; a secret your tunnel or Worker adds proves the request came "
            f"through it"
        )
    report_limits(report, config, names)
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


def report_limits(report: Report, config: GuardConfig, names: SettingNames) -> None:
    limits = config.limits
    if limits.failed_credentials == 0:
        report.warn(
            f"no limit on failed credential checks ({names.failed_credentials} is 0): a shared secret, a "
            f"service-token pair, an OAuth client secret or a bearer token can be tried as fast as the server answers"
        )
        return
    # As guard() decides: a MemoryStore is one process's.
    shared_store = config.oauth is not None and config.oauth.store != "memory:"
    counted = "in the OAuth store, by every replica together" if shared_store else "by each process"
    client = "the peer's address"
    if config.service_token.secrets:
        client = "CF-Connecting-IP once the shared secret checks out, else the peer"
    if limits.trusted_proxies:
        client += f" (CF-Connecting-IP from {', '.join(limits.trusted_proxies)})"
    report.ok(
        f"failed credentials: {plural(limits.failed_credentials, 'failure')} per client address in "
        f"{limits.failure_window:g} s, then 429 until the window ends; counted {counted}; a client is {client}"
    )
