"""ToolPolicy: each part of a rule, the default, loading from data and the environment, and the restrict decorator."""

from __future__ import annotations

import inspect
import typing

import pytest
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, TextContent

from mcp_access_guard.identity import AccessIdentity, bind_identity
from mcp_access_guard.policy import Rule, ToolPolicy, UriPattern


def user(email: str, *, groups: tuple[str, ...] = ()) -> AccessIdentity:
    return AccessIdentity(
        subject="sub-" + email, issuer="https://team.example", expires_at=2**40, email=email, groups=groups
    )


def service(client_id: str) -> AccessIdentity:
    return AccessIdentity(subject="", issuer="https://team.example", expires_at=2**40, common_name=client_id)


ALICE = user("alice@example.com")
BOB = user("bob@other.org", groups=("admins",))
ROBOT = service("88bf3b6d.access")


@pytest.mark.parametrize(
    ("rule", "allowed", "refused"),
    [
        (Rule(emails=["Alice@Example.com"]), ALICE, BOB),
        (Rule(email_domains=["example.com"]), ALICE, BOB),
        (Rule(email_domains=["*.org"]), BOB, ALICE),
        (Rule(service_tokens=["88bf3b6d"]), ROBOT, ALICE),
        (Rule(groups=["admins"]), BOB, ALICE),
    ],
)
def test_each_rule_part_decides_for_its_tool(rule: Rule, allowed: AccessIdentity, refused: AccessIdentity) -> None:
    policy = ToolPolicy({"secret": rule})
    assert policy.allows("secret", allowed)
    assert not policy.allows("secret", refused)
    assert not policy.allows("secret", None)
    assert policy.allows("add", refused)


def test_default_deny_refuses_unlisted_tools_even_without_identity() -> None:
    policy = ToolPolicy({"add": Rule(emails=["alice@example.com"])}, default="deny")
    assert policy.allows("add", ALICE)
    assert not policy.allows("other", ALICE)
    assert not policy.allows("other", None)
    assert policy.decide("tool", "other", ALICE) == (False, "default_deny")
    assert policy.decide("tool", "add", BOB) == (False, "rule_not_matched")
    assert policy.decide("tool", "add", None) == (False, "no_identity")
    assert policy.decide("tool", "add", ALICE) == (True, "rule_matched")


def test_default_allow_keeps_unlisted_tools_open_to_anonymous_callers() -> None:
    policy = ToolPolicy({"secret": Rule(emails=["alice@example.com"])})
    assert policy.decide("tool", "add", None) == (True, "default_allow")


def test_an_empty_rule_matches_nobody() -> None:
    assert not ToolPolicy({"secret": Rule()}).allows("secret", ALICE)


def test_bad_default_is_refused() -> None:
    with pytest.raises(ValueError, match="default"):
        ToolPolicy({}, default="maybe")  # type: ignore[arg-type]


def test_prompts_and_resources_are_covered_only_when_given() -> None:
    policy = ToolPolicy(
        {},
        prompts={"briefing": Rule(emails=["alice@example.com"])},
        resources={"file:///payroll": Rule(groups=["admins"])},
    )
    assert policy.allows_prompt("briefing", ALICE)
    assert not policy.allows_prompt("briefing", BOB)
    assert policy.allows_resource("file:///payroll", BOB)
    assert not policy.allows_resource("file:///payroll", ALICE)
    assert policy.covers("prompt")
    assert policy.covers("resource")
    assert not policy.covers("tool")
    bare = ToolPolicy({}, default="deny")
    assert bare.covers("tool")
    assert not bare.covers("prompt")
    assert bare.decide("resource", "file:///x", None) == (True, "not_covered")


# -- resources by URI and URI template ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "users://alice/profile",
        "users://a%6Cice/profile",  # percent-encoded in a variable
        "users%3A%2F%2Falice%2Fprofile",  # and in the literals
        "USERS://alice/Profile",  # servers lower-case schemes; literals are matched in any case
        "users://alice/profile?view=full",  # FastMCP ignores the query
        "users://alice/profile#top",
        "users://a/b/c/profile",  # a variable may hold `/` (the SDK decodes %2F inside one)
        "users:///profile",  # or nothing
        "users://{id}/profile",  # a template that spells the same thing, in listings and completions
    ],
)
def test_a_template_key_covers_every_spelling_of_every_uri_it_could_match(uri: str) -> None:
    policy = ToolPolicy(resources={"users://{user_id}/profile": Rule(emails=["alice@example.com"])})
    assert policy.decide("resource", uri, BOB) == (False, "rule_not_matched")
    assert policy.decide("resource", uri, ALICE) == (True, "rule_matched")


