"""Token verification: the RSA floor, ours, PyJWT, FastMCP and the Cloudflare-Access validators on PyPI, in one run.

    python benchmarks/bench_peers.py [--quick]

Every verifier gets the same tokens, signed by the same key, served by one `LocalAccess` over real HTTP on loopback.
Each round times every row over the same batch of never-seen tokens (ours also over one cached token); rows are
interleaved within a round and the first rounds are discarded. Then each verifier is shown a set of tokens it must
accept or refuse, and its event-loop lag is measured while its first key fetch waits on a slow key endpoint.
Peers that are not installed are reported as such (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import importlib.metadata
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import jwt
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.hashes import SHA256

from bench_common import LagTicker, Plan, Section
from mcp_access_guard import AccessVerifier
from mcp_access_guard.testing import CERTS_PATH, LocalAccess

TITLE = "Verification against the floor and the peers"
FLOOR = "RSA-2048 PKCS#1 v1.5 verify, cryptography (floor)"
SLOW_KEYS_SECONDS = 0.25


FULL = Plan(rounds=12, warmup=2, iterations=200)
QUICK = Plan(rounds=4, warmup=1, iterations=40)

Check = Callable[[str], Awaitable[bool]]


@dataclass
class Verifier:
    """One way of checking a token: `check` says accepted (True) or refused (False), never raises."""

    label: str
    package: str
    check: Check
    # How its own integration calls it from an async server, for the event-loop lag test.
    calling: str
    # Tokens it is timed and tested on (cc-auth needs its own issuer spelling, see `cc_auth_verifier`).
    issuer_url: str
    note: str = ""


def version_of(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


# -- the verifiers -----------------------------------------------------------------------------------------------


def ours(issuer: LocalAccess) -> tuple[Verifier, AccessVerifier]:
    verifier = AccessVerifier(issuer.config())

    async def check(token: str) -> bool:
        try:
            await verifier.verify(token)
        except Exception:
            return False
        return True

    label = "mcp-access-guard AccessVerifier.verify"
    return Verifier(label, "mcp-access-guard", check, "awaited", issuer.url), verifier


def pyjwt_key_in_hand(issuer: LocalAccess, key: RSAPublicKey) -> Verifier:
    def check_sync(token: str) -> bool:
        try:
            jwt.decode(token, key, algorithms=["RS256"], audience=issuer.audience, issuer=issuer.url)
        except jwt.PyJWTError:
            return False
        return True

    async def check(token: str) -> bool:
        return check_sync(token)

    return Verifier("PyJWT jwt.decode, key in hand", "PyJWT", check, "called inline", issuer.url)


def pyjwt_jwks_client(issuer: LocalAccess) -> Verifier:
    """As most peers use PyJWT: a `PyJWKClient` on the certs URL, then `jwt.decode`; its fetch is blocking urllib."""

    def make() -> Callable[[str], bool]:
        client = jwt.PyJWKClient(issuer.url + CERTS_PATH)

        def check_sync(token: str) -> bool:
            try:
                key = client.get_signing_key_from_jwt(token)
                jwt.decode(token, key.key, algorithms=["RS256"], audience=issuer.audience, issuer=issuer.url)
            except jwt.PyJWTError:
                return False
            return True

        return check_sync

    check_sync = make()

    async def check(token: str) -> bool:
        return check_sync(token)

    return Verifier("PyJWT PyJWKClient + jwt.decode", "PyJWT", check, "called inline", issuer.url)


def fastmcp_verifier(issuer: LocalAccess) -> Verifier | str:
    try:
        from fastmcp.server.auth.providers.jwt import JWTVerifier
    except ImportError:
        return "fastmcp is not installed"
    verifier = JWTVerifier(jwks_uri=issuer.url + CERTS_PATH, issuer=issuer.url, audience=issuer.audience)

    async def check(token: str) -> bool:
        try:
            return await verifier.verify_token(token) is not None
        except Exception:
            return False

    return Verifier("FastMCP JWTVerifier.verify_token", "fastmcp", check, "awaited", issuer.url)


def cc_auth_verifier(issuer: LocalAccess) -> Verifier | str:
    try:
        from cc_auth import CloudflareAuth
    except ImportError:
        return "cc-auth is not installed"
    # cc-auth hard-codes https://<team_domain> as both the issuer it expects and the host it fetches keys from, so
    # it cannot reach LocalAccess (plain http on loopback) by itself. Driven through its documented test hook
    # (`_jwks_client`, a PyJWKClient on LocalAccess's certs URL) with tokens whose `iss` is the https:// spelling of
    # LocalAccess's address: same key, same claims otherwise.
    host = issuer.url.removeprefix("http://")
    auth = CloudflareAuth(host, _jwks_client=jwt.PyJWKClient(issuer.url + CERTS_PATH))

    async def check(token: str) -> bool:
        try:
            auth.authenticate(token)
        except Exception:
            return False
        return True

    return Verifier(
        "cc-auth CloudflareAuth.authenticate",
        "cc-auth",
        check,
        "called inline (its middleware calls it inside async dispatch)",
        f"https://{host}",
        note="hard-codes https://<team>; driven via its `_jwks_client` hook, tokens carry the https:// issuer",
    )


def fastapi_cloudflare_access_jwt_verifier(issuer: LocalAccess) -> Verifier | str:
    try:
        from cloudflare_access_jwt import CloudflareAccessJWT
        from starlette.requests import Request
    except ImportError:
        return (
            "fastapi-cloudflare-access-jwt is not installed (it declares Requires-Python >=3.12; "
            "`pip install --no-deps --ignore-requires-python fastapi-cloudflare-access-jwt loguru requests` "
            "installs it on 3.11, where its code runs unchanged)"
        )
    from loguru import logger

    logger.remove()  # it logs every failure at ERROR through loguru; silenced like our own logger
    dependency = CloudflareAccessJWT(certs_url=issuer.url + CERTS_PATH, policy_aud=issuer.audience)

    def check_sync(token: str) -> bool:
        # Its public entry point is the FastAPI dependency's __call__(request); it reads only the CF_Authorization
        # cookie, so the token travels there.
        scope: dict[str, Any] = {
            "type": "http",
            "method": "GET",
            "path": "/",
            "headers": [(b"cookie", f"CF_Authorization={token}".encode())],
        }
        try:
            dependency(Request(scope))
        except Exception:
            return False
        return True

    async def check(token: str) -> bool:
        return check_sync(token)

    verifier = Verifier(
        "fastapi-cloudflare-access-jwt CloudflareAccessJWT()",
        "fastapi-cloudflare-access-jwt",
        check,
        "in a worker thread (FastAPI runs a sync dependency in its threadpool)",
        issuer.url,
        note="reads only the CF_Authorization cookie; driven with a Starlette Request carrying it",
    )
    verifier.check_sync = check_sync  # type: ignore[attr-defined]
    return verifier


# -- timing ------------------------------------------------------------------------------------------------------


async def time_check(check: Check, tokens: Sequence[str]) -> float:
    started = time.perf_counter_ns()
    for token in tokens:
        await check(token)
    return (time.perf_counter_ns() - started) / len(tokens) / 1000


def time_raw_rsa(key: RSAPublicKey, tokens: Sequence[str]) -> float:
    parts = []
    for token in tokens:
        signing_input, _, signature = token.rpartition(".")
        parts.append((b64url_decode(signature), signing_input.encode("ascii")))
    padding, digest = PKCS1v15(), SHA256()
    started = time.perf_counter_ns()
    for signature, signing_input in parts:
        key.verify(signature, signing_input, padding, digest)
    return (time.perf_counter_ns() - started) / len(parts) / 1000


# -- behaviour ---------------------------------------------------------------------------------------------------


def behaviour_tokens(issuer: LocalAccess, issuer_url: str) -> dict[str, tuple[str, bool]]:
    """Token shapes Access really sends, and shapes it never does: name -> (token, should it be accepted)."""
    fix = {"iss": issuer_url}
    return {
        "user token": (issuer.user_token(claims=fix), True),
        "service token (string aud, no email)": (issuer.service_token(claims=fix), True),
        "wrong issuer": (issuer.user_token(claims={"iss": "https://evil.cloudflareaccess.com"}), False),
        "wrong audience": (issuer.user_token(claims={**fix, "aud": ["0" * 64]}), False),
        "org token (type: org)": (issuer.user_token(claims={**fix, "type": "org"}), False),
        "expired": (issuer.user_token(claims=fix, expires_in=-3600), False),
    }


async def loop_lag_during_first_fetch(make: Callable[[], Verifier], calling: str, token: str) -> float:
    """Worst event-loop lag (ms) while a fresh verifier fetches keys from an endpoint that takes 250 ms."""
    verifier = make()
    ticker = LagTicker()
    ticker.start()
    await asyncio.sleep(0.01)
    check_sync = getattr(verifier, "check_sync", None)
    if calling.startswith("in a worker thread") and check_sync is not None:
        await anyio.to_thread.run_sync(check_sync, token)
    else:
        await verifier.check(token)
    await asyncio.sleep(0.01)
    await ticker.stop()
    return ticker.worst_ms


async def later_fetch_lag(section: Section, issuer: LocalAccess, verifier: AccessVerifier) -> None:
    """The first fetch also builds the HTTP client (TLS context and CA bundle, synchronously); a later one does not."""
    issuer.fault, issuer.slow_seconds = "slow", SLOW_KEYS_SECONDS
    ticker = LagTicker()
    ticker.start()
    try:
        await verifier.keys.refresh()
    finally:
        issuer.fault = None
        await ticker.stop()
    section.notes.append(
        f"mcp-access-guard: worst loop lag during a later 250 ms key fetch (HTTP client already built): "
        f"{ticker.worst_ms:.1f} ms; the first fetch's lag in the table includes building the httpx client."
    )


# -- the run -----------------------------------------------------------------------------------------------------


async def collect(quick: bool = False) -> Section:
    plan = QUICK if quick else FULL
    section = Section(TITLE)
    # Every verifier's own per-token logging is silenced alike: a log handler's cost is not the verifier's.
    for name in ("mcp_access_guard", "fastmcp", "httpx"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    with LocalAccess() as issuer:
        own, own_verifier = ours(issuer)
        makers: list[Callable[[], Verifier | str]] = [
            lambda: pyjwt_jwks_client(issuer),
            lambda: fastmcp_verifier(issuer),
            lambda: cc_auth_verifier(issuer),
            lambda: fastapi_cloudflare_access_jwt_verifier(issuer),
        ]
        try:
            await own.check(issuer.user_token())
            key = await own_verifier.keys.get(issuer.current_key.kid)
            assert key is not None
            verifiers: list[Verifier] = [own, pyjwt_key_in_hand(issuer, key)]
            for make in makers:
                made = make()
                if isinstance(made, str):
                    section.notes.append(f"Not driven: {made}.")
                else:
                    verifiers.append(made)
            await run_timings(section, issuer, key, own, verifiers, plan)
            await run_behaviour(section, issuer, verifiers, makers)
            await later_fetch_lag(section, issuer, own_verifier)
        finally:
            await own_verifier.aclose()
    return section


async def run_timings(
    section: Section, issuer: LocalAccess, key: RSAPublicKey, own: Verifier, verifiers: list[Verifier], plan: Plan
) -> None:
    # One batch of fresh tokens per round and per issuer spelling; every verifier sees each token once.
    spellings = {verifier.issuer_url for verifier in verifiers}
    batches = {
        url: [
            [issuer.user_token(groups=["engineering"], claims={"iss": url}) for _ in range(plan.iterations)]
            for _ in range(plan.warmup + plan.rounds)
        ]
        for url in spellings
    }
    cached = [issuer.user_token()] * plan.iterations
    for verifier in verifiers:
        accepted = await verifier.check(batches[verifier.issuer_url][0][0])
        assert accepted, f"{verifier.label} refused a valid token: it would be timed on its refusal path"

    rows: dict[str, list[float]] = {FLOOR: [], f"{own.label}, cached token": []}
    rows.update({f"{verifier.label}, fresh token": [] for verifier in verifiers})
    for round_number in range(plan.warmup + plan.rounds):
        gc.collect()
        figures = {FLOOR: time_raw_rsa(key, batches[issuer.url][round_number])}
        for verifier in verifiers:
            batch = batches[verifier.issuer_url][round_number]
            figures[f"{verifier.label}, fresh token"] = await time_check(verifier.check, batch)
            if verifier is own:
                figures[f"{own.label}, cached token"] = await time_check(own.check, cached)
        if round_number >= plan.warmup:
            for label, figure in figures.items():
                rows[label].append(figure)

    section.add(FLOOR, "µs/call", rows.pop(FLOOR))
    targets = {f"{own.label}, fresh token": 2.0, f"{own.label}, cached token": 0.2}
    for label, samples in rows.items():
        figure = section.add(label, "µs/call", samples, baseline=FLOOR)
        if label in targets:
            figure.target = f"<= {targets[label]}x floor"
            ratio = section.ratio(figure)
            figure.met = ratio is not None and ratio <= targets[label]
    section.notes.append(
        f"{plan.rounds} rounds of {plan.iterations} calls per row ({plan.warmup} warm-up rounds discarded); "
        "'fresh token' means never seen by that verifier before (its key cache is warm)."
    )


async def run_behaviour(
    section: Section, issuer: LocalAccess, verifiers: list[Verifier], makers: list[Callable[[], Verifier | str]]
) -> None:
    names = list(behaviour_tokens(issuer, issuer.url))
    header = "| verifier | version | " + " | ".join(names) + " | worst loop lag during a 250 ms key fetch | calls |"
    lines = [header, "|" + " --- |" * (len(names) + 4)]
    # Fresh instances for the lag test, so each one's first call really fetches keys.
    fresh_makers: dict[str, Callable[[], Verifier | str]] = {
        verifiers[0].label: lambda: ours(issuer)[0],
        verifiers[1].label: lambda: "not applicable (the key is in hand, nothing is fetched)",
    }
    for make in makers:
        made = make()
        if not isinstance(made, str):
            fresh_makers[made.label] = make
    for verifier in verifiers:
        cells = []
        for _name, (token, should_accept) in behaviour_tokens(issuer, verifier.issuer_url).items():
            accepted = await verifier.check(token)
            verdict = "accepts" if accepted else "refuses"
            cells.append(verdict if accepted == should_accept else f"**{verdict}**")
        maker = fresh_makers[verifier.label]
        probe = maker()
        if isinstance(probe, str):
            lag = probe
        else:
            issuer.fault, issuer.slow_seconds = "slow", SLOW_KEYS_SECONDS
            try:
                lag_ms = await loop_lag_during_first_fetch(lambda p=probe: p, verifier.calling, issuer.user_token())
            finally:
                issuer.fault = None
            lag = f"{lag_ms:.1f} ms"
        version = version_of(verifier.package)
        lines.append(f"| {verifier.label} | {version} | " + " | ".join(cells) + f" | {lag} | {verifier.calling} |")
        if verifier.note:
            section.notes.append(f"{verifier.label}: {verifier.note}.")
    section.tables.append(
        "Measured behaviour on the same key and issuer (bold: not what Cloudflare Access semantics require; a "
        "service token must be accepted, the other bad shapes refused):\n\n" + "\n".join(lines)
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and calls, for a smoke run")
    arguments = parser.parse_args(argv)
    section = asyncio.run(collect(arguments.quick))
    for figure in section.figures:
        ratio = section.ratio(figure)
        ratio_text = f"{ratio:6.2f}x" if ratio is not None else "  base "
        print(f"{figure.label:<70} {figure.median:8.1f} ({figure.low:.1f}-{figure.high:.1f}) {ratio_text}")
    for table in section.tables:
        print(table)
    for note in section.notes:
        print(note)


if __name__ == "__main__":
    main()
