"""ServiceTokenMiddleware over real uvicorn and httpx: shared secrets, direct pairs, and what the app sees."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import pytest
from mcp.server.mcpserver import MCPServer
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from mcp_access_guard.identity import current_identity
from mcp_access_guard.middleware.service_token import QUOTED_HINT, SWAPPED_HINT, ServiceTokenMiddleware
from mcp_access_guard.policy import Rule
from mcp_access_guard.testing import LocalAccess, serve
from mcp_access_guard.verifier import AccessVerifier
from support import INITIALIZE_PARAMS, MCP_ACCEPT, RawResponse, RecordingApp, send_request

pytestmark = pytest.mark.anyio

SECRET_HEADER = "Cf-Access-Guard-Secret"
# Fresh random values each run: nothing secret is written into this file.
SECRET = secrets.token_hex(32)
NEXT_SECRET = secrets.token_hex(32)
CLIENT_ID = f"{secrets.token_hex(16)}.access"
CLIENT_SECRET = secrets.token_hex(32)
OTHER_CLIENT_ID = f"{secrets.token_hex(16)}.access"
OTHER_CLIENT_SECRET = secrets.token_hex(32)
PAIRS = {CLIENT_ID: CLIENT_SECRET, OTHER_CLIENT_ID: OTHER_CLIENT_SECRET}
ALL_SECRET_VALUES = (SECRET, NEXT_SECRET, CLIENT_SECRET, OTHER_CLIENT_SECRET)
CREDENTIAL_HEADERS = {"cf-access-guard-secret", "cf-access-client-id", "cf-access-client-secret"}


class EchoApp(RecordingApp):
    """Answers with the headers it received and the identity bound for it; counts the requests that reach it."""

    async def answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        identity = current_identity()
        described = None
        if identity is not None:
            described = {
                "subject": identity.subject,
                "issuer": identity.issuer,
                "expires_at": identity.expires_at,
                "email": identity.email,
                "common_name": identity.common_name,
                "claims": dict(identity.claims),
                "is_service_token": identity.is_service_token,
                "principal": identity.principal,
            }
        headers = [[name.decode("latin-1"), value.decode("latin-1")] for name, value in scope["headers"]]
        await JSONResponse({"headers": headers, "identity": described})(scope, receive, send)


def header_names(response: httpx.Response) -> set[str]:
    return {name.lower() for name, _ in response.json()["headers"]}


@pytest.fixture
def echo() -> EchoApp:
    return EchoApp()


async def guarded_client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        yield client


@pytest.fixture
async def secret_client(echo: EchoApp) -> AsyncIterator[httpx.AsyncClient]:
    async for client in guarded_client(ServiceTokenMiddleware(echo, secrets=[SECRET, NEXT_SECRET])):
        yield client


@pytest.fixture
async def pair_client(echo: EchoApp) -> AsyncIterator[httpx.AsyncClient]:
    async for client in guarded_client(ServiceTokenMiddleware(echo, client_credentials=PAIRS)):
        yield client


@pytest.fixture
async def both_client(echo: EchoApp) -> AsyncIterator[httpx.AsyncClient]:
    async for client in guarded_client(ServiceTokenMiddleware(echo, secrets=[SECRET], client_credentials=PAIRS)):
        yield client


def pair(client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET) -> dict[str, str]:
    return {"CF-Access-Client-Id": client_id, "CF-Access-Client-Secret": client_secret}


def assert_forbidden(response: httpx.Response, hint: str | None = None) -> None:
    assert response.status_code == 403, "never 401: that makes Cloudflare's Managed OAuth loop"
    assert "www-authenticate" not in response.headers
    assert response.json() == ({"error": "forbidden"} if hint is None else {"error": "forbidden", "hint": hint})


async def send_headers(client: httpx.AsyncClient, header_lines: bytes) -> RawResponse:
    """GET /mcp with header lines exactly as given (the same header twice), which httpx would merge or reorder."""
    return await send_request(str(client.base_url), headers=header_lines)


# -- shared secret ---------------------------------------------------------------------------------------------


async def test_right_secret_passes_and_is_removed(secret_client: httpx.AsyncClient, echo: EchoApp) -> None:
    response = await secret_client.get("/mcp", headers={SECRET_HEADER: SECRET, "X-Other": "kept"})
    assert response.status_code == 200
    assert "cf-access-guard-secret" not in header_names(response)
    assert "x-other" in header_names(response)
    assert SECRET not in response.text
    assert response.json()["identity"] is None
    assert echo.hits == 1


@pytest.mark.parametrize("secret", [SECRET, NEXT_SECRET], ids=["current", "next"])
async def test_rotation_accepts_every_configured_secret(secret_client: httpx.AsyncClient, secret: str) -> None:
    assert (await secret_client.get("/mcp", headers={SECRET_HEADER: secret})).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({SECRET_HEADER: secrets.token_hex(32)}, id="wrong"),
        pytest.param({SECRET_HEADER: ""}, id="empty"),
        pytest.param({SECRET_HEADER: SECRET[:-1]}, id="prefix"),
        pytest.param({SECRET_HEADER: SECRET + "0"}, id="longer"),
        pytest.param({SECRET_HEADER: SECRET.upper()}, id="case-changed"),
        pytest.param({SECRET_HEADER: f"{SECRET},{NEXT_SECRET}"}, id="comma-joined"),
        pytest.param({"Cf-Access-Guard-Secrets": SECRET}, id="other-header-name"),
        pytest.param({"Authorization": f"Bearer {SECRET}"}, id="as-bearer"),
    ],
)
async def test_wrong_or_missing_secret_is_403(
    secret_client: httpx.AsyncClient, echo: EchoApp, headers: dict[str, str]
) -> None:
    response = await secret_client.get("/mcp", headers=headers)
    assert_forbidden(response)
    assert echo.hits == 0


async def test_quoted_secret_gets_a_hint_without_the_value(secret_client: httpx.AsyncClient, echo: EchoApp) -> None:
    response = await secret_client.get("/mcp", headers={SECRET_HEADER: f'"{SECRET}"'})
    assert_forbidden(response, QUOTED_HINT)
    assert SECRET not in response.text
    assert echo.hits == 0


async def test_duplicated_secret_header_is_refused(secret_client: httpx.AsyncClient, echo: EchoApp) -> None:
    line = f"{SECRET_HEADER}: {SECRET}\r\n".encode()
    response = await send_headers(secret_client, line + line)
    assert response.status == 403
    assert json.loads(response.body) == {"error": "forbidden"}
    assert (await send_headers(secret_client, line)).status == 200
    assert echo.hits == 1


async def test_header_name_is_configurable(echo: EchoApp) -> None:
    layer = ServiceTokenMiddleware(echo, header="X-Tunnel-Secret", secrets=[SECRET])
    async for client in guarded_client(layer):
        assert_forbidden(await client.get("/mcp", headers={SECRET_HEADER: SECRET}))
        response = await client.get("/mcp", headers={"x-tunnel-secret": SECRET})
        assert response.status_code == 200
        assert "x-tunnel-secret" not in header_names(response)


async def test_service_token_headers_never_reach_the_app_in_secret_mode(secret_client: httpx.AsyncClient) -> None:
    response = await secret_client.get("/mcp", headers={SECRET_HEADER: SECRET, **pair()})
    assert response.status_code == 200
    assert not header_names(response) & CREDENTIAL_HEADERS
    assert response.json()["identity"] is None, "pairs are not checked, so they bind nothing"


# -- direct service-token pairs --------------------------------------------------------------------------------


async def test_right_pair_binds_a_service_token_identity(pair_client: httpx.AsyncClient) -> None:
    response = await pair_client.get("/mcp", headers=pair())
    assert response.status_code == 200
    assert response.json()["identity"] == {
        "subject": "",
        "issuer": "local",
        "expires_at": 0,
        "email": None,
        "common_name": CLIENT_ID,
        "claims": {"common_name": CLIENT_ID, "type": "app"},
        "is_service_token": True,
        "principal": CLIENT_ID,
    }
    assert not header_names(response) & CREDENTIAL_HEADERS
    assert CLIENT_SECRET not in response.text


async def test_every_configured_pair_works_and_keeps_its_own_identity(pair_client: httpx.AsyncClient) -> None:
    response = await pair_client.get("/mcp", headers=pair(OTHER_CLIENT_ID, OTHER_CLIENT_SECRET))
    assert response.json()["identity"]["principal"] == OTHER_CLIENT_ID


async def test_no_pair_passes_without_identity(pair_client: httpx.AsyncClient) -> None:
    response = await pair_client.get("/mcp")
    assert response.status_code == 200
    assert response.json()["identity"] is None


@pytest.mark.parametrize(
    ("headers", "hint"),
    [
        pytest.param(pair(client_secret=secrets.token_hex(32)), None, id="wrong-secret"),
        pytest.param(pair(client_id=f"{secrets.token_hex(16)}.access"), None, id="unknown-id"),
        pytest.param(pair(CLIENT_ID, OTHER_CLIENT_SECRET), None, id="secret-of-another-pair"),
        pytest.param(pair(CLIENT_SECRET, CLIENT_ID), SWAPPED_HINT, id="swapped"),
        pytest.param(pair(client_secret=f'"{CLIENT_SECRET}"'), QUOTED_HINT, id="double-quoted-secret"),
        pytest.param(pair(client_secret=f"'{CLIENT_SECRET}'"), QUOTED_HINT, id="single-quoted-secret"),
        pytest.param(pair(client_id=f'"{CLIENT_ID}"'), QUOTED_HINT, id="quoted-id"),
        pytest.param(pair(client_secret=f"{CLIENT_SECRET[:32]} {CLIENT_SECRET[32:]}"), QUOTED_HINT, id="inner-space"),
        pytest.param({"CF-Access-Client-Id": CLIENT_ID}, None, id="id-only"),
        pytest.param({"CF-Access-Client-Secret": CLIENT_SECRET}, None, id="secret-only"),
    ],
)
async def test_bad_pair_is_403(
    pair_client: httpx.AsyncClient, echo: EchoApp, headers: dict[str, str], hint: str | None
) -> None:
    response = await pair_client.get("/mcp", headers=headers)
    assert_forbidden(response, hint)
    for value in (CLIENT_ID, CLIENT_SECRET, OTHER_CLIENT_SECRET):
        assert value not in response.text
    assert echo.hits == 0


async def test_duplicated_pair_headers_are_refused(pair_client: httpx.AsyncClient, echo: EchoApp) -> None:
    id_line = f"CF-Access-Client-Id: {CLIENT_ID}\r\n".encode()
    secret_line = f"CF-Access-Client-Secret: {CLIENT_SECRET}\r\n".encode()
    assert (await send_headers(pair_client, id_line + id_line + secret_line)).status == 403
    assert (await send_headers(pair_client, id_line + secret_line + secret_line)).status == 403
    assert (await send_headers(pair_client, id_line + secret_line)).status == 200
    assert echo.hits == 1


# -- both modes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected_status", "expected_principal"),
    [
        pytest.param({SECRET_HEADER: SECRET, **pair()}, 200, CLIENT_ID, id="secret-and-pair"),
        pytest.param({SECRET_HEADER: SECRET}, 200, None, id="secret-no-pair-left-to-jwt-layer"),
        pytest.param(pair(), 403, None, id="pair-without-secret"),
        pytest.param({SECRET_HEADER: SECRET, **pair(client_secret="x")}, 403, None, id="secret-and-wrong-pair"),
        pytest.param({SECRET_HEADER: "wrong", **pair()}, 403, None, id="wrong-secret-and-pair"),
    ],
)
async def test_both_modes(
    both_client: httpx.AsyncClient, headers: dict[str, str], expected_status: int, expected_principal: str | None
) -> None:
    response = await both_client.get("/mcp", headers=headers)
    assert response.status_code == expected_status
    if expected_status == 200:
        identity = response.json()["identity"]
        assert (identity and identity["principal"]) == expected_principal
        assert not header_names(response) & CREDENTIAL_HEADERS
    else:
        assert_forbidden(response)


# -- identity as the rest of the stack sees it -------------------------------------------------------------------


async def test_identity_matches_the_jwt_layer_for_the_policy(local_access: LocalAccess, echo: EchoApp) -> None:
    verifier = AccessVerifier(local_access.config())
    try:
        from_jwt = await verifier.verify(local_access.service_token(CLIENT_ID))
    finally:
        await verifier.aclose()
    async for client in guarded_client(ServiceTokenMiddleware(echo, client_credentials=PAIRS)):
        from_pair = (await client.get("/mcp", headers=pair())).json()["identity"]
    assert (from_pair["email"], from_pair["common_name"], from_pair["principal"], from_pair["is_service_token"]) == (
        from_jwt.email,
        from_jwt.common_name,
        from_jwt.principal,
        from_jwt.is_service_token,
    )
    assert from_pair["claims"]["common_name"] == from_jwt.claims["common_name"]
    assert from_pair["claims"]["type"] == from_jwt.claims["type"]


async def test_identity_reaches_tool_code_of_a_real_mcp_server() -> None:
    server = MCPServer("service-token-test")

    @server.tool()
    def whoami() -> str:
        identity = current_identity()
        allowed = Rule(service_tokens=[CLIENT_ID]).matches(identity)
        return f"{identity.principal if identity else 'anonymous'} allowed={allowed}"

    app = ServiceTokenMiddleware(server.streamable_http_app(json_response=True), client_credentials=PAIRS)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        assert await call_whoami(client, pair()) == f"{CLIENT_ID} allowed=True"
        other = pair(OTHER_CLIENT_ID, OTHER_CLIENT_SECRET)
        assert await call_whoami(client, other) == f"{OTHER_CLIENT_ID} allowed=False"
        assert await call_whoami(client, {}) == "anonymous allowed=False"
        refused = await client.post("/mcp", json=rpc("initialize", INITIALIZE_PARAMS), headers=pair(client_secret="x"))
        assert_forbidden(refused)


def rpc(method: str, params: Mapping[str, Any], request_id: int | None = 1) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if request_id is not None:
        message["id"] = request_id
    return message


async def call_whoami(client: httpx.AsyncClient, credentials: Mapping[str, str]) -> str:
    headers = {**MCP_ACCEPT, **credentials}
    initialized = await client.post("/mcp", json=rpc("initialize", INITIALIZE_PARAMS), headers=headers)
    assert initialized.status_code == 200
    headers["Mcp-Session-Id"] = initialized.headers["mcp-session-id"]
    headers["Mcp-Protocol-Version"] = "2025-06-18"
    notified = await client.post("/mcp", json=rpc("notifications/initialized", {}, None), headers=headers)
    assert notified.status_code == 202
    called = await client.post("/mcp", json=rpc("tools/call", {"name": "whoami", "arguments": {}}, 2), headers=headers)
    assert called.status_code == 200
    text: str = called.json()["result"]["content"][0]["text"]
    return text


# -- secrets stay secret ---------------------------------------------------------------------------------------


async def test_no_secret_in_any_body_or_log(caplog: pytest.LogCaptureFixture, echo: EchoApp) -> None:
    caplog.set_level(logging.DEBUG)
    attempts = [
        {},
        {SECRET_HEADER: SECRET},
        {SECRET_HEADER: NEXT_SECRET},
        {SECRET_HEADER: f'"{SECRET}"'},
        {SECRET_HEADER: SECRET, **pair()},
        {SECRET_HEADER: SECRET, **pair(CLIENT_SECRET, CLIENT_ID)},
        {SECRET_HEADER: SECRET, **pair(client_secret=f"'{CLIENT_SECRET}'")},
        {SECRET_HEADER: SECRET, **pair(client_secret=OTHER_CLIENT_SECRET)},
        {SECRET_HEADER: SECRET, "CF-Access-Client-Secret": CLIENT_SECRET},
    ]
    layer = ServiceTokenMiddleware(echo, secrets=[SECRET, NEXT_SECRET], client_credentials=PAIRS)
    bodies = []
    async for client in guarded_client(layer):
        for headers in attempts:
            response = await client.get("/mcp", headers=headers)
            # The echo app repeats what it received, so a body from it holds exactly what reached the app.
            bodies.append(response.text)
    decisions = [(vars(r)["decision"], vars(r)["reason"]) for r in caplog.records if r.name == "mcp_access_guard"]
    assert decisions == [
        ("deny", "secret_missing"),
        ("allow", "shared_secret"),
        ("allow", "shared_secret"),
        ("deny", "secret_quoted"),
        ("allow", "client_credentials"),
        ("deny", "credentials_swapped"),
        ("deny", "credentials_quoted"),
        ("deny", "credentials_wrong"),
        ("deny", "credentials_incomplete"),
    ]
    for value in ALL_SECRET_VALUES:
        assert value not in caplog.text
        assert all(value not in body for body in bodies)
        assert value not in repr(layer)


# -- configuration ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({}, "fail closed", id="nothing-configured"),
        pytest.param({"secrets": [], "client_credentials": {}}, "fail closed", id="empty"),
        pytest.param({"secrets": SECRET}, "not one string", id="one-string-not-a-list"),
        pytest.param({"secrets": [""]}, "empty or has stray quotes", id="empty-secret"),
        pytest.param({"secrets": [f'"{SECRET}"']}, "empty or has stray quotes", id="quoted-secret"),
        pytest.param({"secrets": [f"{SECRET}\n"]}, "empty or has stray quotes", id="secret-with-newline"),
        pytest.param({"client_credentials": {CLIENT_ID: f" {CLIENT_SECRET}"}}, "stray quotes", id="spaced-pair"),
        pytest.param({"client_credentials": {CLIENT_SECRET: CLIENT_ID}}, "look swapped", id="swapped-pair"),
        pytest.param({"header": "CF-Access-Client-Id", "secrets": [SECRET]}, "must not be", id="header-clash"),
    ],
)
def test_misconfiguration_is_rejected(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        ServiceTokenMiddleware(EchoApp(), **kwargs)
    for value in ALL_SECRET_VALUES:
        assert value not in str(raised.value)
