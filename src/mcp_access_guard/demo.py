"""`mcp-access-guard demo`: the whole stack around an MCP server on loopback, and the real mcp client calling it as
several callers, in both modes: behind Cloudflare Access (an embedded Access issuer signs the callers' assertions),
and in OAuth mode (the server is the authorization server; an embedded Access for SaaS application logs people in).
Prints what each caller got; succeeds only when every caller got what it should."""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import MCPServer
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from mcp_types import CallToolResult, TextContent

from .identity import current_identity
from .mcp_request import modern_request, tools_list_request
from .middleware.access import ASSERTION_HEADER
from .oauth.config import OAuthConfig
from .oauth.records import code_challenge_of
from .policy import Rule, ToolPolicy
from .settings import GuardConfig
from .stack import guard
from .testing import LocalAccess, LocalAccessSaaS, SigningKey, free_port, serve

ALICE = "alice@example.com"
BOB = "bob@example.com"
SERVICE_ID = "88bf3b6d86161464f6509f7219099e57.access"
MALLORY = "mallory@evil.example"
CLIENT_NAME = "Demo client"


def build_server(policy: ToolPolicy) -> MCPServer:
    """The reference deployment's tools: `add` for everyone, `generate_image` for a named list, and `whoami`."""
    server = MCPServer("mcp-access-guard demo")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @server.tool()
    @policy.restrict(emails=[ALICE])
    def generate_image(prompt: str) -> str:
        """Pretend to draw `prompt` (alice only)."""
        return f"an image of {prompt}"

    @server.tool()
    def whoami() -> dict[str, object]:
        """Who the guard says is calling."""
        identity = current_identity()
        sdk_token = get_access_token()
        return {
            "principal": identity.principal if identity else None,
            "service_token": identity.is_service_token if identity else None,
            "sdk_client_id": sdk_token.client_id if sdk_token else None,
            "oauth_client_id": identity.oauth_client_id if identity else None,
        }

    return server


@dataclass
class Row:
    caller: str
    request: str
    expected: str
    got: str

    @property
    def ok(self) -> bool:
        return self.expected == self.got


def _text(result: CallToolResult) -> str:
    content = result.content[0]
    return content.text if isinstance(content, TextContent) else repr(content)


async def _as_caller(url: str, token: str | None, action: Callable[[Client], Awaitable[str]]) -> str:
    """What the caller gets: the HTTP status when refused, else what `action` makes of the session."""
    statuses: list[int] = []

    async def record(response: httpx2.Response) -> None:
        statuses.append(response.status_code)

    headers = {ASSERTION_HEADER.decode(): token} if token else {}
    async with httpx2.AsyncClient(headers=headers, event_hooks={"response": [record]}) as http:
        try:
            async with Client(streamable_http_client(f"{url}/mcp", http_client=http), mode="legacy") as client:
                return await action(client)
        except Exception:  # a refused connection surfaces as whatever the client raises
            refused = [status for status in statuses if status >= 400]
            return f"HTTP {refused[0]}" if refused else "error"


async def _whoami(client: Client) -> str:
    answer = json.loads(_text(await client.call_tool("whoami", {})))
    kind = "service token" if answer["service_token"] else "user"
    return f"{kind} {answer['principal']} (sdk sees {answer['sdk_client_id']})"


async def _tool_names(client: Client) -> str:
    return ", ".join(tool.name for tool in (await client.list_tools()).tools)


async def _draw(client: Client) -> str:
    return _text(await client.call_tool("generate_image", {"prompt": "a cat"}))


async def _raw_call(url: str, token: str, name: str) -> tuple[int, str, bytes]:
    """One modern-era tools/call over plain HTTP, with the name blanked out of the answer for comparison."""
    request = modern_request("tools/call", {"name": name, "arguments": {"prompt": "a cat"}}, request_id=7)
    async with httpx2.AsyncClient() as http:
        response = await http.post(
            f"{url}/mcp", json=request.body, headers={**request.headers, ASSERTION_HEADER.decode(): token}
        )
    return (
        response.status_code,
        response.headers.get("content-type", ""),
        response.content.replace(name.encode(), b"NAME"),
    )


async def _same_as_a_made_up_tool(url: str, token: str) -> str:
    denied = await _raw_call(url, token, "generate_image")
    made_up = await _raw_call(url, token, "no_such_tool_xyz")
    return "same bytes as for a made-up tool" if denied == made_up else f"differs: {denied!r} vs {made_up!r}"


async def _plain_request(url: str, path: str, headers: dict[str, str]) -> str:
    async with httpx2.AsyncClient() as http:
        return f"HTTP {(await http.post(url + path, json={}, headers=headers)).status_code}"


