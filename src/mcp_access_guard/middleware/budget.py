"""Per-principal request budgets: at most N requests per window for each caller the credential layer vouched for."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from cachetools import LRUCache
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from ..audit import log_decision
from ..config import ConfigError, check_whole
from ..identity import SCOPE_STATE_KEY, AccessIdentity
from ..oauth.store import OAuthStore, StoreUnavailable, secret_key_id

LAYER = "budget"
MAX_REQUESTS_PER_WINDOW = 1_000_000
DEFAULT_MAX_PRINCIPALS = 10_000
# "Try again later": the websocket close code for a refused handshake that may succeed after a wait.
_TRY_AGAIN_LATER = 1013


class RequestBudgetMiddleware:
    """Let each principal make at most `requests` requests (HTTP requests and WebSocket connections alike) in each
    `window` seconds; past that, 429 with `Retry-After` (the seconds until its window ends) and a short JSON body.

    Sits behind a credential layer, which binds the identity (`scope["state"]["access_identity"]`). The key is the
    principal (the verified email, or the service token's client id), never the OAuth client id: a client id is
    chosen by whoever registers one, so a budget per client or per (principal, client) pair could be multiplied by
    registering clients, and one shared by many people (a client ID metadata document) would let one person use up
    everyone's. A request with no identity is not this layer's to count: the credential layer in front refuses those.

    Each principal's window is fixed, opened by its first request. By default counts are kept in this process
    only, so no request waits on a store; with several worker processes a principal may make up to `requests` in
    each of them. At most `max_principals` windows are kept, the least recently used forgotten first: a principal
    forgotten that way starts a fresh window when it comes back, so the bound can forgive a budget, never refuse one
    that was not spent.

    With `store` (an `OAuthStore`: SQLite for the workers of one host, Redis for several hosts) the budget is shared
    by every process using that store, at the cost of one store call on every request; the store does not say when a
    window opened, so `Retry-After` is then the whole window. A store that cannot answer: 503, as the bearer layer.

    The first refusal in a window is logged; the repeats are recorded without a log line.
    """

    def __init__(
        self,
        app: ASGIApp,
        requests: int,
        *,
        window: float = 60.0,
        max_principals: int = DEFAULT_MAX_PRINCIPALS,
        clock: Callable[[], float] = time.monotonic,
        store: OAuthStore | None = None,
    ) -> None:
        if not (window > 0 and math.isfinite(window)):
            raise ConfigError(f"window={window!r}: expected a positive number of seconds")
        self.app = app
        self.requests = check_whole("requests", requests, 1, MAX_REQUESTS_PER_WINDOW)
        self.window = window
        self.clock = clock
        self.store = store
        # principal -> (when its window opened, requests counted in it): a flat tuple, cheap for the collector.
        self._windows: LRUCache[str, tuple[float, int]] = LRUCache(
            maxsize=check_whole("max_principals", max_principals, 1, 10_000_000)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        identity = scope.get("state", {}).get(SCOPE_STATE_KEY)
        if not isinstance(identity, AccessIdentity):
            await self.app(scope, receive, send)
            return
        principal = identity.principal
        if self.store is None:
            count, retry_after = self._count_here(principal)
        else:
            try:
                # Hashed: the store holds no email, and every key is short.
                count = await self.store.increment(secret_key_id("budget", principal), window=self.window)
            except StoreUnavailable:
                log_decision(scope, layer=LAYER, decision="deny", reason="store_unavailable", principal=principal)
                await _refuse(scope, receive, send, 503, {"error": "unavailable"})
                return
            retry_after = math.ceil(self.window)
        if count <= self.requests:
            await self.app(scope, receive, send)
            return
        # Logged at the first refusal of each window; the rest are counted without a line each.
        first_refusal = count == self.requests + 1
        log_decision(scope, layer=LAYER, decision="deny", reason="budget_spent", principal=principal, log=first_refusal)
        answer = {"error": "too_many_requests", "retry_after": retry_after}
        await _refuse(scope, receive, send, 429, answer, {"Retry-After": str(retry_after)})

    def _count_here(self, principal: str) -> tuple[int, int]:
        """Count one request of `principal` in this process: its count in the window, and seconds until it ends."""
        now = self.clock()
        opened, count = self._windows.get(principal, (now, 0))
        if now - opened >= self.window:
            opened, count = now, 0
        count += 1
        self._windows[principal] = (opened, count)
        return count, max(1, math.ceil(opened + self.window - now))


async def _refuse(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    body: dict[str, object],
    headers: dict[str, str] | None = None,
) -> None:
    if scope["type"] == "websocket":
        await WebSocketClose(code=_TRY_AGAIN_LATER)(scope, receive, send)
        return
    await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)
