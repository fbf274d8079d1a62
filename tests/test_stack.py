"""GuardConfig and guard(): the whole stack, in DESIGN.md's order, around a real MCPServer under real uvicorn."""

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp_types import TextContent

from mcp_access_guard import ConfigError, current_identity
from mcp_access_guard.policy import Rule, ToolPolicy
from mcp_access_guard.settings import CORSSettings, GuardConfig, PathSettings, ServiceTokenSettings
from mcp_access_guard.stack import DropServiceTokenHeaders, guard
from mcp_access_guard.testing import LocalAccess, serve
from support import INITIALIZE, MCP_HEADERS

ROOT = Path(__file__).resolve().parent.parent
SECRET = "tunnel-secret-0123456789"
ASSERTION = "Cf-Access-Jwt-Assertion"
SECRET_HEADER = "Cf-Access-Guard-Secret"


def reference_server(seen_headers: list[dict[str, str]]) -> MCPServer:
    server = MCPServer("reference")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Everyone may add."""
        return a + b

    @server.tool()
    def generate_image(prompt: str) -> str:
        """Only the named people may."""
        return f"image of {prompt}"

    @server.tool()
    def whoami() -> str:
        identity = current_identity()
        return identity.principal if identity else "nobody"

    original = server.streamable_http_app

    def app_recording_headers() -> object:
        inner = original()

        async def record(scope, receive, send):  # type: ignore[no-untyped-def]
            if scope["type"] == "http":
                seen_headers.append({k.decode().lower(): v.decode() for k, v in scope["headers"]})
            await inner(scope, receive, send)

        return record

    server.streamable_http_app = app_recording_headers  # type: ignore[method-assign]
    return server


@pytest.fixture
def seen_headers() -> list[dict[str, str]]:
    return []


@pytest.fixture
async def stack_url(local_access: LocalAccess, seen_headers: list[dict[str, str]]) -> AsyncIterator[str]:
    config = GuardConfig(
        access=local_access.config(),
        service_token=ServiceTokenSettings(secrets=(SECRET,)),
        tools=ToolPolicy({"generate_image": Rule(emails=["alice@example.com"])}),
    )
    async with serve(guard(reference_server(seen_headers).streamable_http_app(), config)) as url:
        yield url


async def request(url: str, method: str = "POST", path: str = "/mcp", **headers: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        body = json.dumps(INITIALIZE) if method == "POST" else None
        return await http.request(method, url + path, content=body, headers={**MCP_HEADERS, **headers})


@pytest.mark.anyio
async def test_layers_refuse_in_order(local_access: LocalAccess, stack_url: str) -> None:
    token = local_access.user_token()
    # Paths first: an unknown path is 404 whatever else is wrong.
    assert (await request(stack_url, path="/admin", Origin="https://evil.example")).status_code == 404
    # The health answer needs nothing.
    health = await request(stack_url, "GET", "/health")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    # CORS next: a preflight is answered before any credential, and a foreign Origin is refused before the secret.
    preflight = await request(
        stack_url, "OPTIONS", Origin="https://claude.ai", **{"Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://claude.ai"
    assert (await request(stack_url, Origin="https://evil.example")).status_code == 403
    # The shared secret before the JWT: without it even a valid token is 403.
    assert (await request(stack_url, **{ASSERTION: token})).status_code == 403
    # With the secret, no token is 401, a bad one 403, a good one reaches the app.
    assert (await request(stack_url, **{SECRET_HEADER: SECRET})).status_code == 401
    assert (await request(stack_url, **{SECRET_HEADER: SECRET, ASSERTION: "a.b.c"})).status_code == 403
    assert (await request(stack_url, **{SECRET_HEADER: SECRET, ASSERTION: token})).status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_tool_policy_through_the_whole_stack(
    mode: str, local_access: LocalAccess, stack_url: str, seen_headers: list[dict[str, str]]
) -> None:
    async def as_caller(email: str) -> tuple[list[str], str, str]:
        headers = {SECRET_HEADER: SECRET, ASSERTION: local_access.user_token(email)}
        async with (
            httpx2.AsyncClient(headers=headers) as http,
            Client(streamable_http_client(f"{stack_url}/mcp", http_client=http), mode=mode) as client,
        ):
            names = [tool.name for tool in (await client.list_tools()).tools]
            image = await client.call_tool("generate_image", {"prompt": "a cat"})
            made_up = await client.call_tool("no_such_tool", {"prompt": "a cat"})
        image_text, made_up_text = image.content[0], made_up.content[0]
        assert isinstance(image_text, TextContent)
        assert isinstance(made_up_text, TextContent)
        return names, image_text.text, made_up_text.text

    alice = await as_caller("alice@example.com")
    assert alice[0] == ["add", "generate_image", "whoami"]
    assert alice[1] == "image of a cat"
    bob = await as_caller("bob@example.com")
    assert bob[0] == ["add", "whoami"]
    assert bob[1] == "Unknown tool: generate_image"
    assert bob[2] == "Unknown tool: no_such_tool"
    # The tunnel's secret never reaches the app.
    assert seen_headers
    assert all(SECRET_HEADER.lower() not in headers for headers in seen_headers)
    assert all(SECRET not in json.dumps(headers) for headers in seen_headers)


def test_a_config_that_would_leave_the_server_open_is_refused() -> None:
    with pytest.raises(ConfigError, match="open to anyone"):
        GuardConfig(access=None)
    assert GuardConfig(access=None, dev=True).dev


def test_layers_can_be_left_out_only_explicitly(local_access: LocalAccess) -> None:
    from mcp_access_guard.middleware.access import AccessJWTMiddleware
    from mcp_access_guard.middleware.body_size import BodySizeLimitMiddleware
    from mcp_access_guard.middleware.cors import CORSAllowlistMiddleware
    from mcp_access_guard.middleware.paths import PathAllowlistMiddleware
    from mcp_access_guard.middleware.sse import SSESessionMiddleware

    app = MCPServer("x").streamable_http_app()
    outermost = guard(app, GuardConfig(access=local_access.config()))
    # The request-size layer is outermost, whatever else is configured.
    assert isinstance(outermost, BodySizeLimitMiddleware)
    full = outermost.app
    assert isinstance(full, PathAllowlistMiddleware)
    assert isinstance(full.app, CORSAllowlistMiddleware)
    # With no shared secret configured, that layer's place only takes the service-token headers off.
    assert isinstance(full.app.app, DropServiceTokenHeaders)
    assert isinstance(full.app.app.app, AccessJWTMiddleware)
    # Behind the credential layer, HTTP+SSE sessions are bound to their callers whatever the app serves.
    assert isinstance(full.app.app.app.app, SSESessionMiddleware)
    assert full.app.app.app.app.app is app
    bare = guard(app, GuardConfig(access=local_access.config(), paths=None, cors=None)).app
    assert isinstance(bare, DropServiceTokenHeaders)
    assert isinstance(bare.app, AccessJWTMiddleware)


def test_the_sample_toml_documents_a_loadable_config() -> None:
    config = GuardConfig.from_toml(ROOT / "examples" / "guard.toml")
    assert config.access is not None
    assert config.access.issuer == "https://myteam.cloudflareaccess.com"
    assert config.paths == PathSettings(allow=("/mcp", "/health"), health=True)
    assert config.cors is not None
    assert config.cors.allowed_hosts is None
    assert config.tools is not None
    assert config.tools.rules["generate_image"] == Rule(emails=["alice@example.com"])
    assert not config.service_token.enabled


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[access]\nteam_domain = 'myteam'\naudiences = ['" + "a" * 64 + "']\nleway = 5\n", "unknown key"),
        ("[access]\nteam_domain = 'myteam'\naudiences = ['" + "a" * 64 + "']\n[cors]\norigins = []\n", "unknown key"),
        ("[acess]\nteam_domain = 'myteam'\n", "unknown top-level key"),
        ("[paths]\nallow = ['/mcp']\n", "open to anyone"),
        ("[access\n", "not valid TOML"),
        ("[access]\nteam_domain = 'http://example.com'\naudiences = 'x'\n", "plain http://"),
        (
            "[access]\nteam_domain = 't'\naudiences = ['" + "a" * 64 + "']\n[tools.x]\nemail = ['a@b.c']\n",
            "unknown field",
        ),
    ],
)
def test_bad_toml_is_refused_with_a_clear_message(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "guard.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        GuardConfig.from_toml(path)


def test_from_toml_turns_layers_off_and_on(tmp_path: Path) -> None:
    path = tmp_path / "guard.toml"
    path.write_text(
        "[access]\nteam_domain = 'myteam'\naudiences = '" + "a" * 64 + "'\ncookie = true\n"
        "allow = { email_domains = ['example.com'] }\n"
        "[paths]\nenabled = false\n[cors]\nallowed_hosts = ['mcp.example.com']\n"
        "[service_token]\nsecrets = ['secret-one-0123456', 'secret-two-0123456']\n"
        "client_credentials = { 'abc.access' = 'client-secret-0123456' }\n"
    )
    config = GuardConfig.from_toml(path)
    assert config.paths is None
    assert config.cors == CORSSettings(allowed_hosts=("mcp.example.com",))
    assert config.service_token.secrets == ("secret-one-0123456", "secret-two-0123456")
    assert dict(config.service_token.client_credentials) == {"abc.access": "client-secret-0123456"}
    assert config.allow == Rule(email_domains=["example.com"])
    assert config.cookie
    assert "s1" not in repr(config)
    assert "xyz" not in repr(config)


def test_from_env_reads_every_variable() -> None:
    config = GuardConfig.from_env(
        {
            "TEAM_DOMAIN": "myteam",
            "POLICY_AUD": "a" * 64,
            "GUARD_PATHS": "/mcp, /health, /docs/*",
            "GUARD_ALLOWED_ORIGINS": "https://app.example.com",
            "GUARD_EXTRA_ORIGINS": "https://other.example.com",
            "GUARD_ALLOWED_HOSTS": "mcp.example.com,*.example.net",
            "GUARD_TRUST_FORWARDED_HOST": "true",
            "GUARD_SECRET_HEADER": "X-Tunnel-Secret",
            "GUARD_SECRETS": "secret-one-0123456,secret-two-0123456",
            "ALLOWED_EMAILS": "alice@example.com, bob@example.com",
            "ALLOWED_EMAILS_TOOL": "generate_image",
        }
    )
    assert config.access is not None
    assert config.paths == PathSettings(allow=("/mcp", "/health", "/docs/*"))
    assert config.cors == CORSSettings(
        allow_origins=("https://app.example.com",),
        extra_origins=("https://other.example.com",),
        allowed_hosts=("mcp.example.com", "*.example.net"),
        trust_forwarded_host=True,
    )
    assert config.service_token == ServiceTokenSettings(
        header="X-Tunnel-Secret", secrets=("secret-one-0123456", "secret-two-0123456")
    )
    assert config.tools is not None
    assert config.tools.rules == {"generate_image": Rule(emails=["alice@example.com", "bob@example.com"])}


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "TEAM_DOMAIN is empty"),
        ({"TEAM_DOMAIN": "t", "POLICY_AUD": "a" * 64, "GUARD_DEV": "maybe"}, "GUARD_DEV='maybe'"),
        ({"TEAM_DOMAIN": "t", "POLICY_AUD": "a" * 64, "ALLOWED_EMAILS": "a@b.c"}, "ALLOWED_EMAILS_TOOL"),
    ],
)
def test_from_env_refusals(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GuardConfig.from_env(environ)


def test_from_env_dev_mode_without_access() -> None:
    assert GuardConfig.from_env({"GUARD_DEV": "1"}).access is None


@pytest.mark.anyio
async def test_behind_a_tunnel_our_host_check_replaces_the_sdks(local_access: LocalAccess) -> None:
    from mcp.server.transport_security import TransportSecuritySettings

    sdk_check_off = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    config = GuardConfig(access=local_access.config(), cors=CORSSettings(allowed_hosts=("mcp.example.com",)))
    app = guard(MCPServer("tunnel").streamable_http_app(transport_security=sdk_check_off), config)
    token = local_access.user_token()
    async with serve(app) as url:
        public = await request(url, Host="mcp.example.com", Origin="https://claude.ai", **{ASSERTION: token})
        assert public.status_code == 200
        assert public.headers["access-control-allow-origin"] == "https://claude.ai"
        rebound = await request(url, Host="attacker.example", **{ASSERTION: token})
        assert rebound.status_code == 421
        foreign_page = await request(url, Host="mcp.example.com", Origin="https://evil.example", **{ASSERTION: token})
        assert foreign_page.status_code == 403


@pytest.mark.anyio
@pytest.mark.parametrize("secrets", [(), (SECRET,)], ids=["shared-secret layer off", "shared-secret layer on"])
async def test_service_token_headers_never_reach_the_app(
    local_access: LocalAccess, seen_headers: list[dict[str, str]], secrets: tuple[str, ...]
) -> None:
    config = GuardConfig(access=local_access.config(), service_token=ServiceTokenSettings(secrets=secrets))
    client_secret = "a-client-secret-nothing-here-checks"
    async with serve(guard(reference_server(seen_headers).streamable_http_app(), config)) as url:
        answer = await request(
            url,
            **{
                ASSERTION: local_access.user_token(),
                SECRET_HEADER: SECRET,
                "CF-Access-Client-Id": "robot.access",
                "CF-Access-Client-Secret": client_secret,
            },
        )
    assert answer.status_code == 200
    [seen] = seen_headers
    assert "cf-access-client-id" not in seen
    assert "cf-access-client-secret" not in seen
    assert client_secret not in json.dumps(seen)
    assert seen[ASSERTION.lower()]  # the rest arrives as sent


@pytest.mark.anyio
async def test_service_token_headers_in_any_case_are_dropped_with_the_layer_off() -> None:
    seen: list[list[tuple[bytes, bytes]]] = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        seen.append(scope["headers"])

    headers = [(b"CF-Access-Client-Secret", b"x" * 20), (b"cf-access-client-id", b"robot.access"), (b"accept", b"*/*")]
    await DropServiceTokenHeaders(app)({"type": "http", "headers": headers}, None, None)  # type: ignore[arg-type]
    await DropServiceTokenHeaders(app)({"type": "http", "headers": headers[2:]}, None, None)  # type: ignore[arg-type]
    assert seen == [[(b"accept", b"*/*")], [(b"accept", b"*/*")]]
