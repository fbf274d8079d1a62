"""OAuth mode, each figure against a baseline measured in the same run.

    python benchmarks/bench_oauth.py            # full run, a few minutes
    python benchmarks/bench_oauth.py --quick    # under a minute

- In process, through the whole `guard()` stack around a trivial app (bench_stack's way): a request with a cached
  bearer token in OAuth mode against a request with a cached Access JWT in the Access mode (target: no slower).
- A bearer lookup with nothing cached (`Grants.bearer`, what the bearer layer does on a cache miss) on MemoryStore,
  SQLiteStore and RedisStore, against a bare dict lookup of the same grant.
- /token through the whole stack in process: code exchanges and refresh rotations per second, one at a time and 10
  at once, per store (the grants have no Access refresh token, so a rotation stays local: Access's own speed is not
  ours to measure).
- Over real HTTP (bench_http's way): the reference server bare, and in OAuth mode (its bearer tokens minted into a
  SQLite store both processes share), loaded in turn by `wrk` (target: >= 95% of bare).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlencode

import httpx
from starlette.types import ASGIApp, Message, Scope

from bench_common import Plan, Section
from bench_http import REPO, Load, Server, request_body, request_headers, run_wrk, wait_until_listening
from bench_stack import HOST, SHARED_SECRET, StatusRecorder, bare_app, receive, request_scope, time_requests
from bench_store import redis_server
from mcp_access_guard import GuardConfig, guard
from mcp_access_guard.identity import AccessIdentity
from mcp_access_guard.middleware.oauth import OAuthEndpointsMiddleware
from mcp_access_guard.oauth import OAuthConfig, OAuthServer
from mcp_access_guard.oauth.grants import BearerGrant
from mcp_access_guard.oauth.records import access_token_key, code_challenge_of
from mcp_access_guard.settings import CORSSettings, ServiceTokenSettings
from mcp_access_guard.testing import LocalAccess, LocalAccessSaaS, free_port

STACK_TITLE = "OAuth mode: a request through the whole stack, in process"
LOOKUP_TITLE = "OAuth mode: an uncached bearer lookup"
TOKEN_TITLE = "OAuth mode: /token through the whole stack, in process"
HTTP_TITLE = "OAuth mode end to end over HTTP"
PUBLIC_URL = f"https://{HOST}"
SECRET_KEY = secrets.token_hex(32)
REDIRECT_URI = "http://127.0.0.1:9/callback"
BASELINE_DICT = "bare dict"
HTTP_TARGET = 0.95
SERVERS = ("bare", "oauth")
METHODS = ("tools/call", "tools/list")
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class HTTPPlan:
    rounds: int
    seconds: float
    callers: tuple[int, ...]


STACK_FULL, STACK_QUICK = Plan(rounds=60, warmup=5, iterations=1000), Plan(rounds=12, warmup=2, iterations=500)
LOOKUP_FULL, LOOKUP_QUICK = Plan(rounds=12, warmup=2, iterations=500), Plan(rounds=4, warmup=1, iterations=100)
TOKEN_FULL, TOKEN_QUICK = Plan(rounds=8, warmup=1, iterations=200), Plan(rounds=3, warmup=1, iterations=50)
HTTP_FULL, HTTP_QUICK = HTTPPlan(rounds=3, seconds=3.0, callers=(1, 10, 100)), HTTPPlan(1, 1.0, (1, 10, 100))


def identity(email: str) -> AccessIdentity:
    return AccessIdentity(subject=f"sub-{email}", issuer="https://saas.example", expires_at=0, email=email)


async def mint_bearer(server: OAuthServer, email: str, client_id: str = "bench-client-0123456789") -> tuple[str, str]:
    """A grant for `email`, its code redeemed as the token endpoint would: (access token, refresh token)."""
    verifier = secrets.token_urlsafe(48)
    code = await server.grants.create(
        client_id=client_id,
        identity=identity(email),
        scopes=("openid", "email"),
        resource=server.config.resource,
        redirect_uri=REDIRECT_URI,
        redirect_uri_sent=True,
        code_challenge=code_challenge_of(verifier),
        upstream_refresh_token=None,
    )
    issued = await server.grants.redeem(
        code, client_id=client_id, redirect_uri=REDIRECT_URI, code_verifier=verifier, resource=None
    )
    return issued.access_token, issued.refresh_token


def the_server(app: ASGIApp) -> OAuthServer:
    while not isinstance(app, OAuthEndpointsMiddleware):
        app = app.app  # type: ignore[attr-defined]
    return app.server


def oauth_config(saas: LocalAccessSaaS, store: str = "memory:", public_url: str = PUBLIC_URL) -> OAuthConfig:
    return OAuthConfig(public_url, saas.config(), secret_key=SECRET_KEY, store=store)


# -- the whole stack, in process ------------------------------------------------------------------------------------


def bearer_scope(token: str) -> Scope:
    """bench_stack's request, with the bearer in Authorization instead of the Access assertion."""
    scope = request_scope("unused")
    headers = [(name, value) for name, value in scope["headers"] if name != b"cf-access-jwt-assertion"]
    return {**scope, "headers": [*headers, (b"authorization", f"Bearer {token}".encode())]}


