"""Floods against the guarded stack over real HTTP, with the server's event-loop lag measured while each runs.

    python benchmarks/bench_floods.py [--quick] [--runs N]

The `guard()` stack (around a trivial app, so what is measured is the guard) runs under uvicorn in this process,
with a ticker task in the same event loop recording how late it wakes, and `gc.callbacks` recording every garbage
collection beside it; another process sends the flood over loopback, 32 requests in flight over keep-alive
connections. Floods: tokens with random `kid`s (each unknown kid may trigger a key fetch; the JWKS cache allows one
per cooldown), garbage tokens, and tokens of distinct valid callers (the verified-token cache must stay at its
bound); the last one also against the bare app, as the baseline. Each flood runs three times. The token cache's
memory at its bound is measured apart, with tracemalloc, and what a full garbage collection costs with it full.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import logging
import math
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import httpx
from starlette.types import Receive, Scope, Send

from bench_common import Figure, GCWatch, LagTicker, Section
from bench_stack import bare_app, verifiers_in
from mcp_access_guard import AccessConfig, AccessVerifier, GuardConfig, guard
from mcp_access_guard.identity import bind_identity
from mcp_access_guard.testing import LocalAccess, serve

TITLE = "Floods"
CACHE_TITLE = "Token cache: memory and garbage collection"
WORST_LAG_TARGET_MS = 10.0
P99_LAG_TARGET_MS = 2.0
RUNS = 3
BARE = "bare app, distinct valid callers"
# Short, so a flood of a few seconds spans several cooldowns and the fetch bound is really exercised.
COOLDOWN_SECONDS = 1.0
IN_FLIGHT = 32
# Requests per second the sender offers: about what the guarded server answers on one core of this kind of machine
# for fresh valid tokens, half of what it answers the bare app, so the lag measures pauses, not a saturated loop.
FLOOD_RATE = 400
BODY = b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}'


def pinned_cores() -> tuple[int, int] | None:
    """(the server's core, the flood sender's core), when `taskset` can keep them apart."""
    cores = sorted(os.sched_getaffinity(0))
    if shutil.which("taskset") is None or len(cores) < 2:
        return None
    return cores[0], cores[1]


PINNING = pinned_cores()


async def trivial_app(scope: Scope, receive: Receive, send: Send) -> None:
    """bench_stack's bare app, plus the lifespan protocol uvicorn runs first."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await bare_app(scope, receive, send)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def random_kid_tokens(valid: str, count: int) -> list[str]:
    """A valid token's claims and signature under a header naming a kid nobody publishes."""
    _, payload, signature = valid.split(".")
    headers = (json.dumps({"alg": "RS256", "kid": secrets.token_hex(32), "typ": "JWT"}) for _ in range(count))
    return [f"{b64url(header.encode())}.{payload}.{signature}" for header in headers]


def garbage_tokens(count: int) -> list[str]:
    shapes = [
        lambda: secrets.token_urlsafe(600),
        lambda: ".".join(secrets.token_urlsafe(200) for _ in range(3)),
        lambda: f"{b64url(b'{not json')}.{secrets.token_urlsafe(300)}.{secrets.token_urlsafe(256)}",
        lambda: f"{b64url(json.dumps({'alg': 'none'}).encode())}.{secrets.token_urlsafe(300)}.",
        lambda: "e30." * 50 + secrets.token_hex(8),
    ]
    return [shapes[index % len(shapes)]() for index in range(count)]


