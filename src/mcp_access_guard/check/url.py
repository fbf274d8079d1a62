"""`check --url`: the `curl -I` test of Cloudflare's service-token guide (HEAD, GET when HEAD is refused, redirects
not followed), and what the answer means. A client secret goes over https, or over plain http to the loopback host
named and nowhere else: never to another machine, never through a proxy."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import version
from urllib.parse import urlsplit

import anyio
import httpx

from ..config import ACCESS_SUFFIX, is_loopback
from ..identity import SERVICE_TOKEN_SUFFIX
from .report import Report, short, without_query

_LOGIN_PATH = "/cdn-cgi/access/login"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Cloudflare's answers when it cannot reach the origin (520-530 are its own; 530 with error 1033 is a tunnel that is
# not connected).
_ORIGIN_UNREACHABLE = frozenset({502, 503, 504, *range(520, 531)})


async def check_url(
    report: Report, url: str, client_id: str | None, client_secret: str | None, time_limit: float
) -> None:
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        parts, host = urlsplit(""), ""
    if parts.scheme not in ("http", "https") or not host:
        report.fail(f"--url {without_query(url)}: expected an https:// URL of the application")
        return
    shown_url = without_query(url)
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
            # No proxy for plain http to a loopback host: an environment proxy (HTTP_PROXY) would get the secret in
            # clear text, on another machine whose loopback is not ours anyway.
            direct = parts.scheme == "http" and is_loopback(host)
            method, status, location = await _service_token_request(url, headers, time_limit, direct=direct)
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


def _report_credential_shape(report: Report, client_id: str, client_secret: str) -> bool:
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
        report.info(f"service token client id {short(client_id)}{SERVICE_TOKEN_SUFFIX}")
    if any(char in "'\"" for char in (client_id[0], client_id[-1], client_secret[0], client_secret[-1])):
        report.warn("the client id or secret starts or ends with a quote: send the bare values")
    return False


async def _service_token_request(
    url: str, headers: Mapping[str, str], read_limit: float, *, direct: bool
) -> tuple[str, int, str]:
    """HEAD, or GET when HEAD is refused, without following redirects or reading the body (it may be a stream);
    `direct`: with no proxy from the environment."""
    user_agent = f"mcp-access-guard/{version('mcp-access-guard')} check"
    async with httpx.AsyncClient(
        follow_redirects=False, timeout=read_limit, headers={"User-Agent": user_agent}, trust_env=not direct
    ) as client:
        async with client.stream("HEAD", url, headers=dict(headers)) as response:
            if response.status_code not in (405, 501):
                return "HEAD", response.status_code, response.headers.get("location", "")
        async with client.stream("GET", url, headers=dict(headers)) as response:
            return "GET", response.status_code, response.headers.get("location", "")


def _explain_answer(
    report: Report, shown: str, status: int, location: str, with_credentials: bool, swapped: bool
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


def _explain_redirect(report: Report, shown: str, location: str, with_credentials: bool) -> None:
    target = without_query(location) if location else "nowhere (no Location)"
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
