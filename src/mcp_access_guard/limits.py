"""Limits on failed credential checks, per client address, and the one rule for what a client's address is.

A credential layer asks `FailedCredentialLimit.refusal(scope)` before it checks anything (a blocked address gets its
429 and nothing is compared or parsed) and reports each credential it checked and refused with `failed(scope)`.

Counting is a fixed window per address, opened by its first failure (the OAuth store's counters work the same way):
after `limit` failures the address is refused until that window ends. An address can so fail at most `limit` times
per window, and at most twice that within any span of one window (the end of one window and the start of the next).

Memory is bounded: at most `tracked` addresses that are counting and, kept apart, at most `tracked` that are
blocked, each a flat tuple. When the counting set is full the least recently failing address is dropped, which only
restarts that address's count (an attacker who rotates addresses already has a fresh count with each); a flood of
new addresses never touches the blocked set, which fills only with addresses that each reached the limit.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from cachetools import TTLCache
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from .audit import log_decision
from .config import ConfigError, check_number, check_whole

logger = logging.getLogger("mcp_access_guard")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Set in the scope by the shared-secret layer once the secret checked out: the request came through the operator's
# own tunnel or Worker, so `CF-Connecting-IP` is the address Cloudflare saw, not one the caller chose.
TUNNEL_PROVEN = "mcp_access_guard.tunnel_proven"
CONNECTING_IP = b"cf-connecting-ip"
# The longest text form of an IPv6 address with an IPv4 tail is 45 characters.
_MAX_ADDRESS_TEXT = 45
_IPV4_MAPPED = bytes(10) + b"\xff\xff"
REFUSED_REASON = "failed_credential_limit"
MAX_FAILURES = 1_000_000
MAX_WINDOW = 86_400.0
MAX_TRACKED = 10_000_000


class AddressRule:
    """The address a client is known by: the ASGI peer, or `CF-Connecting-IP` when the shared secret proved the
    request came through the operator's tunnel or the peer is one of `trusted_proxies` (and the header holds exactly
    one valid address; anything else falls back to the peer). An IPv6 address stands for its /64, which one host
    holds whole; an IPv4-mapped IPv6 address is its IPv4 address. Each address has one spelling, whatever was sent.

    Addresses are read with `socket.inet_pton`, strict and about twenty times quicker than `ipaddress`: this runs
    on every request once any address is blocked.
    """

    def __init__(self, trusted_proxies: Iterable[IPNetwork] = ()) -> None:
        # (address length in bytes, network as an int, mask as an int) for each trusted proxy.
        self._proxies = tuple(
            (network.max_prefixlen // 8, int(network.network_address), int(network.netmask))
            for network in trusted_proxies
        )

    def __call__(self, scope: Scope) -> str:
        client = scope.get("client")
        peer_text = str(client[0]) if client else "unknown"
        # A link-local peer's zone (fe80::1%eth0) says which interface, not which client.
        peer = _packed(peer_text.partition("%")[0])
        if scope.get(TUNNEL_PROVEN) or (peer is not None and self._trusted(peer)):
            forwarded = _connecting_ip(scope["headers"])
            if forwarded is not None:
                return _key(forwarded)
        if peer is None:
            # A Unix socket or a server that reports no peer: one key for all, printable and bounded.
            return peer_text[:_MAX_ADDRESS_TEXT].encode("unicode_escape").decode("ascii")
        return _key(peer)

    def _trusted(self, peer: bytes) -> bool:
        value = int.from_bytes(peer, "big")
        return any(len(peer) == size and value & mask == network for size, network, mask in self._proxies)


# The rule with no trusted proxy, for a layer used without a `FailedCredentialLimit`.
client_address = AddressRule()


def _packed(text: str) -> bytes | None:
    """The address as 4 or 16 bytes (an IPv4-mapped IPv6 address as its 4), or None if `text` is not one."""
    if len(text) > _MAX_ADDRESS_TEXT:
        return None
    try:
        packed = socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    except (OSError, ValueError):
        return None
    if len(packed) == 16 and packed[:12] == _IPV4_MAPPED:
        return packed[12:]
    return packed


def _connecting_ip(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    values = [value for name, value in headers if name.lower() == CONNECTING_IP]
    if len(values) != 1:
        return None
    return _packed(values[0].decode("latin-1").strip())


def _key(packed: bytes) -> str:
    if len(packed) == 4:
        return socket.inet_ntop(socket.AF_INET, packed)
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8)) + "/64"


def trusted_proxy(entry: str) -> IPNetwork:
    """One trusted proxy, an address or a CIDR; ValueError naming what is wrong."""
    try:
        network = ipaddress.ip_network(entry.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"trusted proxy {entry!r} is not an IP address or CIDR ({exc})") from None
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.scope_id is not None:
        raise ValueError(f"trusted proxy {entry!r} has a zone index (%...): give the address without it")
    if network.prefixlen == 0:
        raise ValueError(
            f"trusted proxy {entry!r} covers every address: any client could then pick the address it is counted "
            "under; name the proxies' own addresses"
        )
    return network


def checked_limits(limit: int, window: float, tracked: int, trusted_proxies: Iterable[str]) -> tuple[IPNetwork, ...]:
    """ConfigError, naming the setting, unless every value is in range; the trusted proxies as networks."""
    check_whole("failed_credentials", limit, 0, MAX_FAILURES)
    check_number("failure_window", window, 1, MAX_WINDOW)
    check_whole("tracked_addresses", tracked, 1, MAX_TRACKED)
    if isinstance(trusted_proxies, str):
        raise ConfigError("trusted_proxies must be a list of addresses or CIDRs, not one string")
    try:
        return tuple(trusted_proxy(entry) for entry in trusted_proxies)
    except ValueError as exc:
        raise ConfigError(f"trusted_proxies: {exc}") from None


class SharedCounter(Protocol):
    """Where several replicas count together: `OAuthStore.increment`."""

    async def increment(self, key: str, *, window: float) -> int: ...


class FailedCredentialLimit:
    """At most `limit` failed credential checks per client address in `window` seconds; then 429 with
    `Retry-After` until the window ends. `limit=0` turns counting off (the address rule still applies).

    Counts are this process's own unless `count_in(store)` names a shared counter (the OAuth store): then only
    failures go to it, and a block it reports is kept here until it ends, so a request with a valid credential never
    waits for the store. Another replica learns of a block at its next failure from that address. A store that
    fails is logged and the failure counted here instead: a limit never turns into an error.
    """

    def __init__(
        self,
        limit: int = 10,
        window: float = 60.0,
        *,
        tracked: int = 10_000,
        trusted_proxies: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.trusted_proxies = checked_limits(limit, window, tracked, trusted_proxies)
        self.address = AddressRule(self.trusted_proxies)
        self.limit = limit
        self.window = float(window)
        self._clock = clock
        # address -> (failures, window ends at) / (blocked until, refusal logged); both by the monotonic clock.
        self._counting: TTLCache[str, tuple[int, float]] = TTLCache(maxsize=tracked, ttl=self.window, timer=clock)
        self._blocked: TTLCache[str, tuple[float, bool]] = TTLCache(maxsize=tracked, ttl=self.window, timer=clock)
        self._shared: SharedCounter | None = None
        self._store_failure_logged_until = -math.inf
        # When the last block set so far ends.
        self._blocks_end = -math.inf

    def __repr__(self) -> str:
        return (
            f"FailedCredentialLimit(limit={self.limit}, window={self.window:g}, "
            f"shared={self._shared is not None}, tracked={self.tracked_addresses})"
        )

    def count_in(self, counter: SharedCounter) -> None:
        """Count failures in `counter` (shared by the replicas) from now on."""
        self._shared = counter

    @property
    def tracked_addresses(self) -> int:
        """How many address records are held, counting and blocked: never more than twice `tracked`."""
        return len(self._counting) + len(self._blocked)

    def refusal(self, scope: Scope, *, layer: str) -> Response | None:
        """The 429 for a request from a blocked address (logged at its first refusal in each window), or None."""
        now = self._clock()
        if now >= self._blocks_end:
            return None  # no block runs any more: the usual case costs no address lookup
        address = self.address(scope)
        entry = self._blocked.get(address)
        if entry is None:
            return None
        until, logged = entry
        remaining = until - now
        if remaining <= 0:
            self._blocked.pop(address, None)
            return None
        if not logged:
            self._blocked[address] = (until, True)
        log_decision(scope, layer=layer, decision="deny", reason=REFUSED_REASON, log=not logged)
        return JSONResponse(
            {"error": "too_many_requests"},
            status_code=429,
            headers={"Retry-After": str(math.ceil(remaining)), "Cache-Control": "no-store"},
        )

    async def failed(self, scope: Scope) -> None:
        """Count one refused credential from this request's address."""
        if self.limit == 0:
            return
        address = self.address(scope)
        if self._shared is not None:
            try:
                count = await self._shared.increment(f"failed_credentials:{address}", window=self.window)
            except Exception as failure:  # whatever the store raises, a limit must never become a 500
                self._store_failed(failure)
            else:
                if count >= self.limit:
                    # The store's window began at the first failure, maybe on another replica: at most `window` more.
                    self._block(address, self._clock() + self.window)
                return
        now = self._clock()
        count, ends = self._counting.get(address, (0, now + self.window))
        if ends <= now:
            count, ends = 0, now + self.window
        if count + 1 >= self.limit:
            self._counting.pop(address, None)
            self._block(address, ends)
        else:
            self._counting[address] = (count + 1, ends)

    def _block(self, address: str, until: float) -> None:
        # Only reached after `refusal` found no live block for the address: a stale one is replaced.
        self._blocked[address] = (until, False)
        self._blocks_end = max(self._blocks_end, until)

    def _store_failed(self, failure: Exception) -> None:
        now = self._clock()
        if now >= self._store_failure_logged_until:
            self._store_failure_logged_until = now + self.window
            logger.error(
                "failed credentials are counted per process: the OAuth store is unavailable (%s)",
                type(failure).__name__,
                extra={"layer": "limits"},
            )