async def run_demo(echo: Callable[[str], None] = print, *, access: bool = True, oauth: bool = True) -> bool:
    """The demonstration of each mode asked for, one table each; True when every caller got what it should."""
    passed = True
    parts = [part for part, wanted in ((_access_mode, access), (_oauth_mode, oauth)) if wanted]
    for number, part in enumerate(parts):
        if number:
            echo("")
        rows = await part(echo)
        _print_table(rows, echo)
        passed = passed and all(row.ok for row in rows)
    echo("\nEvery caller got what it should." if passed else "\nSome callers did not get what they should.")
    return passed


async def _access_mode(echo: Callable[[str], None]) -> list[Row]:
    with LocalAccess() as issuer:
        policy = ToolPolicy()
        app = guard(build_server(policy).streamable_http_app(), GuardConfig(access=issuer.config(), tools=policy))
        forger = SigningKey(kid=issuer.current_key.kid, private_key=SigningKey.generate().private_key)
        alice, bob = issuer.user_token(ALICE), issuer.user_token(BOB)
        async with serve(app) as url:
            echo("Behind Cloudflare Access: callers present an Access assertion (Cf-Access-Jwt-Assertion)")
            echo(f"Guarded MCP server at {url}/mcp, Access issuer at {issuer.url}\n")
            rows = [
                Row("anyone", "POST /admin", "HTTP 404", await _plain_request(url, "/admin", {})),
                Row(
                    "a foreign web page",
                    "POST /mcp",
                    "HTTP 403",
                    await _plain_request(url, "/mcp", {"Origin": "https://evil.example"}),
                ),
                Row("no token", "whoami", "HTTP 401", await _as_caller(url, None, _whoami)),
                Row(
                    "forged token",
                    "whoami",
                    "HTTP 403",
                    await _as_caller(url, issuer.user_token(ALICE, key=forger), _whoami),
                ),
                Row(
                    "expired token",
                    "whoami",
                    "HTTP 403",
                    await _as_caller(url, issuer.user_token(ALICE, expires_in=-3600), _whoami),
                ),
                Row("alice", "whoami", f"user {ALICE} (sdk sees {ALICE})", await _as_caller(url, alice, _whoami)),
                Row("alice", "tools/list", "add, generate_image, whoami", await _as_caller(url, alice, _tool_names)),
                Row("alice", "generate_image", "an image of a cat", await _as_caller(url, alice, _draw)),
                Row("bob", "tools/list", "add, whoami", await _as_caller(url, bob, _tool_names)),
                Row("bob", "generate_image", "Unknown tool: generate_image", await _as_caller(url, bob, _draw)),
                Row(
                    "bob",
                    "generate_image, raw",
                    "same bytes as for a made-up tool",
                    await _same_as_a_made_up_tool(url, bob),
                ),
                Row(
                    "service token",
                    "whoami",
                    f"service token {SERVICE_ID} (sdk sees {SERVICE_ID})",
                    await _as_caller(url, issuer.service_token(SERVICE_ID), _whoami),
                ),
            ]
    return rows


# -- OAuth mode ---------------------------------------------------------------------------------------------------


