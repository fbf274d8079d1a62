"""`mcp-access-guard check`: each diagnosis against real parts (a LocalAccess key server, an edge imitation under
real uvicorn), and in every case the token or secret it was given never appears in what it prints."""

import argparse
import io
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from starlette.types import Receive, Scope, Send

from mcp_access_guard.check import add_check_arguments, run_check
from mcp_access_guard.testing import DROP, LocalAccess, SigningKey, serve

ENVIRONMENT = (
    "TEAM_DOMAIN",
    "POLICY_AUD",
    "ACCESS_CERTS_URL",
    "GUARD_DEV",
    "GUARD_PATHS",
    "GUARD_SECRETS",
    "GUARD_SECRET_HEADER",
    "GUARD_ALLOWED_HOSTS",
    "GUARD_ALLOWED_ORIGINS",
    "GUARD_EXTRA_ORIGINS",
    "GUARD_TRUST_FORWARDED_HOST",
    "ALLOWED_EMAILS",
    "ALLOWED_EMAILS_TOOL",
    "CF_ACCESS_CLIENT_ID",
    "CF_ACCESS_CLIENT_SECRET",
)
CLIENT_ID = "4b1e0c2f9d8a7b6c5d4e3f2a1b0c9d8e.access"
CLIENT_SECRET = secrets.token_hex(32)
# The Access login redirect carries a token-like `meta` in its query; it must never be printed.
LOGIN_META = secrets.token_urlsafe(48)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def configured(local_access: LocalAccess, monkeypatch: pytest.MonkeyPatch) -> LocalAccess:
    monkeypatch.setenv("TEAM_DOMAIN", local_access.url)
    monkeypatch.setenv("POLICY_AUD", local_access.audience)
    return local_access


def check(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="check")
    add_check_arguments(parser)
    return run_check(parser.parse_args(list(argv)))


def lines(output: str, mark: str) -> list[str]:
    """The findings with this mark, as "MARK text" (the column padding squeezed out)."""
    found = []
    for line in output.splitlines():
        first, _, rest = line.strip().partition(" ")
        if first == mark:
            found.append(f"{mark} {rest.strip()}")
    return found


def assert_token_not_shown(output: str, token: str) -> None:
    """Neither the token nor any of its three segments (the signature least of all) is printed."""
    for segment in token.split("."):
        if len(segment) >= 8:
            assert segment not in output
    assert token not in output


def run_token_check(capsys: pytest.CaptureFixture[str], token: str) -> tuple[int, str]:
    status = check("--token", token)
    captured = capsys.readouterr()
    assert_token_not_shown(captured.out + captured.err, token)
    return status, captured.out


@pytest.fixture
def shared_secret(monkeypatch: pytest.MonkeyPatch) -> str:
    """A tunnel secret in the environment: the configuration checks read it and must never print it."""
    secret = secrets.token_hex(24)
    monkeypatch.setenv("GUARD_SECRETS", secret)
    return secret


def run_configuration_check(capsys: pytest.CaptureFixture[str], secret: str) -> tuple[int, str]:
    status = check()
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    return status, captured.out


# -- tokens ------------------------------------------------------------------------------------------------------


def test_a_good_token_passes_and_names_its_user(configured: LocalAccess, capsys: pytest.CaptureFixture[str]) -> None:
    token = configured.user_token("Alice@Example.com", groups=["eng"])

    status, out = run_token_check(capsys, token)

    assert status == 0
    [passed] = [line for line in lines(out, "ok") if "token passes" in line]
    assert "user alice@example.com" in passed
    assert "groups eng" in passed
    assert "expires in 59 min" in passed
    assert not lines(out, "FAIL")
    assert any(
        "no shared secret (GUARD_SECRETS): anyone who can reach the origin" in line for line in lines(out, "warn")
    )
    assert "result: ok" in out


def test_a_service_token_is_identified_by_its_common_name(
    configured: LocalAccess, capsys: pytest.CaptureFixture[str]
) -> None:
    token = configured.service_token(CLIENT_ID)

    status, out = run_token_check(capsys, token)

    assert status == 0
    [passed] = [line for line in lines(out, "ok") if "token passes" in line]
    assert f"service token {CLIENT_ID}" in passed
    assert "common_name is its identity" in passed