async def measure_stack(plan: Plan) -> Section:
    section = Section(STACK_TITLE)
    layers = {
        "cors": CORSSettings(allowed_hosts=(HOST,)),
        "service_token": ServiceTokenSettings(secrets=(SHARED_SECRET,)),
    }
    with LocalAccess() as issuer, LocalAccessSaaS() as saas:
        access_app = guard(bare_app, GuardConfig(access=issuer.config(), **layers))
        oauth_app = guard(bare_app, GuardConfig(oauth=oauth_config(saas), **layers))
        server = the_server(oauth_app)
        access_token, _ = await mint_bearer(server, "alice@example.com")
        rows = {
            "bare app": (bare_app, request_scope(issuer.user_token())),
            "Access mode, cached Access JWT": (access_app, request_scope(issuer.user_token("alice@example.com"))),
            "OAuth mode, cached bearer token": (oauth_app, bearer_scope(access_token)),
        }
        send = StatusRecorder()
        for label, (app, scope) in rows.items():
            await app(dict(scope), receive, send)  # the first request caches the token
            assert send.status == 200, f"{label}: {send.status}"
        samples: dict[str, list[float]] = {label: [] for label in rows}
        for round_number in range(plan.warmup + plan.rounds):
            gc.collect()
            for label, (app, scope) in rows.items():
                figure = await time_requests(app, scope, send, plan.iterations)
                if round_number >= plan.warmup:
                    samples[label].append(figure)
        assert send.status == 200
        await server.aclose()
    section.add("bare app", "µs/request", samples["bare app"])
    baseline = "Access mode, cached Access JWT"
    section.add(baseline, "µs/request", samples[baseline])
    figure = section.add("OAuth mode, cached bearer token", "µs/request", samples["OAuth mode, cached bearer token"])
    figure.baseline = baseline
    figure.target = "<= 1.0x the cached Access JWT (no slower)"
    ratio = section.ratio(figure)
    figure.met = ratio is not None and ratio <= 1.0
    section.notes.append(
        f"{plan.rounds} rounds of {plan.iterations} requests ({plan.warmup} warm-up discarded), rows interleaved; "
        "paths, CORS with allowed_hosts, the shared secret and the credential layer, around a trivial app. The bearer "
        "cache keeps a lookup 5 s: one lookup of the MemoryStore per 5 s of requests."
    )
    return section


# -- an uncached bearer lookup ----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def stores(scratch: Path, section: Section) -> AsyncIterator[dict[str, str]]:
    """The store URLs to measure: memory, a SQLite file, and a redis-server on loopback when it is installed."""
    urls = {"MemoryStore": "memory:", "SQLiteStore": f"sqlite:///{scratch / 'oauth.sqlite3'}"}
    with contextlib.ExitStack() as running:
        binary = shutil.which("redis-server")
        try:
            import redis  # noqa: F401
        except ImportError:
            section.notes.append("RedisStore not measured: the redis package is not installed.")
        else:
            if binary is None:
                section.notes.append("RedisStore not measured: redis-server is not installed (apt-get install it).")
            else:
                urls["RedisStore"] = running.enter_context(redis_server(binary, str(scratch)))
        yield urls


