"""`check` in OAuth mode, against a real LocalAccessSaaS: what clients will see (the metadata, asked of the stack),
the application's discovery and issuer, its keys, the redirect URL it must have registered; and `check --url`
against a guarded server under real uvicorn and against fronts that answer a bearer request the way Access does (a
redirect to its login page, its own 401), which must be warned about. No secret is ever printed."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest
from starlette.types import Receive, Scope, Send

from check_support import check, lines
from mcp_access_guard import GuardConfig, guard
from mcp_access_guard.dev import saas_environment
from mcp_access_guard.oauth import OAuthConfig
from mcp_access_guard.testing import LocalAccessSaaS, free_port, serve

# Where Access's login redirect would carry its own token-like values: never printed.
LOGIN_META_SECRET = secrets.token_urlsafe(48)


class Deployment:
    """A LocalAccessSaaS with our callback registered, and the environment `serve` would read for it."""

    def __init__(self, saas: LocalAccessSaaS, port: int, environment: dict[str, str]) -> None:
        self.saas = saas
        self.port = port
        self.public_url = f"http://127.0.0.1:{port}"
        self.environment = environment

    @property
    def secrets(self) -> list[str]:
        return [self.environment["ACCESS_CLIENT_SECRET"], self.environment["COOKIE_ENCRYPTION_KEY"]]

    def config(self) -> GuardConfig:
        return GuardConfig(oauth=OAuthConfig.from_env(self.environment))


@pytest.fixture
def deployment(monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    with LocalAccessSaaS(redirect_uris=[public_url + "/oauth/callback"]) as saas:
        environment = saas_environment(saas, public_url, "memory:")
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        yield Deployment(saas, port, environment)


def run(capsys: pytest.CaptureFixture[str], deployment: Deployment, *argv: str) -> tuple[int, str]:
    status = check(*argv)
    captured = capsys.readouterr()
    for secret in deployment.secrets:
        assert secret not in captured.out + captured.err
    return status, captured.out


async def run_in_thread(capsys: pytest.CaptureFixture[str], deployment: Deployment, *argv: str) -> tuple[int, str]:
    # run_check drives its own event loop, beside the test's (where the servers run).
    return await anyio.to_thread.run_sync(lambda: run(capsys, deployment, *argv))


def test_a_working_configuration_passes_and_says_what_clients_see(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = run(capsys, deployment)
    assert status == 0, out
    ok = "\n".join(lines(out, "ok"))
    assert f"issuer {deployment.public_url}, resource {deployment.public_url}/mcp" in ok
    assert "consent form can be posted" in ok
    assert f"discovery at {deployment.saas.discovery_url} answers" in ok
    assert f"1 signing key at {deployment.saas.jwks_url}" in ok
    assert f"sent back to {deployment.public_url}/oauth/callback, so it is registered" in ok
    info = "\n".join(lines(out, "info"))
    assert f"must list, exactly: {deployment.public_url}/oauth/callback" in info
    assert f"resource metadata at {deployment.public_url}/.well-known/oauth-protected-resource/mcp" in info
    assert any("plain http on loopback" in line for line in lines(out, "warn"))
    assert lines(out, "FAIL") == []


def test_an_issuer_that_discovery_contradicts_fails(deployment: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    deployment.saas.discovery_issuer = "https://other.cloudflareaccess.com/cdn-cgi/access/sso/oidc/x"
    status, out = run(capsys, deployment)
    assert status == 1
    (failure,) = lines(out, "FAIL")
    assert "names issuer 'https://other.cloudflareaccess.com" in failure
    assert "must be equal" in failure


def test_an_application_out_of_reach_fails(deployment: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    deployment.saas.go_down()
    status, out = run(capsys, deployment)
    assert status == 1
    (failure,) = lines(out, "FAIL")
    assert f"cannot read the discovery document now (discovery {deployment.saas.discovery_url}:" in failure


def test_keys_that_cannot_be_fetched_fail(deployment: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    deployment.saas.fault = "http_500"
    deployment.saas.fault_endpoints = {"jwks"}
    status, out = run(capsys, deployment)
    assert status == 1
    (failure,) = lines(out, "FAIL")
    assert f"signing keys at {deployment.saas.jwks_url} cannot be fetched" in failure
    assert "HTTP 500" in failure


def test_a_callback_the_application_has_not_registered_fails(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    deployment.saas.redirect_uris = ("https://mcp.example.com/oauth/callback",)
    status, out = run(capsys, deployment)
    assert status == 1
    (failure,) = lines(out, "FAIL")
    assert f"refused an authorization request for {deployment.public_url}/oauth/callback (HTTP 400)" in failure


@pytest.mark.parametrize(
    ("variable", "value", "hint"),
    [
        ("GUARD_ALLOWED_HOSTS", "mcp.example.com", "GUARD_ALLOWED_HOSTS"),
        ("GUARD_PATHS", "/health", "GUARD_PATHS"),
    ],
)
def test_a_stack_that_would_refuse_its_own_clients_fails(
    deployment: Deployment,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    hint: str,
) -> None:
    monkeypatch.setenv(variable, value)
    status, out = run(capsys, deployment)
    assert status == 1
    failures = lines(out, "FAIL")
    assert failures
    assert all(hint in failure for failure in failures), failures


# -- check --url --------------------------------------------------------------------------------------------------


@pytest.fixture
async def guarded(deployment: Deployment) -> AsyncIterator[str]:
    """The deployment's server, guarded in OAuth mode, at its public URL."""
    from oauth_harness import mcp_app

    async with serve(guard(mcp_app(), deployment.config()), port=deployment.port) as url:
        yield url


