"""What metrics and limits add to a request through the `guard()` stack, each off and on, against the bare app in the
same run; and what one recording costs, for the design's choice between counting here and handing every event to the
SDK.

    python benchmarks/bench_metrics.py            # full run, about a minute
    python benchmarks/bench_metrics.py --quick    # a few seconds

"Off" is how the library runs without the SDK: OpenTelemetry's global meter provider never set, the API's proxy
instruments doing nothing. "On" is an SDK `MeterProvider` with an `InMemoryMetricReader`, given through
`metrics.use_meter_provider` (a global provider adds one proxy call per recording on top). The stack, the request
and the timing loop are `bench_stack.py`'s: shared secret and Access JWT on, the token cached, the ASGI app called
directly in one event loop. Rows are interleaved within each round; the first rounds are warm-up and discarded.

"Limits off" is `failed_credentials = 0` and no request budget; "limits on" is the default limit on failed credentials
(10 a minute per address) and a request budget per principal too large to refuse anyone in the run, so both are
counted on every request. The request-size layer is always on: `guard()` has no switch for it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import time
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from opentelemetry import metrics as otel
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from starlette.types import ASGIApp

from bench_common import Plan, Section
from bench_stack import (
    HOST,
    SHARED_SECRET,
    StatusRecorder,
    bare_app,
    receive,
    request_scope,
    time_requests,
    verifiers_in,
)
from mcp_access_guard import metrics
from mcp_access_guard.settings import CORSSettings, GuardConfig, LimitSettings, ServiceTokenSettings
from mcp_access_guard.stack import guard
from mcp_access_guard.testing import LocalAccess

STACK_TITLE = "Limits and metrics: what the guard() stack adds per request, each off and on"
RECORDING_TITLE = "Metrics: one recording, off and on"
FULL = Plan(rounds=15, warmup=3, iterations=5000)
QUICK = Plan(rounds=5, warmup=1, iterations=500)
RECORDINGS_FULL = 200_000
RECORDINGS_QUICK = 20_000
BARE = "bare app"


@dataclass(frozen=True)
class Variant:
    """One way of building and running the stack."""

    label: str
    metrics: bool
    limits: bool


VARIANTS = (
    Variant("limits off, metrics off", metrics=False, limits=False),
    Variant("limits off, metrics on", metrics=True, limits=False),
    Variant("limits on, metrics off", metrics=False, limits=True),
    Variant("limits on, metrics on", metrics=True, limits=True),
)
LIMITS_OFF = LimitSettings(failed_credentials=0)
# Never reached in a run: the budget is counted on every request, and refuses none.
LIMITS_ON = LimitSettings(requests_per_minute=1_000_000)


def stack_config(issuer: LocalAccess, variant: Variant) -> GuardConfig:
    return GuardConfig(
        access=issuer.config(),
        cors=CORSSettings(allowed_hosts=(HOST,)),
        service_token=ServiceTokenSettings(secrets=(SHARED_SECRET,)),
        limits=LIMITS_ON if variant.limits else LIMITS_OFF,
    )


def stack_label(variant: Variant) -> str:
    return f"guard() stack, {variant.label}"


def added_label(variant: Variant) -> str:
    return f"added by the stack, {variant.label}"


def verified_count(reader: InMemoryMetricReader) -> int:
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "mcp_access_guard.decisions":
                    for point in metric.data.data_points:
                        attributes = point.attributes or {}
                        if (attributes.get("layer"), attributes.get("reason")) == ("access_jwt", "verified"):
                            return int(point.value)  # type: ignore[union-attr]
    return 0


async def measure_stack(plan: Plan) -> Section:
    section = Section(STACK_TITLE)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    send = StatusRecorder()
    with LocalAccess() as issuer:
        rows: list[tuple[str, ASGIApp, MeterProvider | None]] = [(BARE, bare_app, None)]
        rows += [
            (
                stack_label(variant),
                guard(bare_app, stack_config(issuer, variant)),
                provider if variant.metrics else None,
            )
            for variant in VARIANTS
        ]
        scope = request_scope(issuer.user_token("alice@example.com"))
        try:
            for label, app, meter_provider in rows:
                metrics.use_meter_provider(meter_provider)
                await app(dict(scope), receive, send)  # fetches the keys, caches the token
                assert send.status == 200, f"{label} answered {send.status}, not 200"
            samples: dict[str, list[float]] = {label: [] for label, _, _ in rows}
            for round_number in range(plan.warmup + plan.rounds):
                gc.collect()
                for label, app, meter_provider in rows:
                    metrics.use_meter_provider(meter_provider)
                    figure = await time_requests(app, scope, send, plan.iterations)
                    if round_number >= plan.warmup:
                        samples[label].append(figure)
            assert send.status == 200
        finally:
            metrics.use_meter_provider(None)
            for _, app, _ in rows[1:]:
                for verifier in verifiers_in(app):
                    await verifier.aclose()
    # Every request of the metrics-on rows, warm-up included, counted once as an Access JWT allow.
    on_requests = sum(variant.metrics for variant in VARIANTS) * (1 + (plan.warmup + plan.rounds) * plan.iterations)
    assert verified_count(reader) == on_requests, "metrics on, yet the reader did not see every request"
    provider.shutdown()

    section.add(BARE, "µs/request", samples[BARE])
    first = VARIANTS[0]
    for variant in VARIANTS:
        section.add(stack_label(variant), "µs/request", samples[stack_label(variant)], baseline=BARE)
    for variant in VARIANTS:
        added = [stack - bare for stack, bare in zip(samples[stack_label(variant)], samples[BARE], strict=True)]
        baseline = None if variant is first else added_label(first)
        section.add(added_label(variant), "µs/request", added, baseline=baseline)
    section.notes.append(
        f"{plan.rounds} rounds of {plan.iterations} requests each ({plan.warmup} warm-up discarded); 'added' is the "
        "stack less the bare app, round by round. A request makes four decisions (paths, CORS, shared secret, "
        "Access JWT) and one verification: metrics on records one histogram point through the SDK; the decisions "
        "are counted here and handed over when the reader collects."
    )
    return section


def measure_recordings(count: int) -> Section:
    """Per recording, best of five runs: the design's decision counter, OpenTelemetry's own synchronous counter,
    and the verification histogram, each with no SDK and with one."""
    section = Section(RECORDING_TITLE)
    proxy_counter = otel.get_meter("bench_metrics").create_counter("bench_metrics.decisions")
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False)
    sdk_counter = provider.get_meter("bench_metrics").create_counter("bench_metrics.decisions")
    attributes = {"layer": "access_jwt", "decision": "allow", "reason": "verified"}
    started = time.perf_counter()

    def decision() -> None:
        metrics.decision("access_jwt", "allow", "verified")

    def verification() -> None:
        metrics.verification("access_jwt", "cached", "ok", started)

    rows: list[tuple[str, MeterProvider | None, Callable[[], object]]] = [
        ("decision counted here (metrics.decision), no SDK", None, decision),
        ("decision counted here (metrics.decision), SDK", provider, decision),
        ("OpenTelemetry Counter.add, no SDK (API proxy)", None, lambda: proxy_counter.add(1, attributes)),
        ("OpenTelemetry Counter.add, SDK", None, lambda: sdk_counter.add(1, attributes)),
        ("verification histogram (metrics.verification), no SDK", None, verification),
        ("verification histogram (metrics.verification), SDK", provider, verification),
    ]
    baseline = rows[0][0]
    try:
        for label, meter_provider, call in rows:
            metrics.use_meter_provider(meter_provider)
            best = min(timeit.repeat(call, number=count, repeat=5)) / count * 1e9
            section.add(label, "ns/call", [best], baseline=None if label == baseline else baseline)
    finally:
        metrics.use_meter_provider(None)
        provider.shutdown()
    section.notes.append(
        f"Best of 5 runs of {count} calls each. Counting here costs the same with the SDK as without: the SDK reads "
        "the counts when it collects. A histogram point cannot wait for that, so it is the one SDK call per request."
    )
    return section


async def collect(quick: bool = False) -> list[Section]:
    logging.getLogger("mcp_access_guard").setLevel(logging.WARNING)
    return [
        await measure_stack(QUICK if quick else FULL),
        measure_recordings(RECORDINGS_QUICK if quick else RECORDINGS_FULL),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    arguments = parser.parse_args(argv)
    for section in asyncio.run(collect(arguments.quick)):
        section.print()


if __name__ == "__main__":
    main()
