"""The front channel, where a person's browser goes: /authorize, the consent form's POST to /consent, and Access's
redirect back to /oauth/callback.

Until the client's redirect URI is validated, a refusal is a page (never a redirect to an unchecked address); after,
it is a redirect to the client with `error`, its `state` and our `iss` (RFC 9207). Access is contacted only after the
person approved.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from ..audit import log_decision
from ..config import ConfigError
from .clients import Clients, is_loopback_redirect, matching_redirect_uri
from .consent import CONSENT_PAGE_TTL, ConsentKeys, PendingAuthorization, browser_hash, consent_page
from .crypto import DecryptionError, ValueCipher
from .errors import UpstreamError, UpstreamUnavailable
from .grants import Grants
from .records import TransactionRecord, transaction_key
from .store import OAuthStore
from .upstream import AccessOIDC
from .web import BadRequest, error_page, form_params, query_params, redirect, with_query

logger = logging.getLogger("mcp_access_guard")

_LAYER = "oauth_authorize"
# The upstream login must come back within this many seconds of the approval.
TRANSACTION_TTL = 600
SUPPORTED_SCOPES = ("openid", "email", "profile")
MAX_STATE_LENGTH = 1024
# PKCE S256: the base64url SHA-256 of the verifier, 43 characters.
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")

_PAGES = {
    "malformed": "The sign-in request is malformed. Start again from your app.",
    "unknown_client": "This app is not registered with this server (or its registration expired). Remove the "
    "server from the app and add it again.",
    "redirect_uri": "The app asked to be sent back to an address it did not register. Nothing was sent to it.",
    "expired": "This sign-in page has expired or was already used. Start again from your app.",
    "cross_origin": "The consent form was sent from another site and was refused.",
    "csrf": "The consent form could not be verified (was it opened in another browser?). Start again from your app.",
    "wrong_browser": "This sign-in was started in another browser. Finish it in the browser where you approved it, "
    "or start again from your app.",
}

UpstreamGetter = Callable[[], Awaitable[AccessOIDC]]


def canonical_resource(value: str) -> str | None:
    """`scheme://host[:port]/path` lower-cased where URLs are case-insensitive, default port and a trailing slash
    dropped; None for anything that is not an absolute http(s) URL without query or fragment (RFC 8707 2)."""
    try:
        parts = urlsplit(value)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("https", "http") or not host or parts.query or parts.fragment or "#" in value:
        return None
    if parts.username is not None or parts.password is not None:
        return None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != {"https": 443, "http": 80}[parts.scheme]:
        netloc += f":{port}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


class FrontChannel:
    def __init__(
        self,
        *,
        clients: Clients,
        grants: Grants,
        store: OAuthStore,
        keys: ConsentKeys,
        upstream: UpstreamGetter,
    ) -> None:
        self.config = grants.config
        self.clients = clients
        self.grants = grants
        self.store = store
        self.keys = keys
        self._upstream = upstream
        self._transactions = ValueCipher(self.config.secret_key, "upstream-transaction")

    # -- /authorize ---------------------------------------------------------------------------------------------

    async def authorize(self, request: Request) -> Response:
        try:
            params = query_params(request)
        except BadRequest as bad:
            return self._page(request, bad.reason, "malformed")
        client_id = params.get("client_id")
        client = await self.clients.get(client_id) if client_id else None
        if client is None:
            return self._page(request, "unknown_client", "unknown_client")
        redirect_uri = params.get("redirect_uri")
        redirect_uri_sent = redirect_uri is not None
        if redirect_uri is None:
            # Left out, it is the one registered, when there is one and it names its port (RFC 6749 3.1.2.3).
            only = client.redirect_uris[0] if len(client.redirect_uris) == 1 else None
            if only is None or (is_loopback_redirect(only) and urlsplit(only).port is None):
                return self._page(request, "no_redirect_uri", "redirect_uri", principal=client.client_id)
            redirect_uri = only
        elif not matching_redirect_uri(client, redirect_uri, self.config):
            return self._page(request, "redirect_uri_not_registered", "redirect_uri", principal=client.client_id)

        # The redirect URI is the client's own: from here every refusal goes back to it.
        state = params.get("state")
        if state is not None and len(state) > MAX_STATE_LENGTH:
            return self._back(request, redirect_uri, None, "invalid_request", "state_too_long")
        if params.get("response_type") != "code":
            return self._back(request, redirect_uri, state, "unsupported_response_type", "response_type")
        challenge = params.get("code_challenge")
        if challenge is None or params.get("code_challenge_method") != "S256" or not _CHALLENGE.fullmatch(challenge):
            return self._back(request, redirect_uri, state, "invalid_request", "no_pkce_s256")
        resource = params.get("resource")
        if resource is not None and canonical_resource(resource) != self.config.resource:
            return self._back(request, redirect_uri, state, "invalid_target", "wrong_resource")
        requested = (params.get("scope") or "").split()
        scopes = tuple(scope for scope in SUPPORTED_SCOPES if scope in requested)
        if len(scopes) != len(set(requested)):
            logger.info("scopes this server does not support were left out of the grant", extra={"layer": _LAYER})

        pending = PendingAuthorization(
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            redirect_uri_sent=redirect_uri_sent,
            client_state=state,
            code_challenge=challenge,
            scopes=scopes,
            resource=self.config.resource,
            nonce=secrets.token_urlsafe(16),
            expires_at=time.time() + CONSENT_PAGE_TTL,
        )
        browser = self.keys.browser(request)
        new_browser = browser is None
        browser = browser or self.keys.new_browser()
        if self.config.consent == "once" and self.keys.remembered(request, client.client_id, redirect_uri):
            log_decision(request.scope, layer=_LAYER, decision="allow", reason="consent_remembered")
            response = await self._upstream_login(request, pending, browser)
        else:
            response = consent_page(
                self.config,
                client,
                pending,
                sealed=self.keys.seal(pending),
                csrf=self.keys.csrf(browser, pending.nonce),
            )
        if new_browser:
            self.keys.set_browser(response, browser)
        return response

    # -- /consent -----------------------------------------------------------------------------------------------

    async def consent(self, request: Request) -> Response:
        if not self._same_origin(request):
            return self._page(request, "cross_origin_consent", "cross_origin", status=403)
        try:
            form = await form_params(request)
        except BadRequest as bad:
            return self._page(request, bad.reason, "malformed", status=bad.status)
        pending = self.keys.open(form.get("request"))
        if pending is None:
            return self._page(request, "consent_expired", "expired")
        browser = self.keys.browser(request)
        if browser is None:
            return self._page(request, "no_browser_cookie", "csrf", status=403)
        if not self.keys.csrf_matches(form.get("csrf"), browser, pending.nonce):
            return self._page(request, "csrf_mismatch", "csrf", status=403)
        client = await self.clients.get(pending.client_id)
        if client is None:
            return self._page(request, "unknown_client", "unknown_client")
        decision = form.get("decision")
        if decision == "deny":
            # Access is never contacted: the client hears no at once.
            return self._back(request, pending.redirect_uri, pending.client_state, "access_denied", "consent_denied")
        if decision != "approve":
            return self._page(request, "no_decision", "malformed")
        response = await self._upstream_login(request, pending, browser)
        if self.config.consent == "once" and response.status_code == 302:
            self.keys.remember(request, response, client.client_id, pending.redirect_uri)
        return response

    def _same_origin(self, request: Request) -> bool:
        """The consent POST must come from our own page: Origin, when the browser sends it, is ours, and
        Sec-Fetch-Site, when sent, says same-origin."""
        origin = request.headers.getlist("origin")
        if origin and (len(origin) > 1 or origin[0] != self.config.public_url):
            return False
        fetch_site = request.headers.get("sec-fetch-site")
        return fetch_site is None or fetch_site in ("same-origin", "none")

    async def _upstream_login(self, request: Request, pending: PendingAuthorization, browser: str) -> Response:
        """Store the transaction, single-use and bound to this browser, and send the browser to Access."""
        back_to = (request, pending.redirect_uri, pending.client_state)
        try:
            upstream = await self._upstream()
            login = await upstream.authorization_request()
        except UpstreamUnavailable:
            return self._back(*back_to, "temporarily_unavailable", "upstream_unavailable")
        except (UpstreamError, ConfigError):
            logger.exception("the Access for SaaS application cannot be used", extra={"layer": _LAYER})
            return self._back(*back_to, "server_error", "upstream_misconfigured")
        transaction = TransactionRecord(
            client_id=pending.client_id,
            redirect_uri=pending.redirect_uri,
            redirect_uri_sent=pending.redirect_uri_sent,
            client_state=pending.client_state,
            code_challenge=pending.code_challenge,
            scopes=pending.scopes,
            resource=pending.resource,
            nonce=login.nonce,
            code_verifier=login.code_verifier,
            browser_hash=browser_hash(browser),
        )
        key = transaction_key(login.state)
        sealed = self._transactions.encrypt(transaction.to_bytes(), bound_to=key)
        if not await self.store.add(key, sealed, ttl=TRANSACTION_TTL):
            return self._back(*back_to, "server_error", "transaction_collision")
        log_decision(request.scope, layer=_LAYER, decision="allow", reason="consent_approved")
        return redirect(login.url)

    # -- /oauth/callback ----------------------------------------------------------------------------------------

    async def callback(self, request: Request) -> Response:
        try:
            params = query_params(request)
        except BadRequest as bad:
            return self._page(request, bad.reason, "malformed")
        state = params.get("state")
        if not state or len(state) > MAX_STATE_LENGTH:
            return self._page(request, "no_state", "expired")
        key = transaction_key(state)
        # Taken, not read: whatever happens next, this login cannot be completed twice.
        sealed = await self.store.take(key)
        transaction = self._open_transaction(sealed, key)
        if transaction is None:
            return self._page(request, "unknown_state", "expired")
        browser = self.keys.browser(request)
        if browser is None or not hmac.compare_digest(
            browser_hash(browser).encode(), transaction.browser_hash.encode()
        ):
            return self._page(request, "browser_mismatch", "wrong_browser", status=403)

        back_to = (request, transaction.redirect_uri, transaction.client_state)
        try:
            upstream = await self._upstream()
            code = await upstream.authorization_code(params, state=state)
            tokens = await upstream.exchange(code, code_verifier=transaction.code_verifier, nonce=transaction.nonce)
        except UpstreamError as failure:
            # Access refused the user: access_denied; Access unreachable: temporarily_unavailable; anything we
            # cannot trust: server_error.
            return self._back(*back_to, failure.oauth_error, f"upstream_{failure.kind}")
        except ConfigError:
            logger.exception("the Access for SaaS application cannot be used", extra={"layer": _LAYER})
            return self._back(*back_to, "server_error", "upstream_misconfigured")
        identity = tokens.identity
        if identity is None:
            return self._back(*back_to, "server_error", "upstream_no_identity")
        allow = self.config.allow
        if allow is not None and not allow.matches(identity):
            log_decision(request.scope, layer=_LAYER, decision="deny", reason="not_allowed", principal=identity.email)
            return self._back(*back_to, "access_denied", "not_allowed")
        our_code = await self.grants.create(
            client_id=transaction.client_id,
            identity=identity,
            scopes=transaction.scopes,
            resource=transaction.resource,
            redirect_uri=transaction.redirect_uri,
            redirect_uri_sent=transaction.redirect_uri_sent,
            code_challenge=transaction.code_challenge,
            upstream_refresh_token=tokens.refresh_token,
        )
        log_decision(request.scope, layer=_LAYER, decision="allow", reason="authorized", principal=identity.email)
        location = with_query(
            transaction.redirect_uri,
            {"code": our_code, "state": transaction.client_state, "iss": self.config.issuer},
        )
        return redirect(location)

    def _open_transaction(self, sealed: bytes | None, key: str) -> TransactionRecord | None:
        if sealed is None:
            return None
        try:
            return TransactionRecord.from_bytes(self._transactions.decrypt(sealed, bound_to=key))
        except (DecryptionError, ValueError, TypeError):
            return None

    # -- answers ------------------------------------------------------------------------------------------------

    def _page(
        self, request: Request, reason: str, message: str, *, status: int = 400, principal: str | None = None
    ) -> Response:
        log_decision(request.scope, layer=_LAYER, decision="deny", reason=reason, principal=principal)
        return error_page(_PAGES[message], status)

    def _back(self, request: Request, redirect_uri: str, state: str | None, error: str, reason: str) -> Response:
        """The client's redirect URI with `error`, its `state` and our `iss`."""
        log_decision(request.scope, layer=_LAYER, decision="deny", reason=reason)
        return redirect(with_query(redirect_uri, {"error": error, "state": state, "iss": self.config.issuer}))
