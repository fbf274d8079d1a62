"""`check --token`: the token is decoded without trusting it, to show its claims and measure what is wrong (expired
how long ago, which audience, which issuer, which key); then the real `AccessVerifier` checks it against the real
keys, and its reason is explained. Nothing of the token but claim values is printed, and those escaped."""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..config import ACCESS_SUFFIX, AccessConfig
from ..identity import SERVICE_TOKEN_SUFFIX, AccessIdentity
from ..jws import ClaimProblem, Reason
from ..settings import GuardConfig
from ..verifier import AccessDenied, AccessVerifier, claim_problems
from .report import (
    ANY_CASE_AUD_TAG,
    Report,
    distinguishing_length,
    duration,
    number,
    plural,
    relative,
    short_list,
    show,
    utc,
)


@dataclass(frozen=True)
class Untrusted:
    """What the token says about itself, before anything about it is believed."""

    header: dict[str, Any]
    claims: dict[str, Any]
    problem: str | None = None  # why it cannot be read at all


# What people paste around a token, and what to say about it.
_WRAPPERS = (
    (
        "bearer ",
        "pasted with a 'Bearer ' prefix: Cf-Access-Jwt-Assertion carries the bare token ('Bearer ' belongs "
        "only in an Authorization header)",
    ),
    ("cf-access-jwt-assertion:", "pasted with its header name"),
    ("cf_authorization=", "pasted as a cookie (CF_Authorization=...)"),
)


def secret_parts(token: str) -> list[str]:
    """What of a token must never be printed: all of it, and each segment (the signature least of all)."""
    return [token, *token.split(".")]


async def check_token(report: Report, raw: str, config: GuardConfig | None, verifier: AccessVerifier | None) -> None:
    token = _unwrap(report, raw)
    report.never_print(*secret_parts(token))
    if not token:
        report.fail("the token is empty")
        return
    untrusted = decode_untrusted(token)
    if untrusted.problem is None:
        report.info(f"header (not yet trusted): {_describe_header(untrusted.header)}")
        report.info(f"claims (not yet trusted): {_describe_claims(untrusted.claims)}")
    if verifier is None or config is None or config.access is None:
        report.fail(
            (f"{untrusted.problem}; " if untrusted.problem else "")
            + "cannot verify it: no usable Access configuration (see above)"
        )
        return
    now = time.time()
    problems = claim_problems_in_words(untrusted.claims, config.access, now) if untrusted.problem is None else {}
    try:
        identity = await verifier.verify(token)
    except AccessDenied as denied:
        report.fail(f"token refused ({denied.reason}): {_explain(denied, untrusted, problems, verifier)}")
        for reason, problem in problems.items():
            if reason != denied.reason:
                report.fail(f"also ({reason}): {problem}")
        return
    _report_identity(report, identity, config, now)


def _unwrap(report: Report, raw: str) -> str:
    token = raw.strip()
    changed = True
    while changed:
        changed = False
        if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
            token = token[1:-1].strip()
            report.warn("the token was pasted inside quotes; a header or cookie must carry it without them")
            changed = True
        for prefix, what in _WRAPPERS:
            if token.lower().startswith(prefix):
                token = token[len(prefix) :].strip().removesuffix(";")
                report.warn(f"the token was {what}; checking what follows it")
                changed = True
    return token


def decode_untrusted(token: str) -> Untrusted:
    segments = token.split(".")
    if len(segments) != 3:
        return Untrusted({}, {}, f"not a JWT: {_looks_like(token, segments)}")
    parts: list[dict[str, Any]] = []
    for position, segment in (("header (part 1)", segments[0]), ("payload (part 2)", segments[1])):
        try:
            document = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            return Untrusted({}, {}, f"not a JWT: its {position} is not base64url-encoded JSON (pasted in part?)")
        if not isinstance(document, dict):
            return Untrusted({}, {}, f"not a JWT: its {position} is JSON but not an object")
        parts.append(document)
    header, claims = parts
    if not segments[2]:
        return Untrusted(header, claims, "the signature (part 3) is empty: the token is unsigned")
    return Untrusted(header, claims)


def _looks_like(token: str, segments: list[str]) -> str:
    count = f"{plural(len(segments), 'part')} separated by '.', where a JWT has 3 (header.payload.signature)"
    if len(segments) == 5:
        return f"{count}; 5 parts is an encrypted JWE, which Access does not send"
    if token.endswith(SERVICE_TOKEN_SUFFIX):
        return f"{count}; it looks like a service token's client id"
    if ANY_CASE_AUD_TAG.fullmatch(token):
        return f"{count}; 64 hex characters look like a service token's client secret or an AUD tag"
    return count