async def measure_lookups(plan: Plan) -> Section:
    section = Section(LOOKUP_TITLE)
    with LocalAccessSaaS() as saas, tempfile.TemporaryDirectory() as scratch:
        async with stores(Path(scratch), section) as urls:
            servers = {name: OAuthServer(oauth_config(saas, url)) for name, url in urls.items()}
            tokens = {
                name: [(await mint_bearer(server, f"u{i}@example.com"))[0] for i in range(plan.iterations)]
                for name, server in servers.items()
            }
            table: dict[str, BearerGrant] = {}
            memory = servers["MemoryStore"]
            for token in tokens["MemoryStore"]:
                table[access_token_key(token)] = await memory.authenticate_bearer(token)
            samples: dict[str, list[float]] = {name: [] for name in [BASELINE_DICT, *servers]}
            for round_number in range(plan.warmup + plan.rounds):
                timings = {BASELINE_DICT: time_dict(table, tokens["MemoryStore"])}
                for name, server in servers.items():
                    timings[name] = await time_lookups(server, tokens[name])
                if round_number >= plan.warmup:
                    for name, micros in timings.items():
                        samples[name].append(micros)
            for server in servers.values():
                await server.aclose()
    section.add(f"lookup: {BASELINE_DICT}", "µs/lookup", samples[BASELINE_DICT])
    for name in servers:
        section.add(f"lookup: {name}", "µs/lookup", samples[name], baseline=f"lookup: {BASELINE_DICT}")
    section.notes.append(
        f"{plan.iterations} distinct tokens looked up one at a time per round, {plan.rounds} rounds kept. A lookup is "
        "the token's key (SHA-256), its access-token record and its grant read from the store, both parsed; the bare "
        "dict holds the finished BearerGrant under the same key (the bearer layer's cache is one)."
    )
    return section


def time_dict(table: dict[str, BearerGrant], tokens: list[str]) -> float:
    started = time.perf_counter_ns()
    for token in tokens:
        grant = table[access_token_key(token)]
        if grant.expires_at <= 0:
            raise AssertionError("expired")
    return (time.perf_counter_ns() - started) / len(tokens) / 1000


async def time_lookups(server: OAuthServer, tokens: list[str]) -> float:
    started = time.perf_counter_ns()
    for token in tokens:
        await server.authenticate_bearer(token)
    return (time.perf_counter_ns() - started) / len(tokens) / 1000


# -- /token ---------------------------------------------------------------------------------------------------------


class Answers:
    """An ASGI `send` that keeps the status and the body."""

    def __init__(self) -> None:
        self.status = 0
        self.body = bytearray()

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")


async def post(app: ASGIApp, path: str, body: bytes, content_type: str) -> Answers:
    scope = {
        **request_scope("unused"),
        "path": path,
        "raw_path": path.encode(),
        "headers": [
            (b"host", HOST.encode()),
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cf-access-guard-secret", SHARED_SECRET.encode()),
        ],
    }

    async def request() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    answers = Answers()
    await app(scope, request, answers)
    return answers


async def exchange(app: ASGIApp, client_id: str, code: str, verifier: str) -> str:
    form = {
        "grant_type": "authorization_code",
        "client_id": client_id,
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": REDIRECT_URI,
    }
    answers = await post(app, "/token", urlencode(form).encode(), "application/x-www-form-urlencoded")
    assert answers.status == 200, bytes(answers.body)
    refresh_token: str = json.loads(answers.body)["refresh_token"]
    return refresh_token


async def rotate(app: ASGIApp, client_id: str, refresh_token: str) -> str:
    form = {"grant_type": "refresh_token", "client_id": client_id, "refresh_token": refresh_token}
    answers = await post(app, "/token", urlencode(form).encode(), "application/x-www-form-urlencoded")
    assert answers.status == 200, bytes(answers.body)
    rotated: str = json.loads(answers.body)["refresh_token"]
    return rotated


async def measure_token_endpoint(plan: Plan) -> Section:
    section = Section(TOKEN_TITLE)
    service = ServiceTokenSettings(secrets=(SHARED_SECRET,))
    with LocalAccessSaaS() as saas, tempfile.TemporaryDirectory() as scratch:
        async with stores(Path(scratch), section) as urls:
            for name, url in urls.items():
                app = guard(bare_app, GuardConfig(oauth=oauth_config(saas, url), service_token=service))
                server = the_server(app)
                registration = json.dumps({"redirect_uris": [REDIRECT_URI], "token_endpoint_auth_method": "none"})
                answers = await post(app, "/register", registration.encode(), "application/json")
                assert answers.status == 201, bytes(answers.body)
                client_id = json.loads(answers.body)["client_id"]
                for concurrency in (1, 10):
                    codes, rotations = await token_rates(app, server, client_id, plan, concurrency)
                    at_once = "one at a time" if concurrency == 1 else f"{concurrency} at once"
                    section.add(f"code exchanges, {name}, {at_once}", "per second", codes)
                    section.add(f"refresh rotations, {name}, {at_once}", "per second", rotations)
                await server.aclose()
    for figure in section.figures:
        if "MemoryStore" not in figure.label:
            figure.baseline = figure.label.replace(figure.label.split(", ")[1], "MemoryStore")
    section.notes.append(
        f"{plan.iterations} requests per round, {plan.rounds} rounds kept; each exchange redeems a code created as the "
        "callback creates it (not timed), each rotation refreshes the token the last one issued. Through the whole "
        "stack in this process, no network; SQLite's calls run in a worker thread."
    )
    return section


