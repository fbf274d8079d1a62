"""Metrics read back through the OpenTelemetry SDK: the real stack over real uvicorn (good, forged and expired
Access tokens; a key fetch that works and one that fails; an OAuth flow that issues, refreshes, revokes and replays),
exact counts and attributes, and never a token, an email or a path in an attribute.

Each test records on its own `MeterProvider` with an `InMemoryMetricReader` (`metrics.use_meter_provider`), so no
test sees another's counts and OpenTelemetry's process-wide provider, which can be set only once, is left alone; the
one test of that global provider runs in a child process.
"""

from __future__ import annotations

import gc
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint

from mcp_access_guard import GuardConfig, guard, metrics
from mcp_access_guard.audit import log_decision
from mcp_access_guard.jwks import JWKSCache
from mcp_access_guard.testing import LocalAccess, LocalAccessSaaS, SigningKey, serve
from oauth_harness import Pkce, call_mcp, deployment, exchange, log_in, refresh, register, tokens_for
from support import RecordingApp

pytestmark = pytest.mark.anyio

APP = "https://app.example.com/callback"
# What an attribute value may be: a word from a fixed set, never something a request or a credential supplied.
WORD = re.compile(r"[a-z][a-z0-9_]*")
Attributes = tuple[tuple[str, str], ...]