@pytest.mark.anyio
async def test_url_reaching_this_server_passes(
    deployment: Deployment, guarded: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = await run_in_thread(capsys, deployment, "--url", f"{guarded}/mcp")
    assert status == 0, out
    ok = "\n".join(lines(out, "ok"))
    assert "401 from this server, whose challenge points clients" in ok
    assert "the resource metadata clients read names this configuration's issuer" in ok
    assert "service token test" not in out  # none was given: in OAuth mode there is nothing to test


@pytest.mark.anyio
async def test_url_of_a_server_with_another_public_url_fails(
    deployment: Deployment, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = f"http://127.0.0.1:{free_port()}"
    other = GuardConfig(oauth=OAuthConfig.from_env({**deployment.environment, "GUARD_PUBLIC_URL": elsewhere}))
    from oauth_harness import mcp_app

    async with serve(guard(mcp_app(), other), port=deployment.port) as url:
        status, out = await run_in_thread(capsys, deployment, "--url", f"{url}/mcp")
    assert status == 1
    (failure,) = lines(out, "FAIL")
    assert "points at other resource metadata than this configuration's" in failure


class AccessFront:
    """Answers every request the way Access does when a self-hosted application covers the host name: `login`, a
    redirect to the team's login page; `own_401`, its own 401 with a cf-access-* header; `managed`, a Managed OAuth
    challenge naming its own resource metadata."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.requests = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.requests += 1
        host = dict(scope["headers"])[b"host"].decode()
        headers: list[tuple[bytes, bytes]] = [(b"content-length", b"0")]
        if self.kind == "login":
            status = 302
            location = (
                f"https://team.cloudflareaccess.com/cdn-cgi/access/login/{host}?kid=4d2a&redirect_url=%2Fmcp"
                f"&meta={LOGIN_META_SECRET}"
            )
            headers.append((b"location", location.encode()))
        elif self.kind == "own_401":
            status = 401
            headers.append((b"cf-access-aud", b"0" * 64))
        else:
            status = 401
            challenge = f'Bearer realm="{host}", resource_metadata="http://{host}/.well-known/oauth-protected-resource"'
            headers.append((b"www-authenticate", challenge.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("login", "a redirect to the Access login page (https://team.cloudflareaccess.com/cdn-cgi/access/login/"),
        ("own_401", "Access's own answer (cf-access-aud)"),
        ("managed", "a challenge whose resource metadata is not this server's (Access's Managed OAuth)"),
    ],
)
async def test_access_in_front_of_the_host_name_is_warned_about(
    deployment: Deployment, capsys: pytest.CaptureFixture[str], kind: str, said: str
) -> None:
    front = AccessFront(kind)
    async with serve(front, port=deployment.port) as url:
        status, out = await run_in_thread(capsys, deployment, "--url", f"{url}/mcp")
    assert front.requests >= 1
    # A warning, not a failure: the rest of the configuration is fine.
    assert status == 0, out
    warnings = [line for line in lines(out, "warn") if "must not sit behind a self-hosted Access application" in line]
    assert len(warnings) == 1, out
    assert said in warnings[0]
    assert LOGIN_META_SECRET not in out


@pytest.mark.anyio
async def test_a_service_token_given_in_oauth_mode_is_still_tested(
    deployment: Deployment, guarded: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client_secret = secrets.token_hex(32)
    monkeypatch.setenv("CF_ACCESS_CLIENT_SECRET", client_secret)
    status, out = await run_in_thread(capsys, deployment, "--url", f"{guarded}/mcp", "--client-id", "robot.access")
    assert client_secret not in out
    assert "OAuth mode test of" in out
    assert "service token test of" in out
    # No direct pair is configured here: the pair is taken off, and the bearer layer asks for a token.
    assert status == 1
    (failure,) = lines(out, "FAIL")
    assert "asked for credentials" in failure