def test_an_expired_token_says_how_long_ago(configured: LocalAccess, capsys: pytest.CaptureFixture[str]) -> None:
    token = configured.user_token(expires_in=-3600)

    status, out = run_token_check(capsys, token)

    assert status == 1
    [refused] = lines(out, "FAIL")
    assert "token refused (expired): expired 1 h 0 min ago" in refused
    assert "60 s of clock skew allowed" in refused


def test_a_wrong_audience_shows_both_sides_shortened(
    configured: LocalAccess, capsys: pytest.CaptureFixture[str]
) -> None:
    other_audience = "abc1234" + "0" * 57
    token = configured.user_token(claims={"aud": [other_audience]})

    status, out = run_token_check(capsys, token)

    assert status == 1
    [refused] = lines(out, "FAIL")
    assert "token refused (wrong_audience): audience abc1234… is not one of the configured ones" in refused
    assert f"({configured.audience[:7]}…)" in refused
    assert other_audience not in out  # shortened, as every AUD tag is


def test_an_issuer_with_a_trailing_slash_is_pointed_out(
    configured: LocalAccess, capsys: pytest.CaptureFixture[str]
) -> None:
    token = configured.user_token(claims={"iss": configured.url + "/"})

    status, out = run_token_check(capsys, token)

    assert status == 1
    [refused] = lines(out, "FAIL")
    assert f"token refused (wrong_issuer): issuer {configured.url}/ has a trailing slash" in refused
    assert f"the expected issuer {configured.url} has none" in refused


def test_an_issuer_with_another_scheme_is_pointed_out(
    configured: LocalAccess, capsys: pytest.CaptureFixture[str]
) -> None:
    https_issuer = configured.url.replace("http://", "https://")
    token = configured.user_token(claims={"iss": https_issuer})

    status, out = run_token_check(capsys, token)

    assert status == 1
    [refused] = lines(out, "FAIL")
    assert f"issuer {https_issuer} uses https:// where the expected issuer {configured.url} uses http://" in refused


def test_a_token_signed_by_a_key_no_longer_published(
    configured: LocalAccess, capsys: pytest.CaptureFixture[str]
) -> None:
    retired = configured.current_key
    token = configured.user_token(key=retired)
    current = configured.rotate()
    configured.drop(retired.kid)

    status, out = run_token_check(capsys, token)

    assert status == 1
    [refused] = lines(out, "FAIL")
    assert f"token refused (unknown_key): signed by key {retired.kid[:7]}…" in refused
    assert f"publishes now ({current.kid[:7]}…)" in refused
    assert "no longer published" in refused


def test_a_key_from_elsewhere_is_not_called_rotated(
    configured: LocalAccess, capsys: pytest.CaptureFixture[str]
) -> None:
    stranger = SigningKey.generate()
    token = configured.user_token(key=stranger, claims={"iss": "https://other.cloudflareaccess.com"})

    status, out = run_token_check(capsys, token)

    assert status == 1
    refused, *also = lines(out, "FAIL")
    assert "token refused (unknown_key)" in refused
    assert "another team or issuer signed it" in refused
    assert "no longer published" not in refused
    assert any("also (wrong_issuer): issuer https://other.cloudflareaccess.com is not" in line for line in also)


def test_an_org_token_is_not_an_application_token(configured: LocalAccess, capsys: pytest.CaptureFixture[str]) -> None:
    token = configured.user_token(claims={"type": "org"})

    status, out = run_token_check(capsys, token)

    assert status == 1
    [refused] = lines(out, "FAIL")
    assert "token refused (wrong_token_type): this is an org token (type org)" in refused
    assert "Cf-Access-Jwt-Assertion" in refused


def test_alg_none_is_called_unsigned(configured: LocalAccess, capsys: pytest.CaptureFixture[str]) -> None:
    token = configured.user_token(headers={"alg": "none"})

    status, out = run_token_check(capsys, token)

    assert status == 1
    assert "alg none" in " ".join(lines(out, "info"))
    [refused] = lines(out, "FAIL")
    assert "token refused (unsupported_algorithm): alg none means unsigned" in refused


