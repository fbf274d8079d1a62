"""Who may do what: `Rule` matches callers; `ToolPolicy` maps tool names to rules."""

from __future__ import annotations

import functools
import inspect
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

from mcp_types import CallToolResult, TextContent

from .identity import SERVICE_TOKEN_SUFFIX, AccessIdentity, current_identity


def _client_id_key(client_id: str) -> str:
    # Cloudflare's client ids end in ".access"; accept them configured with or without it.
    return client_id.strip().lower().removesuffix(SERVICE_TOKEN_SUFFIX)


def _domain_key(domain: str) -> str:
    return domain.strip().lower().removeprefix("@")


@dataclass(frozen=True, slots=True, init=False)
class Rule:
    """A caller matches when any part matches. An empty rule matches nobody."""

    emails: frozenset[str]
    email_domains: frozenset[str]
    service_tokens: frozenset[str]
    groups: frozenset[str]
    # Each "*.example.com" entry as the suffix it stands for (".example.com"): a caller's domain is matched by looking
    # up its own few suffixes, not by trying every entry (a refusal would otherwise cost one test per entry).
    _wildcard_suffixes: frozenset[str] = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        emails: Iterable[str] = (),
        email_domains: Iterable[str] = (),
        service_tokens: Iterable[str] = (),
        groups: Iterable[str] = (),
    ) -> None:
        for name, value in (
            ("emails", emails),
            ("email_domains", email_domains),
            ("service_tokens", service_tokens),
            ("groups", groups),
        ):
            if isinstance(value, str):
                raise TypeError(f"Rule({name}=...) takes a list of strings, not one string: {name}=[{value!r}]")
        object.__setattr__(self, "emails", frozenset(e.strip().lower() for e in emails))
        object.__setattr__(self, "email_domains", frozenset(_domain_key(d) for d in email_domains))
        wildcards = frozenset(domain[1:] for domain in self.email_domains if domain.startswith("*."))
        object.__setattr__(self, "_wildcard_suffixes", wildcards)
        object.__setattr__(self, "service_tokens", frozenset(_client_id_key(c) for c in service_tokens))
        object.__setattr__(self, "groups", frozenset(groups))

    def matches(self, identity: AccessIdentity | None) -> bool:
        if identity is None:
            return False
        if identity.is_service_token:
            assert identity.common_name is not None
            return _client_id_key(identity.common_name) in self.service_tokens
        if identity.email is not None:
            if identity.email in self.emails:
                return True
            domain = identity.email.rpartition("@")[2]
            if domain in self.email_domains or self._under_wildcard(domain):
                return True
        return not self.groups.isdisjoint(identity.groups)

    def _under_wildcard(self, domain: str) -> bool:
        """Whether `domain` ends with the suffix of a "*." entry: each suffix of it that starts at a dot, looked up."""
        if not self._wildcard_suffixes:
            return False
        dot = domain.find(".")
        while dot != -1:
            if domain[dot:] in self._wildcard_suffixes:
                return True
            dot = domain.find(".", dot + 1)
        return False


Default = Literal["allow", "deny"]
Family = Literal["tool", "prompt", "resource"]

_RULE_FIELDS = ("emails", "email_domains", "service_tokens", "groups")
# Environment variables of the reference deployments, one per Rule field.
_ENV_FIELDS = {
    "ALLOWED_EMAILS": "emails",
    "ALLOWED_EMAIL_DOMAINS": "email_domains",
    "ALLOWED_SERVICE_TOKENS": "service_tokens",
    "ALLOWED_GROUPS": "groups",
}

_F = TypeVar("_F", bound=Callable[..., Any])


def _rule_from_mapping(where: str, fields: Mapping[str, Any]) -> Rule:
    if not isinstance(fields, Mapping):
        raise TypeError(f"{where} must be a table of rule fields, not {type(fields).__name__}")
    unknown = set(fields) - set(_RULE_FIELDS)
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {sorted(unknown)}; known: {', '.join(_RULE_FIELDS)}")
    try:
        return Rule(**{name: fields[name] for name in _RULE_FIELDS if name in fields})
    except TypeError as error:
        raise TypeError(f"{where}: {error}") from None


def _rules_from_mapping(section: str, table: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Rule] | None:
    if table is None:
        return None
    return {name: _rule_from_mapping(f"{section}.{name}", fields) for name, fields in table.items()}