async def token_rates(
    app: ASGIApp, server: OAuthServer, client_id: str, plan: Plan, concurrency: int
) -> tuple[list[float], list[float]]:
    codes: list[float] = []
    rotations: list[float] = []
    for round_number in range(plan.warmup + plan.rounds):
        pending = []
        for index in range(plan.iterations):
            verifier = secrets.token_urlsafe(48)
            code = await server.grants.create(
                client_id=client_id,
                identity=identity(f"u{index}@example.com"),
                scopes=("openid",),
                resource=server.config.resource,
                redirect_uri=REDIRECT_URI,
                redirect_uri_sent=True,
                code_challenge=code_challenge_of(verifier),
                upstream_refresh_token=None,
            )
            pending.append((code, verifier))
        exchange_rate, refresh_tokens = await rate(lambda item: exchange(app, client_id, *item), pending, concurrency)
        rotation_rate, _ = await rate(lambda token: rotate(app, client_id, token), refresh_tokens, concurrency)
        if round_number >= plan.warmup:
            codes.append(exchange_rate)
            rotations.append(rotation_rate)
    return codes, rotations


async def rate(call: Callable[[T], Awaitable[R]], items: list[T], concurrency: int) -> tuple[float, list[R]]:
    """Requests per second over `items`, `concurrency` in flight at a time, and what each call returned."""
    queue = list(items)
    results: list[R] = []

    async def worker() -> None:
        while queue:
            results.append(await call(queue.pop()))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(items) / (time.perf_counter() - started), results


# -- over HTTP --------------------------------------------------------------------------------------------------------