def test_every_problem_is_listed_not_only_the_first(
    configured: LocalAccess, capsys: pytest.CaptureFixture[str]
) -> None:
    token = configured.user_token(expires_in=-7200, claims={"type": "org", "email": DROP})
    # An org token still says who it is for; this one does not even do that.

    status, out = run_token_check(capsys, token)

    assert status == 1
    refused, *also = lines(out, "FAIL")
    assert refused.startswith("FAIL token refused (wrong_token_type)")
    assert any(line.startswith("FAIL also (expired): expired 2 h 0 min ago") for line in also)
    assert any(line.startswith("FAIL also (malformed): it has neither email") for line in also)


def test_garbage_is_not_a_jwt(configured: LocalAccess, capsys: pytest.CaptureFixture[str]) -> None:
    garbage = "not-a-token-at-all-" + secrets.token_hex(8)

    status, out = run_token_check(capsys, garbage)

    assert status == 1
    [refused] = lines(out, "FAIL")
    assert "token refused (malformed): not a JWT: 1 part separated by '.', where a JWT has 3" in refused
    assert garbage not in out


def test_a_pasted_client_secret_is_recognised_and_not_echoed(
    configured: LocalAccess, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = run_token_check(capsys, CLIENT_SECRET)

    assert status == 1
    [refused] = lines(out, "FAIL")
    assert "look like a service token's client secret" in refused
    assert CLIENT_SECRET not in out


def test_a_bearer_prefixed_quoted_paste_is_unwrapped(
    configured: LocalAccess, capsys: pytest.CaptureFixture[str]
) -> None:
    token = configured.user_token("bob@example.com")

    status = check("--token", f'"Bearer {token}"')
    captured = capsys.readouterr()

    assert_token_not_shown(captured.out, token)
    assert status == 0
    warnings = lines(captured.out, "warn")
    assert any("pasted inside quotes" in line for line in warnings)
    assert any("pasted with a 'Bearer ' prefix" in line for line in warnings)
    assert any("token passes: user bob@example.com" in line for line in lines(captured.out, "ok"))


def test_the_token_can_come_from_stdin(
    configured: LocalAccess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = configured.user_token("carol@example.com")
    monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))

    status = check("--token", "-")
    captured = capsys.readouterr()

    assert_token_not_shown(captured.out, token)
    assert status == 0
    assert any("token passes: user carol@example.com" in line for line in lines(captured.out, "ok"))


def test_a_token_with_no_configuration_is_decoded_but_not_passed(
    local_access: LocalAccess, capsys: pytest.CaptureFixture[str]
) -> None:
    token = local_access.user_token("dave@example.com")

    status, out = run_token_check(capsys, token)

    assert status == 1
    assert any("email dave@example.com" in line for line in lines(out, "info"))
    assert any("TEAM_DOMAIN is empty" in line for line in lines(out, "FAIL"))
    assert any("cannot verify it" in line for line in lines(out, "FAIL"))


# -- configuration -----------------------------------------------------------------------------------------------


def test_the_configuration_alone_lists_the_keys(
    configured: LocalAccess, capsys: pytest.CaptureFixture[str], shared_secret: str
) -> None:
    first = configured.current_key
    second = configured.rotate()

    status, out = run_configuration_check(capsys, shared_secret)

    assert status == 0
    assert any(f"tokens must carry iss {configured.url} exactly" in line for line in lines(out, "ok"))
    [keys] = [line for line in lines(out, "ok") if line.startswith("ok keys:")]
    assert f"2 signing keys published at {configured.certs_url} (kids {first.kid[:7]}…, {second.kid[:7]}…)" in keys
    assert any("shared secret: 1 secret accepted in Cf-Access-Guard-Secret" in line for line in lines(out, "ok"))
    assert any("GUARD_ALLOWED_HOSTS unset" in line for line in lines(out, "warn"))


def test_unreachable_certs_fail_the_check(configured: LocalAccess, capsys: pytest.CaptureFixture[str]) -> None:
    token = configured.user_token()
    configured.go_down()

    status, out = run_token_check(capsys, token)

    assert status == 1
    failures = lines(out, "FAIL")
    assert any(
        line.startswith("FAIL keys:") and "ConnectError" in line and "Nothing answered" in line for line in failures
    )
    assert any("token refused (keys_unavailable)" in line for line in failures)