async def flood_sender(url: str, tokens: Sequence[str]) -> dict[str, object]:
    """Run in the load process: each token once, `IN_FLIGHT` keep-alive connections at a time; the statuses seen.

    Plain HTTP/1.1 over asyncio streams, requests prepared up front: a client library would cost the sender more
    than the server spends refusing, and the flood would measure the sender. Offered at `FLOOD_RATE`."""
    target = httpx.URL(url)
    statuses: Counter[int] = Counter()
    queue = [
        (
            f"POST {target.raw_path.decode()} HTTP/1.1\r\nHost: {target.netloc.decode()}\r\n"
            "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
            f"Cf-Access-Jwt-Assertion: {token}\r\nContent-Length: {len(BODY)}\r\n\r\n"
        ).encode()
        + BODY
        for token in reversed(tokens)
    ]

    async def connection(offset: float) -> None:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        interval = IN_FLIGHT / FLOOD_RATE
        next_send = time.monotonic() + offset
        try:
            while True:
                # Paced, so the flood arrives at FLOOD_RATE whatever the server does; a connection whose answer comes
                # late sends its next request at once, and the flood never has more than IN_FLIGHT in flight.
                await asyncio.sleep(max(0.0, next_send - time.monotonic()))
                if not queue:
                    break
                next_send += interval
                writer.write(queue.pop())
                head = await reader.readuntil(b"\r\n\r\n")
                status_line, _, header_block = head.partition(b"\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", header_block)
                assert length is not None, head
                await reader.readexactly(int(length[1]))
                statuses[int(status_line.split()[1])] += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection(index / FLOOD_RATE) for index in range(IN_FLIGHT)))
    return {"statuses": {str(status): count for status, count in statuses.items()}}


async def send_flood(url: str, tokens: Sequence[str], scratch: Path) -> tuple[dict[str, int], float]:
    tokens_file = scratch / "flood.json"
    tokens_file.write_text(json.dumps(list(tokens)))
    started = time.perf_counter()
    command = [sys.executable, __file__, "--send", url, str(tokens_file)]
    if PINNING is not None:
        command = ["taskset", "-c", str(PINNING[1]), *command]
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    output, _ = await process.communicate()
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError("the flood sender failed")
    return json.loads(output.decode().strip().splitlines()[-1])["statuses"], elapsed


async def run_flood(url: str, tokens: Sequence[str], scratch: Path) -> tuple[dict[str, int], float, LagTicker, GCWatch]:
    # Each flood starts from a collected heap, so one flood's leftovers do not bring a collection into the next.
    gc.collect()
    ticker = LagTicker()
    with GCWatch() as collections:
        ticker.start()
        statuses, elapsed = await send_flood(url, tokens, scratch)
        await ticker.stop()
    return statuses, elapsed, ticker, collections


def record_pauses(
    section: Section, name: str, ticker: LagTicker, collections: GCWatch, baseline: str | None, requests: int
) -> None:
    """The loop-lag figures of one flood run, and the garbage collections beside them; lags as ratios to the same
    figures of the `baseline` flood."""
    split = collections.lags_split(ticker)
    worst_tick, worst_in_gc = max(split, key=lambda pair: pair[0].lag, default=(None, 0.0))
    for figure, value in (
        ("worst event-loop lag", ticker.worst_ms),
        ("p99 event-loop lag", ticker.percentile_ms(0.99)),
    ):
        append(section, f"{name}: {figure}", "ms", value, baseline and f"{baseline}: {figure}")
    append(section, f"{name}: of the worst lag, in garbage collection", "ms", worst_in_gc * 1000)
    descheduled = worst_tick.descheduled * 1000 if worst_tick else 0.0
    append(section, f"{name}: of the worst lag, descheduled by the machine", "ms", descheduled)
    # What this process itself held the loop for, outside the collector: the lag less its collections, less the
    # time the machine ran something else instead.
    busy = sorted(max(0.0, tick.lag - in_gc - tick.descheduled) for tick, in_gc in split) or [0.0]
    append(section, f"{name}: worst lag on the CPU outside garbage collection", "ms", busy[-1] * 1000)
    p99 = busy[min(len(busy) - 1, int(0.99 * len(busy)))]
    append(section, f"{name}: p99 lag on the CPU outside garbage collection", "ms", p99 * 1000)
    for generation in (0, 1, 2):
        append(section, f"{name}: generation {generation} collections", "collections", collections.count(generation))
    append(section, f"{name}: longest generation 2 collection", "ms", collections.worst_ms(2))
    append(
        section,
        f"{name}: longest generation 0 or 1 collection",
        "ms",
        max(collections.worst_ms(0), collections.worst_ms(1)),
    )
    # The same on the CPU: a collection's wall time includes whatever time the machine gave to other work.
    append(section, f"{name}: longest collection, on the CPU", "ms", collections.worst_cpu_ms())
    # Deterministic, unlike the times: objects only the collector could free (cycles), per 1,000 requests.
    append(section, f"{name}: cyclic garbage per 1,000 requests", "objects", collections.collected() * 1000 / requests)