@pytest.mark.parametrize(
    "uri", ["users://alice/profile/x", "users://alice/profil", "users:/alice/profile", "news://alice/profile", ""]
)
def test_a_template_key_leaves_other_uris_to_the_default(uri: str) -> None:
    policy = ToolPolicy(resources={"users://{user_id}/profile": Rule(emails=["alice@example.com"])})
    assert policy.decide("resource", uri, BOB) == (True, "default_allow")


def test_an_exact_uri_key_covers_its_other_spellings_too() -> None:
    policy = ToolPolicy(resources={"file:///payroll": Rule(groups=["admins"])})
    for uri in ("file:///payroll", "FILE:///PAYROLL", "file:///pay%72oll", "file:///payroll?x=1", "file:///payroll#a"):
        assert not policy.allows_resource(uri, ALICE), uri
    assert policy.allows_resource("file:///payrolls", ALICE)


def test_every_rule_that_could_apply_to_a_uri_must_match_the_caller() -> None:
    policy = ToolPolicy(
        resources={"docs://{path}": Rule(email_domains=["example.com"]), "docs://hr/{file}": Rule(groups=["admins"])}
    )
    assert policy.allows_resource("docs://public/readme", ALICE)
    assert not policy.allows_resource("docs://hr/salaries", ALICE)  # the HR rule refuses alice
    assert not policy.allows_resource("docs://hr/salaries", BOB)  # the docs rule refuses bob
    assert policy.decide("resource", "docs://hr/salaries", user("carol@example.com", groups=("admins",)))[0]


def test_uri_patterns_find_literals_left_to_right() -> None:
    assert UriPattern("a{x}aa").matches("aaa")
    assert not UriPattern("a{x}aa").matches("aa")
    assert UriPattern("{+path}").matches("anything://at/all")
    assert UriPattern("x{a}{b}y").matches("xy")
    assert UriPattern("s://{a}/m/{b}/e").matches("s://1/m/m/2/e")
    assert not UriPattern("s://{a}/m/{b}/e").matches("s://1/m/2")
    # Many expressions over a long URI that almost matches: literals are found once each, no backtracking.
    assert not UriPattern("{a}x" * 50 + "y").matches("x" * 100_000)


def test_from_mapping_reads_what_a_toml_table_gives() -> None:
    policy = ToolPolicy.from_mapping(
        {
            "secret": {"emails": ["alice@example.com"], "groups": ["admins"]},
            "deploy": {"service_tokens": ["88bf3b6d.access"], "email_domains": ["example.com"]},
        },
        default="deny",
        prompts={"briefing": {"emails": ["bob@other.org"]}},
    )
    assert policy.default == "deny"
    assert policy.allows("secret", ALICE)
    assert policy.allows("secret", BOB)
    assert policy.allows("deploy", ROBOT)
    assert policy.allows("deploy", ALICE)
    assert not policy.allows("deploy", BOB)
    assert policy.allows_prompt("briefing", BOB)
    assert not policy.allows_prompt("briefing", ALICE)
    assert policy.resources is None


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ({"secret": {"email": ["alice@example.com"]}}, ValueError),
        ({"secret": {"emails": "alice@example.com"}}, TypeError),
        ({"secret": ["alice@example.com"]}, TypeError),
    ],
)
def test_from_mapping_refuses_mistakes(table: typing.Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="secret"):
        ToolPolicy.from_mapping(table)


def test_from_env_restricts_one_tool_to_allowed_emails() -> None:
    policy = ToolPolicy.from_env("secret", {"ALLOWED_EMAILS": " alice@example.com, ,Carol@example.com "})
    assert policy.allows("secret", ALICE)
    assert policy.allows("secret", user("carol@example.com"))
    assert not policy.allows("secret", BOB)
    assert policy.allows("add", BOB)


