"""The team's signing keys: fetched over HTTPS, cached, refreshed, and served stale for a while when the
endpoint fails."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Literal

import anyio
import httpx
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from . import metrics

logger = logging.getLogger("mcp_access_guard")

_MIN_RSA_BITS = 2048
_USER_AGENT = f"mcp-access-guard/{version('mcp-access-guard')}"


class KeysUnavailable(Exception):
    """No trustworthy keys: never fetched successfully, or the last good ones are past the stale window."""


FailureKind = Literal["unreachable", "timeout", "http_status", "not_json", "no_usable_key", "too_large"]


@dataclass(frozen=True, slots=True)
class KeyFetchFailure:
    """Why the last key fetch failed: `kind` to branch on, `status` for `http_status`, `detail` in words."""

    kind: FailureKind
    detail: str
    status: int | None = None

    def __str__(self) -> str:
        return self.detail


class _FetchFailed(Exception):
    def __init__(self, kind: FailureKind, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.failure = KeyFetchFailure(kind, detail, status)


class JWKSCache:
    """Keys by `kid`, from one certs URL. One fetch in flight at a time; unknown kids refetch at most once per
    cooldown; keys older than `max_age` are refreshed; a failed refresh keeps the last good keys for `stale_window`.
    `last_failure` says why the latest fetch failed, None once one succeeds.
    """

    def __init__(
        self,
        certs_url: str,
        *,
        max_age: float = 300,
        refetch_cooldown: float = 30,
        stale_window: float = 3600,
        timeout: float = 5,
        max_bytes: int = 256 * 1024,
        http_client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.certs_url = certs_url
        self.max_age = max_age
        self.refetch_cooldown = refetch_cooldown
        self.stale_window = stale_window
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.fetch_count = 0
        self.last_failure: KeyFetchFailure | None = None
        self._clock = clock
        self._client = http_client
        self._owns_client = http_client is None
        self._keys: dict[str, RSAPublicKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._fetches_done = 0
        self._last_fetch_for_unknown_kid = False
        self._lock = anyio.Lock()
        metrics.watch_cache("signing_keys", self, lambda cache: len(cache._keys))

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    async def get(self, kid: str) -> RSAPublicKey | None:
        """The key for `kid`, or None when the endpoint does not publish it. Raises `KeysUnavailable`."""
        now = self._clock()
        fetched_at = self._fetched_at
        known = kid in self._keys
        if fetched_at is None or now - fetched_at >= self.max_age:
            # A request that has its key serves from the current keys while another refreshes them; one that has
            # none waits for the fetch in flight rather than be refused for a cooldown that fetch started.
            await self._refresh_if_allowed(now, for_unknown_kid=False, wait_for_fetch_in_flight=not known)
        elif not known:
            await self._refresh_if_allowed(now, for_unknown_kid=True, wait_for_fetch_in_flight=True)
        fetched_at = self._fetched_at
        if fetched_at is None or self._clock() - fetched_at >= self.max_age + self.stale_window:
            raise KeysUnavailable
        return self._keys.get(kid)

    async def refresh(self) -> None:
        """Fetch now, whatever the cooldown says (waiting for a fetch already in flight)."""
        async with self._lock:
            await self._fetch()

    async def aclose(self) -> None:
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _refresh_if_allowed(self, now: float, *, for_unknown_kid: bool, wait_for_fetch_in_flight: bool) -> None:
        if self._lock.locked():
            if not wait_for_fetch_in_flight:
                return
        elif self._in_cooldown(now, for_unknown_kid):
            return
        fetches_done = self._fetches_done
        async with self._lock:
            # A fetch that finished while we waited serves us too: one fetch for every waiter. The lock passes from
            # waiter to waiter, so it can look busy after a fetch is over: the cooldown is judged again in here.
            if self._fetches_done != fetches_done or self._in_cooldown(self._clock(), for_unknown_kid):
                return
            self._last_fetch_for_unknown_kid = for_unknown_kid
            await self._fetch()

    def _in_cooldown(self, now: float, for_unknown_kid: bool) -> bool:
        if self._attempted_at is None or now - self._attempted_at >= self.refetch_cooldown:
            return False
        # Only unknown kids count against each other: a key published just after a routine refresh (a rotation)
        # is fetched at once, while a flood of made-up kids still costs one fetch per cooldown.
        return self._last_fetch_for_unknown_kid or not for_unknown_kid

    async def _fetch(self) -> None:
        self._attempted_at = self._clock()
        self.fetch_count += 1
        started = time.perf_counter()
        try:
            keys = await self._download()
        except _FetchFailed as failed:
            metrics.key_fetch(failed.failure.kind, started)
            self.last_failure = failed.failure
            logger.warning(
                "could not refresh Access signing keys from %s: %s; %s",
                self.certs_url,
                failed.failure,
                "serving the last good keys" if self._keys else "no keys to serve",
                extra={"layer": "jwks", "decision": "error", "reason": "keys_fetch_failed"},
            )
            return
        finally:
            self._fetches_done += 1
        metrics.key_fetch("ok", started)
        self.last_failure = None
        removed = self._keys.keys() - keys.keys()
        if removed:
            logger.info("Access signing keys no longer published, no longer trusted: %s", sorted(removed))
        # Keep the objects of unchanged keys, so tokens verified under them stay cached across refreshes.
        self._keys = {kid: self._keys[kid] if self._keys.get(kid) == key else key for kid, key in keys.items()}
        self._fetched_at = self._clock()

    async def _download(self) -> dict[str, RSAPublicKey]:
        if self._client is None:
            # Building a client loads the CA bundle, tens of milliseconds: done in a thread, not on the event loop.
            self._client = await anyio.to_thread.run_sync(_new_http_client)
        try:
            # httpx's timeout bounds each read; this bounds the whole fetch, so a slow drip cannot hold us.
            with anyio.fail_after(self.timeout):
                body = await self._read_bounded(self._client)
        except (TimeoutError, httpx.TimeoutException):
            raise _FetchFailed("timeout", f"no complete answer within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            # The class name only: an exception's text may carry the URL, and says nothing more useful here.
            raise _FetchFailed("unreachable", type(exc).__name__) from None
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _FetchFailed("not_json", "the answer is not JSON") from None
        keys = _parse_keys(document)
        if not keys:
            raise _FetchFailed("no_usable_key", "the answer holds no usable RS256 key")
        return keys

    async def _read_bounded(self, client: httpx.AsyncClient) -> bytes:
        async with client.stream(
            "GET",
            self.certs_url,
            # Uncompressed: the size bound is on the bytes parsed, and a compressed answer would read as garbage.
            headers={"Accept": "application/json", "Accept-Encoding": "identity"},
            timeout=self.timeout,
        ) as response:
            status = response.status_code
            if status != 200:
                detail = f" to {response.headers.get('location', '?')}" if response.is_redirect else ""
                raise _FetchFailed("http_status", f"HTTP {status}{detail} (redirects are not followed)", status)
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > self.max_bytes:
                    raise _FetchFailed("too_large", f"the answer is larger than {self.max_bytes} bytes")
            return bytes(body)


def _new_http_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(follow_redirects=False, headers={"User-Agent": _USER_AGENT})


def _parse_keys(document: Any) -> dict[str, RSAPublicKey]:
    """Cloudflare's `keys` array, RS256 signing keys only; anything else is skipped and logged."""
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        return {}
    keys: dict[str, RSAPublicKey] = {}
    ambiguous: set[str] = set()
    for entry in entries:
        kid = entry.get("kid") if isinstance(entry, dict) else None
        problem = _unusable(entry, kid)
        if problem:
            logger.warning("skipping an Access signing key (kid %r): %s", kid, problem)
            continue
        assert isinstance(kid, str)
        try:
            public_key = PyJWK(entry, algorithm="RS256").key
        except (PyJWTError, ValueError, TypeError) as exc:
            logger.warning("skipping an Access signing key (kid %r): %s", kid, type(exc).__name__)
            continue
        if not isinstance(public_key, RSAPublicKey) or public_key.key_size < _MIN_RSA_BITS:
            logger.warning("skipping an Access signing key (kid %r): not an RSA key of %d bits or more", kid, 2048)
            continue
        if kid in keys:
            ambiguous.add(kid)
        keys[kid] = public_key
    for kid in ambiguous:
        # Two keys under one kid: trusting either would be a guess.
        logger.warning("skipping Access signing key id %r: published more than once", kid)
        del keys[kid]
    return keys


def _unusable(entry: Any, kid: Any) -> str | None:
    if not isinstance(entry, dict):
        return "not a JSON object"
    if not isinstance(kid, str) or not kid:
        return "no kid"
    if entry.get("kty") != "RSA":
        return f"key type {entry.get('kty')!r}, only RSA is used"
    if entry.get("alg", "RS256") != "RS256":
        return f"algorithm {entry.get('alg')!r}, only RS256 is used"
    if entry.get("use", "sig") != "sig":
        return f"use {entry.get('use')!r}, only sig is used"
    return None
