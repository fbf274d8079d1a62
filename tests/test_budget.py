"""Per-principal request budgets: behind a real credential layer over real uvicorn, with the window's clock moved by
hand; through guard() in both modes (in OAuth mode one budget per person, whichever client they use); shared by two
servers through each store (memory, SQLite, a real redis-server); and the `[limits]` settings."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import websockets
from starlette.types import Receive, Scope, Send

from mcp_access_guard import AccessJWTMiddleware, ConfigError, GuardConfig, guard
from mcp_access_guard.middleware.budget import RequestBudgetMiddleware
from mcp_access_guard.oauth.store import open_store
from mcp_access_guard.settings import LimitSettings
from mcp_access_guard.testing import LocalAccess, LocalAccessSaaS, free_port, serve
from oauth_harness import call_mcp, mcp_app, oauth_config, register, tokens_for
from redis_server import RedisServer, require_redis_server
from support import INITIALIZE, MCP_HEADERS, ManualClock, RecordingApp

pytestmark = pytest.mark.anyio

ASSERTION = "Cf-Access-Jwt-Assertion"


class Hello(RecordingApp):
    async def answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"hello"})


@asynccontextmanager
async def budgeted(
    local_access: LocalAccess, requests: int, clock: ManualClock, **options: int
) -> AsyncIterator[tuple[str, RequestBudgetMiddleware, Hello]]:
    app = Hello()
    budget = RequestBudgetMiddleware(app, requests, window=60, clock=clock, **options)
    async with serve(AccessJWTMiddleware(budget, config=local_access.config())) as url:
        yield url, budget, app


def budget_refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if getattr(record, "layer", None) == "budget"]


async def test_a_principal_past_its_budget_waits_for_its_window_and_no_one_else_does(
    local_access: LocalAccess, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    alice = {ASSERTION: local_access.user_token("alice@example.com")}
    bob = {ASSERTION: local_access.user_token("bob@example.com")}
    robot = {ASSERTION: local_access.service_token()}
    async with budgeted(local_access, 3, clock) as (url, _, app), httpx.AsyncClient() as http:
        for _ in range(3):
            assert (await http.get(url, headers=alice)).status_code == 200
        clock.advance(10)
        refused = await http.get(url, headers=alice)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "50"  # the window opened 10 s ago
        assert refused.json() == {"error": "too_many_requests", "retry_after": 50}
        # A fresh token for the same person is the same principal.
        again = {ASSERTION: local_access.user_token("Alice@Example.com")}
        assert (await http.post(url, headers=again, content=b"{}")).status_code == 429
        assert app.hits == 3
        # Other principals, a person and a service token, have budgets of their own.
        assert [(await http.get(url, headers=bob)).status_code for _ in range(3)] == [200] * 3
        assert [(await http.get(url, headers=robot)).status_code for _ in range(3)] == [200] * 3
        assert (await http.get(url, headers=robot)).status_code == 429

        clock.advance(49.9)
        assert (await http.get(url, headers=alice)).headers["retry-after"] == "1"
        clock.advance(0.1)
        assert [(await http.get(url, headers=alice)).status_code for _ in range(4)] == [200, 200, 200, 429]

    # One line per principal per window: alice's first refusal in each of her two windows, and the robot's.
    logged = [(record.principal, record.reason) for record in budget_refusals(caplog)]  # type: ignore[attr-defined]
    assert logged == [
        ("alice@example.com", "budget_spent"),
        ("88bf3b6d86161464f6509f7219099e57.access", "budget_spent"),
        ("alice@example.com", "budget_spent"),
    ]


async def test_memory_is_bounded_and_a_principal_forgotten_starts_afresh(local_access: LocalAccess) -> None:
    clock = ManualClock()
    async with budgeted(local_access, 1, clock, max_principals=5) as (url, budget, _), httpx.AsyncClient() as http:
        alice = {ASSERTION: local_access.user_token("alice@example.com")}
        assert (await http.get(url, headers=alice)).status_code == 200
        assert (await http.get(url, headers=alice)).status_code == 429
        for number in range(40):
            caller = {ASSERTION: local_access.user_token(f"user{number}@example.com")}
            assert (await http.get(url, headers=caller)).status_code == 200
            assert len(budget._windows) <= 5
        # Past the bound the least recently seen window is dropped: alice's count was forgotten, never someone's
        # unspent budget refused.
        assert "alice@example.com" not in budget._windows
        assert (await http.get(url, headers=alice)).status_code == 200


async def test_websocket_connections_count_and_are_closed_past_the_budget(local_access: LocalAccess) -> None:
    clock = ManualClock()
    token = {ASSERTION: local_access.user_token()}
    async with budgeted(local_access, 1, clock) as (url, _, app):
        async with websockets.connect(url.replace("http", "ws") + "/ws", additional_headers=token):
            pass
        with pytest.raises(websockets.InvalidStatus):
            await websockets.connect(url.replace("http", "ws") + "/ws", additional_headers=token)
        assert app.hits == 1


async def test_guard_puts_the_budget_behind_the_credential_layer(local_access: LocalAccess) -> None:
    config = GuardConfig(access=local_access.config(), limits=LimitSettings(requests_per_minute=2))
    async with serve(guard(mcp_app(), config)) as url, httpx.AsyncClient() as http:
        alice = {**MCP_HEADERS, ASSERTION: local_access.user_token()}
        answers = [await http.post(f"{url}/mcp", json=INITIALIZE, headers=alice) for _ in range(3)]
        assert [answer.status_code for answer in answers] == [200, 200, 429]
        assert 1 <= int(answers[2].headers["retry-after"]) <= 60
        # No credential is refused by the credential layer, and counts against no one.
        for _ in range(3):
            assert (await http.post(f"{url}/mcp", json=INITIALIZE, headers=MCP_HEADERS)).status_code == 401
        bob = {**MCP_HEADERS, ASSERTION: local_access.user_token("bob@example.com")}
        assert (await http.post(f"{url}/mcp", json=INITIALIZE, headers=bob)).status_code == 200
    # Off by default: no budget layer at all.
    unlimited = guard(mcp_app(), GuardConfig(access=local_access.config()))
    layer = unlimited
    while hasattr(layer, "app"):
        assert not isinstance(layer, RequestBudgetMiddleware)
        layer = layer.app


async def test_in_oauth_mode_one_person_has_one_budget_across_clients(local_access_saas: LocalAccessSaaS) -> None:
    port = free_port()
    config = GuardConfig(
        oauth=oauth_config(local_access_saas, f"http://127.0.0.1:{port}"), limits=LimitSettings(requests_per_minute=3)
    )
    async with serve(guard(mcp_app(), config), port=port) as url:
        local_access_saas.login_as("alice@example.com")
        first = (await tokens_for(url, await register(url)))["access_token"]
        second = (await tokens_for(url, await register(url)))["access_token"]
        local_access_saas.login_as("bob@example.com")
        bobs = (await tokens_for(url, await register(url)))["access_token"]
        # The token endpoint and the other OAuth endpoints are in front of the bearer layer: not counted.
        assert [(await call_mcp(url, first)).status_code for _ in range(2)] == [200, 200]
        # A second client of the same person shares the budget: registering clients does not multiply it.
        assert [(await call_mcp(url, second)).status_code for _ in range(2)] == [200, 429]
        assert (await call_mcp(url, first)).status_code == 429
        assert (await call_mcp(url, bobs)).status_code == 200


# -- settings ------------------------------------------------------------------------------------------------------

ACCESS = "[access]\nteam_domain = 'myteam'\naudiences = ['" + "a" * 64 + "']\n"


def test_limits_are_read_from_toml_then_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "guard.toml"
    path.write_text(ACCESS + "[limits]\nrequests_per_minute = 120\n")
    assert GuardConfig.from_toml(path, environ={}).limits == LimitSettings(requests_per_minute=120)
    # The file wins over the environment; the environment fills in what the file leaves out.
    assert GuardConfig.from_toml(path, environ={"GUARD_REQUESTS_PER_MINUTE": "5"}).limits.requests_per_minute == 120
    path.write_text(ACCESS)
    assert GuardConfig.from_toml(path, environ={"GUARD_REQUESTS_PER_MINUTE": " 5 "}).limits.requests_per_minute == 5
    assert GuardConfig.from_toml(path, environ={"GUARD_REQUESTS_PER_MINUTE": ""}).limits.requests_per_minute == 0
    assert GuardConfig.from_toml(path, environ={}).limits == LimitSettings()


@pytest.mark.parametrize("value", ["-1", "1.5", "ten", "1e3", "\u0665", "2000000", "99999999999999999999999"])
def test_a_bad_value_in_the_environment_is_refused_with_its_name(value: str) -> None:
    environ = {"TEAM_DOMAIN": "myteam", "POLICY_AUD": "a" * 64, "GUARD_REQUESTS_PER_MINUTE": value}
    with pytest.raises(ConfigError, match="GUARD_REQUESTS_PER_MINUTE"):
        GuardConfig.from_env(environ)


@pytest.mark.parametrize("value", ["-1", "1.5", "'60'", "true", "2000000"])
def test_a_bad_value_in_the_file_is_refused_with_its_source(tmp_path: Path, value: str) -> None:
    path = tmp_path / "guard.toml"
    path.write_text(ACCESS + f"[limits]\nrequests_per_minute = {value}\n")
    with pytest.raises(ConfigError, match=r"\[limits\] requests_per_minute"):
        GuardConfig.from_toml(path, environ={})


def test_an_unknown_key_in_limits_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "guard.toml"
    path.write_text(ACCESS + "[limits]\nrequests_per_minutes = 60\n")
    with pytest.raises(ConfigError, match="unknown key"):
        GuardConfig.from_toml(path, environ={})


@pytest.mark.parametrize("requests", [0, -1, 1.5, True, 2_000_000])
def test_the_layer_refuses_a_budget_out_of_range(requests: object) -> None:
    with pytest.raises(ConfigError, match="requests"):
        RequestBudgetMiddleware(Hello(), requests)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="requests_per_minute"):
        LimitSettings(requests_per_minute=requests if requests != 0 else -1)  # type: ignore[arg-type]


@pytest.mark.parametrize("window", [0, -1, float("nan"), float("inf")])
def test_the_window_must_be_a_positive_number_of_seconds(window: float) -> None:
    with pytest.raises(ConfigError, match="window"):
        RequestBudgetMiddleware(Hello(), 1, window=window)


# -- a budget shared through the store -----------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        yield "memory:"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'budget.sqlite3'}"
    else:
        server = RedisServer(require_redis_server(), tmp_path)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


async def test_a_shared_budget_holds_across_processes(local_access: LocalAccess, store_url: str) -> None:
    # Two layers over two stores opened on the same data (one object for memory:), each under its own uvicorn, as
    # two worker processes would be.
    first_store = open_store(store_url)
    second_store = first_store if store_url == "memory:" else open_store(store_url)
    alice = {ASSERTION: local_access.user_token("alice@example.com")}
    bob = {ASSERTION: local_access.user_token("bob@example.com")}
    try:
        async with (
            serve(
                AccessJWTMiddleware(
                    RequestBudgetMiddleware(Hello(), 3, store=first_store), config=local_access.config()
                )
            ) as one,
            serve(
                AccessJWTMiddleware(
                    RequestBudgetMiddleware(Hello(), 3, store=second_store), config=local_access.config()
                )
            ) as two,
            httpx.AsyncClient() as http,
        ):
            statuses = [(await http.get(url, headers=alice)).status_code for url in (one, two, one, two)]
            assert statuses == [200, 200, 200, 429]
            refused = await http.get(one, headers=alice)
            assert (refused.status_code, refused.headers["retry-after"]) == (429, "60")
            assert (await http.get(two, headers=bob)).status_code == 200
    finally:
        await first_store.aclose()
        if second_store is not first_store:
            await second_store.aclose()


async def test_a_shared_budget_whose_store_is_down_refuses_with_503(local_access: LocalAccess, tmp_path: Path) -> None:
    server = RedisServer(require_redis_server(), tmp_path)
    server.start()
    store = open_store(server.url)
    token = {ASSERTION: local_access.user_token()}
    try:
        budget = RequestBudgetMiddleware(Hello(), 3, store=store)
        async with serve(AccessJWTMiddleware(budget, config=local_access.config())) as url, httpx.AsyncClient() as http:
            assert (await http.get(url, headers=token)).status_code == 200
            server.stop()
            down = await http.get(url, headers=token)
            assert (down.status_code, down.json()) == (503, {"error": "unavailable"})
    finally:
        server.stop()
        await store.aclose()
