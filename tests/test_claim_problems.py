"""`claim_problems` lists every problem of an application token's claims; the verifier gives the first of them.

`check` explains a refused token from that list, so the list and the verifier must never disagree: Hypothesis mutates
the claims of real Cloudflare-shaped tokens, `LocalAccess` signs them with its real key, and for each the reason
`AccessVerifier` gives (over real HTTP keys) must be the first problem listed, and an accepted token must list none.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mcp_access_guard import AccessConfig, AccessDenied, AccessVerifier
from mcp_access_guard.testing import LocalAccess
from mcp_access_guard.verifier import claim_problems

LEEWAY = 60
# Far enough from every boundary that the seconds an example takes cannot move a date across one.
MARGIN = 30
OFFSETS = (-100_000, -LEEWAY - MARGIN, -LEEWAY + MARGIN, 0, LEEWAY - MARGIN, LEEWAY + MARGIN, 100_000)
ISS, AUD, OTHER_AUD = "<ISS>", "<AUD>", "f" * 64


@dataclass(frozen=True)
class Judge:
    issuer: LocalAccess
    portal: BlockingPortal
    verifier: AccessVerifier
    config: AccessConfig

    def reason(self, token: str) -> str | None:
        try:
            self.portal.call(self.verifier.verify, token)
        except AccessDenied as denied:
            return denied.reason
        return None


async def _new_verifier(config: AccessConfig) -> AccessVerifier:
    return AccessVerifier(config)


@pytest.fixture(scope="module")
def judge() -> Iterator[Judge]:
    with LocalAccess() as issuer, start_blocking_portal(backend="asyncio") as portal:
        config = issuer.config(leeway=LEEWAY)
        verifier = portal.call(_new_verifier, config)
        try:
            yield Judge(issuer, portal, verifier, config)
        finally:
            portal.call(verifier.aclose)


def resolve(value: Any, judge: Judge, now: int) -> Any:
    if value == ISS:
        return judge.issuer.url
    if value == AUD:
        return judge.issuer.audience
    if isinstance(value, tuple) and value[:1] == ("now+",):
        return now + value[1]
    if isinstance(value, list):
        return [resolve(item, judge, now) for item in value]
    return value


DATES = st.sampled_from([("now+", offset) for offset in OFFSETS]) | st.sampled_from(
    [None, "1700000000", True, 2**60, -(2**60), 1.5, []]
)
TEXT = st.sampled_from(["alice@example.com", "ALICE@Example.COM", "", "\ud800@example.com", "x.access", "US"])
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "iss": st.sampled_from([ISS, ISS + "/", "https://other.cloudflareaccess.com", "", None, [ISS], 1]),
    "type": st.sampled_from(["app", "org", "APP", "", None, 1]),
    "aud": st.sampled_from([AUD, [AUD], [OTHER_AUD, AUD], [OTHER_AUD], [], [AUD, 5], None, 5, [[AUD]]]),
    "exp": DATES,
    "nbf": DATES,
    "iat": DATES,
    "email": TEXT | st.sampled_from([None, 5, ["alice@example.com"]]),
    "common_name": TEXT | st.sampled_from([None, 5]),
    "sub": TEXT | st.sampled_from([None, 7]),
    "country": TEXT | st.none(),
    "jti": TEXT | st.sampled_from([5]),
    "groups": st.sampled_from([["eng"], ["\udfff"], "eng", None, [1]]),
}
DROPPED = object()
EDIT = st.sampled_from(sorted(VALUES)).flatmap(lambda name: st.tuples(st.just(name), st.just(DROPPED) | VALUES[name]))
EDITS = st.lists(EDIT, max_size=4).map(dict)


def mutated_claims(judge: Judge, base: str, edits: dict[str, Any]) -> dict[str, Any]:
    now = int(time.time())
    token = judge.issuer.user_token() if base == "user" else judge.issuer.service_token()
    claims = _payload(token)
    for name, value in edits.items():
        if value is DROPPED:
            claims.pop(name, None)
        else:
            claims[name] = resolve(value, judge, now)
    return claims


def _payload(token: str) -> dict[str, Any]:
    segment = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return decoded


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.sampled_from(["user", "service"]), edits=EDITS)
def test_the_verifier_gives_the_first_problem_listed(judge: Judge, base: str, edits: dict[str, Any]) -> None:
    claims = mutated_claims(judge, base, edits)
    token = judge.issuer.sign(claims)
    # What the verifier reads is the JSON it was signed as.
    signed_claims = _payload(token)
    before = [problem.reason for problem in claim_problems(signed_claims, judge.config, time.time())]
    reason = judge.reason(token)
    after = [problem.reason for problem in claim_problems(signed_claims, judge.config, time.time())]
    assert before == after, "an example ran across a date boundary; widen MARGIN"
    event(f"verdict: {reason or 'accepted'}")
    if reason is None:
        assert before == [], f"accepted, but claim_problems lists {before} for {signed_claims}"
    else:
        assert before, f"refused ({reason}), but claim_problems lists nothing for {signed_claims}"
        assert reason == before[0], f"refused ({reason}); claim_problems lists {before} for {signed_claims}"


def test_every_problem_is_listed_in_the_verifiers_order(judge: Judge) -> None:
    now = int(time.time())
    claims = {
        "iss": judge.issuer.url + "/",
        "type": "org",
        "aud": [OTHER_AUD],
        "exp": now - 3600,
        "iat": now + 3600,
        "sub": 5,
    }
    problems = claim_problems(claims, judge.config, now)
    assert [problem.reason for problem in problems] == [
        "wrong_issuer",
        "wrong_token_type",
        "wrong_audience",
        "expired",
        "not_yet_valid",
        "malformed",  # sub is not text
        "malformed",  # neither email nor common_name
    ]
    assert "3600 s ago" in problems[3].detail
    assert judge.reason(judge.issuer.sign(claims)) == "wrong_issuer"


def test_acceptable_claims_list_no_problem(judge: Judge) -> None:
    for token in (judge.issuer.user_token(), judge.issuer.service_token()):
        assert claim_problems(_payload(token), judge.config, time.time()) == []
        assert judge.reason(token) is None


def test_a_missing_exp_is_named(judge: Judge) -> None:
    claims = _payload(judge.issuer.user_token())
    del claims["exp"]
    assert [(problem.reason, problem.detail) for problem in claim_problems(claims, judge.config, time.time())] == [
        ("malformed", "no exp")
    ]