async def collect(quick: bool = False, runs: int | None = None) -> list[Section]:
    count = 500 if quick else 10_000
    runs = runs or (1 if quick else RUNS)
    section = Section(TITLE)
    cache = Section(CACHE_TITLE)
    # Refusals are logged at WARNING: records are made (their cost counted), a handler's output is not.
    guard_logger = logging.getLogger("mcp_access_guard")
    guard_logger.addHandler(logging.NullHandler())
    guard_logger.propagate = False
    for name in ("httpx", "uvicorn", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.WARNING)
    guard_logger.setLevel(logging.WARNING)
    with LocalAccess() as issuer, tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        print(f"minting {count} valid tokens ...", file=sys.stderr, flush=True)
        valid = [issuer.user_token(f"caller{index}@example.com") for index in range(count)]
        floods = {
            "random kid": (random_kid_tokens(valid[0], count), "403"),
            "garbage": (garbage_tokens(count), "403"),
            "distinct valid callers": (valid, "200"),
        }
        access = AccessConfig(issuer.url, issuer.audience, refetch_cooldown=COOLDOWN_SECONDS)
        # The server (this thread's event loop) on one core, the flood sender on another: the server is not
        # starved by its own load. Other work on the machine still shares the cores.
        affinity = os.sched_getaffinity(0)
        if PINNING is not None:
            os.sched_setaffinity(0, {PINNING[0]})
        try:
            for run in range(runs):
                print(f"flood run {run + 1} of {runs} ...", file=sys.stderr, flush=True)
                # The same flood against the unguarded app in the same process: what uvicorn, the loop and the
                # process's own heap (the mcp SDK is imported) cost without the guard.
                async with serve(trivial_app) as base_url:
                    statuses, elapsed, ticker, collections = await run_flood(base_url + "/mcp", valid, scratch)
                    assert statuses == {"200": len(valid)}, f"bare: {statuses}"
                    record_pauses(section, BARE, ticker, collections, None, len(valid))
                    append(section, f"{BARE}: requests per second", "req/s", len(valid) / elapsed)
                # A fresh guarded server per run, so every run's valid callers are new to its verifier.
                app = guard(trivial_app, GuardConfig(access=access))
                verifier = verifiers_in(app)[0]
                async with serve(app) as base_url:
                    url = base_url + "/mcp"
                    async with httpx.AsyncClient() as client:
                        warm = await client.post(url, content=BODY, headers={"Cf-Access-Jwt-Assertion": valid[0]})
                        assert warm.status_code == 200, warm.status_code
                    for name, (tokens, expected) in floods.items():
                        fetches_before = verifier.keys.fetch_count
                        statuses, elapsed, ticker, collections = await run_flood(url, tokens, scratch)
                        fetches = verifier.keys.fetch_count - fetches_before
                        assert statuses == {expected: len(tokens)}, f"{name}: {statuses}"
                        record_pauses(section, name, ticker, collections, BARE, len(tokens))
                        append(section, f"{name}: requests per second", "req/s", len(tokens) / elapsed)
                        if name == "random kid":
                            allowed = math.ceil(elapsed / COOLDOWN_SECONDS)
                            figure = append(section, f"{name}: JWKS fetches made", "fetches", fetches)
                            figure.target = f"<= 1 per {COOLDOWN_SECONDS:g} s cooldown"
                            figure.met = fetches <= allowed and figure.met is not False
                        if name == "distinct valid callers":
                            # The cache's length is private; read here only to show the bound holds.
                            held = len(verifier._verified)
                            figure = append(section, f"{name}: tokens held in the verified-token cache", "tokens", held)
                            figure.target = f"<= the bound ({access.token_cache_size})"
                            figure.met = held <= access.token_cache_size and figure.met is not False
                await verifier.aclose()
                del app, verifier
        finally:
            os.sched_setaffinity(0, affinity)
        pinning = (
            f"the server pinned to core {PINNING[0]} and the sender to core {PINNING[1]} (taskset)"
            if PINNING
            else "not pinned to cores"
        )
        for name in (BARE, *floods):
            worst = section.find(f"{name}: worst event-loop lag")
            worst.target, worst.met = f"< {WORST_LAG_TARGET_MS:g} ms in every run", worst.high < WORST_LAG_TARGET_MS
            p99 = section.find(f"{name}: p99 event-loop lag")
            p99.target, p99.met = f"< {P99_LAG_TARGET_MS:g} ms in every run", p99.high < P99_LAG_TARGET_MS
        section.notes.append(
            f"{count} requests per flood offered at {FLOOD_RATE} per second, at most {IN_FLIGHT} in flight, sent by a "
            "separate process over loopback (plain HTTP/1.1, keep-alive); each flood "
            f"run {runs} time(s), each run against a fresh server (the bare app, then a guarded one), each flood "
            f"started from a collected heap; {pinning}. Ticker interval 1 ms. Key refetch cooldown set to "
            f"{COOLDOWN_SECONDS:g} s (default 30 s) so the flood spans several cooldowns."
        )
        section.notes.append(
            "Garbage collections are recorded through `gc.callbacks` (start, duration, generation) in the server's "
            "process. Of the worst tick: how much of its window a collection ran in, and how long the loop's thread "
            "was descheduled (off the CPU, by `time.thread_time()`, beyond the interval it may have idled: the "
            "machine ran something else). 'On the CPU outside garbage collection' is each tick with both taken out: "
            "at most what the process itself held the loop for. 'Longest collection, on the CPU' is the longest "
            "collection's own CPU time, beside its wall time above."
        )
        section.notes.append(
            "'Cyclic garbage' is what the flood's collections found unreachable (`gc.callbacks`' `collected`): "
            "objects only the collector frees, counted, not timed. The guard's request path makes none; in the "
            "random-kid flood it comes from the key fetches (httpx's and the local issuer's own objects, as many as "
            "a plain httpx GET of the same URL makes), one fetch per cooldown."
        )
        await measure_cache_memory(cache, issuer, valid, quick)
        await measure_collection_cost(cache, issuer, valid)
    return [section, cache]


