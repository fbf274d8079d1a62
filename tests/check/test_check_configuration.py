"""`check`'s configuration checks: the configuration `serve` would run with (`GuardConfig.load`), its keys fetched
for real from a LocalAccess key server, and what the stack would leave open; no secret of it is ever printed."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from check_support import assert_token_not_shown, check, lines, run_configuration_check, run_token_check
from mcp_access_guard.testing import Fault, LocalAccess, LocalAccessSaaS


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


def test_the_limit_on_failed_credentials_is_said(
    configured: LocalAccess, capsys: pytest.CaptureFixture[str], shared_secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GUARD_TRUSTED_PROXIES", "10.0.0.0/8")
    _, out = run_configuration_check(capsys, shared_secret)
    [limit] = [line for line in lines(out, "ok") if line.startswith("ok failed credentials:")]
    assert "10 failures per client address in 60 s, then 429" in limit
    assert "counted by each process" in limit
    assert (
        "CF-Connecting-IP once the shared secret checks out, else the peer (CF-Connecting-IP from 10.0.0.0/8)" in limit
    )

    monkeypatch.setenv("GUARD_FAILED_CREDENTIAL_LIMIT", "0")
    _, out = run_configuration_check(capsys, shared_secret)
    assert any(
        "no limit on failed credential checks (GUARD_FAILED_CREDENTIAL_LIMIT is 0)" in line
        for line in lines(out, "warn")
    )


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




# -- the key fetch: what check says follows the kind of failure, not the words of a log line ---------------------------

NOTHING_ANSWERED = "Nothing answered there: check [access] team_domain (or [access] certs_url)"
NOT_A_KEY_ENDPOINT = "That host serves no Access keys"
GENERIC = "Check [access] team_domain and [access] certs_url"


@pytest.mark.parametrize(
    ("fault", "detail", "hint"),
    [
        (None, "ConnectError", NOTHING_ANSWERED),
        ("slow", "no complete answer within 0.3 s", NOTHING_ANSWERED),
        ("http_500", "HTTP 500", GENERIC),
        ("redirect", "HTTP 302 to", NOT_A_KEY_ENDPOINT),
        ("html", "the answer is not JSON", NOT_A_KEY_ENDPOINT),
        ("garbage", "the answer is not JSON", NOT_A_KEY_ENDPOINT),
        ("empty", "the answer holds no usable RS256 key", GENERIC),
        ("non_rsa", "the answer holds no usable RS256 key", GENERIC),
        ("huge", "the answer is larger than 1024 bytes", GENERIC),
    ],
    ids=lambda value: value if isinstance(value, str) and " " not in value else None,
)
def test_each_kind_of_key_fetch_failure_gets_its_own_hint(
    local_access: LocalAccess,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    fault: Fault | None,
    detail: str,
    hint: str,
) -> None:
    guard_toml = tmp_path / "guard.toml"
    guard_toml.write_text(
        f'[access]\nteam_domain = "{local_access.url}"\naudiences = ["{local_access.audience}"]\n'
        "fetch_timeout = 0.3\nmax_certs_bytes = 1024\n"
    )
    local_access.slow_seconds = 1.0
    local_access.huge_bytes = 4096
    if fault is None:
        local_access.go_down()
    else:
        local_access.fault = fault

    status = check("--config", str(guard_toml))
    out = capsys.readouterr().out

    assert status == 1
    [keys] = [line for line in lines(out, "FAIL") if line.startswith("FAIL keys:")]
    assert detail in keys
    assert hint in keys


# -- where the configuration comes from: serve's precedence, read once ---------------------------------------------


def test_a_secret_in_the_environment_counts_with_a_file(
    local_access: LocalAccess, capsys: pytest.CaptureFixture[str], tmp_path: Path, shared_secret: str
) -> None:
    guard_toml = tmp_path / "guard.toml"
    guard_toml.write_text(f'[access]\nteam_domain = "{local_access.url}"\naudiences = ["{local_access.audience}"]\n')

    status, out = run_configuration_check(capsys, shared_secret, "--config", str(guard_toml))

    assert status == 0
    assert any("shared secret: 1 secret accepted" in line for line in lines(out, "ok"))
    assert not any("no shared secret" in line for line in lines(out, "warn"))


def test_the_file_decides_what_it_names(
    local_access: LocalAccess, capsys: pytest.CaptureFixture[str], tmp_path: Path, shared_secret: str
) -> None:
    in_file = [secrets.token_hex(20), secrets.token_hex(20)]
    guard_toml = tmp_path / "guard.toml"
    guard_toml.write_text(
        f'[access]\nteam_domain = "{local_access.url}"\naudiences = ["{local_access.audience}"]\n'
        f"[service_token]\nsecrets = {in_file!r}\n".replace("'", '"')
    )

    status, out = run_configuration_check(capsys, shared_secret, "--config", str(guard_toml))

    assert status == 0
    assert any("shared secret: 2 secrets accepted" in line for line in lines(out, "ok"))
    assert not any(secret in out for secret in in_file)


def test_secrets_of_a_file_that_fails_to_load_are_not_printed(
    local_access: LocalAccess, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    secret = secrets.token_hex(20)
    guard_toml = tmp_path / "guard.toml"
    guard_toml.write_text(
        f'[access]\nteam_domain = "{local_access.url}"\naudiences = ["{local_access.audience}"]\n'
        f'[service_token]\nsecrets = "{secret}"\n'  # one string where a list belongs
    )

    status = check("--config", str(guard_toml))
    captured = capsys.readouterr()

    assert status == 1
    assert secret not in captured.out + captured.err
    [failure] = lines(captured.out, "FAIL")
    assert "[service_token] secrets: expected a list of non-empty strings, got str" in failure


def test_a_weak_secret_is_refused_and_not_printed(
    configured: LocalAccess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    weak = "twelve-chars"
    monkeypatch.setenv("GUARD_SECRETS", weak)

    status = check()
    captured = capsys.readouterr()

    assert status == 1
    [refused] = lines(captured.out, "FAIL")
    assert "GUARD_SECRETS: a configured secret is shorter than 16 characters" in refused
    assert weak not in captured.out + captured.err


def test_a_configuration_serve_would_refuse_fails(
    local_access: LocalAccess, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Read without complaint, refused when the stack is built: the pair is the wrong way round.
    swapped_secret = secrets.token_hex(12)
    guard_toml = tmp_path / "guard.toml"
    guard_toml.write_text(
        f'[access]\nteam_domain = "{local_access.url}"\naudiences = ["{local_access.audience}"]\n'
        f'[service_token.client_credentials]\n"{swapped_secret}" = "robot-client-id.access"\n'
    )

    status = check("--config", str(guard_toml))
    captured = capsys.readouterr()

    assert status == 1
    [refused] = [line for line in lines(captured.out, "FAIL") if "serve would refuse" in line]
    assert "client_credentials look swapped" in refused
    assert swapped_secret not in captured.out + captured.err


def test_oauth_mode_is_not_called_open_and_its_secrets_are_not_printed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    oauth_secrets = {"ACCESS_CLIENT_SECRET": secrets.token_hex(32), "COOKIE_ENCRYPTION_KEY": secrets.token_hex(32)}
    # The Access for SaaS application answers for real (test_check_oauth.py checks what is said about it).
    with LocalAccessSaaS(client_secret=oauth_secrets["ACCESS_CLIENT_SECRET"]) as saas:
        for name, value in {
            "ACCESS_CLIENT_ID": saas.client_id,
            "ACCESS_AUTHORIZATION_URL": saas.authorization_url,
            "ACCESS_TOKEN_URL": saas.token_url,
            "ACCESS_JWKS_URL": saas.jwks_url,
            "GUARD_PUBLIC_URL": "https://mcp.example.com",
            "GUARD_DEV": "",
            **oauth_secrets,
        }.items():
            monkeypatch.setenv(name, value)
        status = check()
    captured = capsys.readouterr()

    assert status == 0, captured.out
    assert not any("dev mode" in line for line in lines(captured.out, "FAIL"))
    assert any("OAuth mode" in line for line in lines(captured.out, "info"))
    for secret in oauth_secrets.values():
        assert secret not in captured.out + captured.err
