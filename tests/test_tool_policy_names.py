"""Issue 11, class 2: a second name for the same tool does not skip its rule.

FastMCP 4 answers every `FastMCPApp` backend tool also as `sha256(app + "\\0" + tool)[:12] + "_" + tool`, whether the
tool is listed under its own name, a mount's namespace or a transform's new name; a server may fold case. When the
policy has rules, a name without a rule of its own must be one the app lists (asked of the app itself), or an
address of listed tools, which are then judged instead. Real uvicorn, the whole stack with Access tokens, the real
mcp client, and FastMCP.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from fastmcp import FastMCP, FastMCPApp
from fastmcp.server.transforms.tool_transform import ToolTransform
from fastmcp.tools.tool_transform import ToolTransformConfig
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.lowlevel import Server
from mcp_types import (
    CallToolResult,
    GetPromptResult,
    ListPromptsResult,
    ListToolsResult,
    Prompt,
    PromptMessage,
    TextContent,
    Tool,
)
from starlette.types import ASGIApp

from mcp_access_guard import GuardConfig, Rule, ToolPolicy, guard
from mcp_access_guard.middleware.tools import ToolPolicyMiddleware
from mcp_access_guard.testing import LocalAccess, serve
from test_tool_policy_middleware import IdentityFromTestHeaders, Raw, comparable, result

ALICE = "alice@example.com"
BOB = "bob@example.com"
HASHED = hashlib.sha256(b"billing\0refund_all").hexdigest()[:12] + "_refund_all"
MADE_UP_HASH = "000000000000_refund_all"


def billing() -> FastMCPApp:
    app = FastMCPApp("billing")

    @app.tool()
    def refund_all() -> str:
        return "refunded everything"

    return app


def plain() -> tuple[FastMCP, str]:
    server = FastMCP("plain")
    server.add_provider(billing())
    return server, "refund_all"


def mounted() -> tuple[FastMCP, str]:
    sub = FastMCP("sub")
    sub.add_provider(billing())
    server = FastMCP("parent")
    server.mount(sub, namespace="ops")
    return server, "ops_refund_all"


def renamed() -> tuple[FastMCP, str]:
    server = FastMCP("renamed")
    server.add_provider(billing())
    server.add_transform(ToolTransform({"refund_all": ToolTransformConfig(name="mass_refund")}))
    return server, "mass_refund"


def with_add(build: Callable[[], tuple[FastMCP, str]]) -> tuple[FastMCP, str]:
    server, listed = build()

    @server.tool
    def add(a: int, b: int) -> int:
        return a + b

    return server, listed


@asynccontextmanager
async def connect(url: str, token: str, mode: str) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers={"Cf-Access-Jwt-Assertion": token}) as http,
        Client(streamable_http_client(f"{url}/mcp", http_client=http), mode=mode) as client,
    ):
        yield client


def text_of(called: CallToolResult) -> str:
    content = called.content[0]
    assert isinstance(content, TextContent)
    return content.text


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
@pytest.mark.parametrize("stateless", [False, True], ids=["stateful-sse", "stateless-json"])
@pytest.mark.parametrize("build", [plain, mounted, renamed])
async def test_fastmcp_hashed_address_is_judged_by_the_rule_of_the_tool_it_reaches(
    local_access: LocalAccess, build: Callable[[], tuple[FastMCP, str]], stateless: bool, mode: str
) -> None:
    server, listed = with_add(build)
    http_app = server.http_app(
        path="/mcp", stateless_http=stateless, json_response=stateless, host_origin_protection=False
    )
    config = GuardConfig(access=local_access.config(), tools=ToolPolicy({listed: Rule(emails=[ALICE])}))
    async with serve(guard(http_app, config)) as url:
        async with connect(url, local_access.user_token(BOB), mode) as bob:
            names = [tool.name for tool in (await bob.list_tools()).tools]
            by_address = await bob.call_tool(HASHED, {})
            by_name = await bob.call_tool(listed, {})
            made_up = await bob.call_tool(MADE_UP_HASH, {})
            added = await bob.call_tool("add", {"a": 2, "b": 3})
        async with connect(url, local_access.user_token(ALICE), mode) as alice:
            allowed = await alice.call_tool(HASHED, {})
    assert names == ["add"]
    # Refused exactly as FastMCP refuses an address it cannot resolve: its own words, only the name differing.
    assert (by_address.is_error, text_of(by_address)) == (True, f"Unknown tool: '{HASHED}'")
    assert (by_name.is_error, text_of(by_name)) == (True, f"Unknown tool: '{listed}'")
    assert (made_up.is_error, text_of(made_up)) == (True, f"Unknown tool: '{MADE_UP_HASH}'")
    assert by_address.model_dump(exclude={"content"}) == made_up.model_dump(exclude={"content"})
    assert text_of(added) == "5"
    assert (allowed.is_error, text_of(allowed)) == (False, "refunded everything")


# -- any other spelling a server accepts -----------------------------------------------------------------------------


class FoldingServer:
    """A low-level server that finds its tools and prompts by any case: a second name for each, unknown to the guard.

    It counts the listings it is asked for and the tools it runs.
    """

    def __init__(self, *, with_secret: bool = True, listing: bool = True) -> None:
        self.tools = ["add", "secret"] if with_secret else ["add"]
        self.listings = 0
        self.ran: list[str] = []
        handlers: dict[str, Any] = {"on_call_tool": self.call_tool, "on_get_prompt": self.get_prompt}
        if listing:
            handlers |= {"on_list_tools": self.list_tools, "on_list_prompts": self.list_prompts}
        self.server: Server[Any] = Server("folding", **handlers)

    async def list_tools(self, ctx: Any, params: Any) -> ListToolsResult:
        self.listings += 1
        return ListToolsResult(tools=[Tool(name=name, input_schema={"type": "object"}) for name in self.tools])

    async def call_tool(self, ctx: Any, params: Any) -> CallToolResult:
        name = params.name.lower()
        if name not in self.tools:
            return CallToolResult(content=[TextContent(type="text", text=f"No tool {params.name}")], is_error=True)
        self.ran.append(name)
        return CallToolResult(content=[TextContent(type="text", text=f"ran {name}")])

    async def list_prompts(self, ctx: Any, params: Any) -> ListPromptsResult:
        return ListPromptsResult(prompts=[Prompt(name=name) for name in ("hello", "briefing")])

    async def get_prompt(self, ctx: Any, params: Any) -> GetPromptResult:
        if params.name.lower() not in ("hello", "briefing"):
            raise ValueError(f"No prompt {params.name}")
        text = f"the {params.name.lower()} prompt"
        return GetPromptResult(messages=[PromptMessage(role="user", content=TextContent(type="text", text=text))])


FOLDING_POLICY = ToolPolicy(
    {"secret": Rule(emails=[ALICE])}, prompts={"briefing": Rule(emails=[ALICE])}, default="allow"
)


def guarded(server: Server[Any], policy: ToolPolicy = FOLDING_POLICY, *, stateless: bool = True) -> ASGIApp:
    app = server.streamable_http_app(json_response=True, stateless_http=stateless)
    return IdentityFromTestHeaders(ToolPolicyMiddleware(app, policy))


@asynccontextmanager
async def raw(app: ASGIApp, email: str, era: Any = "legacy") -> AsyncIterator[Raw]:
    async with serve(app) as url, httpx.AsyncClient(timeout=30) as client:
        yield await Raw(client, url, era, email).start()


@pytest.mark.anyio
@pytest.mark.parametrize("era", ["legacy", "modern"])
@pytest.mark.parametrize("spelling", ["SECRET", "Secret", "secreT"])
async def test_a_spelling_the_app_does_not_list_is_refused_like_an_unknown_name(era: Any, spelling: str) -> None:
    folding = FoldingServer()
    params = {"name": spelling, "arguments": {}}
    async with raw(guarded(folding.server), BOB, era) as bob:
        refused = await bob.call("tools/call", params)
    async with raw(
        IdentityFromTestHeaders(
            FoldingServer(with_secret=False).server.streamable_http_app(json_response=True, stateless_http=True)
        ),
        BOB,
        era,
    ) as bob:
        absent = await bob.call("tools/call", params)
    assert folding.ran == []
    assert comparable(refused) == comparable(absent)
    assert result(refused)["content"][0]["text"] == f"No tool {spelling}"


@pytest.mark.anyio
@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_listed_names_work_and_other_spellings_are_refused_for_everyone(era: Any) -> None:
    folding = FoldingServer()
    async with raw(guarded(folding.server), ALICE, era) as alice:
        own = await alice.call("tools/call", {"name": "secret", "arguments": {}})
        other = await alice.call("tools/call", {"name": "ADD", "arguments": {}})
        prompt = await alice.call("prompts/get", {"name": "briefing"})
    async with raw(guarded(folding.server), BOB, era) as bob:
        added = await bob.call("tools/call", {"name": "add", "arguments": {}})
        prompt_by_other_name = await bob.call("prompts/get", {"name": "Briefing"})
        hello = await bob.call("prompts/get", {"name": "hello"})
    assert result(own)["content"][0]["text"] == "ran secret"
    assert result(other)["content"][0]["text"] == "No tool ADD"  # not listed: refused even where it would be allowed
    assert "the briefing prompt" in prompt.text
    assert result(added)["content"][0]["text"] == "ran add"
    assert "the briefing prompt" not in prompt_by_other_name.text
    assert "error" in prompt_by_other_name.json()  # the server's answer for a prompt it does not have
    assert "the hello prompt" in hello.text
    assert folding.ran == ["secret", "add"]


@pytest.mark.anyio
async def test_the_listing_is_asked_once_and_made_up_names_cannot_make_the_guard_ask_more_than_once_a_second() -> None:
    folding = FoldingServer()
    async with raw(guarded(folding.server), BOB, "modern") as bob:
        for _ in range(10):
            assert result(await bob.call("tools/call", {"name": "add", "arguments": {}}))["isError"] is False
        assert folding.listings == 1
        with anyio.fail_after(10):
            made_up = [await bob.call("tools/call", {"name": f"nope{index}", "arguments": {}}) for index in range(30)]
    assert all(result(answer)["isError"] for answer in made_up)
    # 30 made-up names in well under the refresh interval: at most one more listing.
    assert folding.listings <= 2


@pytest.mark.anyio
async def test_without_a_listing_a_name_without_a_rule_is_refused() -> None:
    # Fail closed: an app that will not list its tools cannot show that a name is not another tool's second name.
    folding = FoldingServer(listing=False)
    async with raw(guarded(folding.server), ALICE) as alice:
        refused = await alice.call("tools/call", {"name": "add", "arguments": {}})
        ruled = await alice.call("tools/call", {"name": "secret", "arguments": {}})
    assert result(refused)["content"][0]["text"] == "No tool add"
    assert result(ruled)["content"][0]["text"] == "ran secret"  # a name with a rule is judged by it alone
    assert folding.ran == ["secret"]


@pytest.mark.anyio
async def test_without_rules_nothing_is_asked_and_every_name_passes() -> None:
    folding = FoldingServer()
    async with raw(guarded(folding.server, ToolPolicy()), BOB) as bob:
        called = await bob.call("tools/call", {"name": "SECRET", "arguments": {}})
    assert result(called)["content"][0]["text"] == "ran secret"
    assert folding.listings == 0


@pytest.mark.anyio
async def test_the_guards_listing_request_is_sent_in_the_callers_own_session() -> None:
    # Stateful: the app sees the guard's tools/list in the caller's session, under an id no client can send.
    folding = FoldingServer()
    async with raw(guarded(folding.server, stateless=False), BOB) as bob:
        called = await bob.call("tools/call", {"name": "add", "arguments": {}})
        body = json.loads(called.text)
    assert body["result"]["content"][0]["text"] == "ran add"
    assert folding.listings == 1
