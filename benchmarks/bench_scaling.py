"""How the guard's costs grow with the work: tools in a listing, the size of each tool's schema, rules in a policy,
email domains in a rule, distinct tokens in the verifier's cache. Every figure in a table is a ratio to the smallest
case measured in the same run, beside the ratio of the work itself, so growth faster than the work shows.

    python benchmarks/bench_scaling.py            # full run, a few minutes (it mints 100,000 tokens)
    python benchmarks/bench_scaling.py --quick    # well under a minute, smaller sizes

In process, no network. The listing filter is `ToolPolicyMiddleware` around a trivial app that answers a
`tools/list` with a prepared body (compact JSON, as the mcp SDK writes it), against that app alone; a decision is
`ToolPolicy.decide` for a `tools/call`; the verifier's cached path is `AccessVerifier.verify` of tokens already in its
cache, each call a different one (callers spread over the whole cache) and one caller calling again.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import logging
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

import bench_tools
from bench_common import Section
from mcp_access_guard import AccessConfig, AccessIdentity, AccessVerifier, Rule, ToolPolicy
from mcp_access_guard.identity import bind_identity
from mcp_access_guard.middleware.tools import ToolPolicyMiddleware
from mcp_access_guard.testing import LocalAccess
from mcp_access_guard.verifier import RECENT_IDENTITIES

LISTING_TITLE = "Scaling: the listing filter"
DECISION_TITLE = "Scaling: a tools/call decision"
VERIFIER_TITLE = "Scaling: the verifier's cached path"
CALLER = AccessIdentity(subject="u1", issuer="https://team.example", expires_at=2**40, email="eve@example.com")
# Enough rounds for a median; each round long enough (about 20 ms) that the clock's resolution does not matter.
ROUNDS, WARMUP, ROUND_SECONDS = 9, 2, 0.02
# The listing filter's targets for the 22-tool listing (issue 16): what a hidden tool costs, not a visible one.
LISTING_TARGETS_US = {"one hidden": 15.0, "none hidden": 3.0}
FLOOR = "tools not covered (the layer's floor)"
QUICK_ROUNDS, QUICK_WARMUP = 5, 1


# -- timing ---------------------------------------------------------------------------------------------------------


async def per_call_us(call: Callable[[], Awaitable[Any]], iterations: int) -> float:
    started = time.perf_counter_ns()
    for _ in range(iterations):
        await call()
    return (time.perf_counter_ns() - started) / iterations / 1000


async def iterations_for(call: Callable[[], Awaitable[Any]]) -> int:
    """How many calls make a round of about `ROUND_SECONDS`."""
    once = await per_call_us(call, 3)
    return max(3, int(ROUND_SECONDS * 1e6 / max(once, 0.05)))


async def interleaved(calls: dict[str, Callable[[], Awaitable[Any]]], quick: bool) -> dict[str, list[float]]:
    """µs per call of each entry, rounds interleaved (drift in the machine hits all alike), warm-up dropped."""
    rounds, warmup = (QUICK_ROUNDS, QUICK_WARMUP) if quick else (ROUNDS, WARMUP)
    counts = {label: await iterations_for(call) for label, call in calls.items()}
    samples: dict[str, list[float]] = {label: [] for label in calls}
    for round_number in range(warmup + rounds):
        gc.collect()
        for label, call in calls.items():
            figure = await per_call_us(call, counts[label])
            if round_number >= warmup:
                samples[label].append(figure)
    return samples


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def us(value: float) -> str:
    return f"{value:.1f} µs" if value >= 10 else f"{value:.2f} µs"


def us_spread(samples: Sequence[float]) -> str:
    """The median, and the min-max of the rounds."""
    low, high = min(samples), max(samples)
    return f"{us(statistics.median(samples))} ({low:.1f}-{high:.1f})"


# -- the listing filter ---------------------------------------------------------------------------------------------


def listing_result(tools: int, schema_bytes: int) -> bytes:
    """The `result` of a tools/list answer as the SDK writes it (compact), each input schema padded to
    `schema_bytes`."""

    def schema(index: int) -> dict[str, Any]:
        properties: dict[str, Any] = {"a": {"type": "integer", "title": "A"}, "b": {"type": "integer", "title": "B"}}
        padding = 0
        while len(json.dumps(properties, separators=(",", ":"))) < schema_bytes - 80:
            properties[f"field{padding}"] = {"type": "string", "title": f"Field {padding}", "description": "x" * 60}
            padding += 1
        return {"type": "object", "properties": properties, "required": ["a", "b"], "title": f"tool{index}Arguments"}

    entries = [
        {"name": f"tool{index}", "description": f"Tool number {index}", "inputSchema": schema(index)}
        for index in range(tools)
    ]
    return json.dumps({"tools": entries}, separators=(",", ":")).encode()


async def sdk_listing_result() -> bytes:
    """The `result` the mcp SDK itself answers for bench_tools's 22-tool server."""
    mcp = bench_tools.server()
    app = mcp.streamable_http_app(json_response=True, stateless_http=True)
    async with app.router.lifespan_context(app):
        answer = await bench_tools.call(app, *bench_tools.request("tools/list", {}))
    text = answer.decode()
    start = text.index('"result":') + len('"result":')
    result = text[start : text.rindex("}")]
    assert json.loads(result)["tools"][0]["name"] == "add", result[:200]
    return result.encode()


