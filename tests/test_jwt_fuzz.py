"""High-volume mutation fuzzing of the verifier: 10,000 mutated tokens in the CI profile.

Each example takes one of a few valid tokens and applies one to three mutations, byte-level (insert, delete,
replace, duplicate, case flip, truncation at every position class) or segment-level (swap, duplicate, drop, splice
from another valid token, re-encode with padding or the standard alphabet, flip a bit in the decoded bytes, ...).
The properties: a mutated token is accepted only if it is byte-identical to one of the valid originals; the verifier
raises nothing but `AccessDenied`; and whatever we accept, PyJWT with the same settings accepts too. The PyJWT
differential over re-signed and hand-written tokens lives in test_differential.py.

The verifier is async; one event loop in a thread (a blocking portal) serves the whole module, so Hypothesis drives
it synchronously and each example costs one thread hop.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass

import jwt
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mcp_access_guard import AccessConfig, AccessDenied, AccessVerifier
from mcp_access_guard.testing import LocalAccess, b64url

LEEWAY = 60
B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# What a mutation may write: the alphabet itself (to stay decodable and reach the signature check), and the
# characters a broken or hostile encoder would produce.
CHARACTERS = [*B64URL_ALPHABET, "=", ".", "+", "/", " ", "\t", "\n", "\r", "\x00", "\x7f", "é", "~", "%", '"', "\\"]
EXAMPLES = 10_000


@dataclass(frozen=True)
class Target:
    issuer: LocalAccess
    portal: BlockingPortal
    verifier: AccessVerifier
    originals: tuple[str, ...]
    public_keys: dict[str, RSAPublicKey]

    def __repr__(self) -> str:  # Hypothesis prints arguments; keep keys and tokens out of it
        return f"Target({len(self.originals)} valid originals)"

    def verdict(self, token: str) -> str:
        """ "accepted" or the reason; any exception but AccessDenied propagates and fails the example."""
        try:
            self.portal.call(self.verifier.verify, token)
        except AccessDenied as denied:
            return denied.reason
        return "accepted"

    def pyjwt_accepts(self, token: str) -> bool:
        try:
            kid = jwt.get_unverified_header(token)["kid"]
            jwt.decode(
                token,
                self.public_keys[kid],
                algorithms=["RS256"],
                audience=self.issuer.audience,
                issuer=self.issuer.url,
                leeway=LEEWAY,
                options={"require": ["exp"]},
            )
        except Exception:  # PyJWT's own errors, and whatever else it lets escape: all are "not accepted"
            return False
        return True


async def _new_verifier(config: AccessConfig) -> AccessVerifier:
    # Built inside the portal's event loop, where its lock and HTTP client live.
    return AccessVerifier(config)


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    with LocalAccess() as issuer, start_blocking_portal(backend="asyncio") as portal:
        previous = issuer.current_key
        issuer.rotate()  # two published keys, as after a Cloudflare rotation
        originals = (
            issuer.user_token(),
            issuer.user_token("Carol@Example.com", groups=["admins"]),
            issuer.service_token(),
            issuer.user_token("dave@example.com", key=previous),
        )
        public_keys = {key.kid: key.private_key.public_key() for key in issuer.keys}
        verifier = portal.call(_new_verifier, issuer.config(leeway=LEEWAY))
        try:
            yield Target(issuer, portal, verifier, originals, public_keys)
        finally:
            portal.call(verifier.aclose)


# -- mutations ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    """One edit. `where` is reduced modulo the length it applies to; `segment` and `other` pick segments (0-2) and
    `donor` another original, so any drawn values make a valid edit and shrinking stays simple."""

    op: str
    where: int
    char: str
    segment: int
    other: int
    donor: int

    def apply(self, token: str, originals: tuple[str, ...]) -> str:
        return _OPS[self.op](self, token, originals)


def _at(token: str, where: int, extra: int = 0) -> int:
    return where % (len(token) + extra) if token or extra else 0


def _insert(m: Mutation, token: str, _: tuple[str, ...]) -> str:
    index = _at(token, m.where, extra=1)
    return token[:index] + m.char + token[index:]


def _delete(m: Mutation, token: str, _: tuple[str, ...]) -> str:
    index = _at(token, m.where)
    return token[:index] + token[index + 1 :]


def _delete_run(m: Mutation, token: str, _: tuple[str, ...]) -> str:
    index = _at(token, m.where)
    return token[:index] + token[index + 1 + m.where % 17 :]


def _replace(m: Mutation, token: str, _: tuple[str, ...]) -> str:
    index = _at(token, m.where)
    return token[:index] + m.char + token[index + 1 :]


def _replace_in_alphabet(m: Mutation, token: str, _: tuple[str, ...]) -> str:
    # Another base64url character: still decodable, so the damage reaches the JSON parser or the signature.
    index = _at(token, m.where)
    if not token:
        return token
    shifted = B64URL_ALPHABET[(B64URL_ALPHABET.find(token[index]) + 1 + m.where % 63) % 64]
    return token[:index] + shifted + token[index + 1 :]


def _duplicate(m: Mutation, token: str, _: tuple[str, ...]) -> str:
    index = _at(token, m.where)
    return token[: index + 1] + token[index:]


def _case_flip(m: Mutation, token: str, _: tuple[str, ...]) -> str:
    index = _at(token, m.where)
    return token[:index] + token[index : index + 1].swapcase() + token[index + 1 :]


# Truncation at every position class: inside each segment, right before and right after each dot, at either end.
_CUT_CLASSES = 9


def _truncate(m: Mutation, token: str, _: tuple[str, ...]) -> str:
    first = token.find(".")
    second = token.find(".", first + 1)
    if first < 0 or second < 0:
        return token[: _at(token, m.where)]
    inside = [(0, first), (first + 1, second), (second + 1, len(token))]
    start, end = inside[m.segment]
    cuts = (
        0,
        first,
        first + 1,
        second,
        second + 1,
        len(token) - 1,
        start + m.where % max(1, end - start),
        len(token) - 1 - m.where % 4,
        max(0, first - 1),
    )
    return token[: cuts[m.where % _CUT_CLASSES]]


def _segments(token: str) -> list[str]:
    return token.split(".")


def _pick(parts: list[str], index: int) -> int:
    return index % len(parts)


def _swap_segments(m: Mutation, token: str, _: tuple[str, ...]) -> str:
    parts = _segments(token)
    i, j = _pick(parts, m.segment), _pick(parts, m.other)
    parts[i], parts[j] = parts[j], parts[i]
    return ".".join(parts)


def _duplicate_segment(m: Mutation, token: str, _: tuple[str, ...]) -> str:
    parts = _segments(token)
    i = _pick(parts, m.segment)
    return ".".join([*parts[: i + 1], parts[i], *parts[i + 1 :]])


def _drop_segment(m: Mutation, token: str, _: tuple[str, ...]) -> str:
    parts = _segments(token)
    del parts[_pick(parts, m.segment)]
    return ".".join(parts)


def _empty_segment(m: Mutation, token: str, _: tuple[str, ...]) -> str:
    parts = _segments(token)
    parts[_pick(parts, m.segment)] = ""
    return ".".join(parts)


def _splice(m: Mutation, token: str, originals: tuple[str, ...]) -> str:
    # The same segment from another valid token: payload swaps, borrowed signatures, headers of the other key.
    parts = _segments(token)
    donor = _segments(originals[m.donor % len(originals)])
    i = _pick(parts, m.segment)
    parts[i] = donor[i % len(donor)]
    return ".".join(parts)


def _pad_segment(m: Mutation, token: str, _: tuple[str, ...]) -> str:
    parts = _segments(token)
    i = _pick(parts, m.segment)
    parts[i] += "=" * (-len(parts[i]) % 4) or "=" * (1 + m.where % 2)
    return ".".join(parts)


def _standard_alphabet(m: Mutation, token: str, _: tuple[str, ...]) -> str:
    parts = _segments(token)
    i = _pick(parts, m.segment)
    parts[i] = parts[i].replace("-", "+").replace("_", "/")
    return ".".join(parts)


def _reencode(m: Mutation, token: str, _: tuple[str, ...]) -> str:
    """Decode a segment leniently and write it back as standard, padded base64: same bytes, other spelling."""
    parts = _segments(token)
    i = _pick(parts, m.segment)
    try:
        raw = base64.urlsafe_b64decode(parts[i] + "=" * (-len(parts[i]) % 4))
    except ValueError:
        return token
    parts[i] = (base64.b64encode if m.where % 2 else base64.urlsafe_b64encode)(raw).decode("ascii")
    return ".".join(parts)


def _flip_decoded_bit(m: Mutation, token: str, _: tuple[str, ...]) -> str:
    parts = _segments(token)
    i = _pick(parts, m.segment)
    try:
        raw = bytearray(base64.urlsafe_b64decode(parts[i] + "=" * (-len(parts[i]) % 4)))
    except ValueError:
        return token
    if raw:
        raw[m.where % len(raw)] ^= 1 << (m.other % 8)
    parts[i] = b64url(bytes(raw))
    return ".".join(parts)


def _non_canonical(m: Mutation, token: str, _: tuple[str, ...]) -> str:
    # Sets an unused low bit of a segment's last character, where its length leaves some: same bytes, other text.
    parts = _segments(token)
    i = _pick(parts, m.segment)
    segment = parts[i]
    if segment and segment[-1] in B64URL_ALPHABET and len(segment) % 4 in (2, 3):
        parts[i] = segment[:-1] + B64URL_ALPHABET[B64URL_ALPHABET.index(segment[-1]) | 1]
    return ".".join(parts)


def _surround(m: Mutation, token: str, _: tuple[str, ...]) -> str:
    return m.char + token if m.where % 2 else token + m.char


_OPS = {
    "insert": _insert,
    "delete": _delete,
    "delete-run": _delete_run,
    "replace": _replace,
    "replace-in-alphabet": _replace_in_alphabet,
    "duplicate": _duplicate,
    "case-flip": _case_flip,
    "truncate": _truncate,
    "swap-segments": _swap_segments,
    "duplicate-segment": _duplicate_segment,
    "drop-segment": _drop_segment,
    "empty-segment": _empty_segment,
    "splice": _splice,
    "pad-segment": _pad_segment,
    "standard-alphabet": _standard_alphabet,
    "reencode": _reencode,
    "flip-decoded-bit": _flip_decoded_bit,
    "non-canonical": _non_canonical,
    "surround": _surround,
}

mutations = st.builds(
    Mutation,
    op=st.sampled_from(sorted(_OPS)),
    where=st.integers(0, 2**20),
    char=st.sampled_from(CHARACTERS),
    segment=st.integers(0, 2),
    other=st.integers(0, 7),
    donor=st.integers(0, 3),
)


# -- the properties -------------------------------------------------------------------------------------------------


def test_the_originals_pass_both_verifiers(target: Target) -> None:
    for token in target.originals:
        assert target.verdict(token) == "accepted"
        assert target.pyjwt_accepts(token)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(original=st.integers(0, 3), edits=st.lists(mutations, min_size=1, max_size=3))
def test_mutated_tokens_are_refused_unless_unchanged(target: Target, original: int, edits: list[Mutation]) -> None:
    token = target.originals[original]
    for edit in edits:
        token = edit.apply(token, target.originals)
    verdict = target.verdict(token)
    # Shown by --hypothesis-show-statistics: how deep into the verifier the mutations reach.
    event(verdict)
    if verdict == "accepted":
        assert token in target.originals, "accepted a token that is not byte-identical to a valid one"
        assert target.pyjwt_accepts(token), "accepted a token PyJWT refuses"
