"""`check --url`: the service-token test request against an imitation of Cloudflare's edge under real uvicorn; the
client secret is never printed, and never sent anywhere but the host named."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from starlette.types import Receive, Scope, Send

from check_support import CLIENT_ID, check, lines
from mcp_access_guard.testing import serve
from recording_proxy import RecordingProxy

CLIENT_SECRET = secrets.token_hex(32)
# The Access login redirect carries a token-like `meta` in its query; it must never be printed.
LOGIN_META = secrets.token_urlsafe(48)


class AccessEdge:
    """Answers the way Cloudflare's edge does for an application with a Service Auth policy: 200 for the right
    pair; 403 for a wrong or swapped one; at /human, whose policy is Allow, a redirect to the login page. At
    /no-head HEAD is refused, as some origins do."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        method, path = scope["method"], scope["path"]
        self.requests.append((method, path))
        headers = {name.decode(): value.decode() for name, value in scope["headers"]}
        location = None
        if path == "/human":
            status = 302
            location = (
                f"https://team.cloudflareaccess.com/cdn-cgi/access/login/mcp.example.com?kid=abc&meta={LOGIN_META}"
            )
        elif path == "/no-head" and method == "HEAD":
            status = 405
        elif (
            headers.get("cf-access-client-id") == CLIENT_ID and headers.get("cf-access-client-secret") == CLIENT_SECRET
        ):
            status = 200
        else:
            status = 403
        response_headers = [(b"content-length", b"0")]
        if location:
            response_headers.append((b"location", location.encode()))
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
async def edge() -> AsyncIterator[tuple[AccessEdge, str]]:
    app = AccessEdge()
    async with serve(app) as url:
        yield app, url


async def check_in_thread(*argv: str) -> int:
    # run_check drives its own event loop, so it runs beside the test's, as the CLI would run it.
    return await anyio.to_thread.run_sync(lambda: check(*argv))


def assert_secret_not_shown(output: str) -> None:
    assert CLIENT_SECRET not in output
    assert LOGIN_META not in output


@pytest.mark.anyio
async def test_the_right_service_token_works(edge: tuple[AccessEdge, str], capsys: pytest.CaptureFixture[str]) -> None:
    app, url = edge

    status = await check_in_thread("--url", f"{url}/mcp", "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET)
    captured = capsys.readouterr()

    assert_secret_not_shown(captured.out + captured.err)
    assert status == 0
    assert app.requests == [("HEAD", "/mcp")]
    assert any(f"HEAD {url}/mcp answered 200: the service token works" in line for line in lines(captured.out, "ok"))


@pytest.mark.anyio
async def test_credentials_come_from_the_environment_too(
    edge: tuple[AccessEdge, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url = edge
    monkeypatch.setenv("CF_ACCESS_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("CF_ACCESS_CLIENT_SECRET", CLIENT_SECRET)

    status = await check_in_thread("--url", f"{url}/mcp")
    captured = capsys.readouterr()

    assert_secret_not_shown(captured.out + captured.err)
    assert status == 0
    assert any("the service token works" in line for line in lines(captured.out, "ok"))


@pytest.mark.anyio
async def test_a_wrong_secret_gets_403_explained(
    edge: tuple[AccessEdge, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = edge
    wrong_secret = secrets.token_hex(32)

    status = await check_in_thread("--url", f"{url}/mcp", "--client-id", CLIENT_ID, "--client-secret", wrong_secret)
    captured = capsys.readouterr()

    assert wrong_secret not in captured.out + captured.err
    assert status == 1
    [refused] = lines(captured.out, "FAIL")
    assert f"HEAD {url}/mcp answered 403: the service token was refused" in refused
    assert "swapped, wrong or revoked" in refused
    assert "Allow policy where a Service Auth policy is needed" in refused
    assert "(and they look swapped here)" not in refused


@pytest.mark.anyio
async def test_a_swapped_pair_is_called_swapped(
    edge: tuple[AccessEdge, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = edge

    status = await check_in_thread("--url", f"{url}/mcp", "--client-id", CLIENT_SECRET, "--client-secret", CLIENT_ID)
    captured = capsys.readouterr()

    assert_secret_not_shown(captured.out + captured.err)  # passed as the id, still never printed
    assert status == 1
    assert any("the client id and secret look swapped" in line for line in lines(captured.out, "warn"))
    [refused] = lines(captured.out, "FAIL")
    assert "answered 403" in refused
    assert "(and they look swapped here)" in refused


@pytest.mark.anyio
async def test_a_login_redirect_means_the_policy_is_not_service_auth(
    edge: tuple[AccessEdge, str], capsys: pytest.CaptureFixture[str]
) -> None:
    app, url = edge

    status = await check_in_thread("--url", f"{url}/human", "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET)
    captured = capsys.readouterr()

    assert_secret_not_shown(captured.out + captured.err)
    assert status == 1
    assert app.requests == [("HEAD", "/human")]  # the redirect was not followed
    [refused] = lines(captured.out, "FAIL")
    assert f"HEAD {url}/human answered 302, a redirect to the Access login page" in refused
    assert "(https://team.cloudflareaccess.com/cdn-cgi/access/login/mcp.example.com)" in refused
    assert "not a Service Auth policy" in refused


@pytest.mark.anyio
async def test_get_is_used_when_head_is_refused(
    edge: tuple[AccessEdge, str], capsys: pytest.CaptureFixture[str]
) -> None:
    app, url = edge

    status = await check_in_thread(
        "--url", f"{url}/no-head", "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET
    )
    captured = capsys.readouterr()

    assert_secret_not_shown(captured.out + captured.err)
    assert status == 0
    assert app.requests == [("HEAD", "/no-head"), ("GET", "/no-head")]
    assert any(f"GET {url}/no-head answered 200" in line for line in lines(captured.out, "ok"))


@pytest.mark.anyio
async def test_an_unreachable_url_fails(capsys: pytest.CaptureFixture[str]) -> None:
    async with serve(AccessEdge()) as url:
        pass  # the server is gone: nothing listens on its port now

    status = await check_in_thread("--url", f"{url}/mcp", "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET)
    captured = capsys.readouterr()

    assert_secret_not_shown(captured.out + captured.err)
    assert status == 1
    assert any("no answer (ConnectError)" in line for line in lines(captured.out, "FAIL"))


def test_a_secret_is_never_sent_over_plain_http_to_another_host(capsys: pytest.CaptureFixture[str]) -> None:
    status = check("--url", "http://mcp.example.com/mcp", "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET)
    captured = capsys.readouterr()

    assert_secret_not_shown(captured.out + captured.err)
    assert status == 1
    assert any("refusing to send a client secret over plain http://" in line for line in lines(captured.out, "FAIL"))
    assert any("only the URL is checked" in line for line in lines(captured.out, "info"))


@pytest.mark.anyio
async def test_a_secret_for_a_loopback_url_never_goes_to_an_environment_proxy(
    edge: tuple[AccessEdge, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, url = edge
    proxy = RecordingProxy()
    async with proxy.running(monkeypatch):
        # The proxy is live and named in the environment: a client that trusts the environment goes through it.
        async with httpx.AsyncClient() as client:
            assert (await client.head(f"{url}/through-the-proxy")).status_code == 200
        assert len(proxy.requests) == 1

        status = await check_in_thread(
            "--url", f"{url}/mcp", "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET
        )
    captured = capsys.readouterr()

    assert status == 0, captured.out
    assert len(proxy.requests) == 1
    assert CLIENT_SECRET.encode() not in proxy.received
    assert app.requests == [("HEAD", "/mcp")]  # it went straight to the host named