def _describe_header(header: Mapping[str, Any]) -> str:
    described = [f"{name} {show(header[name])}" for name in ("alg", "kid", "typ") if name in header]
    others = sorted(set(header) - {"alg", "kid", "typ"})
    if others:
        described.append(f"also {', '.join(others)}")
    return ", ".join(described) or "empty"


_SHOWN_CLAIMS = ("type", "iss", "aud", "email", "common_name", "sub", "country", "groups")
_DATE_CLAIMS = ("exp", "nbf", "iat")


def _describe_claims(claims: Mapping[str, Any]) -> str:
    now = time.time()
    described = [f"{name} {show(claims[name])}" for name in _SHOWN_CLAIMS if name in claims]
    for name in _DATE_CLAIMS:
        moment = number(claims.get(name))
        if moment is not None:
            described.append(f"{name} {utc(moment)} ({relative(moment, now)})")
        elif name in claims:
            described.append(f"{name} {show(claims[name])}")
    # Other claims by name only: identity_nonce and custom claims are nobody's business in a terminal.
    others = sorted(set(claims) - {*_SHOWN_CLAIMS, *_DATE_CLAIMS})
    if others:
        described.append(f"also {', '.join(others)}")
    return ", ".join(described) or "none"


# -- what is wrong with the claims ----------------------------------------------------------------------------------


def claim_problems_in_words(claims: Mapping[str, Any], access: AccessConfig, now: float) -> dict[str, str]:
    """Every reason the verifier finds in these claims (`verifier.claim_problems`, the rules it applies itself), each
    put into words and figures; the first problem of each reason is the one described."""
    problems: dict[str, str] = {}
    for problem in claim_problems(claims, access, now):
        problems.setdefault(problem.reason, _in_words(problem, claims, access, now))
    return problems


def _in_words(problem: ClaimProblem[Reason], claims: Mapping[str, Any], access: AccessConfig, now: float) -> str:
    reason = problem.reason
    if reason == "wrong_issuer":
        return _issuer_problem(claims.get("iss"), access.issuer)
    if reason == "wrong_token_type":
        return _type_problem(claims.get("type"))
    if reason == "wrong_audience":
        return _audience_problem(claims.get("aud"), access.audiences)
    expires_at = number(claims.get("exp"))
    if reason == "expired" and expires_at is not None:
        return (
            f"expired {duration(now - expires_at)} ago (exp {utc(expires_at)}; {access.leeway:g} s of clock skew "
            f"allowed): tokens last as long as the Access application's session duration; sign in again for a fresh "
            f"one"
        )
    future = _future_date(claims, access, now)
    if reason == "not_yet_valid" and future is not None:
        name, moment = future
        return (
            f"{name} is {duration(moment - now)} in the future ({utc(moment)}): the clock of this machine or of "
            f"whatever made the token is wrong"
        )
    if reason == "malformed" and "exp" not in claims:
        return "it has no exp (expiry) as a number of seconds"
    if reason == "malformed" and not claims.get("email") and not claims.get("common_name"):
        return "it has neither email (a user) nor common_name (a service token)"
    return problem.detail


def _future_date(claims: Mapping[str, Any], access: AccessConfig, now: float) -> tuple[str, float] | None:
    for name in ("nbf", "iat"):
        moment = number(claims.get(name))
        if moment is not None and moment > now + access.leeway:
            return name, moment
    return None


def _issuer_problem(iss: Any, expected: str) -> str:
    if not isinstance(iss, str) or not iss:
        return f"it has no issuer (iss); Access tokens carry {expected}"
    if iss.rstrip("/") == expected:
        return (
            f"issuer {iss} has a trailing slash; the expected issuer {expected} has none, and they must match exactly"
        )
    if iss.lower() == expected.lower():
        return f"issuer {iss} differs from {expected} in letter case; they must match exactly"
    theirs, ours = urlsplit(iss), urlsplit(expected)
    if theirs.netloc.lower() == ours.netloc.lower() and theirs.scheme != ours.scheme:
        return f"issuer {iss} uses {theirs.scheme}:// where the expected issuer {expected} uses {ours.scheme}://"
    their_host, our_host = theirs.hostname or "", ours.hostname or ""
    if their_host.endswith(ACCESS_SUFFIX) and our_host.endswith(ACCESS_SUFFIX):
        return (
            f"issuer {iss} is another team ({their_host.removesuffix(ACCESS_SUFFIX)!r}, configured "
            f"{our_host.removesuffix(ACCESS_SUFFIX)!r}): the team domain names the wrong team, or the token is "
            f"another team's"
        )
    return (
        f"issuer {iss} is not the configured team domain {expected}: the token comes from another issuer, or the "
        f"team domain is set wrong (a custom team domain must be configured as that domain)"
    )


