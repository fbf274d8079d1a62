"""`[limits]` and its environment variables: defaults, the file before the environment, every value checked with
its source named, and the trusted proxies that would let any client pick its own address refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mcp_access_guard import ConfigError, GuardConfig
from mcp_access_guard.limits import FailedCredentialLimit
from mcp_access_guard.settings import LimitSettings

ACCESS_ENV = {"TEAM_DOMAIN": "myteam", "POLICY_AUD": "a" * 64}


def from_file(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> GuardConfig:
    path = tmp_path / "guard.toml"
    path.write_text('[access]\nteam_domain = "myteam"\naudiences = ["' + "a" * 64 + '"]\n' + text)
    return GuardConfig.from_toml(path, environ or {})


def test_the_defaults() -> None:
    limits = GuardConfig.from_env(ACCESS_ENV).limits
    assert limits == LimitSettings(failed_credentials=10, failure_window=60, tracked_addresses=10_000)
    assert limits.trusted_proxies == ()


def test_the_environment() -> None:
    environ = {
        **ACCESS_ENV,
        "GUARD_FAILED_CREDENTIAL_LIMIT": "5",
        "GUARD_FAILURE_WINDOW": "30.5",
        "GUARD_TRACKED_ADDRESSES": "500",
        "GUARD_TRUSTED_PROXIES": "10.0.0.0/8, 2001:db8::/32,192.0.2.7",
    }
    limits = GuardConfig.from_env(environ).limits
    assert limits == LimitSettings(5, 30.5, 500, ("10.0.0.0/8", "2001:db8::/32", "192.0.2.7"))


def test_the_file_wins_over_the_environment(tmp_path: Path) -> None:
    environ = {"GUARD_FAILED_CREDENTIAL_LIMIT": "5", "GUARD_FAILURE_WINDOW": "30"}
    text = '[limits]\nfailed_credentials = 0\ntrusted_proxies = ["172.16.0.0/12"]\n'
    limits = from_file(tmp_path, text, environ).limits
    assert (limits.failed_credentials, limits.failure_window) == (0, 30)
    assert limits.trusted_proxies == ("172.16.0.0/12",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("failed_credentials = -1", r"\[limits\] failed_credentials=-1: expected a whole number from 0"),
        ("failed_credentials = 1.5", r"\[limits\] failed_credentials: expected a whole number"),
        ('failed_credentials = "10"', r"\[limits\] failed_credentials: expected a whole number"),
        ("failed_credentials = true", r"\[limits\] failed_credentials: expected a whole number"),
        ("failure_window = nan", r"\[limits\] failure_window: expected a finite number"),
        ("failure_window = inf", r"\[limits\] failure_window: expected a finite number"),
        ("failure_window = 0", r"\[limits\] failure_window=0: expected a number from 1 to 86400"),
        ("tracked_addresses = 0", r"\[limits\] tracked_addresses=0: expected a whole number from 1"),
        ('trusted_proxies = "10.0.0.0/8"', r"\[limits\] trusted_proxies: expected a list of non-empty strings"),
        ('trusted_proxies = ["10.0.0.1/8"]', r"\[limits\] trusted_proxies: trusted proxy '10.0.0.1/8' is not an IP"),
        ('trusted_proxies = ["proxy.example"]', r"\[limits\] trusted_proxies: trusted proxy 'proxy.example' is not"),
        ('trusted_proxies = ["0.0.0.0/0"]', r"\[limits\] trusted_proxies: trusted proxy '0.0.0.0/0' covers every"),
        ('trusted_proxies = ["::/0"]', r"\[limits\] trusted_proxies: trusted proxy '::/0' covers every address"),
        ("requests = 5", r"unknown key\(s\) .*\[limits\] requests"),
    ],
)
def test_a_bad_value_in_the_file_names_its_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_file(tmp_path, f"[limits]\n{text}\n")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("GUARD_FAILED_CREDENTIAL_LIMIT", "ten", "GUARD_FAILED_CREDENTIAL_LIMIT='ten': expected a whole number"),
        ("GUARD_FAILED_CREDENTIAL_LIMIT", "-3", "GUARD_FAILED_CREDENTIAL_LIMIT=-3: expected a whole number from 0"),
        ("GUARD_FAILURE_WINDOW", "nan", "GUARD_FAILURE_WINDOW: expected a finite number, got nan"),
        ("GUARD_FAILURE_WINDOW", "1e9", "GUARD_FAILURE_WINDOW=1000000000.0: expected a number from 1"),
        ("GUARD_FAILURE_WINDOW", "a minute", "GUARD_FAILURE_WINDOW='a minute': expected a number"),
        ("GUARD_TRACKED_ADDRESSES", "1.5", "GUARD_TRACKED_ADDRESSES='1.5': expected a whole number"),
        ("GUARD_TRUSTED_PROXIES", "10.0.0.0/8,", "GUARD_TRUSTED_PROXIES has an empty entry"),
        ("GUARD_TRUSTED_PROXIES", "::/0", "GUARD_TRUSTED_PROXIES: trusted proxy '::/0' covers every address"),
    ],
)
def test_a_bad_variable_is_named(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        GuardConfig.from_env({**ACCESS_ENV, name: value})


def test_settings_and_the_limiter_refuse_the_same_values() -> None:
    with pytest.raises(ConfigError, match=r"failure_window=0\.5"):
        LimitSettings(failure_window=0.5)
    with pytest.raises(ConfigError, match="covers every address"):
        LimitSettings(trusted_proxies=("0.0.0.0/0",))
    with pytest.raises(ConfigError, match="not one string"):
        FailedCredentialLimit(trusted_proxies="10.0.0.0/8")
    with pytest.raises(ConfigError, match="tracked_addresses=0"):
        FailedCredentialLimit(tracked=0)
