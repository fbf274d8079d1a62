"""The reference server end to end over real HTTP: bare against behind `guard()`, and its peak memory.

    python benchmarks/bench_http.py [--quick] [--rounds N] [--seconds S] [--callers 1,10] [--method tools/call]

`examples/reference_server.py` runs under uvicorn in its own process, twice: its MCP app bare, and its `app` (the
same MCP app behind `guard()` with a tool policy). Both run at once and are loaded in turn, round after round, so
drift in the machine hits both alike; each cell's headline is the guarded server's throughput as a fraction of
the bare one's, paired round by round (the two runs of a round are seconds apart), with its median and min-max
over the rounds. The load comes from other processes on loopback: `wrk` (one thread, one
connection per caller, the callers' tokens in rotation) and an async `httpx` client script.

Request shape: the modern protocol era, the cheapest realistic one: one POST per call, no session, no
`initialize`, `MCP-Protocol-Version: 2026-07-28` with `Mcp-Method`/`Mcp-Name`, answered with plain JSON. Every request
carries a `Cf-Access-Jwt-Assertion` from a `LocalAccess` running in this process (the bare server ignores it).
Both servers log at WARNING: allow decisions are not written, as a deployment that logs refusals only runs.

With `taskset` (util-linux) and two cores or more, both servers run on one core and the load generator on another,
so the server is never starved by its own load; `py-spy` (pip install py-spy), when installed, then samples each
server under the same load and the report sets where their time goes side by side, package by package.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from bench_common import GCWatch, Section
from mcp_access_guard.jsonrpc import DEFAULT_MAX_BODY_BYTES
from mcp_access_guard.testing import LocalAccess, free_port

TITLE = "The stack end to end over HTTP"
MEMORY_TITLE = "Memory"
REPO = Path(__file__).resolve().parent.parent
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
METHODS = {
    "tools/call": ({"name": "add", "arguments": {"a": 1, "b": 2}}, "add"),
    "tools/list": ({}, None),
}
SERVERS = ("bare", "guarded")
# The same two, each frozen once started (`gc.freeze()`, as `mcp-access-guard serve` does).
FROZEN = {"bare": "bare-frozen", "guarded": "guarded-frozen"}
FROZEN_CALLERS = (100,)
TARGET_RATIO = 0.97


@dataclass(frozen=True)
class Plan:
    rounds: int
    seconds: float
    callers: tuple[int, ...]
    httpx_rounds: int
    memory_rounds: int
    profile_seconds: int
    methods: tuple[str, ...] = tuple(METHODS)
    # The pair of frozen-heap servers measured too.
    frozen: bool = True


# Many short rounds rather than a few long ones: a pair of runs seconds apart sees the same machine, and the median of
# the pairs' ratios shrugs off the rounds that another process's burst (or one more full collection) lands in.
FULL = Plan(rounds=10, seconds=2.0, callers=(1, 10, 100), httpx_rounds=1, memory_rounds=3, profile_seconds=10)
QUICK = Plan(
    rounds=3, seconds=1.0, callers=(1, 10, 100), httpx_rounds=0, memory_rounds=1, profile_seconds=0, frozen=False
)


def pinned_cores() -> tuple[int, int] | None:
    """(the servers' core, the load generator's core), when `taskset` can keep them apart."""
    cores = sorted(os.sched_getaffinity(0))
    if shutil.which("taskset") is None or len(cores) < 2:
        return None
    return cores[0], cores[1]


def on_core(command: list[str], core: int | None) -> list[str]:
    return command if core is None else ["taskset", "-c", str(core), *command]


PINNING = pinned_cores()
SERVER_CORE = PINNING[0] if PINNING else None
LOAD_CORE = PINNING[1] if PINNING else None


def request_body(method: str) -> bytes:
    params, _ = METHODS[method]
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": META}}).encode()


def request_headers(method: str) -> dict[str, str]:
    _, name = METHODS[method]
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": method,
    }
    if name is not None:
        headers["Mcp-Name"] = name
    return headers


# -- the servers ---------------------------------------------------------------------------------------------------


def serve(kind: str, port: int) -> None:
    """Run in the server process: the reference server, bare or guarded, under uvicorn."""
    import logging

    import uvicorn

    sys.path.insert(0, str(REPO))
    from examples import reference_server

    for name in ("mcp_access_guard", "mcp", "uvicorn", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    app = reference_server.app if kind.startswith("guarded") else reference_server.mcp.streamable_http_app()
    if kind.endswith("-frozen"):
        from mcp_access_guard.serve import FreezeHeapAfterStartup

        app = FreezeHeapAfterStartup(app)
    # The garbage collections this server makes, written to a file when the benchmark asks (SIGUSR1).
    watch = GCWatch().__enter__()
    stats_file = gc_stats_file(port)

    def write_stats(*_: object) -> None:
        # CPU time, to be taken out of the server's CPU time.
        full = [collection.cpu_seconds for collection in watch.collections if collection.generation == 2]
        young = [collection.cpu_seconds for collection in watch.collections if collection.generation != 2]
        stats_file.write_text(json.dumps({"full": [len(full), sum(full)], "young": [len(young), sum(young)]}))

    signal.signal(signal.SIGUSR1, write_stats)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def gc_stats_file(port: int) -> Path:
    return Path(tempfile.gettempdir(), f"bench-http-gc-{port}.json")


@dataclass(frozen=True)
class Collections:
    """Garbage collections a server made: full ones (generation 2) and young ones, how many and CPU seconds spent."""

    full: int
    full_seconds: float
    young: int
    young_seconds: float

    def __sub__(self, other: Collections) -> Collections:
        return Collections(
            self.full - other.full,
            self.full_seconds - other.full_seconds,
            self.young - other.young,
            self.young_seconds - other.young_seconds,
        )


@dataclass
class Server:
    kind: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def collections(self) -> Collections:
        """The server's garbage collections so far (it writes them down when signalled)."""
        stats_file = gc_stats_file(self.port)
        stats_file.unlink(missing_ok=True)
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                stats = json.loads(stats_file.read_text())
            except (OSError, ValueError):
                time.sleep(0.01)
                continue
            stats_file.unlink()
            return Collections(stats["full"][0], stats["full"][1], stats["young"][0], stats["young"][1])
        raise RuntimeError(f"the {self.kind} server did not report its garbage collections")

    def cpu_seconds(self) -> float:
        """User and system CPU time the server process has used, from /proc (Linux)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_kib(self, field: str) -> int:
        """VmRSS (now) or VmHWM (peak so far) of the server process, from /proc (Linux)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"no {field} for the server process")


