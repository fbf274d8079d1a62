"""Who may do what: `Rule` matches callers; `ToolPolicy` maps tool names to rules."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .identity import AccessIdentity

_SERVICE_TOKEN_SUFFIX = ".access"


def _client_id_key(client_id: str) -> str:
    # Cloudflare's client ids end in ".access"; accept them configured with or without it.
    return client_id.strip().lower().removesuffix(_SERVICE_TOKEN_SUFFIX)


def _domain_key(domain: str) -> str:
    return domain.strip().lower().removeprefix("@")


@dataclass(frozen=True, slots=True, init=False)
class Rule:
    """A caller matches when any part matches. An empty rule matches nobody."""

    emails: frozenset[str]
    email_domains: frozenset[str]
    service_tokens: frozenset[str]
    groups: frozenset[str]

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
            if domain in self.email_domains or any(
                pattern.startswith("*.") and domain.endswith(pattern[1:]) for pattern in self.email_domains
            ):
                return True
        return not self.groups.isdisjoint(identity.groups)
