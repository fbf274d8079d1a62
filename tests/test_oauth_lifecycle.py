"""The OAuth layers' start and stop on the ASGI lifespan, and the suite's leak scan knowing OAuth mode's credentials."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from leak_scan import LogRecorder, find_leaks
from mcp_access_guard import OAuthEndpointsMiddleware
from mcp_access_guard.oauth import MemoryStore, OAuthServer
from mcp_access_guard.testing import LocalAccessSaaS
from oauth_harness import SECRET_KEY, deployment, oauth_config, register, tokens_for
from support import answer_lifespan

pytestmark = pytest.mark.anyio

__all__ = ["SECRET_KEY"]  # declared for the leak scan


async def lifespan(layer: Any) -> list[dict[str, Any]]:
    """One whole lifespan (startup, then shutdown if startup completed), as a server drives it."""
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "lifespan.startup.failed":
            incoming[:] = [{"type": "lifespan.shutdown"}]

    await layer({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    return sent


async def app(scope: Any, receive: Any, send: Any) -> None:
    await answer_lifespan(receive, send)


async def test_start_up_reads_discovery_and_shutdown_closes(local_access_saas: LocalAccessSaaS) -> None:
    server = OAuthServer(oauth_config(local_access_saas, "http://127.0.0.1:8000"), store=MemoryStore())
    sent = await lifespan(OAuthEndpointsMiddleware(app, server))
    assert [message["type"] for message in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert local_access_saas.hits["discovery"] == 1


async def test_a_wrong_issuer_fails_the_start_up(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.discovery_issuer = "https://other.cloudflareaccess.com/cdn-cgi/access/sso/oidc/x"
    server = OAuthServer(oauth_config(local_access_saas, "http://127.0.0.1:8000"), store=MemoryStore())
    sent = await lifespan(OAuthEndpointsMiddleware(app, server))
    assert sent[0]["type"] == "lifespan.startup.failed"
    assert "issuer" in sent[0]["message"]


async def test_access_out_of_reach_at_start_up_is_tried_again_later(
    local_access_saas: LocalAccessSaaS, caplog: pytest.LogCaptureFixture
) -> None:
    local_access_saas.go_down()
    server = OAuthServer(oauth_config(local_access_saas, "http://127.0.0.1:8000"), store=MemoryStore())
    caplog.set_level(logging.WARNING, "mcp_access_guard")
    sent = await lifespan(OAuthEndpointsMiddleware(app, server))
    assert [message["type"] for message in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert any("first login will try again" in record.getMessage() for record in caplog.records)


async def test_the_leak_scan_finds_a_logged_credential(local_access_saas: LocalAccessSaaS) -> None:
    local_access_saas.login_as("alice@example.com")
    async with deployment(local_access_saas) as site:
        client = await register(site.url, method="client_secret_post")
        tokens = await tokens_for(site.url, client)
    recorder = LogRecorder()
    logger = logging.getLogger("oauth-leak-scan-self-test")
    logger.addHandler(recorder)
    logger.propagate = False
    try:
        logger.warning("clean line")
        assert find_leaks(recorder.texts, [], []) == []
        logger.warning("oops %s", tokens["access_token"])
        logger.warning("refused", extra={"detail": tokens["refresh_token"]})
        logger.warning("registered with %s", client.secret)
    finally:
        logger.removeHandler(recorder)
    leaks = find_leaks(recorder.texts, [], [])
    assert leaks == ["3 OAuth credential(s) (mag_..._) appear in the log"]
    assert all(tokens["access_token"] not in leak for leak in leaks)