def test_a_key_endpoint_that_is_not_one_is_explained(
    configured: LocalAccess, capsys: pytest.CaptureFixture[str], shared_secret: str
) -> None:
    configured.fault = "html"

    status, out = run_configuration_check(capsys, shared_secret)

    assert status == 1
    [keys] = [line for line in lines(out, "FAIL") if line.startswith("FAIL keys:")]
    assert "not JSON" in keys
    assert "not the application's host name" in keys


def test_an_aud_that_is_not_64_hex_is_a_warning(
    local_access: LocalAccess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, shared_secret: str
) -> None:
    monkeypatch.setenv("TEAM_DOMAIN", local_access.url)
    monkeypatch.setenv("POLICY_AUD", f"{local_access.audience},my-app")

    status, out = run_configuration_check(capsys, shared_secret)

    assert status == 0  # a warning, not a failure: a token whose aud is exactly "my-app" would still pass
    [warning] = [line for line in lines(out, "warn") if "POLICY_AUD" in line]
    assert "'my-app' is 6 characters, not the 64 hex characters of an Access AUD tag" in warning
    assert any(
        f"POLICY_AUD: 1 AUD tag of 64 hex characters ({local_access.audience[:7]}…)" in line
        for line in lines(out, "ok")
    )


def test_an_upper_case_aud_never_matches(
    local_access: LocalAccess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, shared_secret: str
) -> None:
    monkeypatch.setenv("TEAM_DOMAIN", local_access.url)
    monkeypatch.setenv("POLICY_AUD", local_access.audience.upper())

    status, out = run_configuration_check(capsys, shared_secret)

    assert status == 1
    assert any("has upper-case letters" in line for line in lines(out, "FAIL"))


def test_a_malformed_team_domain_fails_with_the_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, shared_secret: str
) -> None:
    monkeypatch.setenv("TEAM_DOMAIN", "https://myteam.cloudflareaccess.com/cdn-cgi/access")
    monkeypatch.setenv("POLICY_AUD", "0" * 64)

    status, out = run_configuration_check(capsys, shared_secret)

    assert status == 1
    [failure] = lines(out, "FAIL")
    assert "TEAM_DOMAIN='https://myteam.cloudflareaccess.com/cdn-cgi/access'" in failure
    assert "with no path, query or credentials" in failure
    assert "keys:" not in out  # nothing is fetched for a domain that cannot be right


def test_an_open_stack_is_reported_and_its_secrets_are_not(
    local_access: LocalAccess, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    shared_secret = secrets.token_hex(20)
    guard_toml = tmp_path / "guard.toml"
    guard_toml.write_text(
        f"""
[access]
team_domain = "{local_access.url}"
audiences = ["{local_access.audience}"]

[paths]
enabled = false

[cors]
enabled = false

[service_token]
secrets = ["{shared_secret}"]

[tools]
default = "allow"

[tools.generate_image]
emails = ["alice@example.com"]
"""
    )
    token = local_access.user_token("mallory@example.com")

    status = check("--config", str(guard_toml), "--token", token)
    captured = capsys.readouterr()

    assert shared_secret not in captured.out + captured.err
    assert_token_not_shown(captured.out, token)
    assert status == 0
    warnings = lines(captured.out, "warn")
    assert any("path allow-list off ([paths] enabled)" in line for line in warnings)
    assert any("browser-origin layer off ([cors] enabled)" in line for line in warnings)
    assert any(
        "shared secret: 1 secret accepted in Cf-Access-Guard-Secret" in line for line in lines(captured.out, "ok")
    )
    assert any(
        "tool policy for mallory@example.com: may use none of the restricted tools; not generate_image" in line
        for line in lines(captured.out, "info")
    )


def test_dev_mode_is_a_failure(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, shared_secret: str
) -> None:
    monkeypatch.setenv("GUARD_DEV", "true")

    status, out = run_configuration_check(capsys, shared_secret)

    assert status == 1
    [failure] = lines(out, "FAIL")
    assert "dev mode (GUARD_DEV) with no Access configuration: nothing is verified" in failure


# -- the service-token test request ------------------------------------------------------------------------------


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
