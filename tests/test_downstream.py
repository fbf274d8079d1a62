"""AccessForwardingAuth: a tool calls a second Access-protected app as its caller, and only the listed hosts see the
caller's token."""

import json

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp_types import TextContent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_access_guard import AccessJWTMiddleware, current_identity
from mcp_access_guard.downstream import AccessForwardingAuth, forwarding_client
from mcp_access_guard.identity import AccessIdentity, bind_identity
from mcp_access_guard.testing import LocalAccess, serve
from recording_proxy import NO_PROXY_VARIABLES, PROXY_VARIABLES, RecordingProxy

pytestmark = pytest.mark.anyio


class LinkedAppEdge:
    """Stands in for Cloudflare's edge in front of app B: it accepts a linked app's `Cf-Access-Token` and hands the
    origin that token as its `Cf-Access-Jwt-Assertion`, which is what the edge does once it has checked it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = [(name, value) for name, value in scope["headers"] if name != b"cf-access-jwt-assertion"]
            forwarded = [value for name, value in headers if name == b"cf-access-token"]
            headers += [(b"cf-access-jwt-assertion", value) for value in forwarded]
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


async def report(request: Request) -> JSONResponse:
    identity = request.state.access_identity
    return JSONResponse({"seen_as": identity.principal})


async def echo_headers(request: Request) -> JSONResponse:
    return JSONResponse({name: value for name, value in request.headers.items()})


def app_a(b_url: str, hosts: list[str]) -> ASGIApp:
    server = MCPServer("app A")

    @server.tool()
    async def quarterly_report() -> str:
        """Fetches the report from app B as the caller."""
        async with httpx.AsyncClient(auth=AccessForwardingAuth(hosts)) as client:
            response = await client.get(f"{b_url}/report")
        return f"{response.status_code} {response.text}"

    return server.streamable_http_app()


async def call_report(a_url: str, token: str) -> str:
    async with (
        httpx2.AsyncClient(headers={"Cf-Access-Jwt-Assertion": token}) as http,
        Client(streamable_http_client(f"{a_url}/mcp", http_client=http)) as client,
    ):
        result = await client.call_tool("quarterly_report", {})
    content = result.content[0]
    assert isinstance(content, TextContent)
    return content.text


async def test_second_app_accepts_the_first_apps_forwarded_token(local_access: LocalAccess) -> None:
    config = local_access.config()
    b = LinkedAppEdge(AccessJWTMiddleware(Starlette(routes=[Route("/report", report)]), config=config))
    async with serve(b) as b_url:
        listed = AccessJWTMiddleware(app_a(b_url, [b_url.removeprefix("http://")]), config=config)
        unlisted = AccessJWTMiddleware(app_a(b_url, ["reports.example.com"]), config=config)
        async with serve(listed) as a_url, serve(unlisted) as other_a_url:
            for email in ("alice@example.com", "bob@example.com"):
                answer = await call_report(a_url, local_access.user_token(email))
                assert answer == "200 " + json.dumps({"seen_as": email}, separators=(",", ":"))
            robot = await call_report(a_url, local_access.service_token("robot.access"))
            assert robot == '200 {"seen_as":"robot.access"}'
            # A host that is not listed never gets the token: app B sees no credential at all.
            assert await call_report(other_a_url, local_access.user_token()) == '401 {"error":"unauthorized"}'


async def test_a_redirect_to_an_unlisted_host_or_port_drops_the_token(local_access: LocalAccess) -> None:
    token = local_access.user_token()
    identity = AccessIdentity(subject="s", issuer=local_access.url, expires_at=0, email="a@b.c", token=token)
    async with serve(Starlette(routes=[Route("/echo", echo_headers)])) as elsewhere:
        other_host = elsewhere.replace("127.0.0.1", "localhost")

        async def bounce(request: Request) -> RedirectResponse:
            return RedirectResponse(f"{request.query_params['to']}/echo")

        async with serve(Starlette(routes=[Route("/bounce", bounce), Route("/echo", echo_headers)])) as listed:
            with bind_identity({"type": "http"}, identity):
                async with forwarding_client([listed.removeprefix("http://")], follow_redirects=True) as client:
                    direct = (await client.get(f"{listed}/echo")).json()
                    to_other_host = await client.get(f"{listed}/bounce", params={"to": other_host})
                    # The same host on another port is another service.
                    to_other_port = await client.get(f"{listed}/bounce", params={"to": elsewhere})
    assert direct["cf-access-token"] == token
    for bounced, host in ((to_other_host, "localhost"), (to_other_port, "127.0.0.1")):
        assert bounced.url.host == host
        assert bounced.history[0].request.headers["cf-access-token"] == token
        assert "cf-access-token" not in bounced.json()


def sent_headers(url: str, auth: AccessForwardingAuth) -> httpx.Headers:
    seen: list[httpx.Headers] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        return httpx.Response(200)

    # A remote https host cannot be reached from here; a transport that records the request is enough to see
    # what the auth flow would send.
    with httpx.Client(auth=auth, transport=httpx.MockTransport(record)) as client:
        client.get(url)
    return seen[0]


@pytest.fixture
def no_proxy_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*PROXY_VARIABLES, *NO_PROXY_VARIABLES):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_proxy_in_environment")
def test_only_https_or_loopback_and_only_listed_services() -> None:
    identity = AccessIdentity(subject="s", issuer="i", expires_at=0, email="a@b.c", token="header.payload.signature")
    auth = AccessForwardingAuth(["Reports.Example.com", "127.0.0.1:9", "[::1]:8001", "api.example.com:8443"])
    with bind_identity({"type": "http"}, identity):
        for url in (
            "https://reports.example.com/x",
            "https://REPORTS.example.com./x",
            "https://reports.example.com:443/x",
            "http://127.0.0.1:9/x",
            "http://[::1]:8001/x",
            "https://api.example.com:8443/x",
        ):
            assert sent_headers(url, auth).get("cf-access-token") == identity.token, url
        for url in (
            "http://reports.example.com/x",
            "https://reports.example.com:8443/x",  # a listed host on another port is another service
            "http://127.0.0.1:10/x",
            "http://127.0.0.1/x",
            "http://[::1]:8002/x",
            "https://api.example.com/x",
            "https://evil.example.com/x",
            "https://reports.example.com.evil.net/x",
        ):
            assert "cf-access-token" not in sent_headers(url, auth), url
    # Outside a guarded request, or for an identity with no token (a direct service-token pair), nothing is sent.
    assert current_identity() is None
    assert "cf-access-token" not in sent_headers("https://reports.example.com/x", auth)
    pairless = AccessIdentity(subject="", issuer="local", expires_at=0, common_name="robot.access")
    with bind_identity({"type": "http"}, pairless):
        assert "cf-access-token" not in sent_headers("https://reports.example.com/x", auth)


@pytest.mark.parametrize(
    "entry", ["https://reports.example.com", "reports.example.com/api", "user@host", "host:port", "host:0", "h:70000"]
)
def test_a_service_is_a_host_and_a_port_nothing_more(entry: str) -> None:
    with pytest.raises(ValueError, match=r"expected host or host:port|a port is from 1 to 65535"):
        AccessForwardingAuth([entry])


async def test_plain_http_never_goes_to_a_proxy_from_the_environment(
    local_access: LocalAccess, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    token = local_access.user_token()
    identity = AccessIdentity(subject="s", issuer=local_access.url, expires_at=0, email="a@b.c", token=token)
    proxy = RecordingProxy()
    async with serve(Starlette(routes=[Route("/echo", echo_headers)])) as app_url, proxy.running(monkeypatch):
        service = app_url.removeprefix("http://")
        with bind_identity({"type": "http"}, identity):
            # The proxy is live: a client that trusts the environment sends through it.
            async with httpx.AsyncClient() as plain:
                assert (await plain.get(f"{app_url}/echo")).status_code == 200
            assert len(proxy.requests) == 1
            # forwarding_client goes straight to the loopback host named, with the token.
            async with forwarding_client([service]) as client:
                answer = (await client.get(f"{app_url}/echo")).json()
            assert answer["cf-access-token"] == token
            # The auth on a client of one's own cannot tell whether it uses the proxy, so it adds nothing.
            async with httpx.AsyncClient(auth=AccessForwardingAuth([service])) as own:
                await own.get(f"{app_url}/echo")
    assert len(proxy.requests) == 2
    assert token.encode() not in proxy.received
    assert any(getattr(record, "reason", None) == "proxy_in_environment" for record in caplog.records)


@pytest.mark.parametrize("hosts", [[], [""], "reports.example.com"])
def test_hosts_must_be_named(hosts: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        AccessForwardingAuth(hosts)  # type: ignore[arg-type]
