"""GuardConfig's two credential modes: Access in front (`access`) or this server as the OAuth authorization server
(`oauth`), chosen from the environment by `ACCESS_CLIENT_ID`, from a file by its `[oauth]` table; never both."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from mcp_access_guard import ConfigError, GuardConfig
from mcp_access_guard.oauth import OAuthConfig

CLIENT_ID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
ISSUER = f"https://myteam.cloudflareaccess.com/cdn-cgi/access/sso/oidc/{CLIENT_ID}"
OAUTH_ENV = {
    "ACCESS_CLIENT_ID": CLIENT_ID,
    "ACCESS_CLIENT_SECRET": secrets.token_hex(32),
    "ACCESS_AUTHORIZATION_URL": f"{ISSUER}/authorization",
    "ACCESS_TOKEN_URL": f"{ISSUER}/token",
    "ACCESS_JWKS_URL": f"{ISSUER}/jwks",
    "COOKIE_ENCRYPTION_KEY": secrets.token_hex(32),
    "GUARD_PUBLIC_URL": "https://mcp.example.com",
}
ACCESS_ENV = {"TEAM_DOMAIN": "myteam", "POLICY_AUD": "a" * 64}


def test_access_client_id_in_the_environment_chooses_oauth_mode() -> None:
    config = GuardConfig.from_env(OAUTH_ENV)
    assert config.access is None
    assert isinstance(config.oauth, OAuthConfig)
    assert config.oauth.public_url == "https://mcp.example.com"
    assert config.oauth.upstream.issuer == ISSUER
    assert config.oauth.callback_url == "https://mcp.example.com/oauth/callback"


def test_both_modes_at_once_are_refused() -> None:
    with pytest.raises(ConfigError, match="both Access modes"):
        GuardConfig.from_env({**OAUTH_ENV, **ACCESS_ENV})


def test_oauth_mode_refuses_the_access_only_settings() -> None:
    oauth = GuardConfig.from_env(OAUTH_ENV).oauth
    with pytest.raises(ConfigError, match=r"oauth\.allow"):
        GuardConfig(oauth=oauth, cookie=True)


@pytest.mark.parametrize("missing", ["GUARD_PUBLIC_URL", "COOKIE_ENCRYPTION_KEY", "ACCESS_CLIENT_SECRET"])
def test_oauth_mode_names_what_is_missing(missing: str) -> None:
    environ = {name: value for name, value in OAUTH_ENV.items() if name != missing}
    with pytest.raises(ConfigError, match=missing):
        GuardConfig.from_env(environ)


def test_an_oauth_table_in_a_file_with_secrets_left_in_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "guard.toml"
    path.write_text(
        '[oauth]\npublic_url = "https://mcp.example.com"\naccess_token_ttl = 600\n'
        f'[oauth.upstream]\nclient_id = "{CLIENT_ID}"\nissuer = "{ISSUER}"\n'
        '[tools.generate_image]\nemails = ["alice@example.com"]\n'
    )
    environ = {
        "ACCESS_CLIENT_SECRET": OAUTH_ENV["ACCESS_CLIENT_SECRET"],
        "COOKIE_ENCRYPTION_KEY": secrets.token_hex(32),
    }
    config = GuardConfig.load(path, environ)
    assert config.oauth is not None
    assert config.oauth.access_token_ttl == 600
    assert config.tools is not None
    assert config.access is None


def test_neither_mode_is_refused_without_dev() -> None:
    with pytest.raises(ConfigError, match="TEAM_DOMAIN"):
        GuardConfig.from_env({})
