"""The OIDC client of the Access for SaaS application: discovery, the authorization request, the code exchange, the
refresh, and the id_token behind each.

Every request goes out with a timeout over the whole exchange, no redirects followed and a bounded answer; the
secrets we send and the tokens we get never reach a log line or an error message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any, Literal
from urllib.parse import quote_plus, urlencode, urlsplit

import anyio
import httpx

from ..config import is_loopback
from ..identity import AccessIdentity
from ..jwks import JWKSCache
from .config import AccessSaaSConfig
from .errors import (
    UpstreamDenied,
    UpstreamError,
    UpstreamInvalid,
    UpstreamMisconfigured,
    UpstreamRefused,
    UpstreamUnavailable,
)
from .id_token import IdTokenVerifier

logger = logging.getLogger("mcp_access_guard")

_LAYER = "oauth_upstream"
_USER_AGENT = f"mcp-access-guard/{version('mcp-access-guard')}"
# What Access may put in an error code or description that we repeat in a log: printable ASCII, and not much.
_MAX_ERROR_TEXT = 120
_MAX_CODE_LENGTH = 4096

ClientAuthMethod = Literal["client_secret_post", "client_secret_basic"]


@dataclass(frozen=True, slots=True)
class Discovery:
    """What the application's discovery document says, checked, with configured endpoints taking precedence."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    token_endpoint_auth_method: ClientAuthMethod
    # RFC 9207: when true, every authorization response must carry iss.
    iss_parameter_supported: bool


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """Where to send the browser, and what to keep (server side) until the callback: `state` to find this login
    again, `nonce` for its id_token, `code_verifier` for the code exchange."""

    url: str = field(repr=False)
    state: str = field(repr=False)
    nonce: str = field(repr=False)
    code_verifier: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class UpstreamTokens:
    """A token endpoint's answer. `identity` is None only after a refresh that brought no new id_token;
    `refresh_token` is the one to keep (the new one when Access rotated it, else the one used), or None."""

    identity: AccessIdentity | None
    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_in: int | None
    scope: str | None


