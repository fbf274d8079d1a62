"""OAuth mode's part of `check`: what MCP clients will see of this server (its issuer, resource and metadata, asked
of the stack `serve` would build, as a client asks), whether the Access for SaaS application answers (its discovery
document and issuer, its keys), the redirect URL the application must have registered; and with `--url`, whether
something in front of the host name answers a bearer request before this server does, as a self-hosted Access
application (or Access's Managed OAuth) does."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import anyio
import httpx
from starlette.types import ASGIApp, Message

from ..config import ACCESS_SUFFIX, ConfigError, is_loopback
from ..middleware.oauth import OAuthEndpointsMiddleware
from ..oauth.config import OAuthConfig
from ..oauth.errors import UpstreamError
from ..oauth.metadata import AUTHORIZATION_SERVER_PATH, PROTECTED_RESOURCE_PATH, resource_metadata_url
from ..oauth.records import ACCESS_TOKEN_PREFIX, code_challenge_of, mint
from ..oauth.upstream import AccessOIDC, Discovery
from ..settings import GuardConfig
from ..stack import guard
from .report import Report, plural, short_list, without_query

_LOGIN_PATH = "/cdn-cgi/access/login"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_ORIGIN_UNREACHABLE = frozenset({502, 503, 504, *range(520, 531)})
_MAX_DOCUMENT_BYTES = 64 * 1024
# The bearer layer's answer to a token it does not know (middleware/oauth.py), whatever the public URL.
_OUR_CHALLENGE = re.compile(r'Bearer error="invalid_token", resource_metadata="[^"]+"')


async def check_oauth(report: Report, config: GuardConfig, oauth: OAuthConfig) -> None:
    """The configuration's OAuth part; `oauth` is `config.oauth`."""
    report.info(
        f"OAuth mode: clients see issuer {oauth.issuer}, resource {oauth.resource}, resource metadata at "
        f"{resource_metadata_url(oauth)}"
    )
    if urlsplit(oauth.public_url).scheme == "http":
        report.warn(
            f"GUARD_PUBLIC_URL ([oauth] public_url) {oauth.public_url} is plain http on loopback: only clients on "
            f"this machine can use it; a deployment's is the https:// name clients reach it at"
        )
    await report_metadata(report, config, oauth)
    report.info(
        f"redirect URL the Access for SaaS application must list, exactly: {oauth.callback_url} "
        f"(OAuthConfig.callback_url)"
    )
    oidc = AccessOIDC(oauth.upstream, redirect_uri=oauth.callback_url)
    try:
        discovery = await report_discovery(report, oauth, oidc)
        if discovery is not None:
            await report_keys(report, oidc, discovery)
            await report_callback(report, oauth, discovery)
    finally:
        await oidc.aclose()


# -- what clients see -----------------------------------------------------------------------------------------------


async def report_metadata(report: Report, config: GuardConfig, oauth: OAuthConfig) -> None:
    """Ask the stack `serve` would build, in this process, for what a client asks first, with the Host and Origin a
    client of `public_url` sends: the two metadata documents, the resource, and the consent form's POST."""
    try:
        app = guard(_no_app, config)
    except (ValueError, ConfigError):
        return  # the stack's own report says why it does not build
    try:
        resource_path = PROTECTED_RESOURCE_PATH + oauth.resource_path
        status, resource = await _ask(app, "GET", resource_path, oauth)
        if status != 200:
            report.fail(
                f"GET {oauth.public_url}{resource_path} answers {status} here, not the resource metadata: "
                f"{_refusal_hint(status)}"
            )
            return
        status, server = await _ask(app, "GET", AUTHORIZATION_SERVER_PATH, oauth)
        problems = _metadata_problems(oauth, resource, server if status == 200 else None)
        status, _ = await _ask(app, "POST", oauth.resource_path, oauth)
        if status != 401:
            # 401 is the bearer layer's challenge to a request with no token: the resource is served.
            problems.append(
                f"POST {oauth.resource} with no token answers {status} here, not 401: {_refusal_hint(status)}"
            )
        for problem in problems:
            report.fail(f"metadata: {problem}")
        consent_status, _ = await _ask(app, "POST", "/consent", oauth, origin=oauth.public_url)
        if consent_status != 400:
            # 400 is the consent page refusing an empty form: the POST from our own page reached it.
            report.fail(
                f"the consent form's POST from {oauth.public_url} answers {consent_status} here: "
                f"{_refusal_hint(consent_status)}"
            )
        elif not problems:
            report.ok(
                f"metadata: the resource and authorization-server documents agree (issuer {oauth.issuer}, "
                f"resource {oauth.resource}), and the consent form can be posted"
            )
    finally:
        await _close_server(app)


