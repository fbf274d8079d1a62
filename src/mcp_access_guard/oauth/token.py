"""The back channel: /token (authorization_code and refresh_token grants) and /revoke (RFC 7009).

Every answer is `Cache-Control: no-store`; errors follow RFC 6749 5.2 with fixed descriptions; a failed client
authentication is 401 `invalid_client`, with a `WWW-Authenticate: Basic` challenge when the client used the header.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response

from ..audit import log_decision
from ..limits import FailedCredentialLimit
from .authorize import canonical_resource
from .clients import ClientAuthFailed, Clients
from .grants import Grants, TokenRefused
from .records import ClientRecord
from .web import BadRequest, form_params, json_response, oauth_error

_LAYER = "oauth_token"
# RFC 7636 4.1: 43 to 128 characters of the unreserved set.
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
MAX_CREDENTIAL_LENGTH = 512


# Client authentication that compared what the client sent and found it wrong: a guess, which `limits` counts.
_GUESSES = frozenset({"unknown_client", "wrong_client_secret"})


class TokenEndpoint:
    """With `limits`, a failed client authentication counts against the caller's address; an address past the limit
    gets 429 before its form is read."""

    def __init__(self, clients: Clients, grants: Grants, *, limits: FailedCredentialLimit | None = None) -> None:
        self.clients = clients
        self.grants = grants
        self.config = grants.config
        self.limits = limits

    async def token(self, request: Request) -> Response:
        authenticated = await self._authenticated(request)
        if isinstance(authenticated, Response):
            return authenticated
        form, client = authenticated
        grant_type = form.get("grant_type")
        if grant_type not in ("authorization_code", "refresh_token"):
            return self._refused(request, "unsupported_grant_type", "grant_type", "unsupported grant_type")
        if grant_type not in client.grant_types:
            return self._refused(request, "unauthorized_client", "grant_type_not_registered", "grant not registered")
        resource = form.get("resource")
        if resource is not None:
            resource = canonical_resource(resource)
            if resource is None:
                return self._refused(request, "invalid_target", "malformed_resource", "the resource is not a URL")
        try:
            if grant_type == "authorization_code":
                code, verifier = form.get("code", ""), form.get("code_verifier", "")
                if not code or len(code) > MAX_CREDENTIAL_LENGTH:
                    return self._refused(request, "invalid_request", "no_code", "code is required")
                if not _VERIFIER.fullmatch(verifier):
                    return self._refused(request, "invalid_request", "no_code_verifier", "code_verifier is required")
                issued = await self.grants.redeem(
                    code,
                    client_id=client.client_id,
                    redirect_uri=form.get("redirect_uri"),
                    code_verifier=verifier,
                    resource=resource,
                )
            else:
                refresh_token = form.get("refresh_token", "")
                if not refresh_token or len(refresh_token) > MAX_CREDENTIAL_LENGTH:
                    return self._refused(request, "invalid_request", "no_refresh_token", "refresh_token is required")
                issued = await self.grants.refresh(
                    refresh_token, client_id=client.client_id, resource=resource, scope=form.get("scope")
                )
        except TokenRefused as refused:
            return self._refused(request, refused.error, refused.reason, refused.description, refused.status)
        await self.clients.mark_used(client)
        return json_response(issued.answer())

    async def revoke(self, request: Request) -> Response:
        """Either token revokes the whole grant. 200 whatever the token, once the client is authenticated."""
        authenticated = await self._authenticated(request)
        if isinstance(authenticated, Response):
            return authenticated
        form, client = authenticated
        token = form.get("token")
        if token is None:
            return self._refused(request, "invalid_request", "no_token", "token is required")
        if len(token) <= MAX_CREDENTIAL_LENGTH:
            await self.grants.revoke_token(token, client_id=client.client_id)
        return json_response({})

    async def _authenticated(self, request: Request) -> tuple[dict[str, str], ClientRecord] | Response:
        """The request's form and its authenticated client, or the answer that refuses it."""
        limits = self.limits
        if limits is not None:
            blocked = limits.refusal(request.scope, layer=_LAYER)
            if blocked is not None:
                return blocked
        try:
            form = await form_params(request)
        except BadRequest as bad:
            return self._refused(request, "invalid_request", bad.reason, "the request body is malformed", bad.status)
        try:
            client = await self.clients.authenticate(request, form)
        except ClientAuthFailed as failed:
            log_decision(request.scope, layer=_LAYER, decision="deny", reason=failed.reason)
            if limits is not None and failed.reason in _GUESSES:
                await limits.failed(request.scope)
            return failed.response()
        return form, client

    def _refused(self, request: Request, error: str, reason: str, description: str, status: int = 400) -> Response:
        log_decision(request.scope, layer=_LAYER, decision="deny", reason=reason)
        return oauth_error(error, description, status)
