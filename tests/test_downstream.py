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
        listed = AccessJWTMiddleware(app_a(b_url, ["127.0.0.1"]), config=config)
        unlisted = AccessJWTMiddleware(app_a(b_url, ["reports.example.com"]), config=config)
        async with serve(listed) as a_url, serve(unlisted) as other_a_url:
            for email in ("alice@example.com", "bob@example.com"):
                answer = await call_report(a_url, local_access.user_token(email))
                assert answer == "200 " + json.dumps({"seen_as": email}, separators=(",", ":"))
            robot = await call_report(a_url, local_access.service_token("robot.access"))
            assert robot == '200 {"seen_as":"robot.access"}'
            # A host that is not listed never gets the token: app B sees no credential at all.
            assert await call_report(other_a_url, local_access.user_token()) == '401 {"error":"unauthorized"}'


async def test_a_redirect_to_an_unlisted_host_drops_the_token(local_access: LocalAccess) -> None:
    token = local_access.user_token()
    identity = AccessIdentity(subject="s", issuer=local_access.url, expires_at=0, email="a@b.c", token=token)
    async with serve(Starlette(routes=[Route("/echo", echo_headers)])) as elsewhere:
        unlisted_url = elsewhere.replace("127.0.0.1", "localhost")

        async def bounce(_: Request) -> RedirectResponse:
            return RedirectResponse(f"{unlisted_url}/echo")

        async with serve(Starlette(routes=[Route("/bounce", bounce), Route("/echo", echo_headers)])) as listed:
            with bind_identity({"type": "http"}, identity):
                async with forwarding_client(["127.0.0.1"], follow_redirects=True) as client:
                    direct = (await client.get(f"{listed}/echo")).json()
                    bounced = await client.get(f"{listed}/bounce")
    assert direct["cf-access-token"] == token
    assert bounced.url.host == "localhost"
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


def test_only_https_or_loopback_and_only_listed_hosts() -> None:
    identity = AccessIdentity(subject="s", issuer="i", expires_at=0, email="a@b.c", token="header.payload.signature")
    auth = AccessForwardingAuth(["Reports.Example.com", "127.0.0.1"])
    with bind_identity({"type": "http"}, identity):
        assert sent_headers("https://reports.example.com/x", auth)["cf-access-token"] == identity.token
        assert sent_headers("https://REPORTS.example.com./x", auth)["cf-access-token"] == identity.token
        assert sent_headers("http://127.0.0.1:9/x", auth)["cf-access-token"] == identity.token
        assert "cf-access-token" not in sent_headers("http://reports.example.com/x", auth)
        assert "cf-access-token" not in sent_headers("https://evil.example.com/x", auth)
        assert "cf-access-token" not in sent_headers("https://reports.example.com.evil.net/x", auth)
    # Outside a guarded request, or for an identity with no token (a direct service-token pair), nothing is sent.
    assert current_identity() is None
    assert "cf-access-token" not in sent_headers("https://reports.example.com/x", auth)
    pairless = AccessIdentity(subject="", issuer="local", expires_at=0, common_name="robot.access")
    with bind_identity({"type": "http"}, pairless):
        assert "cf-access-token" not in sent_headers("https://reports.example.com/x", auth)


@pytest.mark.parametrize("hosts", [[], [""], "reports.example.com"])
def test_hosts_must_be_named(hosts: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        AccessForwardingAuth(hosts)  # type: ignore[arg-type]