def serve(kind: str, port: int) -> None:
    """In the server process: the reference server bare, or in OAuth mode from the environment, under uvicorn."""
    import uvicorn

    sys.path.insert(0, str(REPO))
    from examples import reference_server

    for name in ("mcp_access_guard", "mcp", "uvicorn", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    app = reference_server.app if kind == "oauth" else reference_server.mcp.streamable_http_app()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def wrk_script(method: str, tokens: Sequence[str]) -> str:
    """One Lua state (wrk -t1): the callers' bearer tokens in rotation across the connections."""
    headers = ", ".join(f'["{name}"] = "{value}"' for name, value in request_headers(method).items())
    lua_tokens = ",\n".join(f'"Bearer {token}"' for token in tokens)
    body = request_body(method).decode().replace("\\", "\\\\").replace('"', '\\"')
    return f"""
local tokens = {{
{lua_tokens}
}}
local body = "{body}"
local count = 0
request = function()
  count = count + 1
  local headers = {{ {headers} }}
  headers["Authorization"] = tokens[(count % #tokens) + 1]
  return wrk.format("POST", "/mcp", headers, body)
end
"""


@contextlib.contextmanager
def running_servers(environment: dict[str, str], ports: dict[str, int]) -> Iterator[dict[str, Server]]:
    servers: dict[str, Server] = {}
    try:
        for kind in SERVERS:
            command = [sys.executable, __file__, "--serve", kind, "--port", str(ports[kind])]
            process = subprocess.Popen(command, env={**os.environ, **environment}, cwd=REPO)
            servers[kind] = Server(kind, ports[kind], process)
        for server in servers.values():
            wait_until_listening(server)
        yield servers
    finally:
        for server in servers.values():
            server.process.terminate()
        for server in servers.values():
            server.process.wait(timeout=10)


async def measure_http(plan: HTTPPlan) -> list[Section]:
    section = Section(HTTP_TITLE)
    if shutil.which("wrk") is None:
        section.notes.append("Not measured: `wrk` is not installed (Debian: `apt-get install wrk`).")
        return [section]
    ports = {kind: free_port() for kind in SERVERS}
    public_url = f"http://127.0.0.1:{ports['oauth']}"
    with LocalAccessSaaS() as saas, tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        store = f"sqlite:///{scratch / 'oauth.sqlite3'}"
        minter = OAuthServer(oauth_config(saas, store, public_url))
        tokens = [(await mint_bearer(minter, f"caller{i}@example.com"))[0] for i in range(max(plan.callers))]
        await minter.aclose()
        upstream = saas.config()
        environment = {
            "ACCESS_CLIENT_ID": upstream.client_id,
            "ACCESS_CLIENT_SECRET": upstream.client_secret,
            "ACCESS_ISSUER": upstream.issuer,
            "GUARD_PUBLIC_URL": public_url,
            "COOKIE_ENCRYPTION_KEY": SECRET_KEY,
            "GUARD_OAUTH_STORE": store,
            "ALLOWED_EMAILS": "caller0@example.com",
        }
        scripts = {}
        for method in METHODS:
            for callers in plan.callers:
                scripts[method, callers] = scratch / f"{method.replace('/', '_')}-{callers}.lua"
                scripts[method, callers].write_text(wrk_script(method, tokens[:callers]))
        with running_servers(environment, ports) as servers:
            warm_up(servers, tokens)
            results: dict[tuple[str, int, str], list[Load]] = {}
            for round_number in range(plan.rounds):
                for method in METHODS:
                    for callers in plan.callers:
                        order = SERVERS if round_number % 2 == 0 else SERVERS[::-1]
                        for kind in order:
                            load = await asyncio.to_thread(
                                run_wrk, servers[kind].url, scripts[method, callers], callers, plan.seconds
                            )
                            results.setdefault((method, callers, kind), []).append(load)
    for method in METHODS:
        for callers in plan.callers:
            prefix = f"wrk: {method}, {callers} caller{'s' if callers > 1 else ''}"
            bare = results[method, callers, "bare"]
            guarded = results[method, callers, "oauth"]
            section.add(f"{prefix}, bare", "req/s", [load.requests_per_second for load in bare])
            figure = section.add(
                f"{prefix}, OAuth mode",
                "req/s",
                [load.requests_per_second for load in guarded],
                baseline=f"{prefix}, bare",
            )
            figure.target = f">= {HTTP_TARGET:.0%} of bare"
            ratio = section.ratio(figure)
            figure.met = ratio is not None and ratio >= HTTP_TARGET
            section.add(f"{prefix}, bare p99", "ms", [load.p99_ms for load in bare])
            section.add(
                f"{prefix}, OAuth mode p99", "ms", [load.p99_ms for load in guarded], baseline=f"{prefix}, bare p99"
            )
    section.notes.append(
        f"{plan.rounds} wrk rounds of {plan.seconds:g} s per cell, bare and OAuth mode alternating; one thread, one "
        "connection per caller, each caller its own bearer token (a grant in the SQLite store both processes share). "
        "The OAuth server is examples/reference_server.py's app, with its tool policy, configured by the environment."
    )
    return [section]


def warm_up(servers: dict[str, Server], tokens: Sequence[str]) -> None:
    with httpx.Client(timeout=30) as client:
        for server in servers.values():
            for method in METHODS:
                for token in tokens:
                    response = client.post(
                        server.url,
                        content=request_body(method),
                        headers={**request_headers(method), "Authorization": f"Bearer {token}"},
                    )
                    assert response.status_code == 200, f"{server.kind}: {response.status_code} {response.text[:200]}"


# -- the run ----------------------------------------------------------------------------------------------------------


async def collect(quick: bool = False) -> list[Section]:
    logging.getLogger("mcp_access_guard").setLevel(logging.WARNING)
    sections = [
        await measure_stack(STACK_QUICK if quick else STACK_FULL),
        await measure_lookups(LOOKUP_QUICK if quick else LOOKUP_FULL),
        await measure_token_endpoint(TOKEN_QUICK if quick else TOKEN_FULL),
    ]
    sections += await measure_http(HTTP_QUICK if quick else HTTP_FULL)
    return sections


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.serve:
        serve(arguments.serve, arguments.port)
        return
    for section in asyncio.run(collect(arguments.quick)):
        section.print()


if __name__ == "__main__":
    main()
