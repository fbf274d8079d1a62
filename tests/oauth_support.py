"""Helpers for the OAuth-mode tests: a login through `LocalAccessSaaS` over real HTTP, with the browser's part (follow
the authorization URL, stop at the redirect back to us) played by httpx."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import httpx

from mcp_access_guard.oauth import AccessOIDC, AuthorizationRequest, UpstreamTokens

# Our callback: never contacted, the test reads the redirect to it.
CALLBACK = "http://127.0.0.1:9/oauth/callback"


@dataclass(frozen=True)
class Callback:
    request: AuthorizationRequest
    params: dict[str, str]


async def visit_authorization(oidc: AccessOIDC) -> Callback:
    """Start a login and follow it as a browser would, up to the redirect back to our callback."""
    request = await oidc.authorization_request()
    async with httpx.AsyncClient() as browser:
        response = await browser.get(request.url)
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(CALLBACK + "?"), location
    return Callback(request, dict(parse_qsl(urlsplit(location).query)))


async def log_in(oidc: AccessOIDC) -> UpstreamTokens:
    """A whole login: authorization, callback, code exchange, id_token verification."""
    callback = await visit_authorization(oidc)
    code = await oidc.authorization_code(callback.params, state=callback.request.state)
    return await oidc.exchange(code, code_verifier=callback.request.code_verifier, nonce=callback.request.nonce)
