"""A real headless Chromium (Debian's `chromium`, driven through `chromedriver` over the W3C WebDriver protocol)
walks OAuth mode's front channel once: /authorize, the consent page rendered, the approve button clicked, the
redirect chain through Access (`LocalAccessSaaS`) and back to a loopback client redirect URI, which receives a code
that the token endpoint then redeems. What a CSP, a cookie attribute or a same-origin rule would break shows only in
a real browser.

The server runs on `localhost` and Access on `127.0.0.1`, two different sites, as `mcp.example.com` and
`<team>.cloudflareaccess.com` are: the browser cookie (SameSite=Lax) must still come back on Access's redirect to
/oauth/callback, or the login is refused as coming from another browser. Once over plain http (local development),
once over https with a certificate of its own, where the cookie is `__Host-` prefixed and Secure as in production.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from mcp_access_guard import GuardConfig, guard
from mcp_access_guard.testing import LocalAccessSaaS, free_port, serve
from oauth_harness import Pkce, authorize_url, call_mcp, exchange, mcp_app, oauth_config, query_of, register
from oauth_processes import require_program

pytestmark = pytest.mark.anyio

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL = "apt-get install chromium chromium-driver"
# The flags the environment documents for a headless Chromium, and a fresh profile per test.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STEP_TIMEOUT = 30.0
APPROVE = 'button[name="decision"][value="approve"]'


class WebDriver:
    """The few W3C WebDriver commands this test needs, sent to chromedriver with httpx."""

    def __init__(self, http: httpx.AsyncClient, session_id: str) -> None:
        self.http = http
        self.session_id = session_id

    async def command(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        with anyio.fail_after(STEP_TIMEOUT):
            response = await self.http.request(method, f"/session/{self.session_id}{path}", json=body)
        answer = response.json()["value"]
        assert response.status_code == 200, answer
        return answer

    async def go(self, url: str) -> None:
        await self.command("POST", "/url", {"url": url})

    async def current_url(self) -> str:
        url: str = await self.command("GET", "/url")
        return url

    async def text(self, selector: str) -> str:
        element = await self._find(selector)
        text: str = await self.command("GET", f"/element/{element}/text")
        return text

    async def click(self, selector: str) -> None:
        element = await self._find(selector)
        await self.command("POST", f"/element/{element}/click", {})

    async def cookies(self) -> list[dict[str, Any]]:
        cookies: list[dict[str, Any]] = await self.command("GET", "/cookie")
        return cookies

    async def delete_cookies(self) -> None:
        await self.command("DELETE", "/cookie")

    async def console(self) -> list[str]:
        """What the page's console received since the last call (chromedriver's log endpoint)."""
        entries = await self.command("POST", "/se/log", {"type": "browser"})
        return [entry["message"] for entry in entries]

    async def wait_for_url(self, prefix: str) -> str:
        with anyio.fail_after(STEP_TIMEOUT):
            while True:
                url = await self.current_url()
                if url.startswith(prefix):
                    return url
                await anyio.sleep(0.05)

    async def _find(self, selector: str) -> str:
        found = await self.command("POST", "/element", {"using": "css selector", "value": selector})
        (element,) = found.values()
        return str(element)


@asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[WebDriver]:
    """chromedriver on a loopback port, and one headless Chromium session with a fresh profile."""
    driver_binary = require_program(CHROMEDRIVER, INSTALL)
    browser_binary = require_program(CHROMIUM, INSTALL)
    port = free_port()
    process = await anyio.open_process([str(driver_binary), f"--port={port}"], stdout=None, stderr=None)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=STEP_TIMEOUT) as http:
            with anyio.fail_after(STEP_TIMEOUT):
                while True:
                    try:
                        if (await http.get("/status")).json()["value"]["ready"]:
                            break
                    except httpx.TransportError:
                        pass
                    await anyio.sleep(0.05)
            options = {"binary": str(browser_binary), "args": [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]}
            capabilities: dict[str, Any] = {"browserName": "chrome", "goog:chromeOptions": options}
            # The https case serves a certificate of its own; the console is read for refusals.
            capabilities |= {"acceptInsecureCerts": True, "goog:loggingPrefs": {"browser": "ALL"}}
            with anyio.fail_after(STEP_TIMEOUT * 2):
                created = await http.post("/session", json={"capabilities": {"alwaysMatch": capabilities}})
            assert created.status_code == 200, created.text
            driver = WebDriver(http, created.json()["value"]["sessionId"])
            try:
                yield driver
            finally:
                with anyio.move_on_after(STEP_TIMEOUT):
                    await http.delete(f"/session/{driver.session_id}")
    finally:
        process.terminate()
        with anyio.move_on_after(STEP_TIMEOUT) as waited:
            await process.wait()
        if waited.cancelled_caught:
            process.kill()


@asynccontextmanager
async def client_redirect_target() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """The client's loopback redirect URI: records each query it receives and shows a page."""
    received: list[dict[str, str]] = []

    async def callback(request: Request) -> HTMLResponse:
        received.append(dict(request.query_params))
        return HTMLResponse("<!doctype html><title>Signed in</title><h1 id='done'>Signed in</h1>")

    async with serve(Starlette(routes=[Route("/callback", callback)])) as url:
        yield f"{url}/callback", received


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for `localhost`, its own issuer, and its key: the files uvicorn serves TLS with."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_file, key_file = directory / "localhost.pem", directory / "localhost-key.pem"
    certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certificate_file, key_file