def _refusal_hint(status: int) -> str:
    if status == 421:
        return "the host name is not on GUARD_ALLOWED_HOSTS ([cors] allowed_hosts): add the public URL's host"
    if status == 404:
        return "the path allow-list does not admit it: the resource path must be on GUARD_PATHS ([paths] allow)"
    if status == 405:
        return "the path answers, but not as the MCP endpoint: is resource_path the app's MCP path?"
    if status == 403:
        return "the browser-origin layer refuses the public URL's own origin"
    return "a layer refuses it; the decision log (-v on serve) names which"


def _metadata_problems(
    oauth: OAuthConfig, resource: Mapping[str, Any] | None, server: Mapping[str, Any] | None
) -> list[str]:
    if resource is None or server is None:
        return ["the metadata documents are not JSON objects"]
    problems = []
    if resource.get("resource") != oauth.resource:
        problems.append(f"the resource document names resource {resource.get('resource')!r}, not {oauth.resource}")
    if resource.get("authorization_servers") != [oauth.issuer]:
        problems.append(f"the resource document names authorization servers {resource.get('authorization_servers')}")
    if server.get("issuer") != oauth.issuer:
        problems.append(f"the authorization-server document's issuer is {server.get('issuer')!r}")
    for name in ("authorization_endpoint", "token_endpoint"):
        endpoint = server.get(name)
        if not isinstance(endpoint, str) or not endpoint.startswith(oauth.issuer + "/"):
            problems.append(f"{name} {endpoint!r} is not under the issuer")
    return problems


async def _no_app(scope: object, receive: object, send: object) -> None:
    """Stands in for the MCP app: the metadata and the consent form never reach it."""


async def _ask(
    app: ASGIApp, method: str, path: str, oauth: OAuthConfig, *, origin: str | None = None
) -> tuple[int, Mapping[str, Any] | None]:
    """One request through the stack in this process: its status and, when JSON, its body."""
    parts = urlsplit(oauth.public_url)
    headers = [(b"host", parts.netloc.encode()), (b"accept", b"application/json")]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": parts.scheme,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)),
    }
    status = 0
    body = bytearray()

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await app(scope, receive, send)
    return status, _json_object(bytes(body))


async def _close_server(app: Any) -> None:
    while app is not None and not isinstance(app, OAuthEndpointsMiddleware):
        app = getattr(app, "app", None)
    if app is not None:
        await app.server.aclose()


def _json_object(body: bytes) -> Mapping[str, Any] | None:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


# -- the Access for SaaS application --------------------------------------------------------------------------------


async def report_discovery(report: Report, oauth: OAuthConfig, oidc: AccessOIDC) -> Discovery | None:
    url = oauth.upstream.discovery_url
    try:
        discovery = await oidc.start()
    except ConfigError as misconfigured:
        report.fail(f"Access for SaaS: {misconfigured}")
        return None
    except UpstreamError as failure:
        report.fail(
            f"Access for SaaS: cannot read the discovery document now ({failure.detail}); check ACCESS_ISSUER / "
            f"ACCESS_AUTHORIZATION_URL and this machine's network"
        )
        return None
    report.ok(f"Access for SaaS: discovery at {url} answers, and its issuer is the configured one ({discovery.issuer})")
    return discovery


async def report_keys(report: Report, oidc: AccessOIDC, discovery: Discovery) -> None:
    keys = oidc.keys
    await keys.refresh()
    failure = keys.last_failure
    if failure is not None:
        report.fail(
            f"Access for SaaS: its signing keys at {discovery.jwks_uri} cannot be fetched ({failure.detail}); "
            f"check ACCESS_JWKS_URL: an application's keys are at <issuer>/jwks"
        )
        return
    report.ok(
        f"Access for SaaS: {plural(len(keys.kids), 'signing key')} at {discovery.jwks_uri} "
        f"(kids {short_list(keys.kids)})"
    )


