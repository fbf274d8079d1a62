"""Fixtures of the `check` tests: an environment with none of the test run's own settings, and an issuer it points
at."""

from __future__ import annotations

import secrets

import pytest

from mcp_access_guard.testing import LocalAccess

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
    "GUARD_FAILED_CREDENTIAL_LIMIT",
    "GUARD_FAILURE_WINDOW",
    "GUARD_TRACKED_ADDRESSES",
    "GUARD_TRUSTED_PROXIES",
    "ALLOWED_EMAILS",
    "ALLOWED_EMAILS_TOOL",
    "CF_ACCESS_CLIENT_ID",
    "CF_ACCESS_CLIENT_SECRET",
    # OAuth mode's
    "ACCESS_CLIENT_ID",
    "ACCESS_CLIENT_SECRET",
    "ACCESS_ISSUER",
    "ACCESS_AUTHORIZATION_URL",
    "ACCESS_TOKEN_URL",
    "ACCESS_JWKS_URL",
    "COOKIE_ENCRYPTION_KEY",
    "GUARD_PUBLIC_URL",
    "GUARD_OAUTH_STORE",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def configured(local_access: LocalAccess, monkeypatch: pytest.MonkeyPatch) -> LocalAccess:
    monkeypatch.setenv("TEAM_DOMAIN", local_access.url)
    monkeypatch.setenv("POLICY_AUD", local_access.audience)
    return local_access


@pytest.fixture
def shared_secret(monkeypatch: pytest.MonkeyPatch) -> str:
    """A tunnel secret in the environment: the configuration checks read it and must never print it."""
    secret = secrets.token_hex(24)
    monkeypatch.setenv("GUARD_SECRETS", secret)
    return secret