def listing_app(result: bytes) -> ASGIApp:
    """Answers a tools/list with `result`, under the id the request came with (the guard may send its own)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = json.loads((await receive())["body"])
        body = b'{"jsonrpc":"2.0","id":' + json.dumps(request["id"]).encode() + b',"result":' + result + b"}"
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


LIST_REQUEST = b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}'
LIST_SCOPE: Scope = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "POST",
    "scheme": "http",
    "path": "/mcp",
    "raw_path": b"/mcp",
    "root_path": "",
    "query_string": b"",
    "headers": [
        (b"host", b"127.0.0.1:8000"),
        (b"accept", b"application/json, text/event-stream"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(LIST_REQUEST)).encode()),
    ],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
}


def asgi_call(app: ASGIApp, request: bytes, scope: Scope) -> Callable[[], Awaitable[None]]:
    async def receive() -> Message:
        return {"type": "http.request", "body": request, "more_body": False}

    async def send(message: Message) -> None:
        pass

    async def call() -> None:
        request_scope = dict(scope)
        with bind_identity(request_scope, CALLER):
            await app(request_scope, receive, send)

    return call


async def answer_of(app: ASGIApp) -> bytes:
    out = bytearray()

    async def receive() -> Message:
        return {"type": "http.request", "body": LIST_REQUEST, "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            out.extend(message.get("body", b""))

    scope = dict(LIST_SCOPE)
    with bind_identity(scope, CALLER):
        await app(scope, receive, send)
    return bytes(out)


async def listing_filter(quick: bool) -> Section:
    section = Section(LISTING_TITLE)
    cases: list[tuple[str, bytes, int]] = [("22 tools, the mcp SDK's answer", await sdk_listing_result(), 22)]
    sizes = [(10, 0), (100, 0), (1000, 0), (10, 10 * 1024), (100, 10 * 1024)] + ([] if quick else [(1000, 10 * 1024)])
    cases += [
        (f"{tools} tools, {'10 KiB' if schema_bytes else 'small'} schemas", listing_result(tools, schema_bytes), tools)
        for tools, schema_bytes in sizes
    ]
    hidden_tool = {"22 tools, the mcp SDK's answer": "secret"}
    rows = []
    first: dict[str, tuple[float, int]] = {}
    for case, result, tools in cases:
        hidden = hidden_tool.get(case, "tool0")
        policies = {
            "one hidden": ToolPolicy({hidden: Rule(emails=["boss@example.com"])}),
            "none hidden": ToolPolicy({hidden: Rule(emails=[CALLER.email or ""])}),
        }
        if case in hidden_tool:
            # What the layer costs any POST it reads and lets through (a policy with nothing to say about tools).
            policies[FLOOR] = ToolPolicy(prompts={"briefing": Rule(emails=["boss@example.com"])})
        bare = listing_app(result)
        calls = {"bare": asgi_call(bare, LIST_REQUEST, LIST_SCOPE)}
        for label, policy in policies.items():
            guarded = ToolPolicyMiddleware(bare, policy)
            answer = json.loads(await answer_of(guarded))
            shown = [tool["name"] for tool in answer["result"]["tools"]]
            assert len(shown) == tools - (label == "one hidden"), f"{case}, {label}: {len(shown)} of {tools} shown"
            assert (hidden in shown) is (label != "one hidden"), f"{case}, {label}"
            calls[label] = asgi_call(guarded, LIST_REQUEST, LIST_SCOPE)
        samples = await interleaved(calls, quick)
        bare_us = statistics.median(samples["bare"])
        for label in policies:
            added_samples = [sample - bare_us for sample in samples[label]]
            added = statistics.median(added_samples)
            if case in hidden_tool:
                figure = section.add(f"{case}, {label}: added", "µs", added_samples)
                if label in LISTING_TARGETS_US:
                    limit = LISTING_TARGETS_US[label]
                    figure.target, figure.met = f"< {limit:g} µs added", added < limit
                continue
            base_added, base_bytes = first.setdefault(label, (added, len(result)))
            rows.append(
                [
                    case,
                    label,
                    f"{len(result) / 1024:.0f} KiB",
                    us(bare_us),
                    us_spread(added_samples),
                    f"{added / tools:.2f} µs",
                    f"{added / base_added:.1f}x" if base_added > 0 else "-",
                    f"{len(result) / base_bytes:.1f}x",
                ]
            )
    section.tables.append(
        table(
            [
                "listing",
                "policy",
                "answer size",
                "app alone",
                "added by the filter",
                "added per tool",
                "added, to the first row",
                "bytes, to the first row",
            ],
            rows,
        )
    )
    section.notes.append(
        "Added time: each round's (ToolPolicyMiddleware + app) less the median round of the app alone, rounds "
        "interleaved in one run. The app answers a prepared `result` under the request's own id. The layer's floor "
        "is what it costs any POST it reads (parsed strictly, routing headers checked) and lets through: the listing "
        "filter's own cost is what a row adds above it. 'To the first row' compares each policy with its own "
        "10-tool, small-schema row: growth no faster than the work means the first ratio stays at or under the "
        "second."
    )
    section.notes.append(
        "The steady state: the layer keeps each listing it has read (found by its length and ends, then compared "
        "byte for byte) and the result it wrote for each set of hidden names, bounded by bytes. A JSON answer is "
        "then finished without being decoded: the cost left grows with the bytes copied, not with the tools."
    )
    return section


# -- a tools/call decision --------------------------------------------------------------------------------------


def deciding(policy: ToolPolicy, name: str, identity: AccessIdentity) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        policy.decide("tool", name, identity)

    return call


async def decisions(quick: bool) -> Section:
    section = Section(DECISION_TITLE)
    alice = AccessIdentity(subject="a", issuer="https://team.example", expires_at=2**40, email="alice@corp.example")
    cases: dict[str, tuple[ToolPolicy, str, AccessIdentity, bool]] = {}
    for count in (1, 100, 10_000):
        rules = {f"tool{index}": Rule(emails=[f"user{index}@corp.example"]) for index in range(count)}
        rules[f"tool{count // 2}"] = Rule(emails=["alice@corp.example"])
        rules_text = f"{count:,} rule{'s' if count > 1 else ''}"
        cases[f"{rules_text}, allowed"] = (ToolPolicy(rules), f"tool{count // 2}", alice, True)
        cases[f"{rules_text}, refused"] = (ToolPolicy(rules, default="deny"), "unlisted", alice, False)
    domains = [f"team{index}.example" for index in range(1000)]
    wildcards = [f"*.unit{index}.example" for index in range(1000)]
    for label, entries, email, allowed in (
        ("1,000 email domains, caller's domain listed", domains, "bob@team500.example", True),
        ("1,000 email domains, caller's domain not listed", domains, "bob@elsewhere.example", False),
        ("1,000 wildcard domains, caller under one", wildcards, "bob@a.unit500.example", True),
        ("1,000 wildcard domains, caller under none", wildcards, "bob@a.elsewhere.example", False),
    ):
        bob = AccessIdentity(subject="b", issuer="https://team.example", expires_at=2**40, email=email)
        cases[label] = (ToolPolicy({"tool": Rule(email_domains=entries)}), "tool", bob, allowed)
    calls = {}
    for label, (policy, name, identity, allowed) in cases.items():
        assert policy.decide("tool", name, identity)[0] is allowed, label
        calls[label] = deciding(policy, name, identity)
    samples = await interleaved(calls, quick)
    rows = []
    for label, values in samples.items():
        baseline = f"1 rule, {'allowed' if cases[label][3] else 'refused'}"
        ratio = statistics.median(values) / statistics.median(samples[baseline])
        rows.append([label, us_spread(values), f"{ratio:.2f}x {baseline}"])
    section.tables.append(table(["policy and caller", "decide() per call", "to the same answer with 1 rule"], rows))
    section.notes.append(
        "`ToolPolicy.decide('tool', name, identity)`, the decision behind every tools/call, per call; domains are "
        "one rule holding 1,000 entries. Work that does not grow: one name looked up, one caller matched."
    )
    return section


# -- the verifier's cached path -------------------------------------------------------------------------------------


def verify_in_turn(verifier: AccessVerifier, tokens: list[str]) -> Callable[[], Awaitable[None]]:
    turn = itertools.cycle(tokens)

    async def call() -> None:
        await verifier.verify(next(turn))

    return call


async def cached_path(quick: bool) -> Section:
    section = Section(VERIFIER_TITLE)
    sizes = (10, 1_000, 5_000) if quick else (10, 10_000, 100_000)
    rows = []
    with LocalAccess() as issuer:
        print(f"minting {max(sizes)} tokens ...", file=sys.stderr, flush=True)
        tokens = [issuer.user_token(f"caller{index}@example.com") for index in range(max(sizes))]
        first_us: dict[str, float] = {}
        for size in sizes:
            verifier = AccessVerifier(AccessConfig(issuer.url, issuer.audience, token_cache_size=size))
            cached = tokens[:size]
            await verifier.verify(cached[0])
            gc.collect()
            tracked_before = len(gc.get_objects())
            tracemalloc.start()
            before, _ = tracemalloc.get_traced_memory()
            for token in cached:
                # As the stack serves a caller: verified, then bound (which builds the SDK's view of the identity).
                with bind_identity({}, await verifier.verify(token)):
                    pass
            held, _ = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            gc.collect()
            tracked = (len(gc.get_objects()) - tracked_before) / size
            calls = {"spread": verify_in_turn(verifier, cached), "returning": verify_in_turn(verifier, cached[-1:])}
            samples = await interleaved(calls, quick)
            await verifier.aclose()
            per_token = (held - before) / size
            spread, returning = samples["spread"], samples["returning"]
            first = (
                first_us.setdefault("spread", statistics.median(spread)),
                first_us.setdefault("returning", statistics.median(returning)),
            )
            rows.append(
                [
                    f"{size:,}",
                    f"{us_spread(spread)}, {statistics.median(spread) / first[0]:.1f}x",
                    f"{us_spread(returning)}, {statistics.median(returning) / first[1]:.1f}x",
                    f"{per_token:.0f} B + the token ({len(cached[0])} B)",
                    f"{tracked:.2f}",
                ]
            )
    section.tables.append(
        table(
            [
                "tokens in the cache",
                "verify, callers spread over the cache (to the first row)",
                "verify, one caller again (to the first row)",
                "memory per cached token",
                "tracked objects per cached token",
            ],
            rows,
        )
    )
    section.notes.append(
        "Each size fills a fresh verifier (its bound raised to the size) through verify and the identity binding a "
        "request makes; 'spread' then calls each cached token in turn, 'one caller again' the same token. Memory is "
        "what tracemalloc sees allocated while filling (the token strings were made before, and a cache keeps each "
        "as its key); tracked objects are counted with gc.get_objects() after a full collection."
    )
    section.notes.append(
        f"The cost does not grow with the cache; it steps once, when callers outnumber the {RECENT_IDENTITIES} "
        "identities the verifier keeps ready: any other cached token has its identity rebuilt from its own payload "
        "(decoded again, no signature check). That is the price of keeping a full cache out of every garbage "
        "collection: a ready identity is about a dozen objects the collector walks, a flat entry none."
    )
    return section


async def collect(quick: bool = False) -> list[Section]:
    for name in ("mcp_access_guard", "mcp", "httpx"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return [await listing_filter(quick), await decisions(quick), await cached_path(quick)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds")
    arguments = parser.parse_args(argv)
    for section in asyncio.run(collect(arguments.quick)):
        print(f"## {section.title}\n")
        for figure in section.figures:
            if figure.target is not None:
                verdict = "met" if figure.met else "MISSED"
                print(f"{figure.label}: {figure.median:.2f} {figure.unit} ({figure.target}: {verdict})")
        for rendered in section.tables:
            print(rendered, end="\n\n")
        for note in section.notes:
            print(f"- {note}")
        print()


if __name__ == "__main__":
    main()
