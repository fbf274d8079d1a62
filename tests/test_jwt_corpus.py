"""The JWT corpus: named attacks on the verifier, each with the one reason it must be refused for.

The cases live in `tests/corpus/jwt/*.json` as recipes, not tokens, because a token depends on keys made at run
time. The interpreter below turns each recipe into a token (minted by `LocalAccess`, signed as the recipe says, then
mangled step by step) and checks the exact reason `AccessVerifier.verify` gives. Then the whole corpus runs once more
through `AccessJWTMiddleware` over real uvicorn: refused cases get 401/403 with the generic body, controls get 200.

Recipe fields (only `name` and `expected` are required):

- `expected`: a reason from `verifier.Reason`, or `accepted` for the valid controls.
- `base`: `user` (default) or `service`, the token shape `LocalAccess` mints.
- `header`, `claims`: overrides; `"$drop"` removes a field. `raw_header`, `raw_payload`: exact JSON text instead,
  written in `encoding` (default utf-8). Placeholders in any string: see `Forge.text`; values: see `Forge.value`.
- `sign`: which key signs, and how (see `Forge.signature`); default `rs256` with the current key.
- `mangle`: steps applied to the finished token, in order (see `Forge.mangle`).
- `xfail`: set only when the library is known wrong about this case; it keeps the case visible and the suite green.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import jwt
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import Message

from mcp_access_guard import AccessConfig, AccessDenied, AccessJWTMiddleware, AccessVerifier
from mcp_access_guard.testing import DROP, LocalAccess, SigningKey, b64url, serve
from mcp_access_guard.verifier import Reason
from support import send_request

CORPUS = Path(__file__).parent / "corpus" / "jwt"
LEEWAY = 60
REASONS = frozenset(get_args(Reason))
SEGMENTS = {"header": 0, "payload": 1, "signature": 2}
B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# uvicorn (h11) refuses a request head over 16 KiB before any app sees it; longer tokens go to the middleware as ASGI.
HTTP_TOKEN_LIMIT = 14_000


@dataclass(frozen=True)
class Case:
    family: str
    name: str
    expected: str
    base: str = "user"
    header: dict[str, Any] = field(default_factory=dict)
    claims: dict[str, Any] = field(default_factory=dict)
    raw_header: str | None = None
    raw_payload: str | None = None
    encoding: str = "utf-8"
    sign: str = "rs256"
    mangle: tuple[str, ...] = ()
    note: str = ""
    xfail: str = ""


def load_corpus() -> list[Case]:
    cases: list[Case] = []
    for path in sorted(CORPUS.glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        for entry in document["cases"]:
            mangle = entry.pop("mangle", ())
            cases.append(Case(family=path.stem, mangle=tuple(mangle), **entry))
    names = [case.name for case in cases]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    assert not duplicates, f"case names must be unique: {duplicates}"
    unknown = sorted({case.expected for case in cases} - REASONS - {"accepted"})
    assert not unknown, f"unknown expected reasons: {unknown}"
    return cases


CASES = load_corpus()


class NotApplicable(Exception):
    """A mangle found nothing to change in this particular token; the forge mints another and tries again."""


@dataclass(frozen=True)
class Keys:
    retired: SigningKey  # rotated out and no longer published
    previous: SigningKey  # rotated out but still published, as Cloudflare keeps it for 7 days
    current: SigningKey
    stranger: SigningKey  # never published
    elliptic: ec.EllipticCurvePrivateKey


class Forge:
    """Builds the token a recipe describes."""

    def __init__(self, issuer: LocalAccess, keys: Keys) -> None:
        self.issuer = issuer
        self.keys = keys

    # -- placeholders ---------------------------------------------------------------------------------------------

    def text(self, text: str) -> str:
        """Replaces `<name>` and `<name+N>` / `<name-N>` placeholders in any string of a recipe."""
        return re.sub(r"<([a-zA-Z-]+)(?::(\d+))?([+-]\d+)?>", self._placeholder, text)

    def _placeholder(self, match: re.Match[str]) -> str:
        name, count, offset = match.group(1), int(match.group(2) or 0), int(match.group(3) or 0)
        issuer, keys = self.issuer, self.keys
        port = int(issuer.url.rsplit(":", 1)[1])
        simple = {
            "aud": issuer.audience,
            "AUD": issuer.audience.upper(),
            # The audience with its last character changed: one typo away.
            "aud-near": issuer.audience[:-1] + ("0" if issuer.audience[-1] != "0" else "1"),
            "aud-short": issuer.audience[:-1],
            "iss": issuer.url,
            "ISS": issuer.url.upper(),
            "iss-https": issuer.url.replace("http://", "https://"),
            "kid": keys.current.kid,
            "KID": keys.current.kid.upper(),
            "previous-kid": keys.previous.kid,
            "retired-kid": keys.retired.kid,
            "certs-url": issuer.certs_url,
            "jwk": json.dumps(keys.current.jwk()),
            "header-fields": json.dumps({"alg": "RS256", "kid": keys.current.kid, "typ": "JWT"})[1:-1],
            "user-claims": json.dumps(self.base_claims("user"))[1:-1],
            "service-claims": json.dumps(self.base_claims("service"))[1:-1],
            "user-token": issuer.user_token(),
        }
        if name in simple:
            return simple[name]
        if name == "now":
            return str(int(time.time()) + offset)
        if name == "port":
            return str(port + offset)
        if name == "deep":
            return "[" * count + "]" * count
        if name == "dots":
            return "." * count
        raise AssertionError(f"unknown placeholder {match.group(0)!r}")

    def value(self, value: Any) -> Any:
        """A recipe value: `"$drop"`, `{"$now": seconds}`, `{"$big": "-10^400"}`, `{"$repeat": s, "times": n}`,
        `{"$jwk": "current|stranger"}`, `{"$x5c": "current|stranger"}`, or plain JSON with placeholders in strings."""
        if value == "$drop":
            return DROP
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(item) for item in value]
        if isinstance(value, dict):
            if "$now" in value:
                return _now() + value["$now"]  # a float offset gives a fractional NumericDate
            if "$big" in value:
                sign, base, exponent, plus = re.fullmatch(r"(-?)(\d+)\^(\d+)([+-]\d+)?", value["$big"]).groups()  # type: ignore[union-attr]
                power = int(base) ** int(exponent)
                return (-power if sign else power) + int(plus or 0)
            if "$repeat" in value:
                return value["$repeat"] * value["times"]
            if "$jwk" in value:
                return getattr(self.keys, value["$jwk"]).jwk()
            if "$x5c" in value:
                pem = getattr(self.keys, value["$x5c"]).certificate_pem()
                return ["".join(pem.strip().splitlines()[1:-1])]
            return {self.text(name): self.value(item) for name, item in value.items()}
        return value

    def base_claims(self, kind: str) -> dict[str, Any]:
        token = self.issuer.user_token() if kind == "user" else self.issuer.service_token()
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        return claims

    # -- building ---------------------------------------------------------------------------------------------------

    def build(self, case: Case) -> str:
        for attempt in range(12):
            try:
                return self._build_once(case, attempt)
            except NotApplicable:
                continue
        raise AssertionError(f"{case.name}: its mangles found nothing to change in 12 tokens")

    def _build_once(self, case: Case, attempt: int) -> str:
        claims = {name: self.value(item) for name, item in case.claims.items()}
        if attempt:
            # Another length and other random fields, for a mangle that needs (say) a '-' or unused base64 bits.
            claims["x-pad"] = "x" * attempt
        headers = {name: self.value(item) for name, item in case.header.items()}
        signing_key = self.rsa_key(case.sign)
        if signing_key is not None and case.raw_header is None and case.raw_payload is None:
            # Through LocalAccess.sign, so that the suite's log scan knows these tokens.
            mint = self.issuer.user_token if case.base == "user" else self.issuer.service_token
            token = mint(claims=claims, headers=headers, key=signing_key)
        else:
            token = self._build_by_hand(case, claims, headers)
        parts = token.split(".")
        for step in case.mangle:
            parts = self.mangle(parts, step)
        return ".".join(parts)

    def _build_by_hand(self, case: Case, claims: dict[str, Any], headers: dict[str, Any]) -> str:
        signing_key = self.rsa_key(case.sign)
        kid = signing_key.kid if signing_key is not None else self.keys.current.kid
        if case.raw_header is not None:
            header = self.text(case.raw_header).encode(case.encoding)
        else:
            header = json.dumps(_overridden({"alg": "RS256", "kid": kid, "typ": "JWT"}, headers)).encode()
        if case.raw_payload is not None:
            payload = self.text(case.raw_payload).encode(case.encoding)
        else:
            payload = json.dumps(_overridden(self.base_claims(case.base), claims)).encode()
        signing_input = f"{b64url(header)}.{b64url(payload)}"
        return f"{signing_input}.{b64url(self.signature(case.sign, signing_input.encode('ascii')))}"

    def rsa_key(self, sign: str) -> SigningKey | None:
        """The key for the RS256 (PKCS#1 v1.5, SHA-256) ways of signing; None for the others."""
        keys = self.keys
        return {
            "rs256": keys.current,
            "previous": keys.previous,
            "retired": keys.retired,
            "stranger": keys.stranger,
            # A real signature by a key the verifier does not hold for this kid.
            "previous-as-current": SigningKey(keys.current.kid, keys.previous.private_key),
            "retired-as-current": SigningKey(keys.current.kid, keys.retired.private_key),
            "stranger-as-current": SigningKey(keys.current.kid, keys.stranger.private_key),
        }.get(sign)

    def signature(self, sign: str, message: bytes) -> bytes:
        """`rs256`-like modes above; `none` (empty); `rs384`, `rs512`, `ps256` with the current key; `es256` with an
        EC key; `hsNNN-<secret>`, an HMAC keyed with the published public key's bytes (see `hmac_secret`)."""
        rsa_key = self.rsa_key(sign)
        current = self.keys.current.private_key
        if rsa_key is not None:
            return rsa_key.private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        if sign == "none":
            return b""
        if sign == "rs384":
            return current.sign(message, padding.PKCS1v15(), hashes.SHA384())
        if sign == "rs512":
            return current.sign(message, padding.PKCS1v15(), hashes.SHA512())
        if sign == "ps256":
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            return current.sign(message, pss, hashes.SHA256())
        if sign == "es256":
            # JWS wants r || s, 32 bytes each, not DER.
            r, s = decode_dss_signature(self.keys.elliptic.sign(message, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        algorithm, _, secret = sign.partition("-")
        digest = {"hs256": hashlib.sha256, "hs384": hashlib.sha384, "hs512": hashlib.sha512}[algorithm]
        return hmac.new(self.hmac_secret(secret), message, digest).digest()

    def hmac_secret(self, form: str) -> bytes:
        """The published key, as an attacker would feed it to an HMAC: PEM, DER, JWK JSON, PKCS#1, cert, modulus."""
        public_key = self.keys.current.private_key.public_key()
        subject_info = serialization.PublicFormat.SubjectPublicKeyInfo
        forms = {
            "pem": lambda: public_key.public_bytes(serialization.Encoding.PEM, subject_info),
            "der": lambda: public_key.public_bytes(serialization.Encoding.DER, subject_info),
            "jwk": lambda: json.dumps(self.keys.current.jwk()).encode(),
            "pkcs1": lambda: public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
            "cert": lambda: self.keys.current.certificate_pem().encode(),
            "n": lambda: base64.urlsafe_b64decode(self.keys.current.jwk()["n"] + "=="),
        }
        return forms[form]()

    # -- mangling -------------------------------------------------------------------------------------------------

    def mangle(self, parts: list[str], step: str) -> list[str]:
        """One step, `op` or `op:arguments`; `<seg>` is header, payload or signature."""
        op, _, argument = step.partition(":")
        argument = self.text(argument)
        if op == "strip-signature":  # header.payload.
            return [*parts[:2], ""]
        if op == "drop-signature":  # header.payload
            return parts[:2]
        if op == "resign":  # a fresh, valid signature over whatever the first two segments now are
            signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
            return [parts[0], parts[1], b64url(self.signature("rs256", signing_input))]
        if op == "suffix":
            return (".".join(parts) + argument).split(".")
        if op == "prefix":
            return (argument + ".".join(parts)).split(".")
        if op == "repeat-token":
            return (".".join(parts) * int(argument)).split(".")
        if op == "literal":  # a whole token, as written
            return argument.split(".")
        if op == "join":  # the segments with another separator
            return [argument.join(parts)]
        if op == "swap":
            first, second = (SEGMENTS[name] for name in argument.split(":"))
            parts = list(parts)
            parts[first], parts[second] = parts[second], parts[first]
            return parts
        segment_name, _, rest = argument.partition(":")
        index = SEGMENTS[segment_name]
        segment = parts[index]
        if op == "truncate":
            changed = segment[: int(rest)]
        elif op == "flip-bit":
            raw = bytearray(_b64decode(segment))
            raw[int(rest)] ^= 0x01
            changed = b64url(bytes(raw))
        elif op == "from":  # the same segment of another valid token: user, service, or previous (key)
            donor = {
                "user": lambda: self.issuer.user_token("mallory@example.com"),
                "service": lambda: self.issuer.service_token(),
                "previous": lambda: self.issuer.user_token(key=self.keys.previous),
            }[rest]()
            changed = donor.split(".")[index]
        elif op == "pad":  # standard '=' padding, or '==' where the length needs none
            changed = segment + ("=" * (-len(segment) % 4) or "==")
        elif op == "std-alphabet":
            changed = segment.replace("-", "+").replace("_", "/")
        elif op == "insert":
            position, _, text = rest.partition(":")
            at = int(position)
            changed = segment[:at] + text + segment[at:]
        elif op == "set":
            changed = rest
        elif op == "case-flip":
            changed = segment.swapcase()
        elif op == "non-canonical":
            # Sets an unused low bit of the last character: other text, same bytes. Needs a length that leaves some.
            if len(segment) % 4 not in (2, 3):
                raise NotApplicable
            last = B64URL_ALPHABET.index(segment[-1])
            changed = segment[:-1] + B64URL_ALPHABET[last | 1]
        elif op == "grow":  # 'A's appended until the whole token is this long
            total = len(".".join(parts))
            changed = segment + "A" * max(0, int(rest) - total)
        else:
            raise AssertionError(f"unknown mangle {step!r}")
        if changed == segment:
            raise NotApplicable
        parts = list(parts)
        parts[index] = changed
        return parts


def _now() -> int:
    return int(time.time())


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _overridden(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for name, value in overrides.items():
        if value is DROP:
            base.pop(name, None)
        else:
            base[name] = value
    return base


# -- fixtures ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def forge() -> Iterator[Forge]:
    with LocalAccess() as issuer:
        retired = issuer.current_key
        previous = issuer.rotate()
        current = issuer.rotate()  # publishes [previous, current]; retired is no longer published
        assert [key.kid for key in issuer.keys] == [previous.kid, current.kid]
        elliptic = ec.generate_private_key(ec.SECP256R1())
        yield Forge(issuer, Keys(retired, previous, current, SigningKey.generate(), elliptic))


async def _new_verifier(config: AccessConfig) -> AccessVerifier:
    # Built inside the portal's event loop, where its lock and HTTP client live.
    return AccessVerifier(config)


@pytest.fixture(scope="module")
def verdict(forge: Forge) -> Iterator[Any]:
    """`verdict(token)` -> "accepted" or the reason; anything but AccessDenied fails the test."""
    with start_blocking_portal(backend="asyncio") as portal:
        verifier = portal.call(_new_verifier, forge.issuer.config(leeway=LEEWAY))
        try:
            yield lambda token: _verdict(portal, verifier, token)
        finally:
            portal.call(verifier.aclose)


def _verdict(portal: BlockingPortal, verifier: AccessVerifier, token: str) -> str:
    try:
        portal.call(verifier.verify, token)
    except AccessDenied as denied:
        return denied.reason
    return "accepted"


# -- the corpus, case by case -----------------------------------------------------------------------------------------


def _param(case: Case) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_corpus_case(case: Case, forge: Forge, verdict: Any) -> None:
    token = forge.build(case)
    assert verdict(token) == case.expected


def test_corpus_size_and_coverage() -> None:
    families = {case.family for case in CASES}
    assert len(CASES) >= 150
    assert {"controls", "algorithms", "kid", "key_headers", "signature", "encoding", "json"} <= families
    controls = [case for case in CASES if case.expected == "accepted"]
    # Only the controls may be accepted; they make sure the runner can fail.
    assert controls
    assert {case.family for case in controls} == {"controls"}


# -- the corpus through the middleware over real uvicorn ---------------------------------------------------------------


async def _reached(request: Request) -> PlainTextResponse:
    return PlainTextResponse("reached the app")


GENERIC_BODIES = {401: b'{"error":"unauthorized"}', 403: b'{"error":"forbidden"}'}


def carried_verbatim(token: str) -> bool:
    """Whether an HTTP/1.1 field value carries this token unchanged: servers strip leading and trailing whitespace,
    CR, LF and NUL cannot be sent, and uvicorn refuses a long request head."""
    return (
        len(token) <= HTTP_TOKEN_LIMIT
        and token == token.strip(" \t")
        and all(char == "\t" or " " <= char != "\x7f" for char in token)
    )


async def _asgi_call(app: Any, token: str) -> tuple[int, bytes]:
    """One request straight into the middleware, header bytes exactly as given (as a server would pass them on)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/mcp",
        "raw_path": b"/mcp",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"cf-access-jwt-assertion", token.encode("utf-8"))],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(message["status"] for message in sent if message["type"] == "http.response.start")
    body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    return status, body


@pytest.mark.anyio
async def test_whole_corpus_through_the_middleware_over_uvicorn(forge: Forge) -> None:
    verifier = AccessVerifier(forge.issuer.config(leeway=LEEWAY))
    app = AccessJWTMiddleware(Starlette(routes=[Route("/mcp", _reached)]), verifier)
    problems: list[str] = []
    over_http = 0
    try:
        async with serve(app) as base_url:
            for case in CASES:
                if case.xfail:
                    continue
                token = forge.build(case)
                if carried_verbatim(token):
                    over_http += 1
                    header = b"Cf-Access-Jwt-Assertion: " + token.encode("utf-8") + b"\r\n"
                    response = await send_request(base_url, headers=header)
                    status, body = response.status, response.body
                else:
                    status, body = await _asgi_call(app, token)
                problem = _judge_response(case, token, status, body)
                if problem:
                    problems.append(f"{case.name}: {problem}")
    finally:
        await verifier.aclose()
    assert not problems, "\n".join(problems)
    # Most of the corpus must really cross HTTP; the rest cannot be written into a header verbatim.
    assert over_http >= len(CASES) * 0.8


def _judge_response(case: Case, token: str, status: int, body: bytes) -> str | None:
    if case.expected == "accepted":
        return None if status == 200 and body == b"reached the app" else f"control refused with {status}"
    wanted = 401 if case.expected == "missing" else 403
    if status != wanted:
        return f"status {status}, expected {wanted}"
    if body != GENERIC_BODIES[status]:
        return f"body {body[:80]!r} is not the generic one"
    fragments = {part for part in re.split(r"[.\s]", token) if len(part) >= 4}
    if any(fragment.encode("utf-8", "replace") in body for fragment in fragments):
        return "the body repeats part of the token"
    return None