@asynccontextmanager
async def serve_over_tls(app: ASGIApp, port: int, certificate: Path, key: Path) -> AsyncIterator[None]:
    """`app` under a real uvicorn with TLS on 127.0.0.1:`port`, for the duration of the block."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        ssl_certfile=str(certificate),
        ssl_keyfile=str(key),
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve)
        with anyio.fail_after(STEP_TIMEOUT):
            while not server.started:
                if server.should_exit:
                    raise RuntimeError("uvicorn failed to start")
                await anyio.sleep(0.01)
        try:
            yield
        finally:
            server.should_exit = True


@asynccontextmanager
async def guarded_on_localhost(
    saas: LocalAccessSaaS, scheme: str, directory: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    """The guarded server in OAuth mode at `scheme://localhost:PORT` (its public URL); over https with a
    certificate of its own, which this process's httpx is told to trust (Chromium accepts it as insecure)."""
    port = free_port()
    public_url = f"{scheme}://localhost:{port}"
    app = guard(mcp_app(), GuardConfig(oauth=oauth_config(saas, public_url)))
    if scheme == "http":
        async with serve(app, port=port):
            yield public_url
        return
    certificate, key = self_signed_certificate(directory)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))
    async with serve_over_tls(app, port, certificate, key):
        yield public_url


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_chromium_consents_and_follows_the_redirect_chain_back_to_the_client(
    local_access_saas: LocalAccessSaaS,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    scheme: str,
) -> None:
    caplog.set_level(logging.INFO, logger="mcp_access_guard")
    local_access_saas.login_as("alice@example.com")
    async with (
        guarded_on_localhost(local_access_saas, scheme, tmp_path, monkeypatch) as public_url,
        client_redirect_target() as (redirect_uri, received),
        chromium(tmp_path / "profile") as browser,
    ):
        client = await register(public_url, [redirect_uri])

        # Without the browser cookie /authorize set, approving is refused: the form alone is not enough.
        await browser.go(authorize_url(public_url, client, Pkce(), state="first-try"))
        await browser.delete_cookies()
        await browser.click(APPROVE)
        refused_at = await browser.wait_for_url(f"{public_url}/consent")
        refused_heading = await browser.text("h1")

        pkce = Pkce()
        await browser.go(authorize_url(public_url, client, pkce))
        heading = await browser.text("h1")
        cookies = {cookie["name"]: cookie for cookie in await browser.cookies()}
        await browser.click(APPROVE)
        landed = await browser.wait_for_url(redirect_uri)
        page = await browser.text("#done")
        console = await browser.console()

        callback = query_of(landed)
        redeemed = await exchange(public_url, client, callback["code"], pkce)
        assert redeemed.status_code == 200, redeemed.text
        tools = await call_mcp(public_url, redeemed.json()["access_token"])

    assert urlsplit(refused_at).path == "/consent"
    assert refused_heading == "Sign-in stopped"
    assert heading == f"Allow Test client to use {urlsplit(public_url).netloc}?"
    # The cookie /authorize set: HttpOnly, SameSite=Lax, host-only; over https `__Host-` and Secure, which
    # Chromium keeps only when every rule of the prefix holds (Secure, Path=/, no Domain).
    secure = scheme == "https"
    browser_cookie = cookies["__Host-mag_browser" if secure else "mag_browser"]
    assert browser_cookie["httpOnly"] is True
    assert browser_cookie["sameSite"] == "Lax"
    assert browser_cookie["secure"] is secure
    assert browser_cookie["path"] == "/"
    assert browser_cookie["domain"] == "localhost"
    assert browser_cookie["value"].startswith("mag_br_")

    assert page == "Signed in"
    assert received == [callback]
    assert callback["state"] == "client-state-1"
    assert callback["iss"] == public_url
    assert callback["code"].startswith("mag_ac_")
    assert tools.status_code == 200
    assert local_access_saas.hits["authorization"] == 1
    # Nothing the page did was refused by its own Content-Security-Policy or frame rules.
    assert not [line for line in console if "Content Security Policy" in line or "Refused to" in line], console

    decisions = [(vars(r)["decision"], vars(r)["reason"]) for r in caplog.records if hasattr(r, "decision")]
    assert ("deny", "no_browser_cookie") in decisions
    assert ("allow", "consent_approved") in decisions
    # The callback matched the browser that consented: the cookie came back across sites.
    assert ("allow", "authorized") in decisions
    assert ("deny", "browser_mismatch") not in decisions
