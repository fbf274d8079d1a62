"""Issue 11, class 3: a rule on a resource URI template guards every way to the resources it matches.

`ToolPolicy(resources={"users://{user_id}/profile": ...})` must refuse, to a caller the rule does not match, reads of
every URI the template matches at the server (however it is spelled), subscriptions to them (`resources/subscribe`
and the 2026 era's `subscriptions/listen`), and completions on the template; and a protected prompt's completions.
Each refusal is the server's own answer for a resource or prompt it does not have. Real uvicorn, the SDK's
`MCPServer`, FastMCP, and low-level servers where a handler has to show what it was asked.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from fastmcp import FastMCP
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import MCPServer
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated
from mcp_types import Completion, EmptyResult, PromptReference, ResourceTemplateReference
from starlette.types import ASGIApp

from mcp_access_guard.middleware.tools import ToolPolicyMiddleware
from mcp_access_guard.policy import Rule, ToolPolicy
from mcp_access_guard.testing import serve
from test_tool_policy_middleware import IdentityFromTestHeaders, Raw, comparable, result

ALICE = "alice@example.com"
BOB = "bob@example.com"
PROFILE = "users://{user_id}/profile"
POLICY = ToolPolicy(resources={PROFILE: Rule(emails=[ALICE])}, prompts={"briefing": Rule(emails=[ALICE])})
# How a caller might spell a URI the template matches; each server matches some of them.
SPELLINGS = [
    "users://alice/profile",
    "users://a%6Cice/profile",
    "users://alice%2Fx/profile",
    "USERS://alice/profile",
    "users://alice/profile?view=full",
    "users://alice/profile#top",
]


def sdk_server(*, with_profile: bool = True, bus: InMemorySubscriptionBus | None = None) -> MCPServer:
    """`with_profile=False` is the same server without the protected template: the reference for 'does not exist'."""
    mcp = MCPServer("resources", subscriptions=bus)

    @mcp.resource("news://{topic}")
    def news(topic: str) -> str:
        return f"news about {topic}"

    if with_profile:

        @mcp.resource(PROFILE)
        def profile(user_id: str) -> str:
            return f"profile of {user_id}"

        @mcp.resource("users://carol/profile")
        def carol() -> str:
            return "profile of carol"

        @mcp.prompt()
        def briefing(topic: str) -> str:
            return f"briefing on {topic}"

    @mcp.completion()
    async def complete(ref: Any, argument: Any, context: Any) -> Completion | None:
        if isinstance(ref, ResourceTemplateReference) and ref.uri == PROFILE and with_profile:
            return Completion(values=["alice", "bob", "carol"])
        if isinstance(ref, PromptReference) and ref.name == "briefing" and with_profile:
            return Completion(values=["payroll", "layoffs"])
        return None

    return mcp


def fastmcp_server(*, with_profile: bool = True) -> FastMCP:
    mcp = FastMCP("resources")

    @mcp.resource("news://{topic}")
    def news(topic: str) -> str:
        return f"news about {topic}"

    if with_profile:

        @mcp.resource(PROFILE)
        def profile(user_id: str) -> str:
            return f"profile of {user_id}"

    return mcp


def app_of(server: MCPServer | FastMCP, *, guarded: bool) -> ASGIApp:
    if isinstance(server, FastMCP):
        app = server.http_app(path="/mcp", stateless_http=True, json_response=True, host_origin_protection=False)
    else:
        app = server.streamable_http_app(json_response=True, stateless_http=True)
    return IdentityFromTestHeaders(ToolPolicyMiddleware(app, POLICY) if guarded else app)


@asynccontextmanager
async def raw(app: ASGIApp, email: str, era: Any = "legacy") -> AsyncIterator[Raw]:
    async with serve(app) as url, httpx.AsyncClient(timeout=30) as client:
        yield await Raw(client, url, era, email).start()


SERVERS = [pytest.param(sdk_server, id="mcpserver"), pytest.param(fastmcp_server, id="fastmcp")]


@pytest.mark.anyio
@pytest.mark.parametrize("era", ["legacy", "modern"])
@pytest.mark.parametrize("build", SERVERS)
async def test_reads_of_every_uri_a_protected_template_matches_are_refused_like_unknown_resources(
    build: Any, era: Any
) -> None:
    async with raw(app_of(build(), guarded=True), BOB, era) as bob:
        refused = [await bob.call("resources/read", {"uri": uri}) for uri in SPELLINGS]
        public = await bob.call("resources/read", {"uri": "news://today"})
    async with raw(app_of(build(with_profile=False), guarded=False), BOB, era) as bob:
        absent = [await bob.call("resources/read", {"uri": uri}) for uri in SPELLINGS]
    for uri, got, reference in zip(SPELLINGS, refused, absent, strict=True):
        assert "profile of" not in got.text, uri
        assert comparable(got) == comparable(reference), uri
    assert result(public)["contents"][0]["text"] == "news about today"


@pytest.mark.anyio
@pytest.mark.parametrize("build", SERVERS)
async def test_the_caller_the_rule_matches_reads_through_the_template(build: Any) -> None:
    async with raw(app_of(build(), guarded=True), ALICE) as alice:
        read = await alice.call("resources/read", {"uri": "users://bob/profile"})
        templates = await alice.call("resources/templates/list")
    assert result(read)["contents"][0]["text"] == "profile of bob"
    assert PROFILE in {template["uriTemplate"] for template in result(templates)["resourceTemplates"]}


@pytest.mark.anyio
async def test_listings_hide_the_template_and_the_resources_it_matches() -> None:
    async with raw(app_of(sdk_server(), guarded=True), BOB) as bob:
        templates = await bob.call("resources/templates/list")
        resources = await bob.call("resources/list")
    assert [template["uriTemplate"] for template in result(templates)["resourceTemplates"]] == ["news://{topic}"]
    assert [resource["uri"] for resource in result(resources)["resources"]] == []


@pytest.mark.anyio
@pytest.mark.parametrize("era", ["legacy", "modern"])
@pytest.mark.parametrize(
    "ref",
    [
        {"type": "ref/resource", "uri": PROFILE},
        {"type": "ref/resource", "uri": "users://{id}/profile"},
        {"type": "ref/prompt", "name": "briefing"},
    ],
    ids=["template", "template-respelled", "prompt"],
)
async def test_completions_on_a_protected_template_or_prompt_are_answered_as_for_an_unknown_one(
    era: Any, ref: dict[str, Any]
) -> None:
    params = {"ref": ref, "argument": {"name": "user_id", "value": ""}}
    async with raw(app_of(sdk_server(), guarded=True), BOB, era) as bob:
        refused = await bob.call("completion/complete", params)
    async with raw(app_of(sdk_server(with_profile=False), guarded=False), BOB, era) as bob:
        absent = await bob.call("completion/complete", params)
    async with raw(app_of(sdk_server(), guarded=True), ALICE, era) as alice:
        allowed = await alice.call("completion/complete", params)
    assert comparable(refused) == comparable(absent)
    assert result(refused)["completion"]["values"] == []
    if ref.get("uri") != "users://{id}/profile":
        assert result(allowed)["completion"]["values"] != []


class SubscribingServer:
    """A low-level server that records what it was asked to subscribe to and unsubscribe from."""

    def __init__(self) -> None:
        self.subscribed: list[str] = []
        self.unsubscribed: list[str] = []

        async def subscribe(ctx: Any, params: Any) -> EmptyResult:
            self.subscribed.append(params.uri)
            return EmptyResult()

        async def unsubscribe(ctx: Any, params: Any) -> EmptyResult:
            self.unsubscribed.append(params.uri)
            return EmptyResult()

        self.server: Server[Any] = Server(
            "subscribing", on_subscribe_resource=subscribe, on_unsubscribe_resource=unsubscribe
        )


@pytest.mark.anyio
@pytest.mark.parametrize("uri", ["users://alice/profile", "Users://alice/profile?x"])
async def test_subscriptions_to_a_protected_resource_never_reach_it(uri: str) -> None:
    subscribing = SubscribingServer()
    app = IdentityFromTestHeaders(
        ToolPolicyMiddleware(subscribing.server.streamable_http_app(json_response=True, stateless_http=True), POLICY)
    )
    async with raw(app, BOB) as bob:
        subscribed = await bob.call("resources/subscribe", {"uri": uri})
        unsubscribed = await bob.call("resources/unsubscribe", {"uri": uri})
        other = await bob.call("resources/subscribe", {"uri": "news://today"})
    for answer in (subscribed, unsubscribed, other):
        assert answer.status_code == 200
        assert "error" not in answer.json()
    assert uri not in subscribing.subscribed + subscribing.unsubscribed
    assert subscribing.subscribed[-1] == "news://today"
    assert len(subscribing.subscribed) == 2


@pytest.mark.anyio
async def test_a_listen_stream_never_carries_updates_of_a_protected_resource() -> None:
    bus = InMemorySubscriptionBus()  # the server's bus, to publish updates from the test
    mcp = sdk_server(bus=bus)
    app = IdentityFromTestHeaders(
        ToolPolicyMiddleware(mcp.streamable_http_app(json_response=False, stateless_http=True), POLICY)
    )
    wanted = ["users://alice/profile", "news://today"]
    frames: list[dict[str, Any]] = []
    async with raw(app, BOB, "modern") as bob:
        message = bob.message("subscriptions/listen", {"notifications": {"resourceSubscriptions": wanted}})
        headers = {**bob.headers, "Mcp-Method": "subscriptions/listen"}
        with anyio.fail_after(15):
            async with bob.client.stream("POST", bob.url, content=json.dumps(message), headers=headers) as stream:
                async for line in stream.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    frames.append(json.loads(line[5:]))
                    if len(frames) == 1:  # acknowledged: publish alice's update, then one bob may see
                        await bus.publish(ResourceUpdated(uri="users://alice/profile"))
                        await bus.publish(ResourceUpdated(uri="news://today"))
                    elif frames[-1].get("params", {}).get("uri") == "news://today":
                        break
    acknowledged, *updates = frames
    assert acknowledged["params"]["notifications"]["resourceSubscriptions"] == wanted  # echoed as sent
    assert [update["params"]["uri"] for update in updates] == ["news://today"]
    assert "-denied-" not in json.dumps(frames)
    assert acknowledged["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == message["id"]