def test_from_env_without_any_list_allows_nobody_and_reads_the_other_lists() -> None:
    assert not ToolPolicy.from_env("secret", {}).allows("secret", ALICE)
    policy = ToolPolicy.from_env("secret", {"ALLOWED_GROUPS": "admins", "ALLOWED_SERVICE_TOKENS": "88bf3b6d"})
    assert policy.allows("secret", BOB)
    assert policy.allows("secret", ROBOT)
    assert not policy.allows("secret", ALICE)


def test_from_env_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_EMAILS", "bob@other.org")
    assert ToolPolicy.from_env("secret").allows("secret", BOB)


# -- restrict --------------------------------------------------------------------------------------------------------


def unknown_tool(name: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=f"Unknown tool: {name}")], is_error=True)


def test_restrict_registers_under_the_function_name_or_the_given_one() -> None:
    policy = ToolPolicy()

    @policy.restrict(emails=["alice@example.com"])
    def payroll() -> str:
        return "x"

    @policy.restrict(name="fire", groups=["admins"])
    def fire_someone() -> str:
        return "x"

    assert policy.rules == {"payroll": Rule(emails=["alice@example.com"]), "fire": Rule(groups=["admins"])}
    with pytest.raises(ValueError, match="already has a rule"):
        policy.restrict(emails=["x@example.com"])(payroll)


def test_restrict_keeps_signature_docstring_and_annotations() -> None:
    policy = ToolPolicy()

    async def original(a: int, ctx: Context, b: str = "x") -> dict[str, int]:
        """Adds things."""
        return {}

    wrapped = policy.restrict(emails=["alice@example.com"])(original)
    assert inspect.signature(wrapped) == inspect.signature(original)
    assert wrapped.__doc__ == "Adds things."
    assert wrapped.__name__ == "original"
    assert typing.get_type_hints(wrapped) == typing.get_type_hints(original)
    assert inspect.iscoroutinefunction(wrapped)
    assert not inspect.iscoroutinefunction(policy.restrict(name="sync")(lambda: 1))


def test_restrict_checks_the_caller_inside_a_sync_call() -> None:
    policy = ToolPolicy()

    @policy.restrict(emails=["alice@example.com"])
    def payroll(month: str) -> str:
        return f"payroll for {month}"

    assert payroll("may") == unknown_tool("payroll")  # no identity at all
    with bind_identity({"type": "http"}, BOB):
        assert payroll("may") == unknown_tool("payroll")
    with bind_identity({"type": "http"}, ALICE):
        assert payroll("may") == "payroll for may"


@pytest.mark.anyio
async def test_restrict_checks_the_caller_inside_an_async_call() -> None:
    policy = ToolPolicy()

    @policy.restrict(name="pay", groups=["admins"])
    async def payroll() -> str:
        return "paid"

    with bind_identity({"type": "http"}, ALICE):
        assert await payroll() == unknown_tool("pay")
    with bind_identity({"type": "http"}, BOB):
        assert await payroll() == "paid"


def test_restricted_tools_keep_their_schema_and_context_injection_in_mcpserver() -> None:
    policy = ToolPolicy()
    plain = MCPServer("plain")
    guarded = MCPServer("guarded")

    def make_tools(server: MCPServer, wrap: typing.Callable[[typing.Any], typing.Any]) -> None:
        @server.tool()
        @wrap
        def sync_tool(a: int, ctx: Context, b: str = "x") -> dict[str, int]:
            """Sync tool."""
            return {"a": a}

        @server.tool()
        @wrap
        async def async_tool(items: list[str], ctx: Context) -> int:
            """Async tool."""
            return len(items)

    make_tools(plain, lambda function: function)
    make_tools(guarded, policy.restrict(emails=["alice@example.com"]))

    def schemas(server: MCPServer) -> dict[str, typing.Any]:
        return {tool.name: tool for tool in server._tool_manager.list_tools()}

    for name, tool in schemas(plain).items():
        twin = schemas(guarded)[name]
        assert twin.parameters == tool.parameters
        assert twin.output_schema == tool.output_schema
        assert twin.description == tool.description
        assert twin.context_kwarg == tool.context_kwarg == "ctx"
        assert twin.is_async == tool.is_async