class AccessOIDC:
    """The OIDC client of one Access for SaaS application. `redirect_uri` is our callback URL, as registered in the
    application. Call `start()` once at start-up: it reads the discovery document, and refuses (raising
    `UpstreamMisconfigured`) when its issuer is not the configured one."""

    def __init__(
        self, config: AccessSaaSConfig, *, redirect_uri: str, http_client: httpx.AsyncClient | None = None
    ) -> None:
        target = urlsplit(redirect_uri)
        if target.scheme not in ("https", "http") or not target.hostname or target.fragment:
            raise ValueError(f"redirect_uri {redirect_uri!r} is not an absolute http(s) URL")
        self.config = config
        self.redirect_uri = redirect_uri
        self._client = http_client
        self._owns_client = http_client is None
        self._discovery: Discovery | None = None
        self._id_tokens: IdTokenVerifier | None = None
        self._lock = anyio.Lock()

    # -- discovery ---------------------------------------------------------------------------------------------

    async def start(self) -> Discovery:
        """Read and check the discovery document (once; later calls return it). Raises `UpstreamMisconfigured`
        when it contradicts the configuration, `UpstreamUnavailable` when it cannot be read now."""
        if self._discovery is not None:
            return self._discovery
        async with self._lock:
            if self._discovery is None:
                discovery = self._checked(await self._discovery_document())
                self._id_tokens = IdTokenVerifier(
                    issuer=discovery.issuer,
                    client_id=self.config.client_id,
                    keys=JWKSCache(
                        discovery.jwks_uri,
                        timeout=self.config.timeout,
                        max_bytes=self.config.max_response_bytes,
                        http_client=await self._http(),
                    ),
                    leeway=self.config.leeway,
                )
                self._discovery = discovery
                logger.info(
                    "Access for SaaS application %s: discovery read, client authentication %s",
                    discovery.issuer,
                    discovery.token_endpoint_auth_method,
                    extra={"layer": _LAYER},
                )
        return self._discovery

    @property
    def keys(self) -> JWKSCache:
        """The application's signing keys (its own jwks URL). Available once `start()` has succeeded."""
        return self._verifier().keys

    async def _discovery_document(self) -> Any:
        url = self.config.discovery_url
        try:
            status, body = await self._exchange("GET", url)
        except UpstreamUnavailable as failure:
            raise self._failed(UpstreamUnavailable(f"discovery {url}: {failure.detail}"), "discovery_failed") from None
        except UpstreamInvalid as failure:
            raise UpstreamMisconfigured(f"the discovery document at {url} cannot be read: {failure.detail}") from None
        if status >= 500 or status == 429:
            raise self._failed(UpstreamUnavailable(f"discovery {url}: HTTP {status}"), "discovery_failed")
        if status != 200:
            raise UpstreamMisconfigured(
                f"the discovery document at {url} answered HTTP {status} (redirects are not followed): is the "
                f"issuer right? It is {self.config.issuer}, taken from ACCESS_ISSUER or from "
                f"ACCESS_AUTHORIZATION_URL without its last path segment"
            )
        document = _json_object(body)
        if document is None:
            raise UpstreamMisconfigured(f"the discovery document at {url} is not a JSON object")
        return document

    def _checked(self, document: Mapping[str, Any]) -> Discovery:
        config = self.config
        url = config.discovery_url
        issuer = document.get("issuer")
        if issuer != config.issuer:
            raise UpstreamMisconfigured(
                f"the discovery document at {url} names issuer {_printable(issuer)}, but the configured issuer is "
                f"{config.issuer} (ACCESS_ISSUER, or ACCESS_AUTHORIZATION_URL without its last path segment): "
                f"they must be equal, or the application's id_tokens cannot be trusted"
            )
        endpoints = {
            name: _discovered_url(document, name, url)
            for name in ("authorization_endpoint", "token_endpoint", "jwks_uri")
        }
        for name, configured in (
            ("authorization_endpoint", config.authorization_url),
            ("token_endpoint", config.token_url),
            ("jwks_uri", config.jwks_url),
        ):
            if configured is not None:
                if configured != endpoints[name]:
                    logger.warning(
                        "the discovery document gives %s %s; using the configured %s",
                        name,
                        endpoints[name],
                        configured,
                        extra={"layer": _LAYER},
                    )
                endpoints[name] = configured
        algorithms = document.get("id_token_signing_alg_values_supported")
        if isinstance(algorithms, list) and "RS256" not in algorithms:
            raise UpstreamMisconfigured(f"the discovery document at {url} does not offer RS256 id_tokens")
        response_types = document.get("response_types_supported")
        if isinstance(response_types, list) and "code" not in response_types:
            raise UpstreamMisconfigured(f"the discovery document at {url} does not offer the code flow")
        userinfo = document.get("userinfo_endpoint")
        return Discovery(
            issuer=config.issuer,
            authorization_endpoint=endpoints["authorization_endpoint"],
            token_endpoint=endpoints["token_endpoint"],
            jwks_uri=endpoints["jwks_uri"],
            userinfo_endpoint=_discovered_url(document, "userinfo_endpoint", url) if userinfo is not None else None,
            token_endpoint_auth_method=_client_auth_method(document.get("token_endpoint_auth_methods_supported"), url),
            iss_parameter_supported=document.get("authorization_response_iss_parameter_supported") is True,
        )

    # -- the login ---------------------------------------------------------------------------------------------

    async def authorization_request(self) -> AuthorizationRequest:
        """A fresh authorization request: 256-bit state and nonce, PKCE S256, our scopes."""
        discovery = await self.start()
        state, nonce, code_verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(code_verifier.encode("ascii")).digest()).rstrip(b"=")
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.config.client_id,
                "redirect_uri": self.redirect_uri,
                "scope": " ".join(self.config.scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge.decode("ascii"),
                "code_challenge_method": "S256",
            }
        )
        endpoint = discovery.authorization_endpoint
        url = f"{endpoint}{'&' if urlsplit(endpoint).query else '?'}{query}"
        return AuthorizationRequest(url=url, state=state, nonce=nonce, code_verifier=code_verifier)

    async def authorization_code(self, params: Mapping[str, str], *, state: str) -> str:
        """The code from the query of the callback Access redirected the browser to, once its `state` is the one
        this login sent and its `iss` (RFC 9207) is the application's. Raises `UpstreamDenied` for
        `error=access_denied`, other `UpstreamError`s for anything else."""
        discovery = await self.start()
        returned_state = params.get("state")
        if returned_state is None or not hmac.compare_digest(returned_state.encode(), state.encode()):
            raise self._failed(UpstreamInvalid("the callback's state is not the one this login sent"), "wrong_state")
        iss = params.get("iss")
        if iss is None and discovery.iss_parameter_supported:
            raise self._failed(UpstreamInvalid("the callback has no iss, which the application promises"), "no_iss")
        if iss is not None and iss != discovery.issuer:
            raise self._failed(
                UpstreamInvalid(f"the callback's iss {_printable(iss)} is not {discovery.issuer}"), "wrong_issuer"
            )
        error = params.get("error")
        if error is not None:
            detail = f"Access answered error={_printable(error)}: {_printable(params.get('error_description'))}"
            if error == "access_denied":
                raise self._failed(UpstreamDenied(detail), "access_denied", decision="deny")
            if error in ("temporarily_unavailable", "server_error"):
                raise self._failed(UpstreamUnavailable(detail), "authorization_failed")
            raise self._failed(UpstreamRefused(error[:_MAX_ERROR_TEXT], detail), "authorization_refused")
        code = params.get("code")
        if not code or len(code) > _MAX_CODE_LENGTH or not code.isascii() or not code.isprintable():
            raise self._failed(UpstreamInvalid("the callback carries no usable code"), "no_code")
        return code

    async def exchange(self, code: str, *, code_verifier: str, nonce: str) -> UpstreamTokens:
        """Trade the code for tokens and verify the id_token against the `nonce` sent with this login."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": code_verifier,
        }
        answer = await self._token_request(form, "code exchange")
        id_token = answer.get("id_token")
        if not isinstance(id_token, str):
            raise self._failed(
                UpstreamInvalid("the code exchange brought no id_token (is openid among the scopes?)"), "no_id_token"
            )
        identity = await self.verify_id_token(id_token, nonce=nonce)
        return _tokens(answer, identity, previous_refresh_token=None)

    async def refresh(self, refresh_token: str, *, subject: str) -> UpstreamTokens:
        """Refresh at Access with a refresh token it issued. A new id_token, when one comes back, must be for the
        same `subject` as the login; it need not carry a nonce (OIDC Core 12.2)."""
        answer = await self._token_request({"grant_type": "refresh_token", "refresh_token": refresh_token}, "refresh")
        id_token = answer.get("id_token")
        identity = None
        if id_token is not None:
            if not isinstance(id_token, str):
                raise self._failed(
                    UpstreamInvalid("the refresh brought an id_token that is not a string"), "no_id_token"
                )
            identity = await self.verify_id_token(id_token, nonce=None, subject=subject)
        return _tokens(answer, identity, previous_refresh_token=refresh_token)

    async def verify_id_token(self, id_token: str, *, nonce: str | None, subject: str | None = None) -> AccessIdentity:
        """Raises `IdTokenRejected` with a stable reason, or `UpstreamUnavailable` when the keys cannot be had."""
        await self.start()
        return await self._verifier().verify(id_token, nonce=nonce, subject=subject)

    async def aclose(self) -> None:
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    def _verifier(self) -> IdTokenVerifier:
        if self._id_tokens is None:
            raise RuntimeError("AccessOIDC.start() has not succeeded yet")
        return self._id_tokens

    # -- HTTP --------------------------------------------------------------------------------------------------

    async def _token_request(self, form: dict[str, str], what: str) -> dict[str, Any]:
        discovery = await self.start()
        config = self.config
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if discovery.token_endpoint_auth_method == "client_secret_basic":
            # RFC 6749 2.3.1: each part form-encoded before the base64.
            pair = f"{quote_plus(config.client_id)}:{quote_plus(config.client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            form = {**form, "client_id": config.client_id, "client_secret": config.client_secret}
        try:
            status, body = await self._exchange(
                "POST", discovery.token_endpoint, content=urlencode(form), headers=headers
            )
        except UpstreamUnavailable as failure:
            raise self._failed(UpstreamUnavailable(f"{what}: {failure.detail}"), "token_endpoint_failed") from None
        except UpstreamInvalid as failure:
            raise self._failed(UpstreamInvalid(f"{what}: {failure.detail}"), "token_endpoint_failed") from None
        if status >= 500 or status == 429:
            raise self._failed(UpstreamUnavailable(f"{what}: HTTP {status}"), "token_endpoint_failed")
        document = _json_object(body) or {}
        if status == 200:
            problem = _token_answer_problem(document)
            if problem is not None:
                raise self._failed(UpstreamInvalid(f"{what}: {problem}"), "token_endpoint_failed")
            return document
        error = document.get("error")
        if status in (400, 401) and isinstance(error, str):
            detail = f"{what}: Access answered {_printable(error)}: {_printable(document.get('error_description'))}"
            raise self._failed(UpstreamRefused(error[:_MAX_ERROR_TEXT], detail), "token_refused")
        raise self._failed(
            UpstreamInvalid(f"{what}: HTTP {status} (redirects are not followed)"), "token_endpoint_failed"
        )

    async def _exchange(
        self, method: str, url: str, *, content: str | None = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes]:
        """One request, its status and its whole body, within the timeout and the size bound."""
        client = await self._http()
        limit = self.config.max_response_bytes
        timeout = self.config.timeout
        try:
            # httpx's timeout bounds each read; this bounds the whole exchange, so a slow drip cannot hold a login.
            with anyio.fail_after(timeout):
                async with client.stream(
                    method,
                    url,
                    content=content,
                    headers={"Accept": "application/json", **(headers or {})},
                    timeout=timeout,
                ) as response:
                    body = bytearray()
                    async for chunk in response.aiter_raw():
                        body += chunk
                        if len(body) > limit:
                            raise UpstreamInvalid(f"the answer is larger than {limit} bytes")
                    return response.status_code, bytes(body)
        except TimeoutError:
            raise UpstreamUnavailable(f"no complete answer within {timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(type(exc).__name__) from None

    async def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # Building a client loads the CA bundle: done in a thread, not on the event loop. Answers are asked
            # for uncompressed, so the size bound holds on what is read.
            self._client = await anyio.to_thread.run_sync(_new_http_client)
        return self._client

    def _failed(self, failure: UpstreamError, reason: str, *, decision: str = "error") -> UpstreamError:
        logger.warning(
            "Access for SaaS: %s",
            failure.detail,
            extra={"layer": _LAYER, "decision": decision, "reason": reason},
        )
        return failure


def _new_http_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(follow_redirects=False, headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"})


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def _discovered_url(document: Mapping[str, Any], name: str, where: str) -> str:
    value = document.get(name)
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
        host = parts.hostname if parts is not None else None
    except ValueError:
        parts, host = None, None
    if parts is None or not host or parts.scheme not in ("https", "http") or parts.username or parts.fragment:
        raise UpstreamMisconfigured(f"the discovery document at {where} has no usable {name}: {_printable(value)}")
    if parts.scheme == "http" and not is_loopback(host):
        raise UpstreamMisconfigured(f"the discovery document at {where} gives a plain http:// {name}: {value}")
    return str(value)


def _client_auth_method(offered: Any, where: str) -> ClientAuthMethod:
    # client_secret_post unless the application offers basic only. (OIDC's default when the list is absent is
    # basic, but Access accepts both, as Cloudflare's own demo relies on.)
    if offered is None or (isinstance(offered, list) and "client_secret_post" in offered):
        return "client_secret_post"
    if isinstance(offered, list) and "client_secret_basic" in offered:
        return "client_secret_basic"
    raise UpstreamMisconfigured(
        f"the discovery document at {where} offers neither client_secret_post nor client_secret_basic "
        f"({_printable(offered)})"
    )


def _token_answer_problem(document: Mapping[str, Any]) -> str | None:
    access_token = document.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        return "the answer has no access_token"
    token_type = document.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        return f"token_type {_printable(token_type)}, not Bearer"
    return None


def _tokens(
    answer: Mapping[str, Any], identity: AccessIdentity | None, *, previous_refresh_token: str | None
) -> UpstreamTokens:
    refresh_token = answer.get("refresh_token")
    expires_in = answer.get("expires_in")
    scope = answer.get("scope")
    return UpstreamTokens(
        identity=identity,
        access_token=answer["access_token"],
        refresh_token=refresh_token if isinstance(refresh_token, str) and refresh_token else previous_refresh_token,
        expires_in=expires_in if type(expires_in) is int and expires_in >= 0 else None,
        scope=scope if isinstance(scope, str) else None,
    )


def _printable(value: Any) -> str:
    """A value from the network, for a log line: printable, quoted, short."""
    text = repr(value)
    return text if len(text) <= _MAX_ERROR_TEXT else text[:_MAX_ERROR_TEXT] + "..."