class OkApp(RecordingApp):
    async def answer(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


@dataclass
class Recorded:
    reader: InMemoryMetricReader

    def points(self) -> dict[str, dict[Attributes, Any]]:
        """Every data point collected now, by instrument name and attributes (sorted pairs)."""
        found: dict[str, dict[Attributes, Any]] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                assert scope.scope.name == "mcp_access_guard"
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        key = tuple(sorted((name, str(value)) for name, value in (point.attributes or {}).items()))
                        found.setdefault(metric.name, {})[key] = point
        return found

    def counts(self, name: str) -> dict[Attributes, int]:
        """A counter's values, or a histogram's counts, by attributes; zeros left out."""
        counted = {}
        for key, point in self.points().get(name, {}).items():
            value = point.count if isinstance(point, HistogramDataPoint) else int(point.value)
            if value:
                counted[key] = value
        return counted

    def gauge(self, cache: str) -> int:
        point = self.points().get("mcp_access_guard.cache.entries", {}).get((("cache", cache),))
        assert point is None or isinstance(point, NumberDataPoint)
        return 0 if point is None else int(point.value)

    def assert_clean(self, *forbidden: str) -> None:
        """Every attribute value is a bare word, and none holds a credential, an email, a path or a URL."""
        for points in self.points().values():
            for key in points:
                for name, value in key:
                    assert WORD.fullmatch(value), (name, value)
                    assert not any(secret in value for secret in forbidden), (name, value)


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.use_meter_provider(provider)
    try:
        yield Recorded(reader)
    finally:
        metrics.use_meter_provider(None)
        provider.shutdown()


def attrs(**values: str) -> Attributes:
    return tuple(sorted(values.items()))


async def get(url: str, token: str | None) -> int:
    async with httpx.AsyncClient() as http:
        headers = {"Cf-Access-Jwt-Assertion": token} if token is not None else {}
        return (await http.get(f"{url}/mcp", headers=headers)).status_code


# -- the Access JWT stack -------------------------------------------------------------------------------------------


async def test_decisions_verification_times_key_fetches_and_cache_sizes(
    local_access: LocalAccess, recorded: Recorded
) -> None:
    gc.collect()  # other tests' verifiers that are already unreachable leave the gauge before its baseline
    tokens_before, keys_before = recorded.gauge("verified_tokens"), recorded.gauge("signing_keys")
    good = local_access.user_token("alice@example.com")
    forger = SigningKey(kid=local_access.current_key.kid, private_key=SigningKey.generate().private_key)
    forged = local_access.user_token("alice@example.com", key=forger)
    expired = local_access.user_token("bob@example.com", expires_in=-3600)
    app = guard(OkApp(), GuardConfig(access=local_access.config()))
    async with serve(app) as url:
        statuses = [await get(url, token) for token in (good, good, forged, expired, None, good)]
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{url}/elsewhere")).status_code == 404
        tokens_during = recorded.gauge("verified_tokens")
        keys_during = recorded.gauge("signing_keys")
    assert statuses == [200, 200, 403, 403, 401, 200]

    assert recorded.counts("mcp_access_guard.decisions") == {
        attrs(layer="paths", decision="allow", reason="path_allowed"): 6,
        attrs(layer="paths", decision="deny", reason="not_listed"): 1,
        attrs(layer="cors", decision="allow", reason="no_origin"): 6,
        attrs(layer="access_jwt", decision="allow", reason="verified"): 3,
        attrs(layer="access_jwt", decision="deny", reason="bad_signature"): 1,
        attrs(layer="access_jwt", decision="deny", reason="expired"): 1,
        attrs(layer="access_jwt", decision="deny", reason="missing"): 1,
    }
    # A missing token is no verification: it is counted as a decision only.
    assert recorded.counts("mcp_access_guard.verification.duration") == {
        attrs(credential="access_jwt", path="fresh", outcome="ok"): 1,
        attrs(credential="access_jwt", path="cached", outcome="ok"): 2,
        attrs(credential="access_jwt", path="fresh", outcome="bad_signature"): 1,
        attrs(credential="access_jwt", path="fresh", outcome="expired"): 1,
    }
    assert recorded.counts("mcp_access_guard.jwks.fetch.duration") == {attrs(outcome="ok"): 1}
    durations = recorded.points()["mcp_access_guard.verification.duration"].values()
    assert all(point.sum > 0 for point in durations)

    assert tokens_during - tokens_before == 1
    assert keys_during - keys_before == len(local_access.keys)
    # Weakly held: once the stack is gone, its caches leave the gauge.
    del app
    gc.collect()
    assert (recorded.gauge("verified_tokens"), recorded.gauge("signing_keys")) == (tokens_before, keys_before)
    recorded.assert_clean(good, forged, expired, "alice@example.com", "bob@example.com", "/mcp", "/elsewhere")


@pytest.mark.parametrize(("fault", "outcome"), [(None, "unreachable"), ("http_500", "http_status")])
async def test_a_failing_key_fetch_is_recorded_by_kind(
    local_access: LocalAccess, recorded: Recorded, fault: Any, outcome: str
) -> None:
    token = local_access.user_token("alice@example.com")
    if fault is None:
        local_access.go_down()
    else:
        local_access.fault = fault
    async with serve(guard(OkApp(), GuardConfig(access=local_access.config()))) as url:
        assert await get(url, token) == 503
        local_access.come_back()
        # Within the refetch cooldown: no second fetch, the request is refused again.
        assert await get(url, token) == 503
    assert recorded.counts("mcp_access_guard.jwks.fetch.duration") == {attrs(outcome=outcome): 1}
    assert recorded.counts("mcp_access_guard.verification.duration") == {
        attrs(credential="access_jwt", path="fresh", outcome="keys_unavailable"): 2
    }
    recorded.assert_clean(token, "alice@example.com", "/mcp", local_access.certs_url)


async def test_a_key_cache_on_its_own_records_its_fetches(local_access: LocalAccess, recorded: Recorded) -> None:
    cache = JWKSCache(local_access.certs_url)
    try:
        await cache.refresh()
        local_access.fault = "garbage"
        await cache.refresh()
    finally:
        await cache.aclose()
    assert recorded.counts("mcp_access_guard.jwks.fetch.duration") == {
        attrs(outcome="ok"): 1,
        attrs(outcome="not_json"): 1,
    }


# -- OAuth --------------------------------------------------------------------------------------------------------


async def test_oauth_issue_refresh_revoke_and_replays(local_access_saas: LocalAccessSaaS, recorded: Recorded) -> None:
    local_access_saas.login_as("alice@example.com")
    gc.collect()
    cached_before = recorded.gauge("oauth_bearer_tokens")
    async with deployment(local_access_saas) as site:
        client = await register(site.url, [APP])
        first = await tokens_for(site.url, client)
        assert (await call_mcp(site.url, first["access_token"])).status_code == 200  # looked up
        assert (await call_mcp(site.url, first["access_token"])).status_code == 200  # cached
        assert recorded.gauge("oauth_bearer_tokens") - cached_before == 1
        second = (await refresh(site.url, client, first["refresh_token"])).json()
        third = (await refresh(site.url, client, second["refresh_token"])).json()
        # Two rotations old: a reuse, which revokes the grant.
        assert (await refresh(site.url, client, first["refresh_token"])).status_code == 400
        assert (await call_mcp(site.url, third["access_token"])).status_code == 401

        pkce = Pkce()
        code = (await log_in(site.url, client, pkce))["code"]
        assert (await exchange(site.url, client, code, pkce)).status_code == 200
        assert (await exchange(site.url, client, code, pkce)).status_code == 400  # a replay: revokes that grant

        revoked = await tokens_for(site.url, client)
        async with httpx.AsyncClient() as http:
            answer = await http.post(
                f"{site.url}/revoke", data={"token": revoked["refresh_token"], "client_id": client.client_id}
            )
        assert answer.status_code == 200

    assert recorded.counts("mcp_access_guard.oauth.grants.issued") == {(): 3}
    assert recorded.counts("mcp_access_guard.oauth.grants.refreshed") == {(): 2}
    assert recorded.counts("mcp_access_guard.oauth.grants.revoked") == {
        attrs(reason="refresh_token_reused"): 1,
        attrs(reason="code_replayed"): 1,
        attrs(reason="revoked_by_client"): 1,
    }
    assert recorded.counts("mcp_access_guard.oauth.replays") == {
        attrs(credential="refresh_token"): 1,
        attrs(credential="authorization_code"): 1,
    }
    assert recorded.counts("mcp_access_guard.verification.duration") == {
        attrs(credential="oauth_bearer", path="fresh", outcome="ok"): 1,
        attrs(credential="oauth_bearer", path="cached", outcome="ok"): 1,
        attrs(credential="oauth_bearer", path="fresh", outcome="revoked"): 1,
    }
    decisions = recorded.counts("mcp_access_guard.decisions")
    assert decisions[attrs(layer="oauth_token", decision="deny", reason="refresh_token_reused")] == 1
    assert decisions[attrs(layer="oauth_token", decision="deny", reason="code_replayed")] == 1
    assert decisions[attrs(layer="oauth_bearer", decision="allow", reason="verified")] == 2
    # The id_tokens' keys: one fetch from the Access for SaaS application, then cached.
    assert recorded.counts("mcp_access_guard.jwks.fetch.duration") == {attrs(outcome="ok"): 1}
    forbidden = [first[name] for name in ("access_token", "refresh_token")] + [code, client.client_id]
    recorded.assert_clean(*forbidden, third["access_token"], "alice@example.com", "/mcp", "/token", "/revoke")


# -- the decision counter itself ------------------------------------------------------------------------------------


def test_every_decision_is_counted_whether_logged_or_not(recorded: Recorded, caplog: pytest.LogCaptureFixture) -> None:
    scope = {"type": "http", "path": "/mcp", "client": ("127.0.0.1", 1)}
    with caplog.at_level(logging.INFO, logger="mcp_access_guard"):
        log_decision(scope, layer="paths", decision="allow", reason="path_allowed")
        log_decision(scope, layer="paths", decision="allow", reason="path_allowed", log=False)
    assert len(caplog.records) == 1
    logger = logging.getLogger("mcp_access_guard")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        log_decision(scope, layer="paths", decision="deny", reason="not_found")
    finally:
        logger.setLevel(level)
    assert recorded.counts("mcp_access_guard.decisions") == {
        attrs(layer="paths", decision="allow", reason="path_allowed"): 2,
        attrs(layer="paths", decision="deny", reason="not_found"): 1,
    }


def test_a_reason_outside_any_fixed_set_cannot_grow_the_series_without_bound(recorded: Recorded) -> None:
    for number in range(metrics.MAX_SERIES + 50):
        metrics.decision("paths", "deny", f"reason_{number}")
    counted = recorded.counts("mcp_access_guard.decisions")
    assert len(counted) == metrics.MAX_SERIES + 1
    assert counted[attrs(layer="paths", decision="deny", reason="other")] == 50


def test_a_global_provider_set_after_import_receives_everything() -> None:
    # OpenTelemetry's global provider can be set once per process: this runs in its own.
    script = """
import json
from opentelemetry import metrics as otel
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from mcp_access_guard import metrics
from mcp_access_guard.audit import log_decision

scope = {"type": "http", "path": "/mcp"}
log_decision(scope, layer="paths", decision="allow", reason="path_allowed")  # before any provider: no-op instruments
metrics.key_fetch("ok", 0.0)
reader = InMemoryMetricReader()
otel.set_meter_provider(MeterProvider(metric_readers=[reader]))
log_decision(scope, layer="paths", decision="allow", reason="path_allowed")
metrics.key_fetch("timeout", 0.0)
found = {}
for resource in reader.get_metrics_data().resource_metrics:
    for scope_metrics in resource.scope_metrics:
        for metric in scope_metrics.metrics:
            for point in metric.data.data_points:
                value = getattr(point, "value", None) or point.count
                found[metric.name + repr(sorted(point.attributes.items()))] = value
print(json.dumps(found))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    found = json.loads(done.stdout)
    # Counters are counted in-process from the start, so the decision made before the provider was set is there;
    # a duration recorded before it is not (no histogram keeps what came before a provider).
    assert found == {
        "mcp_access_guard.decisions[('decision', 'allow'), ('layer', 'paths'), ('reason', 'path_allowed')]": 2,
        "mcp_access_guard.jwks.fetch.duration[('outcome', 'timeout')]": 1,
    }
