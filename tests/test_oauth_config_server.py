"""The OAuthConfig keywords the authorization server added: the redirect-host allow-list, client ID metadata
documents, and the registration limits; as keywords and as [oauth] table keys, each refusal naming the setting."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_access_guard import ConfigError
from mcp_access_guard.oauth import AccessSaaSConfig, OAuthConfig

CLIENT_ID = "4f1d7c2a9b3e4d5f8a6b7c8d9e0f1a2b"
ISSUER = f"https://team.cloudflareaccess.com/cdn-cgi/access/sso/oidc/{CLIENT_ID}"
SECRET_KEY = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
UPSTREAM_SECRET = "upstream-client-secret-for-config-tests"


def build(**keywords: Any) -> OAuthConfig:
    upstream = AccessSaaSConfig(CLIENT_ID, UPSTREAM_SECRET, authorization_url=f"{ISSUER}/authorization")
    return OAuthConfig("https://mcp.example.com", upstream, secret_key=SECRET_KEY, **keywords)


def table(**keys: Any) -> dict[str, Any]:
    return {
        "public_url": "https://mcp.example.com",
        "secret_key": SECRET_KEY,
        "upstream": {"client_id": CLIENT_ID, "client_secret": UPSTREAM_SECRET, "issuer": ISSUER},
        **keys,
    }


def test_defaults() -> None:
    config = build()
    assert config.redirect_hosts is None
    assert config.client_metadata_documents is False
    assert (config.registration_rate, config.registration_cap, config.registration_ttl) == (20, 1000, 86_400)
    shown = repr(config)
    assert "redirect_hosts=None" in shown
    assert SECRET_KEY not in shown
    assert UPSTREAM_SECRET not in shown


def test_keywords_and_table_keys_are_read() -> None:
    keys = {
        "redirect_hosts": ["Claude.ai", "*.example.com", "cursor:", "[::1]", "127.0.0.1", "localhost", "claude.ai."],
        "client_metadata_documents": True,
        "registration_rate": 5,
        "registration_cap": 50,
        "registration_ttl": 3600,
    }
    from_table = OAuthConfig.from_mapping(table(**keys), "guard.toml")
    from_keywords = build(**keys)
    for config in (from_table, from_keywords):
        assert config.redirect_hosts == ("claude.ai", "*.example.com", "cursor:", "[::1]", "127.0.0.1", "localhost")
        assert config.client_metadata_documents is True
        assert (config.registration_rate, config.registration_cap, config.registration_ttl) == (5, 50, 3600)


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"redirect_hosts": "claude.ai"}, "redirect_hosts must be a list"),
        ({"redirect_hosts": []}, "redirect_hosts is empty"),
        ({"redirect_hosts": [""]}, "redirect_hosts is empty"),
        ({"redirect_hosts": [5]}, "redirect_hosts must be a string"),
        ({"redirect_hosts": ["https://claude.ai"]}, "redirect_hosts holds"),
        ({"redirect_hosts": ["claude.ai/cb"]}, "redirect_hosts holds"),
        ({"redirect_hosts": ["*"]}, "redirect_hosts holds"),
        ({"redirect_hosts": ["*.com"]}, "redirect_hosts holds"),
        ({"redirect_hosts": ["*.127.0.0.1"]}, "redirect_hosts holds"),
        ({"redirect_hosts": ["::1"]}, "redirect_hosts holds"),
        ({"redirect_hosts": ["[not-v6]"]}, "redirect_hosts holds"),
        ({"redirect_hosts": ["javascript:"]}, "redirect_hosts holds"),
        ({"redirect_hosts": ["https:"]}, "redirect_hosts holds"),
        ({"redirect_hosts": ["claude.ai:443"]}, "redirect_hosts holds"),
        ({"client_metadata_documents": "yes"}, "client_metadata_documents must be true or false"),
        ({"registration_rate": 0}, "registration_rate"),
        ({"registration_rate": "20"}, "registration_rate"),
        ({"registration_cap": True}, "registration_cap"),
        ({"registration_cap": 10**7}, "registration_cap"),
        ({"registration_ttl": 59}, "registration_ttl"),
        ({"registration_ttl": 1.5}, "registration_ttl"),
    ],
)
def test_refusals_name_the_key(keys: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError) as from_table:
        OAuthConfig.from_mapping(table(**keys), "guard.toml")
    assert f"guard.toml: [oauth] {named}" in str(from_table.value)
    with pytest.raises(ConfigError) as from_keyword:
        build(**keys)
    assert str(from_keyword.value).startswith(named)
    for message in (str(from_table.value), str(from_keyword.value)):
        assert SECRET_KEY not in message
        assert UPSTREAM_SECRET not in message