async def _oauth_mode(echo: Callable[[str], None]) -> list[Row]:
    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    # The Access for SaaS application: our callback registered, and a policy that admits example.com only.
    saas = LocalAccessSaaS(redirect_uris=[public_url + "/oauth/callback"], allow=Rule(email_domains=["example.com"]))
    with saas:
        policy = ToolPolicy()
        config = OAuthConfig(public_url, saas.config(), secret_key=secrets.token_hex(32), store="memory:")
        app = guard(build_server(policy).streamable_http_app(), GuardConfig(oauth=config, tools=policy))
        async with serve(app, port=port) as url:
            echo("OAuth mode: this server is the authorization server MCP clients sign in with, and an Access for SaaS")
            echo("application logs people in behind it (Authorization: Bearer)")
            echo(f"Guarded MCP server at {url}/mcp, Access for SaaS application at {saas.issuer}\n")
            challenge = await _challenge(url)
            rows = [Row("an MCP client", "POST /mcp, no token", "HTTP 401, pointing at our metadata", challenge)]
            saas.login_as(ALICE)
            alice = _OAuthCaller(url)
            rows += [
                Row(
                    "alice's client",
                    "tools/list (registers; alice consents)",
                    "add, generate_image, whoami",
                    await alice.use(_tool_names),
                ),
                Row("alice", "the consent page", f"asks to allow {CLIENT_NAME}, once", alice.consent_summary()),
                Row("alice's client", "whoami", f"user {ALICE} through the client it registered", await alice.whoami()),
                Row("alice's client", "generate_image", "an image of a cat", await alice.use(_draw)),
            ]
            saas.login_as(BOB)
            bob = _OAuthCaller(url)
            rows += [
                Row("bob's client", "tools/list", "add, whoami", await bob.use(_tool_names)),
                Row("bob's client", "generate_image", "Unknown tool: generate_image", await bob.use(_draw)),
                Row("anyone", "POST /token, alice's code again", "HTTP 400 invalid_grant", await alice.replay_code()),
                Row(
                    "alice's client",
                    "tools/list after the replay",
                    "HTTP 401: the replay revoked the grant",
                    await alice.tools_with_its_token(),
                ),
            ]
            saas.login_as(MALLORY)
            rows.append(
                Row(
                    "mallory (not example.com)",
                    "sign in",
                    "back to the client with error=access_denied",
                    await _front_channel(url, "approve"),
                )
            )
            saas.login_as(ALICE)
            logins = saas.hits["authorization"]
            denied = await _front_channel(url, "deny")
            asked = "Access never asked" if saas.hits["authorization"] == logins else "Access asked"
            rows += [
                Row(
                    "a person who denies",
                    "the consent page",
                    "back to the client with error=access_denied; Access never asked",
                    f"{denied}; {asked}",
                ),
                Row(
                    "a client",
                    "register http://evil.example/callback",
                    "HTTP 400 invalid_redirect_uri",
                    await _register(url, "http://evil.example/callback"),
                ),
                Row(
                    "a page on another site",
                    "POST /consent",
                    "HTTP 403",
                    await _plain_request(url, "/consent", {"Origin": "https://evil.example"}),
                ),
            ]
    return rows


class _FormReader(HTMLParser):
    """A page's POST form: its action and hidden inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.hidden: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form" and values.get("method", "").lower() == "post":
            self.action = values.get("action", "")
        elif tag == "input" and values.get("type") == "hidden" and values.get("name"):
            self.hidden[values["name"]] = values.get("value", "")


@dataclass
class _Walk:
    """Where a person's browser was sent back to the client (not loaded), and the consent page it passed."""

    back_to_client: str
    consent_page: str


async def _browse(url: str, *, client_redirect: str, decision: str) -> _Walk:
    """A person's browser: follows the redirects (to Access's login and back), presses `decision` on the consent
    page, and stops where it is sent back to the client."""
    consent_page = ""
    method, form_data = "GET", None
    async with httpx2.AsyncClient(timeout=30, trust_env=False) as browser:
        for _ in range(10):
            if url.startswith(client_redirect):
                return _Walk(url, consent_page)
            response = await browser.request(method, url, data=form_data)
            method, form_data = "GET", None
            if response.is_redirect:
                url = urljoin(url, response.headers["location"])
                continue
            form = _FormReader()
            form.feed(response.text)
            if form.action is None or consent_page:
                break
            consent_page = response.text
            method, form_data = "POST", {**form.hidden, "decision": decision}
            url = urljoin(url, form.action)
    raise RuntimeError(f"the sign-in did not come back to the client (ended at {urlsplit(url).path})")


def _query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


