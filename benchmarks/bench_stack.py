"""What each layer, and the whole `guard()` stack, adds to a request, against the bare app in the same run.

    python benchmarks/bench_stack.py            # full run, about half a minute
    python benchmarks/bench_stack.py --quick    # a few seconds
    python benchmarks/bench_stack.py --profile  # cProfile of the full stack instead of the table

The app is trivial (200 and a tiny JSON body), so what is timed is the middleware. Every request is a POST to
`/mcp` as a tunnel delivers it from a browser client: Host, Origin https://claude.ai, Content-Type, Accept, the
shared-secret header and a `Cf-Access-Jwt-Assertion` signed by `LocalAccess`, which the verifier has already
cached during warm-up. The ASGI app is called directly in one event loop, no network.

Every round times each row over a loop of requests, rows interleaved; the first rounds are warm-up and discarded.
Medians and min-max are across the kept rounds, in microseconds per request.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import gc
import logging
import pstats
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bench_common import Plan
from mcp_access_guard.middleware.access import AccessJWTMiddleware
from mcp_access_guard.middleware.body_size import BodySizeLimitMiddleware
from mcp_access_guard.middleware.budget import MAX_REQUESTS_PER_WINDOW, RequestBudgetMiddleware
from mcp_access_guard.middleware.cors import CORSAllowlistMiddleware
from mcp_access_guard.middleware.paths import PathAllowlistMiddleware
from mcp_access_guard.middleware.service_token import DEFAULT_SECRET_HEADER, ServiceTokenMiddleware
from mcp_access_guard.settings import CORSSettings, GuardConfig, LimitSettings, ServiceTokenSettings
from mcp_access_guard.stack import guard
from mcp_access_guard.testing import LocalAccess
from mcp_access_guard.verifier import AccessVerifier

TARGET_ADDED_US = 15.0
HOST = "mcp.example.com"
SHARED_SECRET = "bench-not-a-real-secret"
BODY = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":2}}}'
ANSWER = b'{"ok":true}'


FULL = Plan(rounds=20, warmup=3, iterations=5000)
QUICK = Plan(rounds=6, warmup=1, iterations=500)


async def bare_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": ANSWER})


def request_scope(token: str) -> Scope:
    """A POST to /mcp with the headers a Cloudflare Tunnel hands the origin for a browser MCP client."""
    headers = {
        "host": HOST,
        "user-agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0",
        "origin": "https://claude.ai",
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "content-length": str(len(BODY)),
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "add",
        "accept-encoding": "gzip, br",
        "cf-connecting-ip": "203.0.113.7",
        "cf-ipcountry": "US",
        "cf-ray": "8f1e2d3c4b5a6978-AMS",
        "cf-visitor": '{"scheme":"https"}',
        "x-forwarded-for": "203.0.113.7",
        "x-forwarded-proto": "https",
        DEFAULT_SECRET_HEADER.lower(): SHARED_SECRET,
        "cf-access-jwt-assertion": token,
    }
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https",
        "path": "/mcp",
        "raw_path": b"/mcp",
        "root_path": "",
        "query_string": b"",
        "headers": [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def receive() -> Message:
    return {"type": "http.request", "body": BODY, "more_body": False}


class StatusRecorder:
    """A `send` that keeps only the last status, so a row that refuses instead of passing is caught."""

    status = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]


async def time_requests(app: ASGIApp, scope: Scope, send: StatusRecorder, iterations: int) -> float:
    started = time.perf_counter_ns()
    for _ in range(iterations):
        # A fresh scope per request, as a server gives: layers add "state", "user" and "auth" to the one they get.
        await app(dict(scope), receive, send)
    return (time.perf_counter_ns() - started) / iterations / 1000


@dataclass(frozen=True)
class Row:
    label: str
    app: ASGIApp
    target: float | None = None


def build_rows(config: GuardConfig, verifier: AccessVerifier) -> list[Row]:
    assert config.cors is not None
    return [
        Row("bare app", bare_app),
        Row("PathAllowlist alone", PathAllowlistMiddleware(bare_app)),
        Row("CORSAllowlist alone (allowed_hosts set)", CORSAllowlistMiddleware(bare_app, allowed_hosts=[HOST])),
        Row("ServiceToken alone (shared secret)", ServiceTokenMiddleware(bare_app, secrets=[SHARED_SECRET])),
        Row("BodySizeLimit alone", BodySizeLimitMiddleware(bare_app)),
        Row("AccessJWT alone (cached token)", AccessJWTMiddleware(bare_app, verifier)),
        Row(
            "AccessJWT + RequestBudget",
            # A budget no run reaches: every request is counted and passed.
            AccessJWTMiddleware(RequestBudgetMiddleware(bare_app, MAX_REQUESTS_PER_WINDOW), verifier),
        ),
        # The stack below its outermost layer: the request-size layer's share of the whole, in the same run.
        Row("full guard() stack less BodySizeLimit", guard(bare_app, config).app),  # type: ignore[attr-defined]
        Row("full guard() stack, no tool policy", guard(bare_app, config), TARGET_ADDED_US),
        Row(
            "full guard() stack, request budgets on",
            guard(
                bare_app, dataclasses.replace(config, limits=LimitSettings(requests_per_minute=MAX_REQUESTS_PER_WINDOW))
            ),
            TARGET_ADDED_US,
        ),
    ]


def print_table(rows: Sequence[Row], samples: dict[str, list[float]], plan: Plan) -> None:
    bare = statistics.median(samples[rows[0].label])
    print(f"{plan.rounds} rounds of {plan.iterations} requests ({plan.warmup} warm-up discarded), µs per request")
    print(f"{'row':<40} {'median':>7} {'min-max':>13} {'added':>7} {'ratio':>6}  target")
    for row in rows:
        row_samples = samples[row.label]
        median = statistics.median(row_samples)
        spread = f"{min(row_samples):.2f}-{max(row_samples):.2f}"
        added = median - bare
        verdict = ""
        if row.target is not None:
            verdict = f"< {row.target:.0f} µs added  {'met' if added < row.target else 'MISSED'}"
        print(f"{row.label:<40} {median:>7.2f} {spread:>13} {added:>7.2f} {median / bare:>6.2f}  {verdict}")


def verifiers_in(app: ASGIApp) -> list[AccessVerifier]:
    """The verifiers a stack built for itself, so they can be closed."""
    found = []
    while app is not None:
        if isinstance(app, AccessJWTMiddleware):
            found.append(app.verifier)
        app = getattr(app, "app", None)
    return found


def all_verifiers(rows: Sequence[Row]) -> list[AccessVerifier]:
    return [verifier for row in rows if row.label.startswith("full") for verifier in verifiers_in(row.app)]


async def benchmark(plan: Plan, *, profile: bool) -> None:
    with LocalAccess() as issuer:
        access = issuer.config()
        config = GuardConfig(
            access=access,
            cors=CORSSettings(allowed_hosts=(HOST,)),
            service_token=ServiceTokenSettings(secrets=(SHARED_SECRET,)),
        )
        verifier = AccessVerifier(access)
        rows = build_rows(config, verifier)
        scope = request_scope(issuer.user_token("alice@example.com"))
        send = StatusRecorder()
        try:
            # First requests fetch the keys and put the token in each verifier's cache; every row must pass.
            for row in rows:
                await row.app(dict(scope), receive, send)
                assert send.status == 200, f"{row.label} answered {send.status}, not 200"
            if profile:
                await profile_stack(rows[-2].app, scope, send, plan.iterations * plan.rounds)
                return
            samples: dict[str, list[float]] = {row.label: [] for row in rows}
            for round_number in range(plan.warmup + plan.rounds):
                gc.collect()  # so a collection triggered by the previous round does not land in this one
                # Rows interleaved within a round, so drift in the machine's speed hits all of them alike.
                figures = {row.label: await time_requests(row.app, scope, send, plan.iterations) for row in rows}
                if round_number >= plan.warmup:
                    for label, figure in figures.items():
                        samples[label].append(figure)
            assert send.status == 200
            print_table(rows, samples, plan)
        finally:
            for closing in [verifier, *all_verifiers(rows)]:
                await closing.aclose()


async def profile_stack(app: ASGIApp, scope: Scope, send: StatusRecorder, requests: int) -> None:
    # With the token cached nothing suspends, so the profile holds the stack and nothing of the loop.
    profiler = cProfile.Profile()
    profiler.enable()
    await time_requests(app, scope, send, requests)
    profiler.disable()
    print(f"full guard() stack, {requests} requests, by own time:")
    pstats.Stats(profiler).sort_stats(pstats.SortKey.TIME).print_stats(25)
    print("by cumulative time:")
    pstats.Stats(profiler).sort_stats(pstats.SortKey.CUMULATIVE).print_stats(30)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and requests, for a smoke run")
    parser.add_argument("--profile", action="store_true", help="profile the full stack instead of timing")
    arguments = parser.parse_args(argv)
    # Allow decisions are logged at INFO: measured as a deployment that logs refusals only runs, with no handler's
    # cost (a file, a network sink) counted as the middleware's.
    logging.getLogger("mcp_access_guard").setLevel(logging.WARNING)
    asyncio.run(benchmark(QUICK if arguments.quick else FULL, profile=arguments.profile))


if __name__ == "__main__":
    main()
