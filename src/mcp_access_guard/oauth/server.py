"""`OAuthServer`: the OAuth 2.1 authorization server MCP clients talk to, as one ASGI app that answers exactly its
fixed paths, and the bearer check the resource side uses (`authenticate_bearer`)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..audit import log_decision
from ..limits import FailedCredentialLimit, client_address
from .authorize import FrontChannel
from .clients import ClientDocuments, Clients
from .config import OAuthConfig
from .consent import ConsentKeys
from .grants import BearerGrant, Grants
from .metadata import (
    AUTHORIZATION_SERVER_PATH,
    METADATA_CACHE,
    PROTECTED_RESOURCE_PATH,
    authorization_server_metadata,
    protected_resource_metadata,
    resource_metadata_url,
)
from .store import OAuthStore, StoreUnavailable, open_store
from .token import TokenEndpoint
from .upstream import AccessOIDC
from .web import error_page, json_response, oauth_error

logger = logging.getLogger("mcp_access_guard")

_LAYER = "oauth"

OAUTH_PATHS = frozenset(
    {
        PROTECTED_RESOURCE_PATH + "/mcp",
        PROTECTED_RESOURCE_PATH,
        AUTHORIZATION_SERVER_PATH,
        "/authorize",
        "/consent",
        "/oauth/callback",
        "/token",
        "/register",
        "/revoke",
    }
)
# The pages a browser is sent to: a failure there is shown as a page, elsewhere as JSON.
_BROWSER_PATHS = frozenset({"/authorize", "/consent", "/oauth/callback"})

Handler = Callable[[Request], Awaitable[Response]]


class OAuthServer:
    """The authorization server of OAuth mode (DESIGN.md, "OAuth mode"), on `config`.

    `store` defaults to `open_store(config.store)` and `upstream` to an `AccessOIDC` for `config.upstream`; what it
    opened itself it closes in `aclose()`. `client_metadata` fetches client ID metadata documents when
    `config.client_metadata_documents` is on (default: a `ClientMetadataFetcher` that refuses private addresses).
    `limits` counts failed client authentication at /token and /revoke, and names the address /register counts.
    """

    PATHS: frozenset[str] = OAUTH_PATHS

    def __init__(
        self,
        config: OAuthConfig,
        *,
        store: OAuthStore | None = None,
        upstream: AccessOIDC | None = None,
        client_metadata: ClientDocuments | None = None,
        limits: FailedCredentialLimit | None = None,
    ) -> None:
        self.config = config
        self.store = store if store is not None else open_store(config.store)
        self._owns_store = store is None
        self.upstream = upstream or AccessOIDC(config.upstream, redirect_uri=config.callback_url)
        self._owns_upstream = upstream is None
        if config.client_metadata_documents and client_metadata is None:
            from .cimd import ClientMetadataFetcher

            client_metadata = ClientMetadataFetcher(config)
        self.client_metadata = client_metadata if config.client_metadata_documents else None
        self.resource_metadata_url = resource_metadata_url(config)
        prm_path = PROTECTED_RESOURCE_PATH + config.resource_path
        self.PATHS = (OAUTH_PATHS - {PROTECTED_RESOURCE_PATH + "/mcp"}) | {prm_path}

        self.limits = limits
        addresses = limits.address if limits is not None else client_address
        self.clients = Clients(config, self.store, documents=self.client_metadata, addresses=addresses)
        self.grants = Grants(config, self.store, self.upstream)
        self.front = FrontChannel(
            clients=self.clients,
            grants=self.grants,
            store=self.store,
            keys=ConsentKeys(config),
            upstream=self._started_upstream,
        )
        self.tokens = TokenEndpoint(self.clients, self.grants, limits=limits)
        resource_document = protected_resource_metadata(config)
        server_document = authorization_server_metadata(config)
        self._routes: dict[str, tuple[str, Handler]] = {
            prm_path: ("GET", self._document(resource_document)),
            PROTECTED_RESOURCE_PATH: ("GET", self._document(resource_document)),
            AUTHORIZATION_SERVER_PATH: ("GET", self._document(server_document)),
            "/authorize": ("GET", self.front.authorize),
            "/consent": ("POST", self.front.consent),
            "/oauth/callback": ("GET", self.front.callback),
            "/token": ("POST", self.tokens.token),
            "/revoke": ("POST", self.tokens.revoke),
        }
        if config.dynamic_registration:
            self._routes["/register"] = ("POST", self.clients.register)

    def __repr__(self) -> str:
        return f"OAuthServer(issuer={self.config.issuer!r}, store={self.store!r})"

    async def start(self) -> None:
        """Read Access's discovery document (once). Raises `UpstreamMisconfigured` when its issuer is not the
        configured one, `UpstreamUnavailable` when it cannot be read now (it is read again when first needed)."""
        await self.upstream.start()

    async def aclose(self) -> None:
        if self._owns_upstream:
            await self.upstream.aclose()
        if self._owns_store:
            await self.store.aclose()
        if self.client_metadata is not None:
            await self.client_metadata.aclose()

    async def authenticate_bearer(self, token: str) -> BearerGrant:
        """What an access token stands for. Raises `InvalidBearer` (with `.reason`), or `StoreUnavailable`."""
        return await self.grants.bearer(token)

    async def _started_upstream(self) -> AccessOIDC:
        await self.upstream.start()
        return self.upstream

    @staticmethod
    def _document(document: dict[str, object]) -> Handler:
        async def serve(request: Request) -> Response:
            return json_response(document, headers=METADATA_CACHE)

        return serve

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        route = self._routes.get(path)
        if route is None:
            response = json_response({"error": "not_found"}, 404)
        elif scope["method"] != route[0]:
            response = json_response({"error": "method_not_allowed"}, 405, headers={"Allow": route[0]})
        else:
            try:
                response = await route[1](Request(scope, receive))
            except StoreUnavailable as failure:
                logger.error("the OAuth store is unavailable: %s", failure, extra={"layer": _LAYER})
                log_decision(scope, layer=_LAYER, decision="deny", reason="store_unavailable")
                if path in _BROWSER_PATHS:
                    response = error_page("The sign-in service is briefly unavailable. Try again in a moment.", 503)
                else:
                    response = oauth_error("temporarily_unavailable", "try again shortly", 503, {"Retry-After": "5"})
        await response(scope, receive, send)