async def measure_cache_memory(section: Section, issuer: LocalAccess, tokens: list[str], quick: bool) -> None:
    """Memory the verified-token cache holds once full, and after as many tokens again (it must not grow)."""
    bound = 1_000 if quick else 10_000
    extra = tokens[: bound // 5]
    for _ in range(1 if quick else 3):
        verifier = AccessVerifier(AccessConfig(issuer.url, issuer.audience, token_cache_size=bound))
        await verifier.verify(tokens[0])
        # Tokens are built before tracing: what is traced is what the cache keeps, identities and all.
        filling = tokens[:bound]
        overflow = [issuer.user_token(f"late{index}@example.com") for index in range(len(extra))]
        tracemalloc.start()
        base, _ = tracemalloc.get_traced_memory()
        for token in filling:
            await verifier.verify(token)
        full, _ = tracemalloc.get_traced_memory()
        for token in overflow:
            await verifier.verify(token)
        after, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        await verifier.aclose()
        append(section, f"token cache at its bound ({bound} tokens), memory held", "MiB", (full - base) / 2**20)
        append(section, "memory held per cached token", "KiB", (full - base) / bound / 1024)
        append(
            section,
            f"growth after {len(overflow)} more distinct tokens past the bound",
            "MiB",
            (after - full) / 2**20,
        )
    section.notes.append(
        "Measured with tracemalloc: what the cache allocates (a flat entry per token, identities for the 256 most "
        "recent callers), not the token strings it keeps as keys (minted before tracing starts, about 0.9 KiB each "
        "here). The growth past the bound should be about zero."
    )


async def measure_collection_cost(section: Section, issuer: LocalAccess, tokens: list[str]) -> None:
    """What a full garbage collection costs in this process (the mcp SDK imported), with the verifier's cache empty
    and full, and the same after `gc.freeze()` at start-up, as a process the CLI runs could do."""
    nothing = "a full collection, nothing cached"
    frozen_nothing = "a full collection after gc.freeze(), nothing cached"
    for frozen in (False, True):
        gc.collect()
        if frozen:
            gc.freeze()
        empty = [full_collection_ms() for _ in range(5)]
        tracked_before = len(gc.get_objects())
        verifier = AccessVerifier(AccessConfig(issuer.url, issuer.audience, token_cache_size=len(tokens)))
        for token in tokens:
            # As the stack serves a caller: verified, then bound (which builds the SDK's view of the identity).
            with bind_identity({}, await verifier.verify(token)):
                pass
        gc.collect()
        tracked = (len(gc.get_objects()) - tracked_before) / len(tokens)
        full = [full_collection_ms() for _ in range(5)]
        await verifier.aclose()
        del verifier
        if frozen:
            gc.unfreeze()
            section.add(frozen_nothing, "ms", empty, baseline=nothing)
            section.add(
                f"a full collection after gc.freeze(), {len(tokens)} tokens cached", "ms", full, baseline=nothing
            )
        else:
            section.add(nothing, "ms", empty)
            section.add(f"a full collection, {len(tokens)} tokens cached", "ms", full, baseline=nothing)
            section.add("objects the collector tracks, per cached token", "objects", [tracked])
    section.notes.append(
        "A full collection timed five times in this process (the guard, the mcp SDK, uvicorn and httpx imported), "
        f"with a verifier holding nothing and holding {len(tokens)} tokens served through verify and the identity "
        "binding; then the same with everything alive before the verifier was made frozen (`gc.freeze()`), as "
        "`serve` could do once start-up is done. Only the 256 most recent callers keep an identity; every other "
        "cached token is a flat tuple the collector stops tracking."
    )


def full_collection_ms() -> float:
    started = time.perf_counter()
    gc.collect()
    return (time.perf_counter() - started) * 1000


def append(section: Section, label: str, unit: str, value: float, baseline: str | None = None) -> Figure:
    """Add a run's sample to a figure, made on first use."""
    try:
        figure = section.find(label)
    except StopIteration:
        return section.add(label, unit, [value], baseline=baseline)
    figure.samples.append(value)
    return figure


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="500 requests per flood instead of 10,000")
    parser.add_argument("--runs", type=int, help=f"runs of each flood (default {RUNS}, 1 with --quick)")
    parser.add_argument("--send", nargs=2, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.send:
        url, tokens_file = arguments.send
        print(json.dumps(asyncio.run(flood_sender(url, json.loads(Path(tokens_file).read_text())))))
        return
    for section in asyncio.run(collect(arguments.quick, arguments.runs)):
        print(f"## {section.title}")
        for figure in section.figures:
            verdict = "" if figure.met is None else ("met" if figure.met else "MISSED")
            runs = " ".join(f"{sample:.2f}" for sample in figure.samples)
            print(f"{figure.label:<66} {runs:>24} {figure.unit:<11} {figure.target or ''} {verdict}")
        for note in section.notes:
            print(note)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