class ToolPolicy:
    """Who may call, see and read which tool (and, when given rules for them, which prompt and resource).

    A name with a rule is allowed to callers the rule matches; a name without one follows `default`. Prompts and
    resources are covered only when their mapping is given; a resource key is a URI or an RFC 6570 URI template, and
    a template's rule covers every URI it could match (reads, subscriptions, listings and completions alike).
    With no identity, no rule matches, so rule-protected names are denied and default-allowed ones stay allowed.
    """

    def __init__(
        self,
        rules: Mapping[str, Rule] | None = None,
        default: Default = "allow",
        *,
        prompts: Mapping[str, Rule] | None = None,
        resources: Mapping[str, Rule] | None = None,
    ) -> None:
        if default not in ("allow", "deny"):
            raise ValueError(f"default must be 'allow' or 'deny', not {default!r}")
        self.default: Default = default
        self.rules: dict[str, Rule] = dict(rules or {})
        self.prompts: dict[str, Rule] | None = None if prompts is None else dict(prompts)
        self.resources: dict[str, Rule] | None = None if resources is None else dict(resources)

    def __repr__(self) -> str:
        return f"ToolPolicy(tools={sorted(self.rules)}, default={self.default!r})"

    @classmethod
    def from_mapping(
        cls,
        tools: Mapping[str, Mapping[str, Any]],
        default: Default = "allow",
        *,
        prompts: Mapping[str, Mapping[str, Any]] | None = None,
        resources: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> ToolPolicy:
        """From plain data, as a TOML `[tools.NAME]` table gives it: `{"NAME": {"emails": [...], ...}}`."""
        return cls(
            _rules_from_mapping("tools", tools),
            default,
            prompts=_rules_from_mapping("prompts", prompts),
            resources=_rules_from_mapping("resources", resources),
        )

    @classmethod
    def from_env(cls, tool_name: str, environ: Mapping[str, str] | None = None) -> ToolPolicy:
        """Restrict one tool to `ALLOWED_EMAILS` (comma-separated); `ALLOWED_EMAIL_DOMAINS`,
        `ALLOWED_SERVICE_TOKENS` and `ALLOWED_GROUPS` add to it. With none of them set the tool is allowed to nobody.
        """
        env = os.environ if environ is None else environ
        fields = {
            field: [item.strip() for item in env.get(variable, "").split(",") if item.strip()]
            for variable, field in _ENV_FIELDS.items()
        }
        return cls({tool_name: Rule(**fields)})

    def _rules_for(self, family: Family) -> dict[str, Rule] | None:
        if family == "tool":
            return self.rules
        return self.prompts if family == "prompt" else self.resources

    def covers(self, family: Family) -> bool:
        """Whether this policy can refuse anything in `family`."""
        rules = self._rules_for(family)
        return rules is not None and (bool(rules) or self.default == "deny")

    def hides_nothing_from(self, family: Family, identity: AccessIdentity | None) -> bool:
        """Whether `decide` allows `identity` every name (or URI) of `family`: its listings have nothing to hide."""
        rules = self._rules_for(family)
        return rules is None or (self.default == "allow" and all(rule.matches(identity) for rule in rules.values()))

    def hidden(self, family: Family, names: frozenset[str], identity: AccessIdentity | None) -> frozenset[str]:
        """Which of `names` (one listing's) `decide` refuses to `identity`: one rule test per name that has a rule."""
        rules = self._rules_for(family)
        if rules is None:
            return frozenset()
        if family == "resource":
            return frozenset(uri for uri in names if not self._decide_uri(rules, uri, identity)[0])
        # Intersected from the smaller side: a long listing against few rules, or many rules against a short listing.
        ruled = names.intersection(rules) if len(rules) <= len(names) else frozenset(n for n in names if n in rules)
        matched = {name for name in ruled if rules[name].matches(identity)}
        return frozenset((ruled if self.default == "allow" else names) - matched)

    def decide(self, family: Family, name: str, identity: AccessIdentity | None) -> tuple[bool, str]:
        """(allowed, machine-readable reason). A resource URI is judged by every rule whose URI or URI template could
        match it (see `UriPattern`); it is allowed only if each of them matches the caller."""
        rules = self._rules_for(family)
        if rules is None:
            return True, "not_covered"
        if family == "resource":
            return self._decide_uri(rules, name, identity)
        rule = rules.get(name)
        if rule is None:
            return self.default == "allow", f"default_{self.default}"
        if rule.matches(identity):
            return True, "rule_matched"
        return False, "no_identity" if identity is None else "rule_not_matched"

    def _decide_uri(self, rules: dict[str, Rule], uri: str, identity: AccessIdentity | None) -> tuple[bool, str]:
        applicable = [rule for key, rule in rules.items() if key == uri or uri_pattern(key).matches(uri)]
        if not applicable:
            return self.default == "allow", f"default_{self.default}"
        if all(rule.matches(identity) for rule in applicable):
            return True, "rule_matched"
        return False, "no_identity" if identity is None else "rule_not_matched"

    def allows(self, tool_name: str, identity: AccessIdentity | None) -> bool:
        return self.decide("tool", tool_name, identity)[0]

    def allows_prompt(self, name: str, identity: AccessIdentity | None) -> bool:
        return self.decide("prompt", name, identity)[0]

    def allows_resource(self, uri: str, identity: AccessIdentity | None) -> bool:
        return self.decide("resource", uri, identity)[0]

    def restrict(
        self,
        *,
        name: str | None = None,
        emails: Iterable[str] = (),
        email_domains: Iterable[str] = (),
        service_tokens: Iterable[str] = (),
        groups: Iterable[str] = (),
    ) -> Callable[[_F], _F]:
        """Register a rule for the decorated tool and check it again inside every call.

        Place it under `@mcp.tool()`; pass `name=` when the tool is registered under another name than the
        function's. The in-call check covers a server run without `ToolPolicyMiddleware`: a refused caller gets the
        result `MCPServer` gives for a tool that does not exist (`isError`, text `Unknown tool: NAME`). Arguments
        are validated before the tool runs, so without the middleware a refused caller who sends bad arguments sees
        the validation error; with it, the call never reaches the tool.
        """
        rule = Rule(emails=emails, email_domains=email_domains, service_tokens=service_tokens, groups=groups)

        def decorate(function: _F) -> _F:
            tool_name = name or function.__name__
            if tool_name in self.rules:
                raise ValueError(f"tool {tool_name!r} already has a rule in this policy")
            self.rules[tool_name] = rule

            if inspect.iscoroutinefunction(function):

                @functools.wraps(function)
                async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                    if not self.allows(tool_name, current_identity()):
                        return _unknown_tool_result(tool_name)
                    return await function(*args, **kwargs)

                return cast(_F, guarded_async)

            @functools.wraps(function)
            def guarded(*args: Any, **kwargs: Any) -> Any:
                if not self.allows(tool_name, current_identity()):
                    return _unknown_tool_result(tool_name)
                return function(*args, **kwargs)

            return cast(_F, guarded)

        return decorate


def _unknown_tool_result(tool_name: str) -> CallToolResult:
    # MCPServer passes a returned CallToolResult through as is: the same result it builds for a name it does not
    # know. Raising instead would be wrapped as "Error executing tool NAME: ...", which gives the tool away.
    return CallToolResult(content=[TextContent(type="text", text=f"Unknown tool: {tool_name}")], is_error=True)


_EXPRESSION = re.compile(r"\{[^{}]*\}")


class UriPattern:
    """What URIs a policy key (a URI, or an RFC 6570 URI template) could stand for, at any server.

    Servers match templates their own ways (the SDK by an RFC 6570 scan, FastMCP by a regular expression that also
    takes percent-encoded literals and ignores the query), so this matches more than any of them, never less: every
    expression matches any text, `/` and `?` included; literals match case-insensitively, each character as written
    or percent-encoded; and the URI is tried whole, without its fragment, and without its query. Literals are found
    left to right, each at its first place: with nothing but "anything" between them that is exact, and linear.
    """

    __slots__ = ("_first", "_last", "_middle")

    def __init__(self, key: str) -> None:
        literals = [_literal_pattern(text) for text in _EXPRESSION.split(key)]
        flags = re.IGNORECASE | re.DOTALL
        self._first = re.compile(literals[0] if len(literals) > 1 else rf"(?:{literals[0]})\Z", flags)
        self._middle = [re.compile(literal, flags) for literal in literals[1:-1]]
        # With no expression the key is one literal, matched whole by `_first`.
        self._last = re.compile(rf"(?:{literals[-1]})\Z", flags) if len(literals) > 1 else None

    def matches(self, uri: str) -> bool:
        without_fragment = uri.partition("#")[0]
        candidates = {uri, without_fragment, without_fragment.partition("?")[0]}
        return any(self._match(candidate) for candidate in candidates)

    def _match(self, uri: str) -> bool:
        found = self._first.match(uri)
        if found is None or self._last is None:
            return found is not None
        position = found.end()
        for literal in self._middle:
            found = literal.search(uri, position)
            if found is None:
                return False
            position = found.end()
        return self._last.search(uri, position) is not None


def _literal_pattern(text: str) -> str:
    return "".join(f"(?:{re.escape(char)}|{_percent_encoded(char)})" for char in text)


def _percent_encoded(char: str) -> str:
    return "".join(f"%{byte:02x}" for byte in char.encode("utf-8", "surrogatepass"))


@functools.lru_cache(maxsize=1024)
def uri_pattern(key: str) -> UriPattern:
    return UriPattern(key)