async def report_callback(report: Report, oauth: OAuthConfig, discovery: Discovery) -> None:
    """An authorization request with our redirect URL, not followed: whether Access sends it back there, refuses
    it, or first asks someone to sign in (then only a sign-in tells)."""
    callback = oauth.callback_url
    query = urlencode(
        {
            "response_type": "code",
            "client_id": oauth.upstream.client_id,
            "redirect_uri": callback,
            "scope": " ".join(oauth.upstream.scopes),
            "state": secrets.token_urlsafe(32),
            "nonce": secrets.token_urlsafe(32),
            "code_challenge": code_challenge_of(secrets.token_urlsafe(32)),
            "code_challenge_method": "S256",
        }
    )
    endpoint = discovery.authorization_endpoint
    url = f"{endpoint}{'&' if urlsplit(endpoint).query else '?'}{query}"
    try:
        answer = await _request("GET", url, {}, oauth.upstream.timeout)
    except _Unanswered as unanswered:
        report.warn(f"Access for SaaS: {without_query(endpoint)} did not answer ({unanswered}); {callback} unchecked")
        return
    status, location = answer.status, answer.location
    if status in _REDIRECTS and location.startswith(callback + "?"):
        report.ok(f"Access for SaaS: an authorization request is sent back to {callback}, so it is registered")
    elif status in _REDIRECTS:
        report.info(
            f"Access for SaaS: {without_query(endpoint)} sends the browser to sign in first "
            f"({without_query(location)}); whether {callback} is registered shows only after a sign-in"
        )
    elif 400 <= status < 500:
        report.fail(
            f"Access for SaaS: {without_query(endpoint)} refused an authorization request for {callback} "
            f"(HTTP {status}): list exactly this redirect URL in the application, and check ACCESS_CLIENT_ID"
        )
    else:
        report.warn(f"Access for SaaS: {without_query(endpoint)} answered HTTP {status}; {callback} unchecked")


# -- check --url in OAuth mode ----------------------------------------------------------------------------------------


