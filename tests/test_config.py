"""AccessConfig: every accepted spelling of a team domain and AUD list, and a clear refusal of bad ones."""

import logging

import pytest

from mcp_access_guard import AccessConfig, ConfigError

AUD = "a" * 64
OTHER_AUD = "b" * 64


@pytest.mark.parametrize(
    "team_domain",
    [
        "myteam",
        "MyTeam",
        "myteam.cloudflareaccess.com",
        "myteam.cloudflareaccess.com/",
        "https://myteam.cloudflareaccess.com",
        "https://myteam.cloudflareaccess.com/",
        "  https://MYTEAM.cloudflareaccess.com/  ",
    ],
)
def test_team_domain_spellings_give_one_issuer(team_domain: str) -> None:
    config = AccessConfig(team_domain, AUD)
    assert config.issuer == "https://myteam.cloudflareaccess.com"
    assert config.certs_url == "https://myteam.cloudflareaccess.com/cdn-cgi/access/certs"


def test_custom_domain_is_its_own_issuer() -> None:
    config = AccessConfig("https://login.example.com/", AUD)
    assert config.issuer == "https://login.example.com"
    assert config.certs_url == "https://login.example.com/cdn-cgi/access/certs"


@pytest.mark.parametrize("loopback", ["http://127.0.0.1:8080", "http://localhost:9000", "http://[::1]:9000"])
def test_plain_http_is_allowed_on_loopback(loopback: str) -> None:
    assert AccessConfig(loopback, AUD).issuer == loopback


@pytest.mark.parametrize(
    ("team_domain", "message"),
    [
        ("", "team_domain is empty"),
        ("http://myteam.cloudflareaccess.com", "plain http:// is only allowed for a loopback host"),
        ("https://myteam.cloudflareaccess.com/cdn-cgi/access/certs", "no path"),
        ("https://user:pw@myteam.cloudflareaccess.com", "no path, query or credentials"),
        ("https://myteam.cloudflareaccess.com?x=1", "no path, query or credentials"),
        ("ftp://myteam.cloudflareaccess.com", "expected 'myteam'"),
        ("https://myteam.cloudflareaccess.com:99999", "not a valid host or URL"),
    ],
)
def test_bad_team_domain_is_refused_with_the_setting_named(team_domain: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AccessConfig(team_domain, AUD)


def test_audiences_as_one_tag_a_list_or_a_comma_separated_string() -> None:
    assert AccessConfig("t", AUD).audiences == (AUD,)
    assert AccessConfig("t", [AUD, OTHER_AUD]).audiences == (AUD, OTHER_AUD)
    assert AccessConfig("t", f" {AUD} , {OTHER_AUD}").audiences == (AUD, OTHER_AUD)
    assert AccessConfig("t", [AUD, AUD]).audiences == (AUD,)


@pytest.mark.parametrize("audiences", [f"{AUD},", f"{AUD},,{OTHER_AUD}", [AUD, " "]])
def test_an_empty_audience_entry_is_refused_not_skipped(audiences: str | list[str]) -> None:
    # What "$NEW,$OLD" becomes when one variable is unset: a mistake to report, not a shorter list.
    with pytest.raises(ConfigError, match="audiences has an empty entry"):
        AccessConfig("t", audiences)


@pytest.mark.parametrize("audiences", ["", " , ", []])
def test_empty_audience_is_refused(audiences: str | list[str]) -> None:
    with pytest.raises(ConfigError, match="audiences is empty"):
        AccessConfig("t", audiences)


def test_audience_with_inner_space_is_refused() -> None:
    with pytest.raises(ConfigError, match="no spaces"):
        AccessConfig("t", ["abc def"])


def test_audience_that_is_not_64_hex_gets_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mcp_access_guard"):
        config = AccessConfig("t", "my-app")
    assert config.audiences == ("my-app",)
    assert "not 64 lower-case hex characters" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mcp_access_guard"):
        AccessConfig("t", AUD)
    assert caplog.text == ""


def test_from_env_reads_the_three_variables() -> None:
    config = AccessConfig.from_env(
        {"TEAM_DOMAIN": "myteam", "POLICY_AUD": f"{AUD},{OTHER_AUD}", "ACCESS_CERTS_URL": "https://keys.example.com/c"}
    )
    assert config.issuer == "https://myteam.cloudflareaccess.com"
    assert config.audiences == (AUD, OTHER_AUD)
    assert config.certs_url == "https://keys.example.com/c"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"POLICY_AUD": AUD}, "TEAM_DOMAIN is empty"),
        ({"TEAM_DOMAIN": "http://example.com", "POLICY_AUD": AUD}, "TEAM_DOMAIN='http://example.com'"),
        ({"TEAM_DOMAIN": "myteam"}, "POLICY_AUD is empty"),
        (
            {"TEAM_DOMAIN": "myteam", "POLICY_AUD": AUD, "ACCESS_CERTS_URL": "http://keys.example.com"},
            "ACCESS_CERTS_URL",
        ),
    ],
)
def test_from_env_names_the_variable_in_its_refusal(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AccessConfig.from_env(environ)


def test_from_env_warns_once_under_the_variable_name(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mcp_access_guard"):
        AccessConfig.from_env({"TEAM_DOMAIN": "myteam", "POLICY_AUD": "short"})
    assert [record.getMessage().split(" ")[0] for record in caplog.records] == ["POLICY_AUD"]


@pytest.mark.parametrize("name", ["leeway", "stale_window", "refetch_cooldown", "keys_max_age"])
def test_negative_durations_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        AccessConfig("t", AUD, **{name: -1})