def _type_problem(token_type: Any) -> str:
    if token_type == "org":
        return (
            "this is an org token (type org): the team-wide session token from the CF_Authorization cookie on "
            f"<team>{ACCESS_SUFFIX}, not an application token. Use the token Access sends to the application: the "
            "Cf-Access-Jwt-Assertion header, or the CF_Authorization cookie on the application's own host name"
        )
    if token_type is None:
        return "it has no type claim; Access application tokens carry type app"
    return f"type {show(token_type)}, where an Access application token has type app"


def _audience_problem(aud: Any, configured: tuple[str, ...]) -> str:
    tags = [aud] if isinstance(aud, str) else aud
    if not isinstance(tags, list) or not tags or not all(isinstance(tag, str) for tag in tags):
        return f"its aud is {show(aud)}, not an AUD tag or a list of them"
    keep = distinguishing_length([*tags, *configured])
    return (
        f"audience {short_list(tags, keep)} is not one of the configured ones ({short_list(configured, keep)}): "
        f"the token is for another Access application. Add this application's AUD tag to the configuration, or get "
        f"a token for the application that is configured"
    )


# -- the verifier's verdict, explained ------------------------------------------------------------------------------


def _explain(denied: AccessDenied, untrusted: Untrusted, problems: Mapping[str, str], verifier: AccessVerifier) -> str:
    """The verifier's reason, in words and figures."""
    reason = denied.reason
    if reason == "malformed":
        return untrusted.problem or problems.get("malformed") or denied.detail or "not a well-formed Access token"
    if reason in problems:
        return problems[reason]
    kid = untrusted.header.get("kid")
    if reason == "unsupported_algorithm":
        return _algorithm_problem(untrusted.header.get("alg"))
    if reason == "unknown_key":
        published = verifier.keys.kids
        explanation = (
            f"signed by key {show(kid)}, which is not among the {plural(len(published), 'key')} "
            f"{verifier.config.certs_url} publishes now ({short_list(published)})"
        )
        if untrusted.claims.get("iss") == verifier.config.issuer:
            return (
                f"{explanation}: a key that is no longer published. After a key rotation Access keeps the previous "
                f"key for 7 days, then tokens it signed stop working; sign in again for a fresh token"
            )
        return f"{explanation}, and its issuer is not {verifier.config.issuer}: another team or issuer signed it"
    if reason == "bad_signature":
        return (
            f"the signature does not match the published key {show(kid)}: the token was changed after it was signed "
            f"(or cut short when copied), or someone else signed it under that key id"
        )
    if reason == "keys_unavailable":
        return "the signing keys could not be fetched (see keys above), so no token can be verified"
    return denied.detail or reason


def _algorithm_problem(alg: Any) -> str:
    if isinstance(alg, str) and alg.lower() == "none":
        return (
            "alg none means unsigned: anyone could have written these claims. Access signs with RS256 only, so this "
            "token did not come from Cloudflare Access"
        )
    if isinstance(alg, str) and alg.upper().startswith("HS"):
        return (
            f"alg {alg} is a shared-secret signature; Access signs with RS256 only, so this token did not come from "
            f"Cloudflare Access"
        )
    return f"alg {show(alg)}; Access signs with RS256 only"


def _report_identity(report: Report, identity: AccessIdentity, config: GuardConfig, now: float) -> None:
    remaining = identity.expires_at - now
    if remaining > 0:
        expiry = f"expires in {duration(remaining)}"
    else:
        expiry = f"expired {duration(-remaining)} ago, within the allowed clock skew"
    if identity.is_service_token:
        who = (
            f"service token {identity.common_name} (its common_name is its identity: service-token tokens carry no "
            f"email)"
        )
    else:
        details = [f"sub {identity.subject}"] if identity.subject else []
        if identity.country:
            details.append(f"country {identity.country}")
        if identity.groups:
            details.append(f"groups {', '.join(identity.groups)}")
        who = f"user {identity.email}" + (f" ({', '.join(details)})" if details else "")
    report.ok(f"token passes: {who}; {expiry} ({utc(identity.expires_at)})")
    if remaining <= 0:
        report.warn("the token is past its exp: it is accepted only thanks to the allowed clock skew")
    if config.allow is not None:
        if config.allow.matches(identity):
            report.ok(f"the allow rule admits {identity.principal}")
        else:
            report.fail(
                f"not_allowed: the allow rule does not include {identity.principal}, so the guard answers 403 although "
                f"Access let them in; add them to the allow rule"
            )
    policy = config.tools
    if policy is not None and policy.rules:
        denied = sorted(name for name, rule in policy.rules.items() if not rule.matches(identity))
        allowed = sorted(set(policy.rules) - set(denied))
        report.info(
            f"tool policy for {identity.principal}: may use {', '.join(allowed) or 'none'} of the restricted tools; "
            f"not {', '.join(denied) or 'none'} (those look like unknown tools to them)"
        )
