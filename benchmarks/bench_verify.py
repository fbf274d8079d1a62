"""How fast `AccessVerifier.verify` is, as ratios to the cost of the RSA signature check it cannot avoid.

    python benchmarks/bench_verify.py            # full run, well under a minute
    python benchmarks/bench_verify.py --quick    # a few seconds
    python benchmarks/bench_verify.py --profile  # cProfile of the cold path instead of the table

Items, all in one run and one process, against one real key served by `LocalAccess`:

(a) the floor: one RSA-2048 PKCS#1 v1.5 SHA-256 verify of a real token's signing input, with `cryptography`;
(b) our cold verify: a token never seen before on every call (the key cache is warm, only the token is new);
(c) our cached verify: the same token again;
(d) PyJWT's `jwt.decode` with the key already in hand and the same checks as ours.

Every round times each item over a loop of calls; the first rounds are warm-up and discarded. Medians and
min-max are across the kept rounds, in microseconds per call.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import gc
import pstats
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.hashes import SHA256

from mcp_access_guard import AccessVerifier
from mcp_access_guard.testing import LocalAccess

# The targets, as multiples of the floor (a).
CACHED_TARGET = 0.2
COLD_TARGET = 2.0


@dataclass(frozen=True)
class Plan:
    rounds: int
    warmup: int
    iterations: int

    @property
    def fresh_tokens(self) -> int:
        # (b) spends one never-seen token per call, warm-up rounds included.
        return (self.rounds + self.warmup) * self.iterations


# Kept under the verifier's default token cache size (10 000), so (b) never pays for evictions in some rounds
# and not in others.
FULL = Plan(rounds=20, warmup=2, iterations=400)
QUICK = Plan(rounds=8, warmup=1, iterations=100)


def _b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _signed_parts(token: str) -> tuple[bytes, bytes]:
    signing_input, _, signature = token.rpartition(".")
    return _b64url_decode(signature), signing_input.encode("ascii")


def _per_call_us(started_ns: int, calls: int) -> float:
    return (time.perf_counter_ns() - started_ns) / calls / 1000


def time_raw_rsa(key: RSAPublicKey, parts: Sequence[tuple[bytes, bytes]]) -> float:
    padding, digest = PKCS1v15(), SHA256()
    started = time.perf_counter_ns()
    for signature, signing_input in parts:
        key.verify(signature, signing_input, padding, digest)
    return _per_call_us(started, len(parts))


async def time_verify(verify: Callable[[str], Awaitable[object]], tokens: Sequence[str]) -> float:
    started = time.perf_counter_ns()
    for token in tokens:
        await verify(token)
    return _per_call_us(started, len(tokens))


def time_pyjwt(decode: Callable[[str], object], tokens: Sequence[str]) -> float:
    started = time.perf_counter_ns()
    for token in tokens:
        decode(token)
    return _per_call_us(started, len(tokens))


@dataclass(frozen=True)
class Row:
    label: str
    samples: list[float]
    target: float | None = None


def print_table(rows: Sequence[Row], plan: Plan) -> None:
    floor = statistics.median(rows[0].samples)
    print(f"{plan.rounds} rounds of {plan.iterations} calls each ({plan.warmup} warm-up rounds discarded), µs per call")
    print(f"{'item':<44} {'median':>8} {'min-max':>17} {'x (a)':>7}  target")
    for row in rows:
        median = statistics.median(row.samples)
        ratio = median / floor
        spread = f"{min(row.samples):.1f}-{max(row.samples):.1f}"
        verdict = ""
        if row.target is not None:
            verdict = f"<= {row.target:.2f}x  {'met' if ratio <= row.target else 'MISSED'}"
        print(f"{row.label:<44} {median:>8.1f} {spread:>17} {ratio:>7.2f}  {verdict}")


async def run(plan: Plan, *, profile: bool) -> None:
    with LocalAccess() as issuer:
        config = issuer.config()
        verifier = AccessVerifier(config)
        try:
            await benchmark(issuer, verifier, plan, profile=profile)
        finally:
            await verifier.aclose()


async def benchmark(issuer: LocalAccess, verifier: AccessVerifier, plan: Plan, *, profile: bool) -> None:
    config = verifier.config
    cached_token = issuer.user_token()
    await verifier.verify(cached_token)  # fetches the keys, and puts this token in the token cache
    key = await verifier.keys.get(issuer.current_key.kid)
    assert key is not None

    print(f"minting {plan.fresh_tokens} fresh tokens ...", flush=True)
    fresh = [issuer.user_token(groups=["engineering"]) for _ in range(plan.fresh_tokens)]
    batches = [fresh[i : i + plan.iterations] for i in range(0, len(fresh), plan.iterations)]

    if profile:
        await profile_cold_path(verifier, fresh)
        return

    def decode(token: str) -> object:
        return jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            audience=list(config.audiences),
            issuer=config.issuer,
            leeway=config.leeway,
            options={"require": ["exp"]},
        )

    cached_tokens = [cached_token] * plan.iterations
    samples: dict[str, list[float]] = {"a": [], "b": [], "c": [], "d": []}
    for round_number, batch in enumerate(batches):
        parts = [_signed_parts(token) for token in batch]
        gc.collect()  # so a collection triggered by the previous round does not land in this one
        # Items interleaved within a round, so drift in the machine's speed hits all of them alike.
        figures = {
            "a": time_raw_rsa(key, parts),
            "b": await time_verify(verifier.verify, batch),
            "c": await time_verify(verifier.verify, cached_tokens),
            "d": time_pyjwt(decode, batch),
        }
        if round_number >= plan.warmup:
            for item, figure in figures.items():
                samples[item].append(figure)

    print_table(
        [
            Row("(a) RSA-2048 verify, cryptography (floor)", samples["a"]),
            Row("(b) AccessVerifier.verify, fresh token", samples["b"], COLD_TARGET),
            Row("(c) AccessVerifier.verify, cached token", samples["c"], CACHED_TARGET),
            Row("(d) PyJWT jwt.decode, key in hand", samples["d"]),
        ],
        plan,
    )


async def profile_cold_path(verifier: AccessVerifier, tokens: Sequence[str]) -> None:
    # With the keys warm, verify never suspends, so the profile holds the verify calls and nothing of the loop.
    profiler = cProfile.Profile()
    profiler.enable()
    for token in tokens:
        await verifier.verify(token)
    profiler.disable()
    print(f"cold verify of {len(tokens)} fresh tokens, by own time:")
    pstats.Stats(profiler).sort_stats(pstats.SortKey.TIME).print_stats(20)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and calls, for a smoke run")
    parser.add_argument("--profile", action="store_true", help="profile the cold path (b) instead of timing")
    arguments = parser.parse_args(argv)
    asyncio.run(run(QUICK if arguments.quick else FULL, profile=arguments.profile))


if __name__ == "__main__":
    main()