async def check_oauth_url(report: Report, url: str, oauth: OAuthConfig, time_limit: float) -> None:
    """Send `url` a bearer token nobody issued and read the answer: this server's own 401 challenge, or something in
    front answering for it. Then read the resource metadata clients would read there."""
    parts = urlsplit(url)
    shown = without_query(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    if origin != oauth.public_url:
        report.info(f"{shown} is not under GUARD_PUBLIC_URL {oauth.public_url}, where clients reach this server")
    headers = {
        "Authorization": f"Bearer {mint(ACCESS_TOKEN_PREFIX)}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    try:
        answer = await _request("POST", url, headers, time_limit, body)
    except _Unanswered as unanswered:
        report.fail(f"{shown}: no answer ({unanswered}); check the host name and this machine's network")
        return
    status, challenge = answer.status, answer.challenge
    announced = f'resource_metadata="{resource_metadata_url(oauth)}"'
    front = _access_in_front(answer)
    if front is not None:
        report.warn(
            f"POST {shown} with a bearer token answered {status}: {front}. In OAuth mode the host name must not sit "
            f"behind a self-hosted Access application (nor Managed OAuth): Access takes the Authorization header and "
            f"answers itself, so clients never reach this server's sign-in. Remove the application from this host "
            f"name, or exclude the host name from it"
        )
        return
    if challenge == f'Bearer error="invalid_token", {announced}' and status == 401:
        report.ok(
            f"POST {shown} with a bearer token nobody issued: 401 from this server, whose challenge points clients "
            f"at {resource_metadata_url(oauth)}"
        )
        await _report_remote_metadata(report, origin, parts.path, oauth, time_limit)
    elif status == 401 and _OUR_CHALLENGE.fullmatch(challenge):
        report.fail(
            f"POST {shown}: the server's challenge points at other resource metadata than this configuration's "
            f"({resource_metadata_url(oauth)}): is it running with another GUARD_PUBLIC_URL?"
        )
    elif 200 <= status < 300:
        report.fail(f"POST {shown} with a bearer token nobody issued answered {status}: nothing checks bearer tokens")
    elif status in _ORIGIN_UNREACHABLE:
        report.fail(f"POST {shown} answered {status}: the origin cannot be reached (a tunnel not connected?)")
    else:
        report.warn(
            f"POST {shown} with a bearer token answered {status}, not this server's 401 challenge: is {shown} its "
            f"MCP endpoint ({oauth.resource})?"
        )


async def _report_remote_metadata(
    report: Report, origin: str, path: str, oauth: OAuthConfig, time_limit: float
) -> None:
    url = origin + PROTECTED_RESOURCE_PATH + path
    try:
        answer = await _request("GET", url, {"Accept": "application/json"}, time_limit, read_body=True)
    except _Unanswered as unanswered:
        report.fail(f"{without_query(url)}: no answer ({unanswered})")
        return
    status, document = answer.status, answer.document
    if status != 200 or document is None:
        report.fail(f"GET {without_query(url)} answered {status}, not the resource metadata clients look for")
        return
    if document.get("resource") != oauth.resource or document.get("authorization_servers") != [oauth.issuer]:
        report.fail(
            f"GET {without_query(url)}: resource {document.get('resource')!r} and authorization servers "
            f"{document.get('authorization_servers')!r}, where this configuration has {oauth.resource} and "
            f"[{oauth.issuer}]: the deployment runs with another GUARD_PUBLIC_URL, or a proxy rewrites them"
        )
        return
    report.ok(f"GET {without_query(url)}: the resource metadata clients read names this configuration's issuer")


def _access_in_front(answer: _Answer) -> str | None:
    """How Access shows it answered a request itself, in words; None when nothing says so."""
    status, challenge = answer.status, answer.challenge
    if status in _REDIRECTS and _is_access_login(answer.location):
        return f"a redirect to the Access login page ({without_query(answer.location)})"
    if status in (401, 403) and answer.access_headers:
        return f"Access's own answer ({', '.join(sorted(answer.access_headers))})"
    if status == 401 and "resource_metadata=" in challenge and not _OUR_CHALLENGE.fullmatch(challenge):
        return "a challenge whose resource metadata is not this server's (Access's Managed OAuth)"
    return None


def _is_access_login(location: str) -> bool:
    try:
        parts = urlsplit(location)
        host = parts.hostname or ""
    except ValueError:
        return False
    return parts.path.startswith(_LOGIN_PATH) or host.endswith(ACCESS_SUFFIX)


class _Unanswered(Exception):
    pass


@dataclass(frozen=True)
class _Answer:
    status: int
    location: str
    challenge: str  # WWW-Authenticate
    access_headers: list[str]  # the names of cf-access-* headers
    document: Mapping[str, Any] | None  # the body, when asked for and a JSON object


async def _request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    time_limit: float,
    body: str | None = None,
    *,
    read_body: bool = False,
) -> _Answer:
    """One request, no redirect followed; plain http only to a loopback host and never through an environment proxy
    (as `check --url` does)."""
    parts = urlsplit(url)
    direct = parts.scheme == "http" and is_loopback(parts.hostname or "")
    try:
        with anyio.fail_after(time_limit):
            async with (
                httpx.AsyncClient(follow_redirects=False, timeout=time_limit, trust_env=not direct) as client,
                client.stream(method, url, headers=dict(headers), content=body) as response,
            ):
                document = None
                if read_body:
                    raw = bytearray()
                    async for chunk in response.aiter_bytes():
                        raw += chunk
                        if len(raw) > _MAX_DOCUMENT_BYTES:
                            break
                    document = _json_object(bytes(raw))
                return _Answer(
                    response.status_code,
                    response.headers.get("location", ""),
                    response.headers.get("www-authenticate", ""),
                    [name for name in response.headers if name.lower().startswith("cf-access-")],
                    document,
                )
    except TimeoutError:
        raise _Unanswered(f"nothing within {time_limit:g} s") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise _Unanswered(type(exc).__name__) from None