@contextmanager
def running_servers(issuer: LocalAccess, kinds: Sequence[str] = SERVERS) -> Iterator[dict[str, Server]]:
    env = {
        **os.environ,
        "TEAM_DOMAIN": issuer.url,
        "POLICY_AUD": issuer.audience,
        # generate_image is restricted to this caller, so the memory test can send it the largest body.
        "ALLOWED_EMAILS": "alice@example.com",
    }
    servers: dict[str, Server] = {}
    try:
        for kind in kinds:
            port = free_port()
            command = [sys.executable, __file__, "--serve", kind, "--port", str(port)]
            # taskset execs the server, so the process (and its pid, for py-spy) is the server's own.
            process = subprocess.Popen(on_core(command, SERVER_CORE), env=env, cwd=REPO)
            servers[kind] = Server(kind, port, process)
        for server in servers.values():
            wait_until_listening(server)
        yield servers
    finally:
        for server in servers.values():
            server.process.terminate()
        for server in servers.values():
            server.process.wait(timeout=10)


def wait_until_listening(server: Server, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the {server.kind} server exited with {server.process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the {server.kind} server did not start within {timeout} s")


# -- wrk -----------------------------------------------------------------------------------------------------------


def wrk_script(method: str, tokens: Sequence[str]) -> str:
    headers = {**request_headers(method), "Cf-Access-Jwt-Assertion": "TOKEN"}
    lua_headers = ", ".join(f'["{name}"] = "{value}"' for name, value in headers.items() if value != "TOKEN")
    lua_tokens = ",\n".join(f'"{token}"' for token in tokens)
    body = request_body(method).decode().replace("\\", "\\\\").replace('"', '\\"')
    # One Lua state (wrk -t1): the callers' tokens in rotation across the connections.
    return f"""
local tokens = {{
{lua_tokens}
}}
local body = "{body}"
local count = 0
request = function()
  count = count + 1
  local headers = {{ {lua_headers} }}
  headers["Cf-Access-Jwt-Assertion"] = tokens[(count % #tokens) + 1]
  return wrk.format("POST", "/mcp", headers, body)
end
"""


@dataclass(frozen=True)
class Load:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    # The server's own CPU time over the run (set by `measure`): what it spent, whatever else the machine ran.
    server_cpu_seconds: float = 0.0
    collections: Collections = Collections(0, 0.0, 0, 0.0)

    def per_cpu_second(self) -> float:
        return self.requests / self.server_cpu_seconds if self.server_cpu_seconds else 0.0

    def per_cpu_second_outside_gc(self) -> float:
        outside = self.server_cpu_seconds - self.collections.full_seconds - self.collections.young_seconds
        return self.requests / outside if outside > 0 else 0.0

    def full_per_1000(self) -> float:
        return 1000 * self.collections.full / self.requests if self.requests else 0.0

    def young_per_1000(self) -> float:
        return 1000 * self.collections.young / self.requests if self.requests else 0.0

    def gc_us_per_request(self) -> float:
        seconds = self.collections.full_seconds + self.collections.young_seconds
        return seconds / self.requests * 1e6 if self.requests else 0.0


_WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(url: str, script: Path, connections: int, seconds: float) -> Load:
    wrk = shutil.which("wrk")
    assert wrk is not None
    output = subprocess.run(
        on_core(
            [wrk, "-t1", f"-c{connections}", f"-d{round(seconds)}s", "--latency", "-s", str(script), url], LOAD_CORE
        ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if bad or "Socket errors" in output:
        raise RuntimeError(f"wrk saw failed requests against {url}:\n{output}")

    def latency(percent: str) -> float:
        match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        assert match is not None, output
        return float(match.group(1)) * _WRK_UNITS[match.group(2)]

    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    count = re.search(r"(\d+) requests in", output)
    assert rate is not None, output
    assert count is not None, output
    return Load(float(rate.group(1)), latency("50"), latency("99"), int(count.group(1)))


# -- the async httpx load generator (runs in its own process) -----------------------------------------------------


async def httpx_load(url: str, method: str, tokens: Sequence[str], seconds: float) -> dict[str, float]:
    """One task per caller, each with its own token, each sending its next request when the last one is answered."""
    body, headers = request_body(method), request_headers(method)
    latencies: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=len(tokens), max_keepalive_connections=len(tokens))
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        deadline = time.perf_counter() + seconds

        async def caller(token: str) -> None:
            nonlocal failures
            caller_headers = {**headers, "Cf-Access-Jwt-Assertion": token}
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await client.post(url, content=body, headers=caller_headers)
                latencies.append(time.perf_counter() - started)
                failures += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(caller(token) for token in tokens))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "requests": len(latencies),
        "failures": failures,
    }


def run_httpx_load(url: str, method: str, tokens_file: Path, callers: int, seconds: float) -> Load:
    output = subprocess.run(
        on_core(
            [sys.executable, __file__, "--load", url, method, str(tokens_file), str(callers), str(seconds)], LOAD_CORE
        ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(output.strip().splitlines()[-1])
    if result["failures"]:
        raise RuntimeError(f"{result['failures']} requests failed against {url}")
    return Load(result["rps"], result["p50_ms"], result["p99_ms"], result["requests"])


# -- the run -------------------------------------------------------------------------------------------------------


def collect_sync(quick: bool = False, plan: Plan | None = None) -> list[Section]:
    plan = plan or (QUICK if quick else FULL)
    section = Section(TITLE)
    memory = Section(MEMORY_TITLE)
    if shutil.which("wrk") is None:
        section.notes.append("`wrk` is not installed (Debian: `apt-get install wrk`): only the httpx client ran.")
    with LocalAccess() as issuer, tempfile.TemporaryDirectory() as scratch:
        tokens = [issuer.user_token(f"caller{index}@example.com") for index in range(max(plan.callers))]
        tokens_file = Path(scratch, "tokens.json")
        tokens_file.write_text(json.dumps(tokens))
        scripts = {}
        for method in plan.methods:
            for callers in plan.callers:
                scripts[method, callers] = Path(scratch, f"{method.replace('/', '_')}-{callers}.lua")
                scripts[method, callers].write_text(wrk_script(method, tokens[:callers]))
        kinds = (*SERVERS, *FROZEN.values()) if plan.frozen else SERVERS
        with running_servers(issuer, kinds) as servers:
            for server in servers.values():
                warm_up(server, tokens)
            generators = (["wrk"] if shutil.which("wrk") else []) + (["httpx"] if plan.httpx_rounds else [])
            if not generators:
                generators = ["httpx"]
            for generator in generators:
                rounds = plan.rounds if generator == "wrk" else max(plan.httpx_rounds, 1)
                measure(section, generator, servers, plan, rounds, scripts, tokens_file)
            if plan.frozen and "wrk" in generators:
                frozen = {kind: servers[FROZEN[kind]] for kind in SERVERS}
                frozen_plan = replace(plan, callers=FROZEN_CALLERS)
                measure(
                    section, "wrk", frozen, frozen_plan, plan.rounds, scripts, tokens_file, label="wrk, both frozen"
                )
            if plan.profile_seconds and "wrk" in generators:
                for method, callers in [cell for cell in PROFILED if cell in scripts]:
                    profile(section, servers, method, callers, scripts[method, callers], plan, scratch)
        for _ in range(plan.memory_rounds):
            measure_memory(memory, issuer)
    pinning = (
        f"servers pinned to core {SERVER_CORE} and the load generator to core {LOAD_CORE} with taskset"
        if PINNING
        else "not pinned to cores (taskset missing or one core)"
    )
    section.notes.append(
        f"{plan.rounds} wrk rounds of {plan.seconds:g} s per cell (bare and guarded alternating within each round, "
        "the order flipped every round; 'paired by round': the guarded run's figure over the bare run's in the same "
        f"round, median and min-max over the rounds); {pinning}; wrk runs one thread with one connection per caller; "
        "p50/p99 from wrk's latency distribution."
    )
    if plan.frozen:
        section.notes.append(
            "'wrk, both frozen': the same two servers, each with its heap frozen once started (`gc.freeze()`), as "
            "`mcp-access-guard serve` runs an app."
        )
    if not plan.memory_rounds:
        return [section]
    memory.notes.append(
        f"Peak RSS (VmHWM) of a fresh server process after one {DEFAULT_MAX_BODY_BYTES} byte tools/call "
        "(the largest body the tool-policy layer reads; the tool echoes it back), over "
        f"{plan.memory_rounds} fresh process pair(s)."
    )
    return [section, memory]


def warm_up(server: Server, tokens: Sequence[str]) -> None:
    with httpx.Client() as client:
        for method in METHODS:
            for token in tokens:
                response = client.post(
                    server.url,
                    content=request_body(method),
                    headers={**request_headers(method), "Cf-Access-Jwt-Assertion": token},
                )
                assert response.status_code == 200, f"{server.kind}: {response.status_code} {response.text[:200]}"


def measure(
    section: Section,
    generator: str,
    servers: dict[str, Server],
    plan: Plan,
    rounds: int,
    scripts: dict[tuple[str, int], Path],
    tokens_file: Path,
    *,
    label: str | None = None,
) -> None:
    results: dict[tuple[str, int, str], list[Load]] = {}
    for round_number in range(rounds):
        for method in plan.methods:
            for callers in plan.callers:
                # Alternate which server goes first, so neither always runs on a machine just warmed by the other.
                order = SERVERS if round_number % 2 == 0 else SERVERS[::-1]
                for kind in order:
                    server = servers[kind]
                    collections_before = server.collections()
                    cpu_before = server.cpu_seconds()
                    if generator == "wrk":
                        load = run_wrk(server.url, scripts[method, callers], callers, plan.seconds)
                    else:
                        load = run_httpx_load(server.url, method, tokens_file, callers, plan.seconds)
                    cpu = server.cpu_seconds() - cpu_before
                    load = replace(load, server_cpu_seconds=cpu, collections=server.collections() - collections_before)
                    results.setdefault((method, callers, kind), []).append(load)
    for method in plan.methods:
        for callers in plan.callers:
            prefix = f"{label or generator}: {method}, {callers} caller{'s' if callers > 1 else ''}"
            bare, guarded = results[method, callers, "bare"], results[method, callers, "guarded"]
            # Each round's two runs, seconds apart, set side by side: the ratio that drift in the machine moves least.
            add_paired(section, prefix, "", bare, guarded, lambda load: load.requests_per_second)
            add_paired(section, prefix, " per server CPU-second", bare, guarded, Load.per_cpu_second)
            # The throughput as wrk saw it; then with the machine's noise taken out (requests per second of the
            # server's own CPU), and with the server's own garbage collections taken out too: a full collection
            # walks the whole heap (the mcp SDK's 100,000 objects, some 100 ms here), and whether one more lands in
            # a few seconds' cell moves that cell's figure by several percent, bare or guarded alike.
            add_pair(section, prefix, "", "req/s", bare, guarded, lambda load: load.requests_per_second, target=True)
            add_pair(section, prefix, ", per server CPU-second", "req", bare, guarded, Load.per_cpu_second)
            add_pair(
                section,
                prefix,
                ", per server CPU-second outside GC",
                "req",
                bare,
                guarded,
                Load.per_cpu_second_outside_gc,
                target=True,
            )
            add_pair(
                section,
                prefix,
                ", full collections per 1,000 requests",
                "collections",
                bare,
                guarded,
                Load.full_per_1000,
            )
            add_pair(
                section,
                prefix,
                ", young collections per 1,000 requests",
                "collections",
                bare,
                guarded,
                Load.young_per_1000,
            )
            add_pair(
                section, prefix, ", time in garbage collection per request", "µs", bare, guarded, Load.gc_us_per_request
            )
            for quantile in ("p50", "p99"):
                attribute = f"{quantile}_ms"
                add_pair(
                    section, prefix, f" {quantile}", "ms", bare, guarded, lambda load, a=attribute: getattr(load, a)
                )


def add_pair(
    section: Section,
    prefix: str,
    suffix: str,
    unit: str,
    bare: list[Load],
    guarded: list[Load],
    value: Callable[[Load], float],
    *,
    target: bool = False,
) -> None:
    """One figure for the bare server and one for the guarded, as a ratio to it; with the throughput target."""
    section.add(f"{prefix}, bare{suffix}", unit, [value(load) for load in bare])
    figure = section.add(
        f"{prefix}, guarded{suffix}", unit, [value(load) for load in guarded], baseline=f"{prefix}, bare{suffix}"
    )
    if target:
        ratio = section.ratio(figure)
        figure.target = f">= {TARGET_RATIO:.0%} of bare"
        figure.met = ratio is not None and ratio >= TARGET_RATIO


def add_paired(
    section: Section, prefix: str, suffix: str, bare: list[Load], guarded: list[Load], value: Callable[[Load], float]
) -> None:
    """The guarded server's figure over the bare one's, round by round (the lists are in round order), with the
    throughput target: met when the median pair reaches it."""
    ratios = [value(g) / value(b) for b, g in zip(bare, guarded, strict=True) if value(b)]
    if not ratios:
        return
    figure = section.add(f"{prefix}, guarded ÷ bare{suffix}, paired by round", "x", ratios)
    figure.target = f">= {TARGET_RATIO:.2f}"
    figure.met = figure.median >= TARGET_RATIO


# -- where the guarded server's time goes -------------------------------------------------------------------------

PROFILED = (("tools/list", 100), ("tools/call", 100), ("tools/call", 10))
GUARD_PACKAGE = "mcp_access_guard"


def py_spy() -> str | None:
    beside_python = Path(sys.executable).with_name("py-spy")
    return str(beside_python) if beside_python.exists() else shutil.which("py-spy")


STDLIB = sysconfig.get_paths()["stdlib"]


def frame_package(frame: str) -> str | None:
    """The package a py-spy frame (`function (/full/path/file.py:line)`) belongs to; None for the standard library
    and for code Python generates (dataclass `__init__`s, frozen modules), which count for their caller."""
    path = frame.rpartition(" (")[2].rpartition(":")[0]
    if path.startswith("<") or (path.startswith(STDLIB) and "site-packages" not in path):
        return None
    if f"/{GUARD_PACKAGE}/" in path:
        return GUARD_PACKAGE
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    return Path(path).name


def owners(raw: str) -> tuple[dict[str, int], dict[str, int]]:
    """From py-spy's raw (collapsed) stacks: samples per package, each sample given to the innermost frame outside
    the standard library (so `json` called by the guard counts as the guard's); and the guard's samples by function.
    """
    by_package: dict[str, int] = {}
    by_function: dict[str, int] = {}
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        owner, function = "the event loop and the standard library", ""
        for frame in reversed(frames):
            package = frame_package(frame)
            if package is not None:
                owner, function = package, frame.partition(" (")[0]
                break
        by_package[owner] = by_package.get(owner, 0) + count
        if owner == GUARD_PACKAGE:
            by_function[function] = by_function.get(function, 0) + count
    return by_package, by_function


def profile(
    section: Section, servers: dict[str, Server], method: str, callers: int, script: Path, plan: Plan, scratch: str
) -> None:
    """py-spy on the bare server and then the guarded one under the same load: samples per 1,000 requests served, by
    package, side by side (a package's extra samples in the guarded server is work the guard made it do), and the
    guard's own samples by function."""
    spy = py_spy()
    label = f"{method}, {callers} callers"
    if spy is None:
        section.notes.append("py-spy is not installed (pip install py-spy): the servers were not profiled.")
        return
    per_request: dict[str, dict[str, float]] = {}
    guard_functions: dict[str, int] = {}
    guard_share = 0.0
    for kind in SERVERS:
        server = servers[kind]
        output = Path(scratch, f"profile-{kind}.txt")
        command = [spy, "record", "--pid", str(server.process.pid), "--duration", str(plan.profile_seconds)]
        command += ["--rate", "200", "--nonblocking", "--full-filenames", "--format", "raw", "--output", str(output)]
        recorder = subprocess.Popen(on_core(command, LOAD_CORE), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        load = run_wrk(server.url, script, callers, plan.profile_seconds)
        _, errors = recorder.communicate(timeout=plan.profile_seconds + 60)
        if recorder.returncode != 0 or not output.exists():
            section.notes.append(f"py-spy could not sample the {kind} server: {errors.decode()[-300:].strip()}")
            return
        by_package, by_function = owners(output.read_text())
        per_request[kind] = {package: 1000 * count / load.requests for package, count in by_package.items()}
        if kind == "guarded":
            guard_functions = by_function
            guard_share = 100 * by_package.get(GUARD_PACKAGE, 0) / (sum(by_package.values()) or 1)
    bare, guarded = per_request["bare"], per_request["guarded"]
    packages = sorted(set(bare) | set(guarded), key=lambda package: -max(bare.get(package, 0), guarded.get(package, 0)))
    rows = [f"| {package} | {bare.get(package, 0):.0f} | {guarded.get(package, 0):.0f} |" for package in packages]
    rows.append(f"| all | {sum(bare.values()):.0f} | {sum(guarded.values()):.0f} |")
    guarded_total = sum(guard_functions.values()) or 1
    guard_rows = [
        f"| {function} | {count / guarded_total:.1%} |"
        for function, count in sorted(guard_functions.items(), key=lambda item: -item[1])[:8]
    ]
    section.tables.append(
        "\n".join(
            [
                f"py-spy under wrk ({label}, {plan.profile_seconds} s each, 200 samples/s): samples per 1,000 "
                "requests served, each sample given to the innermost frame outside the standard library",
                "",
                "| package | bare | guarded |",
                "| --- | --- | --- |",
                *rows,
                "",
                f"The guard's own samples by function ({label}):",
                "",
                "| function | share of the guard's samples |",
                "| --- | --- |",
                *guard_rows,
            ]
        )
    )
    section.add(f"py-spy: {label}, the guard's own share of the server's samples", "%", [guard_share])


def measure_memory(section: Section, issuer: LocalAccess) -> None:
    token = issuer.user_token("alice@example.com")
    framing = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "generate_image"}}
    empty = json.dumps({**framing, "params": {**framing["params"], "arguments": {"prompt": ""}, "_meta": META}})
    prompt = "x" * (DEFAULT_MAX_BODY_BYTES - len(empty))
    body = json.dumps({**framing, "params": {**framing["params"], "arguments": {"prompt": prompt}, "_meta": META}})
    assert len(body) == DEFAULT_MAX_BODY_BYTES
    headers = {**request_headers("tools/call"), "Mcp-Name": "generate_image", "Cf-Access-Jwt-Assertion": token}
    with running_servers(issuer) as servers, httpx.Client(timeout=60) as client:
        for server in servers.values():
            warm_up(server, [token])
        peaks = {}
        for kind, server in servers.items():
            before = server.memory_kib("VmHWM")
            response = client.post(server.url, content=body.encode(), headers=headers)
            assert response.status_code == 200, response.text[:200]
            assert len(response.content) > len(prompt), "the tool did not get the whole body"
            peaks[kind] = (before, server.memory_kib("VmHWM"))
    for kind, (before, peak) in peaks.items():
        append(section, f"server peak RSS with a 4 MiB tools/call, {kind}", peak / 1024, kind)
        append(section, f"server peak RSS growth for the 4 MiB call, {kind}", (peak - before) / 1024, kind)


def append(section: Section, label: str, value: float, kind: str) -> None:
    """Add a sample to a memory figure, made on first use; the guarded figure is a ratio to the bare one."""
    try:
        section.find(label).samples.append(value)
    except StopIteration:
        baseline = label.replace(", guarded", ", bare") if kind == "guarded" else None
        section.add(label, "MiB", [value], baseline=baseline)


async def collect(quick: bool = False) -> list[Section]:
    return await asyncio.to_thread(collect_sync, quick)


def shown(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 1 s loads, no frozen pair: a smoke run")
    parser.add_argument("--rounds", type=int, help="rounds per cell (each round loads bare and guarded once)")
    parser.add_argument("--seconds", type=float, help="seconds of load per run (whole seconds, 1 or more)")
    parser.add_argument("--callers", help="comma-separated caller counts, e.g. 1,10,100")
    parser.add_argument("--method", action="append", choices=tuple(METHODS), help="only this method (repeatable)")
    parser.add_argument("--no-memory", action="store_true", help="leave the peak-memory measurement out")
    parser.add_argument("--profile", type=int, metavar="SECONDS", help="py-spy each server this long (0: not at all)")
    parser.add_argument("--serve", choices=(*SERVERS, *FROZEN.values()), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--load", nargs=5, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.serve:
        serve(arguments.serve, arguments.port)
        return
    if arguments.load:
        url, method, tokens_file, callers, seconds = arguments.load
        tokens = json.loads(Path(tokens_file).read_text())[: int(callers)]
        print(json.dumps(asyncio.run(httpx_load(url, method, tokens, float(seconds)))))
        return
    plan = QUICK if arguments.quick else FULL
    plan = replace(
        plan,
        rounds=arguments.rounds or plan.rounds,
        seconds=arguments.seconds or plan.seconds,
        callers=tuple(int(count) for count in arguments.callers.split(",")) if arguments.callers else plan.callers,
        methods=tuple(arguments.method) if arguments.method else plan.methods,
        memory_rounds=0 if arguments.no_memory else plan.memory_rounds,
        profile_seconds=plan.profile_seconds if arguments.profile is None else arguments.profile,
    )
    for section in collect_sync(arguments.quick, plan):
        print(f"## {section.title}")
        for figure in section.figures:
            ratio = section.ratio(figure)
            is_baseline = any(other.baseline == figure.label for other in section.figures)
            ratio_text = f"{ratio:5.2f}x" if ratio is not None else (" base" if is_baseline else "")
            spread = f"{shown(figure.low)}-{shown(figure.high)}"
            print(f"{figure.label:<48} {shown(figure.median):>9} {figure.unit:<5} ({spread}) {ratio_text}")
        for table in section.tables:
            print(f"\n{table}\n")
        for note in section.notes:
            print(note)
        print()


if __name__ == "__main__":
    main()
