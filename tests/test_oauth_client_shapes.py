"""The shapes of the real clients (DESIGN.md's probes), each through the whole flow over real HTTP: claude.ai,
Claude Code, Cursor, mcp-remote and the Inspector register and ask differently, and all must work."""

from __future__ import annotations

import pytest

from mcp_access_guard.middleware.oauth import OAuthBearerMiddleware
from mcp_access_guard.oauth import MemoryStore
from mcp_access_guard.oauth.consent import PendingAuthorization
from mcp_access_guard.oauth.records import GrantRecord, TransactionRecord
from mcp_access_guard.testing import LocalAccessSaaS
from oauth_harness import (
    SECRET_KEY,
    Pkce,
    authorize_url,
    browse,
    call_mcp,
    deployment,
    exchange,
    query_of,
    register,
)

pytestmark = pytest.mark.anyio

__all__ = ["SECRET_KEY"]  # declared for the leak scan


@pytest.mark.parametrize(
    ("name", "registered", "redirect_uri", "method", "params", "scope"),
    [
        (
            "claude.ai",
            ["https://claude.ai/api/mcp/auth_callback"],
            "https://claude.ai/api/mcp/auth_callback",
            "client_secret_post",
            {"resource": None},
            "openid email profile",
        ),
        (
            "Claude Code",
            ["http://localhost/callback", "http://127.0.0.1/callback"],
            "http://localhost:54545/callback",
            "none",
            {},
            "openid email profile",
        ),
        (
            "Cursor",
            ["cursor://anysphere.cursor-retrieval/oauth/user-guarded/callback"],
            "cursor://anysphere.cursor-retrieval/oauth/user-guarded/callback",
            "none",
            {},
            "openid email profile",
        ),
        (
            "mcp-remote",
            ["http://localhost:33418/oauth/callback"],
            "http://localhost:33418/oauth/callback",
            "client_secret_post",
            {"scope": "openid email profile"},
            "openid email profile",
        ),
        (
            "Inspector",
            ["http://127.0.0.1:6276/oauth/callback"],
            "http://127.0.0.1:6276/oauth/callback",
            "none",
            {"scope": None},
            None,
        ),
    ],
)
async def test_client_shapes_complete_the_flow(
    local_access_saas: LocalAccessSaaS,
    name: str,
    registered: list[str],
    redirect_uri: str,
    method: str,
    params: dict[str, str | None],
    scope: str | None,
) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site:
        client = await register(site.url, registered, method=method, client_name=name)
        pkce = Pkce()
        walked = await browse(authorize_url(site.url, client, pkce, redirect_uri=redirect_uri, **params), redirect_uri)
        answer = query_of(walked.final_url)
        assert walked.final_url.startswith(redirect_uri + "?")
        assert set(answer) == {"code", "state", "iss"}
        extra = {} if params.get("resource", "") is None else {"resource": f"{site.url}/mcp"}
        response = await exchange(site.url, client, answer["code"], pkce, redirect_uri=redirect_uri, **extra)
        assert response.status_code == 200, response.text
        tokens = response.json()
        grant = await site.server.authenticate_bearer(tokens["access_token"])
        assert (await call_mcp(site.url, tokens["access_token"])).status_code == 200
    assert tokens.get("scope") == scope
    # Bound to this server's resource whether the client named it or not.
    assert grant.resource == f"{site.url}/mcp"
    assert grant.identity.oauth_client_id == client.client_id


def test_records_keep_secrets_out_of_their_repr() -> None:
    transaction = TransactionRecord(
        client_id="c",
        redirect_uri="https://app.example.com/cb",
        redirect_uri_sent=True,
        client_state="client-state-value",
        code_challenge="x" * 43,
        scopes=(),
        resource="https://mcp.example.com/mcp",
        nonce="nonce-value",
        code_verifier="verifier-value",
        browser_hash="browser-hash-value",
    )
    pending = PendingAuthorization(
        client_id="c",
        redirect_uri="https://app.example.com/cb",
        redirect_uri_sent=True,
        client_state="client-state-value",
        code_challenge="x" * 43,
        scopes=(),
        resource="https://mcp.example.com/mcp",
        nonce="nonce-value",
        expires_at=0,
    )
    grant = GrantRecord(
        grant_id="g",
        client_id="c",
        resource="r",
        scopes=(),
        subject="s",
        email="a@example.com",
        groups=(),
        issuer="i",
        claims={},
        created_at=0,
        refresh_key="refresh-key-value",
        previous_refresh_key="previous-key-value",
        rotated_at=0,
        rotating_since=None,
        reissue="sealed-pair-value",
        upstream_refresh="sealed-upstream-value",
    )
    shown = repr(transaction) + repr(pending) + repr(grant)
    for value in ("client-state-value", "nonce-value", "verifier-value", "browser-hash-value", "key-value", "sealed"):
        assert value not in shown


@pytest.mark.parametrize("cache_ttl", [-1, 301, float("nan")])
async def test_the_bearer_cache_ttl_is_bounded(local_access_saas: LocalAccessSaaS, cache_ttl: float) -> None:
    from mcp_access_guard import ConfigError

    async with deployment(local_access_saas, store=MemoryStore()) as site:
        with pytest.raises(ConfigError, match="cache_ttl"):
            OAuthBearerMiddleware(lambda *a: None, site.server, cache_ttl=cache_ttl)  # type: ignore[arg-type]
