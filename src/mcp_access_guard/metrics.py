"""Metrics through OpenTelemetry, on the meter `mcp_access_guard`: decisions, verification and key-fetch times,
cache sizes, and the OAuth grants' lifecycle.

Only the OpenTelemetry API is needed (the mcp SDK already requires it); with no SDK `MeterProvider` configured the
instruments are the API's no-op proxies. The instruments come from OpenTelemetry's global meter provider, so a
provider set after this module is imported still receives everything; `use_meter_provider()` records on another one.

Counters are counted here, a dict increment per event, and handed to the SDK only when a reader collects (they are
observable counters): a decision costs the request the same whether metrics are on or off. Durations cannot be
collected later, so the histograms are recorded as they happen. Every attribute value is one of a fixed set of words
(a layer, a decision, a reason, an outcome): never a principal, a path, a tool name or a credential.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable
from importlib.metadata import version
from typing import Any, TypeVar

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

METER_NAME = "mcp_access_guard"
# Distinct attribute sets one counter keeps; beyond this (a reason that is not from a fixed set: a bug), further
# sets are counted together under reason "other", so a counter's memory and an exporter's series stay bounded.
MAX_SERIES = 1000

Key = tuple[str, ...]
Owner = TypeVar("Owner")


class _Tally:
    """Counts per attribute set, kept in-process; reported cumulatively to the SDK by an observable counter."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.counts: dict[Key, int] = {}

    def add(self, key: Key) -> None:
        try:
            self.counts[key] += 1
        except KeyError:
            self.first(key)

    def first(self, key: Key) -> None:
        counts = self.counts
        if len(counts) >= MAX_SERIES:
            key = (*key[:-1], "other")
        counts[key] = counts.get(key, 0) + 1

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        # Runs in the reader's thread: a copy of the dict is taken in one step, then read at leisure.
        counts = self.counts.copy()
        return [Observation(count, dict(zip(self.names, key, strict=True))) for key, count in counts.items()]


class _Instruments:
    """One set of instruments on one meter, with its own counts."""

    def __init__(self, provider: MeterProvider | None) -> None:
        meter = metrics.get_meter(METER_NAME, version("mcp-access-guard"), meter_provider=provider)
        self.decisions = self._counter(
            meter,
            "mcp_access_guard.decisions",
            ("layer", "decision", "reason"),
            "Allow and deny decisions of every layer, by reason",
        )
        self.grants_issued = self._counter(
            meter, "mcp_access_guard.oauth.grants.issued", (), "OAuth grants whose code was redeemed for tokens"
        )
        self.grants_refreshed = self._counter(
            meter, "mcp_access_guard.oauth.grants.refreshed", (), "OAuth refresh-token rotations"
        )
        self.grants_revoked = self._counter(
            meter, "mcp_access_guard.oauth.grants.revoked", ("reason",), "OAuth grant revocations, by reason"
        )
        self.replays = self._counter(
            meter,
            "mcp_access_guard.oauth.replays",
            ("credential",),
            "Spent authorization codes and replaced refresh tokens presented again",
        )
        self.verification = meter.create_histogram(
            "mcp_access_guard.verification.duration",
            unit="s",
            description="Time to check a credential (Access JWT or OAuth bearer), from the cache or fresh",
        )
        self.key_fetch = meter.create_histogram(
            "mcp_access_guard.jwks.fetch.duration", unit="s", description="Signing-key fetches, by outcome"
        )
        meter.create_observable_gauge(
            "mcp_access_guard.cache.entries",
            callbacks=[_observe_caches],
            unit="{entry}",
            description="Entries in the verified-token, signing-key and OAuth bearer caches of live objects",
        )

    @staticmethod
    def _counter(meter: metrics.Meter, name: str, attributes: tuple[str, ...], description: str) -> _Tally:
        tally = _Tally(attributes)
        meter.create_observable_counter(name, callbacks=[tally.observe], description=description)
        return tally


def _observe_caches(options: CallbackOptions) -> Iterable[Observation]:
    with _watched_lock:
        watched = list(_watched.items())
    sizes: dict[str, int] = {}
    for owner, (cache, size) in watched:
        sizes[cache] = sizes.get(cache, 0) + size(owner)
    return [Observation(entries, {"cache": cache}) for cache, entries in sizes.items()]


# The caches of live objects, each with how to measure it; weakly held, so a verifier that is dropped is forgotten.
_watched: weakref.WeakKeyDictionary[Any, tuple[str, Callable[[Any], int]]] = weakref.WeakKeyDictionary()
_watched_lock = threading.Lock()
_global = _Instruments(None)
_current = _global
# The instruments made on each provider given to use_meter_provider: going back to one continues its counts.
_by_provider: weakref.WeakKeyDictionary[MeterProvider, _Instruments] = weakref.WeakKeyDictionary()


def use_meter_provider(provider: MeterProvider | None) -> None:
    """Record on `provider` from now on instead of OpenTelemetry's global meter provider (None: back to that).
    Counts are kept per provider, from the first time it is used here."""
    global _current
    if provider is None:
        _current = _global
        return
    instruments = _by_provider.get(provider)
    if instruments is None:
        instruments = _by_provider[provider] = _Instruments(provider)
    _current = instruments


def watch_cache(cache: str, owner: Owner, size: Callable[[Owner], int]) -> None:
    """Report `size(owner)` as the gauge's `cache` entry while `owner` lives (summed over every live owner).
    `size` must not hold `owner` itself: it is given it."""
    with _watched_lock:
        _watched[owner] = (cache, size)


def decision(layer: str, decision: str, reason: str) -> None:
    # Tally.add spelled out: this runs for every layer of every request.
    tally = _current.decisions
    key = (layer, decision, reason)
    try:
        tally.counts[key] += 1
    except KeyError:
        tally.first(key)


def verification(credential: str, path: str, outcome: str, started: float) -> None:
    """A credential checked since `started` (`time.perf_counter()`): `path` cached or fresh; `outcome` ok or the
    refusal's reason."""
    _current.verification.record(
        time.perf_counter() - started, {"credential": credential, "path": path, "outcome": outcome}
    )


def key_fetch(outcome: str, started: float) -> None:
    _current.key_fetch.record(time.perf_counter() - started, {"outcome": outcome})


def grant_issued() -> None:
    _current.grants_issued.add(())


def grant_refreshed() -> None:
    _current.grants_refreshed.add(())


def grant_revoked(reason: str) -> None:
    _current.grants_revoked.add((reason,))


def replay(credential: str) -> None:
    _current.replays.add((credential,))
