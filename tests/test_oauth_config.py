"""OAuth mode's settings: what is accepted, and each refusal naming the setting as the operator wrote it."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from mcp_access_guard import ConfigError, Rule
from mcp_access_guard.oauth import DEFAULT_STORE_URL, AccessSaaSConfig, OAuthConfig, open_store

CLIENT_ID = "4f1d7c2a9b3e4d5f8a6b7c8d9e0f1a2b"
CLIENT_SECRET = "c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2"
SECRET_KEY = "9f8e7d6c5b4a39281706f5e4d3c2b1a0ffeeddccbbaa99887766554433221100"
REDIS_SECRET = "hunter2-redis-password"
ISSUER = f"https://team.cloudflareaccess.com/cdn-cgi/access/sso/oidc/{CLIENT_ID}"


def upstream_env(**changes: str | None) -> dict[str, str]:
    env = {
        "ACCESS_CLIENT_ID": CLIENT_ID,
        "ACCESS_CLIENT_SECRET": CLIENT_SECRET,
        "ACCESS_AUTHORIZATION_URL": f"{ISSUER}/authorization",
        "ACCESS_TOKEN_URL": f"{ISSUER}/token",
        "ACCESS_JWKS_URL": f"{ISSUER}/jwks",
    }
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def oauth_env(**changes: str | None) -> dict[str, str]:
    base = {"GUARD_PUBLIC_URL": "https://mcp.example.com", "COOKIE_ENCRYPTION_KEY": SECRET_KEY}
    base.update(upstream_env())
    for name, value in changes.items():
        if value is None:
            base.pop(name, None)
        else:
            base[name] = value
    return base


def refusal(build: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as refused:
        build(*args, **kwargs)
    message = str(refused.value)
    assert CLIENT_SECRET not in message
    assert SECRET_KEY not in message
    assert REDIS_SECRET not in message
    return message


def upstream(**changes: Any) -> AccessSaaSConfig:
    arguments: dict[str, Any] = {
        "authorization_url": f"{ISSUER}/authorization",
        "token_url": f"{ISSUER}/token",
        "jwks_url": f"{ISSUER}/jwks",
    }
    arguments.update(changes)
    return AccessSaaSConfig(
        arguments.pop("client_id", CLIENT_ID), arguments.pop("client_secret", CLIENT_SECRET), **arguments
    )


# -- AccessSaaSConfig: accepted ----------------------------------------------------------------------------------


def test_from_env_reads_cloudflares_names_and_derives_the_issuer() -> None:
    config = AccessSaaSConfig.from_env(upstream_env())
    assert config.client_id == CLIENT_ID
    assert config.client_secret == CLIENT_SECRET
    assert config.issuer == ISSUER
    assert config.authorization_url == f"{ISSUER}/authorization"
    assert config.token_url == f"{ISSUER}/token"
    assert config.jwks_url == f"{ISSUER}/jwks"
    assert config.discovery_url == f"{ISSUER}/.well-known/openid-configuration"
    assert config.scopes == ("openid", "email", "profile")
    assert config.leeway == 60


def test_the_issuer_alone_is_enough_the_endpoints_come_from_discovery() -> None:
    env = upstream_env(ACCESS_AUTHORIZATION_URL=None, ACCESS_TOKEN_URL=None, ACCESS_JWKS_URL=None, ACCESS_ISSUER=ISSUER)
    config = AccessSaaSConfig.from_env(env)
    assert config.issuer == ISSUER
    assert (config.authorization_url, config.token_url, config.jwks_url) == (None, None, None)


def test_an_empty_variable_counts_as_unset() -> None:
    assert AccessSaaSConfig.from_env(upstream_env(ACCESS_TOKEN_URL="", ACCESS_ISSUER="  ")).token_url is None


@pytest.mark.parametrize("host", ["127.0.0.1:8080", "localhost:9", "[::1]:4443"])
def test_plain_http_on_loopback(host: str) -> None:
    issuer = f"http://{host}/cdn-cgi/access/sso/oidc/{CLIENT_ID}"
    config = AccessSaaSConfig(CLIENT_ID, CLIENT_SECRET, authorization_url=f"{issuer}/authorization")
    assert config.issuer == issuer


def test_host_is_lower_cased_and_the_default_port_dropped() -> None:
    config = upstream(
        authorization_url=f"https://TEAM.cloudflareaccess.com:443/cdn-cgi/access/sso/oidc/{CLIENT_ID}/authorization"
    )
    assert config.issuer == ISSUER


def test_scopes_as_a_space_separated_string() -> None:
    assert upstream(scopes="openid email groups").scopes == ("openid", "email", "groups")


def test_scopes_without_email_are_allowed_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mcp_access_guard"):
        assert upstream(scopes=["openid"]).scopes == ("openid",)
    assert "leaves out email" in caplog.text


def test_the_client_secret_is_not_in_the_repr() -> None:
    config = AccessSaaSConfig.from_env(upstream_env())
    assert CLIENT_SECRET not in repr(config)
    assert CLIENT_ID in repr(config)


# -- AccessSaaSConfig: refused, each naming the setting ----------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "named", "says"),
    [
        ({"ACCESS_CLIENT_ID": None}, "ACCESS_CLIENT_ID", "is not set"),
        ({"ACCESS_CLIENT_SECRET": None}, "ACCESS_CLIENT_SECRET", "is not set"),
        ({"ACCESS_AUTHORIZATION_URL": None}, "ACCESS_AUTHORIZATION_URL", "is not set"),
        ({"ACCESS_CLIENT_ID": "a b"}, "ACCESS_CLIENT_ID", "spaces"),
        ({"ACCESS_CLIENT_ID": "x/../y"}, "ACCESS_CLIENT_ID", "client id"),
        (
            {"ACCESS_AUTHORIZATION_URL": f"http://team.example.com/cdn-cgi/access/sso/oidc/{CLIENT_ID}/authorization"},
            "ACCESS_AUTHORIZATION_URL",
            "plain http:// is only allowed for a loopback host",
        ),
        ({"ACCESS_JWKS_URL": "http://10.0.0.8/jwks"}, "ACCESS_JWKS_URL", "loopback"),
        ({"ACCESS_TOKEN_URL": "ftp://team.example.com/token"}, "ACCESS_TOKEN_URL", "https://"),
        ({"ACCESS_TOKEN_URL": "https://"}, "ACCESS_TOKEN_URL", "https://"),
        ({"ACCESS_TOKEN_URL": "https://team.example.com:99999/token"}, "ACCESS_TOKEN_URL", "not a valid URL"),
        ({"ACCESS_TOKEN_URL": "https://bad_host.example.com/token"}, "ACCESS_TOKEN_URL", "not a host name"),
        (
            {"ACCESS_TOKEN_URL": f"https://other.cloudflareaccess.com/cdn-cgi/access/sso/oidc/{CLIENT_ID}/token"},
            "ACCESS_TOKEN_URL",
            "is not an endpoint of issuer",
        ),
        (
            {"ACCESS_JWKS_URL": "https://team.cloudflareaccess.com/cdn-cgi/access/certs"},
            "ACCESS_JWKS_URL",
            "is not an endpoint of issuer",
        ),
        ({"ACCESS_TOKEN_URL": f"{ISSUER}/token?x=1"}, "ACCESS_TOKEN_URL", "no query"),
        ({"ACCESS_TOKEN_URL": f"{ISSUER}/token#top"}, "ACCESS_TOKEN_URL", "fragment"),
        ({"ACCESS_TOKEN_URL": f"{ISSUER}/token?"}, "ACCESS_TOKEN_URL", "no query"),
        ({"ACCESS_TOKEN_URL": f"{ISSUER}/token/"}, "ACCESS_TOKEN_URL", "trailing slash"),
        ({"ACCESS_AUTHORIZATION_URL": ISSUER}, "ACCESS_AUTHORIZATION_URL", "looks like the issuer"),
        ({"ACCESS_ISSUER": f"{ISSUER}/"}, "ACCESS_ISSUER", "trailing slash"),
        (
            {"ACCESS_ISSUER": "https://team.cloudflareaccess.com/cdn-cgi/access/sso/oidc/another"},
            "ACCESS_AUTHORIZATION_URL",
            "is not an endpoint of issuer",
        ),
        ({"ACCESS_CLIENT_ID": "0" * 32}, "ACCESS_CLIENT_ID", "is not the client id in issuer"),
    ],
)
def test_upstream_refusals_name_the_variable(changes: dict[str, str | None], named: str, says: str) -> None:
    message = refusal(AccessSaaSConfig.from_env, upstream_env(**changes))
    assert named in message
    assert says in message


def test_credentials_in_a_url_are_refused_without_being_repeated() -> None:
    message = refusal(
        AccessSaaSConfig.from_env,
        upstream_env(ACCESS_TOKEN_URL=f"https://admin:{REDIS_SECRET}@team.cloudflareaccess.com/token"),
    )
    assert "ACCESS_TOKEN_URL holds credentials" in message


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"client_secret": "  "}, "client_secret"),
        ({"client_secret": 5}, "client_secret"),
        ({"client_id": ""}, "client_id"),
        ({"authorization_url": ""}, "authorization_url"),
        ({"token_url": 12}, "token_url"),
        ({"scopes": ["email", "profile"]}, "scopes"),
        ({"scopes": ["openid", 5]}, "scopes"),
        ({"scopes": ["openid", "a\\b"]}, "scopes"),
        ({"scopes": 5}, "scopes"),
        ({"leeway": float("nan")}, "leeway"),
        ({"leeway": float("inf")}, "leeway"),
        ({"leeway": -1}, "leeway"),
        ({"leeway": True}, "leeway"),
        ({"leeway": "60"}, "leeway"),
        ({"timeout": 0}, "timeout"),
        ({"max_response_bytes": 1.5}, "max_response_bytes"),
    ],
)
def test_upstream_keyword_refusals_name_the_keyword(changes: dict[str, Any], named: str) -> None:
    assert refusal(upstream, **changes).startswith(named)


# -- OAuthConfig -------------------------------------------------------------------------------------------------


def test_from_env_with_defaults() -> None:
    config = OAuthConfig.from_env(oauth_env())
    assert config.public_url == config.issuer == "https://mcp.example.com"
    assert config.resource == "https://mcp.example.com/mcp"
    assert config.callback_url == "https://mcp.example.com/oauth/callback"
    assert config.upstream == AccessSaaSConfig.from_env(upstream_env())
    assert config.secret_key == SECRET_KEY
    assert config.store == DEFAULT_STORE_URL
    assert (config.access_token_ttl, config.refresh_token_ttl) == (3600, 30 * 86400)
    assert (config.consent, config.dynamic_registration, config.allow) == ("always", True, None)


@pytest.mark.parametrize(
    ("public_url", "expected"),
    [
        ("https://mcp.example.com/", "https://mcp.example.com"),
        ("https://MCP.Example.com:443", "https://mcp.example.com"),
        ("https://mcp.example.com:8443", "https://mcp.example.com:8443"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://localhost:8000/", "http://localhost:8000"),
    ],
)
def test_public_url_is_an_exact_origin(public_url: str, expected: str) -> None:
    assert OAuthConfig.from_env(oauth_env(GUARD_PUBLIC_URL=public_url)).public_url == expected


@pytest.mark.parametrize(
    ("public_url", "says"),
    [
        ("https://mcp.example.com/mcp", "no path"),
        ("https://mcp.example.com/api/", "no path"),
        ("https://mcp.example.com?x=1", "no query"),
        ("https://mcp.example.com/?", "no query"),
        ("https://mcp.example.com#frag", "fragment"),
        ("https://mcp.example.com/;x", "no path"),
        ("https://mcp.example.com.", "not a host name"),
        ("http://mcp.example.com", "loopback"),
        ("mcp.example.com", "https://"),
        ("https://mcp.example .com", "spaces"),
    ],
)
def test_public_url_refusals(public_url: str, says: str) -> None:
    message = refusal(OAuthConfig.from_env, oauth_env(GUARD_PUBLIC_URL=public_url))
    assert message.startswith("GUARD_PUBLIC_URL")
    assert says in message


def test_public_url_with_credentials_is_refused_without_them() -> None:
    message = refusal(OAuthConfig.from_env, oauth_env(GUARD_PUBLIC_URL=f"https://me:{REDIS_SECRET}@mcp.example.com"))
    assert "GUARD_PUBLIC_URL holds credentials" in message


@pytest.mark.parametrize("missing", ["GUARD_PUBLIC_URL", "COOKIE_ENCRYPTION_KEY", "ACCESS_CLIENT_SECRET"])
def test_required_variables(missing: str) -> None:
    assert refusal(OAuthConfig.from_env, oauth_env(**{missing: None})) == f"{missing} is not set"


def test_cookie_encryption_key_of_the_minimum_length_is_accepted() -> None:
    key = SECRET_KEY[:32]
    assert OAuthConfig.from_env(oauth_env(COOKIE_ENCRYPTION_KEY=key)).secret_key == key


@pytest.mark.parametrize(
    ("key", "says"),
    [
        (SECRET_KEY[:31], "too short (31 characters, 32 at least)"),
        ("COOKIE_ENCRYPTION_KEY", "too short"),
        ("a" * 64, "does not look random"),
        ("abababababababababababababababababab", "does not look random"),
    ],
)
def test_cookie_encryption_key_refusals(key: str, says: str) -> None:
    message = refusal(OAuthConfig.from_env, oauth_env(COOKIE_ENCRYPTION_KEY=key))
    assert message.startswith("COOKIE_ENCRYPTION_KEY")
    assert says in message
    assert "openssl rand -hex 32" in message


@pytest.mark.parametrize(
    "store",
    [
        "memory:",
        "sqlite:///grants.db",
        "sqlite:////var/lib/guard/grants.db",
        "redis://127.0.0.1:6379/0",
        f"rediss://guard:{REDIS_SECRET}@redis.internal:6380/2",
    ],
)
def test_store_shapes(store: str) -> None:
    config = OAuthConfig.from_env(oauth_env(GUARD_OAUTH_STORE=store))
    assert config.store == store
    assert REDIS_SECRET not in repr(config)


def test_the_store_setting_opens_the_store_it_names() -> None:
    assert (
        type(open_store(OAuthConfig.from_env(oauth_env(GUARD_OAUTH_STORE="memory:")).store)).__name__ == "MemoryStore"
    )


@pytest.mark.parametrize(
    "store",
    [
        "memory",
        "memory://",
        "sqlite:///",
        "sqlite://grants.db",
        "sqlite:///grants.db?mode=ro",
        "sqlite:///dir/",
        "postgres://db/guard",
        "redis://",
        f"redis://user:{REDIS_SECRET}@redis.internal/zero",
        f"redis://user:{REDIS_SECRET}@redis.internal:port/0",
        "file:///tmp/x",
    ],
)
def test_store_refusals_name_the_variable_and_hide_passwords(store: str) -> None:
    message = refusal(OAuthConfig.from_env, oauth_env(GUARD_OAUTH_STORE=store))
    assert message.startswith("GUARD_OAUTH_STORE")
    assert "memory:, sqlite:///PATH, redis://" in message


def test_plain_redis_to_another_host_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mcp_access_guard"):
        OAuthConfig.from_env(oauth_env(GUARD_OAUTH_STORE="redis://redis.internal:6379/0"))
        OAuthConfig.from_env(oauth_env(GUARD_OAUTH_STORE="redis://127.0.0.1:6379/0"))
    assert caplog.text.count("unencrypted") == 1
    assert "GUARD_OAUTH_STORE uses redis:// to redis.internal" in caplog.text


def test_secrets_are_not_in_the_repr() -> None:
    config = OAuthConfig.from_env(oauth_env())
    text = repr(config)
    assert SECRET_KEY not in text
    assert CLIENT_SECRET not in text
    assert "https://mcp.example.com" in text


def test_keywords() -> None:
    config = OAuthConfig(
        "https://mcp.example.com",
        upstream(),
        secret_key=SECRET_KEY,
        store="memory:",
        resource_path="/api/mcp",
        access_token_ttl=600,
        refresh_token_ttl=86400,
        consent="once",
        dynamic_registration=False,
        allow=Rule(email_domains=["example.com"]),
    )
    assert config.resource == "https://mcp.example.com/api/mcp"
    assert (config.access_token_ttl, config.refresh_token_ttl, config.consent) == (600, 86400, "once")
    assert config.allow == Rule(email_domains=["example.com"])


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"upstream": "not a config"}, "upstream"),
        ({"secret_key": None}, "secret_key"),
        ({"resource_path": "mcp"}, "resource_path"),
        ({"resource_path": "/mcp/"}, "resource_path"),
        ({"resource_path": "/mcp?x"}, "resource_path"),
        ({"resource_path": "/../mcp"}, "resource_path"),
        ({"access_token_ttl": 0}, "access_token_ttl"),
        ({"access_token_ttl": -5}, "access_token_ttl"),
        ({"access_token_ttl": 3600.0}, "access_token_ttl"),
        ({"access_token_ttl": True}, "access_token_ttl"),
        ({"access_token_ttl": 86_401}, "access_token_ttl"),
        ({"refresh_token_ttl": "30d"}, "refresh_token_ttl"),
        ({"refresh_token_ttl": 400 * 86400}, "refresh_token_ttl"),
        ({"consent": "never"}, "consent"),
        ({"dynamic_registration": 1}, "dynamic_registration"),
        ({"allow": ["alice@example.com"]}, "allow"),
        ({"store": ""}, "store"),
    ],
)
def test_oauth_keyword_refusals_name_the_keyword(changes: dict[str, Any], named: str) -> None:
    arguments: dict[str, Any] = {"upstream": upstream(), "secret_key": SECRET_KEY}
    arguments.update(changes)
    assert refusal(OAuthConfig, "https://mcp.example.com", **arguments).startswith(named)


# -- the [oauth] TOML table --------------------------------------------------------------------------------------


def table(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "public_url": "https://mcp.example.com",
        "secret_key": SECRET_KEY,
        "store": "memory:",
        "access_token_ttl": 900,
        "allow": {"emails": ["alice@example.com"], "groups": ["eng"]},
        "upstream": {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "authorization_url": f"{ISSUER}/authorization",
            "scopes": ["openid", "email"],
            "leeway": 30,
        },
    }
    for name, value in changes.items():
        target = document["upstream"] if name.startswith("upstream.") else document
        key = name.removeprefix("upstream.")
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return document


def test_from_mapping() -> None:
    config = OAuthConfig.from_mapping(table(), "guard.toml")
    assert config.access_token_ttl == 900
    assert config.allow == Rule(emails=["alice@example.com"], groups=["eng"])
    assert config.upstream.scopes == ("openid", "email")
    assert config.upstream.leeway == 30
    assert config.upstream.issuer == ISSUER


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"public_url": ""}, "[oauth] public_url"),
        ({"public_url": "   "}, "[oauth] public_url"),
        ({"public_url": 5}, "[oauth] public_url"),
        ({"secret_key": ["x"]}, "[oauth] secret_key"),
        ({"store": "postgres://x"}, "[oauth] store"),
        ({"access_token_ttl": "3600"}, "[oauth] access_token_ttl"),
        ({"access_token_ttl": float("nan")}, "[oauth] access_token_ttl"),
        ({"refresh_token_ttl": -1}, "[oauth] refresh_token_ttl"),
        ({"consent": 1}, "[oauth] consent"),
        ({"dynamic_registration": "true"}, "[oauth] dynamic_registration"),
        ({"allow": "alice@example.com"}, "[oauth] allow"),
        ({"allow": {"emails": "alice@example.com"}}, "[oauth] allow.emails"),
        ({"allow": {"emails": [5]}}, "[oauth] allow.emails"),
        ({"allow": {"users": ["alice"]}}, "[oauth] allow has unknown key"),
        ({"upstream": "x"}, "[oauth.upstream] must be a table"),
        ({"upstream.client_id": " "}, "[oauth.upstream] client_id"),
        ({"upstream.client_secret": 5}, "[oauth.upstream] client_secret"),
        ({"upstream.authorization_url": ""}, "[oauth.upstream] authorization_url"),
        ({"upstream.token_url": "https://elsewhere.example.com/token"}, "[oauth.upstream] token_url"),
        ({"upstream.leeway": float("inf")}, "[oauth.upstream] leeway"),
        ({"upstream.leeway": -0.5}, "[oauth.upstream] leeway"),
        ({"upstream.scopes": "email"}, "[oauth.upstream] scopes"),
        ({"upstream.client_id": None}, "[oauth.upstream] client_id is not set"),
        ({"public_url": None}, "[oauth] public_url is not set"),
    ],
)
def test_table_refusals_name_the_key(changes: dict[str, Any], named: str) -> None:
    message = refusal(OAuthConfig.from_mapping, table(**changes), "guard.toml")
    assert message.startswith("guard.toml: ")
    assert named in message


@pytest.mark.parametrize(("key", "where"), [("colour", "[oauth]"), ("upstream.colour", "[oauth.upstream]")])
def test_unknown_table_keys_are_refused(key: str, where: str) -> None:
    message = refusal(OAuthConfig.from_mapping, table(**{key: "blue"}), "guard.toml")
    assert f"guard.toml: {where} has unknown key(s) ['colour']" in message


def test_the_environment_fills_in_what_the_table_leaves_out_and_is_named_for_it() -> None:
    document = table(secret_key=None, **{"upstream.client_secret": None})
    env = {"COOKIE_ENCRYPTION_KEY": SECRET_KEY, "ACCESS_CLIENT_SECRET": CLIENT_SECRET}
    config = OAuthConfig.from_mapping(document, "guard.toml", environ=env)
    assert (config.secret_key, config.upstream.client_secret) == (SECRET_KEY, CLIENT_SECRET)
    # The file wins over the environment.
    config = OAuthConfig.from_mapping(table(), "guard.toml", environ={**env, "GUARD_PUBLIC_URL": "https://x.example"})
    assert config.public_url == "https://mcp.example.com"
    message = refusal(OAuthConfig.from_mapping, document, "guard.toml", environ={**env, "COOKIE_ENCRYPTION_KEY": "x"})
    assert message.startswith("COOKIE_ENCRYPTION_KEY is too short")
    message = refusal(OAuthConfig.from_mapping, document, "guard.toml", environ={"COOKIE_ENCRYPTION_KEY": SECRET_KEY})
    assert message == "guard.toml: [oauth.upstream] client_secret (or ACCESS_CLIENT_SECRET) is not set"