@dataclass
class _OAuthCaller:
    """An MCP client with the mcp SDK's own OAuth support: it registers (a public client), sends its person through
    consent and Access's login once, and keeps its tokens for every later call."""

    url: str
    redirect_uri: str = field(default_factory=lambda: f"http://127.0.0.1:{free_port()}/callback")
    consent_pages: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    tokens: OAuthToken | None = None
    client: OAuthClientInformationFull | None = None
    _answer: AuthorizationCodeResult | None = None

    # The SDK's token storage, and its redirect and callback handlers.
    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info

    async def _send_person(self, authorization_url: str) -> None:
        walk = await _browse(authorization_url, client_redirect=self.redirect_uri, decision="approve")
        self.consent_pages.append(walk.consent_page)
        answer = _query(walk.back_to_client)
        self.codes.append(answer.get("code", ""))
        self._answer = AuthorizationCodeResult(
            code=answer.get("code", ""), state=answer.get("state"), iss=answer.get("iss")
        )

    async def _person_returns(self) -> AuthorizationCodeResult:
        answer, self._answer = self._answer, None
        if answer is None:
            raise RuntimeError("no answer from the sign-in")
        return answer

    async def use(self, action: Callable[[Client], Awaitable[str]]) -> str:
        provider = OAuthClientProvider(
            server_url=f"{self.url}/mcp",
            client_metadata=OAuthClientMetadata(
                redirect_uris=[self.redirect_uri],  # type: ignore[list-item]  # pydantic turns it into a URL
                client_name=CLIENT_NAME,
                token_endpoint_auth_method="none",
            ),
            storage=self,
            redirect_handler=self._send_person,
            callback_handler=self._person_returns,
        )
        try:
            async with (
                httpx2.AsyncClient(auth=provider, timeout=30) as http,
                Client(streamable_http_client(f"{self.url}/mcp", http_client=http)) as client,
            ):
                return await action(client)
        except Exception as failure:  # a refused connection surfaces as whatever the client raises
            return f"error ({type(failure).__name__})"

    async def whoami(self) -> str:
        async def who(client: Client) -> str:
            answer = json.loads(_text(await client.call_tool("whoami", {})))
            registered = self.client.client_id if self.client else None
            through = "the client it registered" if answer["oauth_client_id"] == registered else "another client"
            return f"user {answer['principal']} through {through}"

        return await self.use(who)

    def consent_summary(self) -> str:
        pages = [page for page in self.consent_pages if page]
        if not pages:
            return "no consent page"
        named = all(f"Allow {CLIENT_NAME}" in page for page in pages)
        times = "once" if len(pages) == 1 else f"{len(pages)} times"
        return f"asks to allow {CLIENT_NAME}, {times}" if named else f"a page without the client's name, {times}"

    async def replay_code(self) -> str:
        """What the token endpoint says to the code this client already redeemed, presented again."""
        form = {
            "grant_type": "authorization_code",
            "code": self.codes[0] if self.codes else "",
            "client_id": self.client.client_id if self.client else "",
            "redirect_uri": self.redirect_uri,
            "code_verifier": secrets.token_urlsafe(48),
        }
        async with httpx2.AsyncClient(trust_env=False) as http:
            response = await http.post(f"{self.url}/token", data=form)
        return f"HTTP {response.status_code} {response.json().get('error')}"

    async def tools_with_its_token(self) -> str:
        request = tools_list_request()
        token = self.tokens.access_token if self.tokens else ""
        async with httpx2.AsyncClient(trust_env=False) as http:
            response = await http.post(
                f"{self.url}/mcp", json=request.body, headers={**request.headers, "Authorization": f"Bearer {token}"}
            )
        revoked = ": the replay revoked the grant" if response.status_code == 401 else ""
        return f"HTTP {response.status_code}{revoked}"


async def _challenge(url: str) -> str:
    request = tools_list_request()
    async with httpx2.AsyncClient(trust_env=False) as http:
        response = await http.post(f"{url}/mcp", json=request.body, headers=request.headers)
    pointer = f'resource_metadata="{url}/.well-known/oauth-protected-resource/mcp"'
    shown = ", pointing at our metadata" if pointer in response.headers.get("www-authenticate", "") else ""
    return f"HTTP {response.status_code}{shown}"


async def _register(url: str, redirect_uri: str) -> str:
    body = {"redirect_uris": [redirect_uri], "client_name": CLIENT_NAME, "token_endpoint_auth_method": "none"}
    async with httpx2.AsyncClient(trust_env=False) as http:
        response = await http.post(f"{url}/register", json=body)
    return f"HTTP {response.status_code} {response.json().get('error', '')}".rstrip()


async def _front_channel(url: str, decision: str) -> str:
    """A client registers and sends its person to /authorize; what comes back to the client."""
    redirect_uri = f"http://127.0.0.1:{free_port()}/callback"
    body = {"redirect_uris": [redirect_uri], "client_name": CLIENT_NAME, "token_endpoint_auth_method": "none"}
    async with httpx2.AsyncClient(trust_env=False) as http:
        client_id = (await http.post(f"{url}/register", json=body)).json()["client_id"]
    challenge = code_challenge_of(secrets.token_urlsafe(48))
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "state": secrets.token_urlsafe(16),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "scope": "openid email profile",
        }
    )
    walk = await _browse(f"{url}/authorize?{query}", client_redirect=redirect_uri, decision=decision)
    answer = _query(walk.back_to_client)
    return f"back to the client with error={answer['error']}" if "error" in answer else "back to the client with a code"


def _print_table(rows: list[Row], echo: Callable[[str], None]) -> None:
    caller_width = max(len(row.caller) for row in rows)
    request_width = max(len(row.request) for row in rows)
    echo(f"{'caller':<{caller_width}}  {'request':<{request_width}}  {'result':<6}  what the caller got")
    for row in rows:
        verdict = "ok" if row.ok else "WRONG"
        line = f"{row.caller:<{caller_width}}  {row.request:<{request_width}}  {verdict:<6}  {row.got}"
        echo(line if row.ok else f"{line}  (expected {row.expected})")
