"""`check --token`: each diagnosis against a real LocalAccess key server, and in every case the token it was given
never appears in what it prints, and nothing the token says can act on the terminal."""

from __future__ import annotations

import io
import json
import secrets

import pytest

from check_support import CLIENT_ID, assert_token_not_shown, check, lines, run_token_check
from mcp_access_guard.testing import DROP, LocalAccess, SigningKey, b64url

CLIENT_SECRET = secrets.token_hex(32)


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




# -- nothing the token says acts on the terminal --------------------------------------------------------------------

# What a hostile token might carry: an ANSI sequence that clears the screen and writes a fake verdict, a clipboard
# write (OSC 52), a carriage return and a newline that start a forged line, the separators some terminals and
# editors break lines at, and a bidi override that shows text reversed.
HOSTILE = (
    "\x1b[2J\x1b[1;1H  ok   token passes\r\n  ok   FORGED"
    "\x1b]52;c;ZXZpbA==\x07\u2028FORGED\u2029FORGED\x85FORGED\u202eDESREVER\u2066"
)
TERMINAL_ACTIVE = ("\x1b", "\x07", "\r", "\x85", "\u2028", "\u2029", "\u202e", "\u2066")


def assert_inert(out: str) -> None:
    for char in TERMINAL_ACTIVE:
        assert char not in out, repr(char)
    for line in out.splitlines():
        assert not line.lstrip().startswith(("ok   FORGED", "FORGED")), line


def test_hostile_claims_are_escaped(configured: LocalAccess, capsys: pytest.CaptureFixture[str]) -> None:
    token = configured.user_token(
        "mallory@example.com",
        groups=[HOSTILE],
        claims={"sub": HOSTILE, "country": HOSTILE, "type": HOSTILE, HOSTILE: "a claim named to fool"},
    )

    status, out = run_token_check(capsys, token)

    assert status == 1  # type is not app
    assert_inert(out)
    [claims] = [line for line in lines(out, "info") if "claims (not yet trusted)" in line]
    assert "\\x1b[2J" in claims  # shown, as an escape
    assert "\\u202eDESREVER" in claims
    [refused] = lines(out, "FAIL")
    assert refused.startswith("FAIL token refused (wrong_token_type)")


def test_hostile_claims_of_a_valid_token_are_escaped(
    configured: LocalAccess, capsys: pytest.CaptureFixture[str]
) -> None:
    token = configured.user_token("mallory@example.com", groups=[HOSTILE], claims={"sub": HOSTILE})

    status, out = run_token_check(capsys, token)

    assert status == 0  # the verifier takes any text in sub and groups: the identity line shows them, escaped
    assert_inert(out)
    [passed] = [line for line in lines(out, "ok") if "token passes" in line]
    assert "(sub \\x1b[2J\\x1b[1;1H  ok   token passes\\r\\n  ok   FORGED\\x1b]52;c;" in passed


def test_a_hostile_header_is_escaped(configured: LocalAccess, capsys: pytest.CaptureFixture[str]) -> None:
    token = configured.user_token(headers={"kid": HOSTILE, HOSTILE: 1})

    status, out = run_token_check(capsys, token)

    assert status == 1
    assert_inert(out)
    [refused] = lines(out, "FAIL")
    assert refused.startswith("FAIL token refused (unknown_key): signed by key \\x1b[2J")


def test_a_hostile_unsigned_token_is_escaped(configured: LocalAccess, capsys: pytest.CaptureFixture[str]) -> None:
    header = b64url(json.dumps({"alg": "none", "kid": HOSTILE}).encode())
    payload = b64url(json.dumps({"email": HOSTILE, "iss": HOSTILE, "aud": [HOSTILE]}).encode())

    status, out = run_token_check(capsys, f"{header}.{payload}.{b64url(b'not a signature')}")

    assert status == 1
    assert_inert(out)
    assert "\\u2028FORGED" in out
