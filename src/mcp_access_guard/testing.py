"""Local, Cloudflare-Access-compatible issuers for tests, examples and the demo.

`LocalAccess` serves its signing keys over real HTTP on 127.0.0.1, in Cloudflare's exact shape, and mints
application tokens in Cloudflare's exact shapes for users and service tokens. It can rotate and drop keys and
simulate the faults a real key endpoint has. `LocalAccessSaaS` is an Access for SaaS (OIDC) application on
127.0.0.1: discovery, a login that applies a policy, the token endpoint, keys and userinfo, with the switches and
faults OAuth mode must handle. Never use their keys for anything but tests.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import errno
import gzip
import hashlib
import hmac
import json
import os
import secrets
import socket
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit

import anyio
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import RSAAlgorithm
from jwt.utils import base64url_encode
from starlette.types import ASGIApp

from .config import AccessConfig
from .identity import AccessIdentity
from .oauth.config import AccessSaaSConfig
from .policy import Rule

CERTS_PATH = "/cdn-cgi/access/certs"

Fault = Literal["down", "slow", "http_500", "garbage", "html", "empty", "non_rsa", "redirect", "huge"]

DROP: Any = object()
"""Pass as a claim or header override to remove that field."""


def b64url(data: bytes) -> str:
    return base64url_encode(data).decode("ascii")


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey

    def jwk(self) -> dict[str, str]:
        exported = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        # Cloudflare's shape and order: no key_ops, as it publishes them.
        return {"kid": self.kid, "kty": "RSA", "alg": "RS256", "use": "sig", "e": exported["e"], "n": exported["n"]}

    def certificate_pem(self) -> str:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "local-access.test")])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=42))
            .sign(self.private_key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(
            kid=secrets.token_hex(32), private_key=rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )

    def private_key_pem(self) -> str:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii")

    @classmethod
    def from_pem(cls, kid: str, pem: str) -> SigningKey:
        private_key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise ValueError("the signing key must be an RSA private key")
        return cls(kid=kid, private_key=private_key)


class _Handler(BaseHTTPRequestHandler):
    server: _LoopbackServer

    def _reply(self, status: int, body: bytes, content_type: str, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a test run's output is for the tests."""


class _LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[_Handler], service: _LoopbackService) -> None:
        self.service = service
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a client that hangs up mid-answer (as a size-bounded one does) is expected here."""


class _LoopbackService:
    """A real HTTP server on 127.0.0.1, in a thread. Use as a context manager (sync or async) or start()/stop()."""

    _handler: type[_Handler]
    _thread_name: str

    def __init__(self, port: int) -> None:
        self.fault: str | None = None
        self._port = port
        self._server: _LoopbackServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> Self:
        self._listen()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def go_down(self) -> None:
        """Stop answering: connections are refused until `come_back()`."""
        self.stop()

    def come_back(self) -> None:
        self.fault = None
        if self._server is None:
            self._listen()

    def _listen(self) -> None:
        self._server = _LoopbackServer(("127.0.0.1", self._port), self._handler, self)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=self._thread_name, daemon=True
        )
        self._thread.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.stop()


class _CertsHandler(_Handler):
    def do_GET(self) -> None:
        issuer = self.server.service
        assert isinstance(issuer, LocalAccess)
        issuer.requests += 1
        if self.path != CERTS_PATH:
            self._reply(404, b"not found", "text/plain")
            return
        fault = issuer.fault
        if fault == "slow":
            time.sleep(issuer.slow_seconds)
        if fault == "http_500":
            self._reply(500, b"internal error", "text/plain")
        elif fault == "garbage":
            self._reply(200, b'{"keys": [', "application/json")
        elif fault == "html":
            self._reply(200, b"<html><body>Sign in</body></html>", "text/html")
        elif fault == "empty":
            self._reply(200, b'{"keys": [], "public_cert": {}, "public_certs": []}', "application/json")
        elif fault == "non_rsa":
            body = {
                "keys": [{"kid": "ec", "kty": "EC", "crv": "P-256", "x": b64url(b"x" * 32), "y": b64url(b"y" * 32)}]
            }
            self._reply(200, json.dumps(body).encode(), "application/json")
        elif fault == "redirect":
            self._reply(302, b"", "text/plain", {"Location": f"{issuer.url}/elsewhere"})
        elif fault == "huge":
            self._reply(200, b'{"keys": [], "pad": "' + b"x" * issuer.huge_bytes + b'"}', "application/json")
        else:
            self._reply(200, issuer.certs_body(), "application/json")


class LocalAccess(_LoopbackService):
    """An Access-compatible issuer on 127.0.0.1. Use as a context manager (sync or async) or start()/stop()."""

    _handler = _CertsHandler
    _thread_name = "LocalAccess"

    def __init__(
        self, *, audience: str | None = None, team: str = "local", key: SigningKey | None = None, port: int = 0
    ) -> None:
        """`key` and `port` rebuild a known issuer (see `load()`); by default both are fresh."""
        super().__init__(port)
        self.team = team
        self.audience = audience or secrets.token_hex(32)
        self.keys: list[SigningKey] = [key or SigningKey.generate()]
        self.fault: Fault | None = None
        self.slow_seconds = 10.0
        self.huge_bytes = 50 * 1024 * 1024
        self.requests = 0

    # -- the HTTP server -------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The issuer, exactly as it appears in `iss`."""
        return super().url

    @property
    def certs_url(self) -> str:
        return self.url + CERTS_PATH

    def config(self, **overrides: Any) -> AccessConfig:
        return AccessConfig(team_domain=self.url, audiences=[self.audience], **overrides)

    # -- state, shared between processes (`serve --dev` and `token`) -------------------------------------------

    def state(self) -> dict[str, str]:
        """What another process needs to mint tokens this issuer's verifiers accept. Holds the private key."""
        return {
            "issuer": self.url,
            "audience": self.audience,
            "team": self.team,
            "kid": self.current_key.kid,
            "private_key_pem": self.current_key.private_key_pem(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> LocalAccess:
        """An issuer rebuilt from `state()`, not started: it can mint tokens, and `start()` listens on its port."""
        try:
            issuer = urlsplit(str(state["issuer"]))
            key = SigningKey.from_pem(str(state["kid"]), str(state["private_key_pem"]))
            if issuer.scheme != "http" or issuer.hostname != "127.0.0.1" or not issuer.port:
                raise ValueError(f"issuer {state['issuer']!r} is not http://127.0.0.1:PORT")
            return cls(audience=str(state["audience"]), team=str(state.get("team", "local")), key=key, port=issuer.port)
        except KeyError as missing:
            raise ValueError(f"dev issuer state has no {missing}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write `state()` to `path`, readable by its owner only (mode 0600), replacing it atomically: through a
        temporary file with an unpredictable name, created exclusively, never through a symbolic link."""
        target = Path(path)
        if target.is_symlink():
            raise OSError(errno.ELOOP, "it is a symbolic link; refusing to write through it", str(target))
        descriptor, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                json.dump(self.state(), file, indent=2)
            os.replace(partial, target)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LocalAccess:
        """Read what `save()` wrote, never through a symbolic link. Raises OSError when unreadable, ValueError when
        not valid state."""
        if Path(path).is_symlink():
            raise OSError(errno.ELOOP, "it is a symbolic link; refusing to follow it", str(path))
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), encoding="utf-8") as file:
            try:
                state = json.load(file)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc})") from None
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
        return cls.from_state(state)

    # -- keys ------------------------------------------------------------------------------------------------

    @property
    def current_key(self) -> SigningKey:
        return self.keys[-1]

    def rotate(self) -> SigningKey:
        """Publish a new signing key and sign with it; the previous one stays published, as Cloudflare does."""
        self.keys = [*self.keys[-1:], SigningKey.generate()]
        return self.current_key

    def drop(self, kid: str) -> None:
        """Stop publishing a key."""
        self.keys = [key for key in self.keys if key.kid != kid]

    def certs_body(self) -> bytes:
        certs = [{"kid": key.kid, "cert": key.certificate_pem()} for key in self.keys]
        return json.dumps(
            {"keys": [key.jwk() for key in self.keys], "public_cert": certs[-1] if certs else {}, "public_certs": certs}
        ).encode()

    # -- tokens ----------------------------------------------------------------------------------------------

    def user_token(
        self,
        email: str = "alice@example.com",
        *,
        groups: list[str] | None = None,
        expires_in: int = 3600,
        claims: Mapping[str, Any] | None = None,
        headers: Mapping[str, Any] | None = None,
        key: SigningKey | None = None,
    ) -> str:
        """An application token for a user, shaped like Cloudflare's."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "aud": [self.audience],
            "email": email,
            "exp": now + expires_in,
            "iat": now,
            "nbf": now,
            "iss": self.url,
            "type": "app",
            "identity_nonce": secrets.token_urlsafe(12),
            "sub": str(uuid.uuid4()),
            "country": "US",
        }
        if groups is not None:
            payload["groups"] = groups
        return self.sign(payload, claims=claims, headers=headers, key=key)

    def service_token(
        self,
        client_id: str = "88bf3b6d86161464f6509f7219099e57.access",
        *,
        expires_in: int = 3600,
        claims: Mapping[str, Any] | None = None,
        headers: Mapping[str, Any] | None = None,
        key: SigningKey | None = None,
    ) -> str:
        """An application token for a service token: string `aud`, no email, no nbf, empty sub."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "aud": self.audience,
            "common_name": client_id,
            "exp": now + expires_in,
            "iat": now,
            "iss": self.url,
            "sub": "",
            "type": "app",
        }
        return self.sign(payload, claims=claims, headers=headers, key=key)

    def sign(
        self,
        payload: Mapping[str, Any],
        *,
        claims: Mapping[str, Any] | None = None,
        headers: Mapping[str, Any] | None = None,
        key: SigningKey | None = None,
    ) -> str:
        """Sign any payload, with claim and header overrides (`DROP` removes a field), to build bad tokens too."""
        key = key or self.current_key
        header = _overridden({"alg": "RS256", "kid": key.kid, "typ": "JWT"}, headers)
        body = _overridden(dict(payload), claims)
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(body).encode())}"
        signature = key.private_key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"


def _overridden(base: dict[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    for name, value in (overrides or {}).items():
        if value is DROP:
            base.pop(name, None)
        else:
            base[name] = value
    return base


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def serve(app: ASGIApp, *, port: int | None = None) -> AsyncIterator[str]:
    """Run `app` under a real uvicorn on 127.0.0.1 for the duration of the block; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port or free_port(), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve)
        while not server.started:
            if server.should_exit:
                raise RuntimeError("uvicorn failed to start")
            await anyio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{config.port}"
        finally:
            server.should_exit = True


# -- Access for SaaS ---------------------------------------------------------------------------------------------

SAAS_PATH = "/cdn-cgi/access/sso/oidc/"

SaaSEndpoint = Literal["discovery", "authorization", "token", "jwks", "userinfo"]
SaaSFault = Literal["slow", "http_500"]
IdTokenFault = Literal[
    "wrong_iss",
    "wrong_aud",
    "several_aud_without_azp",
    "wrong_azp",
    "missing_nonce",
    "wrong_nonce",
    "expired",
    "issued_in_the_future",
    "alg_none",
    "hs256",
    "unknown_kid",
    "rogue_key",
    "missing_sub",
    "missing_email",
]
ClientAuth = Literal["client_secret_basic", "client_secret_post", "none", "both"]
_MAX_FORM_BYTES = 64 * 1024


@dataclass(frozen=True)
class SaaSUser:
    """Who `/authorization` logs in: what the identity provider said about them."""

    email: str
    groups: tuple[str, ...] | None = None
    subject: str = ""
    claims: Mapping[str, Any] | None = None

    def identity(self, issuer: str) -> AccessIdentity:
        """As the guard would see them, for the application's policy (`allow`)."""
        return AccessIdentity(
            subject=self.subject, issuer=issuer, expires_at=0, email=self.email.lower(), groups=self.groups or ()
        )


@dataclass(frozen=True)
class SaaSTokenRequest:
    """What one POST to `/token` carried: how the client authenticated and the form (its client_secret left out)."""

    client_auth: ClientAuth
    form: Mapping[str, str]
    authenticated: bool


@dataclass
class _Grant:
    user: SaaSUser
    redirect_uri: str
    scope: str
    nonce: str | None
    code_challenge: str | None
    expires_at: float


class _SaaSHandler(_Handler):
    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def _answer(self, method: str) -> None:
        provider = self.server.service
        assert isinstance(provider, LocalAccessSaaS)
        provider.requests += 1
        path, _, query = self.path.partition("?")
        endpoint = provider.endpoint_at(path)
        if endpoint is None or method != ("POST" if endpoint == "token" else "GET"):
            self._reply(404, b"not found", "text/plain")
            return
        provider.hits[endpoint] += 1
        if provider.fault is not None and (provider.fault_endpoints is None or endpoint in provider.fault_endpoints):
            if provider.fault == "slow":
                time.sleep(provider.slow_seconds)
            elif provider.fault == "http_500":
                self._reply(500, b"internal error", "text/plain")
                return
        if endpoint == "discovery":
            self._json(200, provider.discovery_document())
        elif endpoint == "jwks":
            self._json(200, {"keys": [key.jwk() for key in provider.keys]})
        elif endpoint == "authorization":
            self._authorize(provider, query)
        elif endpoint == "userinfo":
            self._userinfo(provider)
        else:
            self._token(provider)

    def _json(self, status: int, document: Any, headers: Mapping[str, str] | None = None) -> None:
        headers = {"Cache-Control": "no-store", **(headers or {})}
        body = json.dumps(document).encode()
        provider = self.server.service
        assert isinstance(provider, LocalAccessSaaS)
        if provider.compress and "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        self._reply(status, body, "application/json", headers)

    def _authorize(self, provider: LocalAccessSaaS, query: str) -> None:
        pairs = parse_qsl(query, keep_blank_values=True)
        params = dict(pairs)
        provider.authorization_requests.append(params)
        redirect_uri = params.get("redirect_uri", "")
        # Before the redirect URI is known good, errors are a page: never a redirect to an unchecked address.
        if len(params) != len(pairs) or params.get("client_id") != provider.client_id:
            self._reply(400, b"unknown client or repeated parameter", "text/plain")
            return
        if not provider.redirect_uri_allowed(redirect_uri):
            self._reply(400, b"redirect_uri is not registered", "text/plain")
            return

        def back(result: Mapping[str, str]) -> None:
            answer = {**result, "state": params["state"]} if "state" in params else dict(result)
            if provider.iss_in_authorization_response:
                answer["iss"] = provider.issuer
            separator = "&" if urlsplit(redirect_uri).query else "?"
            self._reply(302, b"", "text/plain", {"Location": f"{redirect_uri}{separator}{urlencode(answer)}"})

        challenge = params.get("code_challenge")
        if params.get("response_type") != "code":
            back({"error": "unsupported_response_type"})
        elif "openid" not in params.get("scope", "").split():
            back({"error": "invalid_scope"})
        elif (provider.require_pkce and not challenge) or (challenge and params.get("code_challenge_method") != "S256"):
            back({"error": "invalid_request", "error_description": "PKCE with S256 is required"})
        elif provider.user is None:
            back({"error": "access_denied", "error_description": "nobody signed in"})
        elif not provider.admits(provider.user):
            back({"error": "access_denied", "error_description": "refused by the application's policy"})
        else:
            code = provider.opaque_token()
            provider.grant_code(
                code,
                _Grant(
                    user=provider.user,
                    redirect_uri=redirect_uri,
                    scope=params["scope"],
                    nonce=params.get("nonce"),
                    code_challenge=challenge,
                    expires_at=time.time() + provider.code_ttl,
                ),
            )
            back({"code": code})

    def _token(self, provider: LocalAccessSaaS) -> None:
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > _MAX_FORM_BYTES:
            self._json(400, {"error": "invalid_request"})
            return
        pairs = parse_qsl(self.rfile.read(int(length)).decode("utf-8", "replace"), keep_blank_values=True)
        form = dict(pairs)
        client_auth, authenticated = provider.authenticate(self.headers.get("Authorization"), form)
        recorded = {name: value for name, value in form.items() if name != "client_secret"}
        provider.token_requests.append(SaaSTokenRequest(client_auth, recorded, authenticated))
        if len(form) != len(pairs) or client_auth == "both":
            self._json(400, {"error": "invalid_request"})
        elif not authenticated:
            challenge = {"WWW-Authenticate": 'Basic realm="access"'} if client_auth == "client_secret_basic" else {}
            self._json(401, {"error": "invalid_client"}, challenge)
        else:
            status, document = provider.token_response(form)
            self._json(status, document)

    def _userinfo(self, provider: LocalAccessSaaS) -> None:
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        user = provider.user_of_access_token(token) if scheme.lower() == "bearer" else None
        if user is None:
            self._json(401, {"error": "invalid_token"}, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
            return
        self._json(200, provider.user_claims(user))


class LocalAccessSaaS(_LoopbackService):
    """An Access for SaaS (OIDC) application on 127.0.0.1, shaped like Cloudflare's: the issuer is
    `http://127.0.0.1:PORT/cdn-cgi/access/sso/oidc/<client_id>`, with `/.well-known/openid-configuration`,
    `/authorization`, `/token`, `/jwks` and `/userinfo` under it.

    `/authorization` logs in the user chosen with `login_as()` and applies `allow` (a `Rule`, or a callable taking
    the user's `AccessIdentity`): a refusal is a redirect with `error=access_denied`. `/token` enforces PKCE (S256),
    single-use codes and client authentication by `client_secret_basic` or `client_secret_post`; refresh tokens
    rotate. What cannot be known from outside Cloudflare is a switch (`audience_as_list`,
    `iss_in_authorization_response`, `id_token_on_refresh`), and the faults are `fault` (`slow`, `http_500`, on
    `fault_endpoints` or on all), `go_down()`, `id_token_fault`, `id_token_headers`, `refresh_fault`,
    `discovery_issuer`, `rotate()` and `drop()`. Everything clients send is recorded in `authorization_requests`
    and `token_requests`.
    """

    _handler = _SaaSHandler
    _thread_name = "LocalAccessSaaS"

    def __init__(
        self,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        redirect_uris: Iterable[str] | None = None,
        allow: Rule | Callable[[AccessIdentity], bool] | None = None,
        port: int = 0,
    ) -> None:
        """`redirect_uris` are the registered redirect URLs; None accepts any."""
        super().__init__(port)
        self.client_id = client_id or secrets.token_hex(32)
        self.client_secret = client_secret or self.opaque_token()
        self.redirect_uris = None if redirect_uris is None else tuple(redirect_uris)
        self.allow = allow
        self.keys: list[SigningKey] = [SigningKey.generate()]
        self.user: SaaSUser | None = None
        # Switches for what differs between Access setups or cannot be known from here.
        self.audience_as_list = False
        self.iss_in_authorization_response = True
        self.id_token_on_refresh = True
        self.issue_refresh_tokens = True
        # A refresh answers with a new refresh token and retires the old one; off, the first one stays.
        self.rotate_refresh_tokens = True
        self.require_pkce = True
        self.token_auth_methods: tuple[str, ...] = ("client_secret_basic", "client_secret_post")
        self.advertise_token_auth_methods = True
        # Compress JSON answers for clients that accept gzip, as a CDN in front of the application may.
        self.compress = False
        # Faults.
        self.fault: SaaSFault | None = None
        self.fault_endpoints: set[SaaSEndpoint] | None = None
        self.slow_seconds = 10.0
        self.id_token_fault: IdTokenFault | None = None
        # Merged into each id_token's JOSE header (DROP removes a field): kid, typ, crit, jku and the like.
        self.id_token_headers: Mapping[str, Any] | None = None
        self.refresh_fault: Literal["invalid_grant"] | None = None
        self.discovery_issuer: str | None = None
        self.code_ttl = 60.0
        self.id_token_ttl = 3600
        # What clients sent.
        self.requests = 0
        self.hits: Counter[SaaSEndpoint] = Counter()
        self.authorization_requests: list[dict[str, str]] = []
        self.token_requests: list[SaaSTokenRequest] = []
        self._lock = threading.Lock()
        self._codes: dict[str, _Grant] = {}
        self._refresh_tokens: dict[str, _Grant] = {}
        self._access_tokens: dict[str, SaaSUser] = {}

    # -- addresses -------------------------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        return f"{self.url}{SAAS_PATH}{self.client_id}"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def authorization_url(self) -> str:
        return f"{self.issuer}/authorization"

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/token"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/jwks"

    @property
    def userinfo_url(self) -> str:
        return f"{self.issuer}/userinfo"

    def config(self, **overrides: Any) -> AccessSaaSConfig:
        """The settings the Cloudflare dashboard would give for this application."""
        settings: dict[str, Any] = {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "authorization_url": self.authorization_url,
            "token_url": self.token_url,
            "jwks_url": self.jwks_url,
        }
        return AccessSaaSConfig(**{**settings, **overrides})

    def endpoint_at(self, path: str) -> SaaSEndpoint | None:
        prefix = f"{SAAS_PATH}{self.client_id}"
        endpoints: dict[str, SaaSEndpoint] = {
            "/.well-known/openid-configuration": "discovery",
            "/authorization": "authorization",
            "/token": "token",
            "/jwks": "jwks",
            "/userinfo": "userinfo",
        }
        return endpoints.get(path.removeprefix(prefix)) if path.startswith(prefix) else None

    def discovery_document(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "issuer": self.discovery_issuer or self.issuer,
            "authorization_endpoint": self.authorization_url,
            "token_endpoint": self.token_url,
            "jwks_uri": self.jwks_url,
            "userinfo_endpoint": self.userinfo_url,
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile", "groups"],
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": self.iss_in_authorization_response,
        }
        if self.advertise_token_auth_methods:
            document["token_endpoint_auth_methods_supported"] = list(self.token_auth_methods)
        return document

    # -- users and policy ------------------------------------------------------------------------------------

    def login_as(
        self,
        email: str,
        *,
        groups: Iterable[str] | None = None,
        subject: str | None = None,
        claims: Mapping[str, Any] | None = None,
    ) -> SaaSUser:
        """The user the next visits to `/authorization` log in (as if they signed in at the identity provider).
        `claims` are added to, or with `DROP` removed from, their id_token."""
        self.user = SaaSUser(
            email=email,
            groups=None if groups is None else tuple(groups),
            subject=subject or str(uuid.uuid5(uuid.NAMESPACE_URL, email.lower())),
            claims=claims,
        )
        return self.user

    def log_out(self) -> None:
        self.user = None

    def admits(self, user: SaaSUser) -> bool:
        if self.allow is None:
            return True
        identity = user.identity(self.issuer)
        return self.allow.matches(identity) if isinstance(self.allow, Rule) else self.allow(identity)

    def redirect_uri_allowed(self, redirect_uri: str) -> bool:
        if self.redirect_uris is not None:
            return redirect_uri in self.redirect_uris
        return urlsplit(redirect_uri).scheme in ("http", "https")

    # -- keys ------------------------------------------------------------------------------------------------

    @property
    def current_key(self) -> SigningKey:
        return self.keys[-1]

    def rotate(self) -> SigningKey:
        """Publish a new signing key and sign with it; the previous one stays published."""
        self.keys = [*self.keys[-1:], SigningKey.generate()]
        return self.current_key

    def drop(self, kid: str) -> None:
        self.keys = [key for key in self.keys if key.kid != kid]

    # -- tokens ----------------------------------------------------------------------------------------------

    def opaque_token(self) -> str:
        """A new opaque credential (code, access or refresh token, client secret): 256 random bits."""
        return secrets.token_urlsafe(32)

    def sign(
        self,
        payload: Mapping[str, Any],
        *,
        headers: Mapping[str, Any] | None = None,
        key: SigningKey | None = None,
        algorithm: Literal["RS256", "HS256", "none"] = "RS256",
    ) -> str:
        """Sign a payload: RS256 under `key` (the current key by default), HS256 with the client secret as the key
        (an attack on clients that let the header pick the algorithm), or not at all (alg none)."""
        key = key or self.current_key
        header = _overridden({"alg": algorithm, "kid": key.kid, "typ": "JWT"}, headers)
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(dict(payload)).encode())}"
        if algorithm == "RS256":
            signature = key.private_key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        elif algorithm == "HS256":
            signature = hmac.new(self.client_secret.encode(), signing_input.encode("ascii"), hashlib.sha256).digest()
        else:
            signature = b""
        return f"{signing_input}.{b64url(signature)}"

    def id_token(self, user: SaaSUser, *, nonce: str | None, fault: IdTokenFault | None = None) -> str:
        """An id_token for `user`, shaped by the switches, broken as `fault` says."""
        now = int(time.time())
        audience: str | list[str] = [self.client_id] if self.audience_as_list else self.client_id
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": user.subject,
            "aud": audience,
            "email": user.email,
            "exp": now + self.id_token_ttl,
            "iat": now,
            "nonce": nonce,
        }
        if nonce is None:
            del claims["nonce"]
        if user.groups is not None:
            claims["groups"] = list(user.groups)
        claims = _overridden(claims, user.claims)
        key = self.current_key
        algorithm: Literal["RS256", "HS256", "none"] = "RS256"
        if fault == "wrong_iss":
            claims["iss"] = f"https://other.cloudflareaccess.com{SAAS_PATH}{self.client_id}"
        elif fault == "wrong_aud":
            claims["aud"] = [secrets.token_hex(32)] if self.audience_as_list else secrets.token_hex(32)
        elif fault == "several_aud_without_azp":
            claims["aud"] = [self.client_id, secrets.token_hex(32)]
        elif fault == "wrong_azp":
            claims["aud"] = [self.client_id, secrets.token_hex(32)]
            claims["azp"] = claims["aud"][1]
        elif fault == "missing_nonce":
            claims.pop("nonce", None)
        elif fault == "wrong_nonce":
            claims["nonce"] = secrets.token_urlsafe(32)
        elif fault == "expired":
            claims.update(exp=now - 3600, iat=now - 7200)
        elif fault == "issued_in_the_future":
            claims["iat"] = now + 3600
        elif fault == "missing_sub":
            del claims["sub"]
        elif fault == "missing_email":
            del claims["email"]
        elif fault == "alg_none":
            algorithm = "none"
        elif fault == "hs256":
            algorithm = "HS256"
        elif fault == "unknown_kid":
            key = SigningKey.generate()
        elif fault == "rogue_key":
            key = SigningKey(kid=key.kid, private_key=SigningKey.generate().private_key)
        return self.sign(claims, headers=self.id_token_headers, key=key, algorithm=algorithm)

    def user_claims(self, user: SaaSUser) -> dict[str, Any]:
        claims: dict[str, Any] = {"sub": user.subject, "email": user.email}
        if user.groups is not None:
            claims["groups"] = list(user.groups)
        return claims

    # -- what the handler asks ------------------------------------------------------------------------------

    def grant_code(self, code: str, grant: _Grant) -> None:
        with self._lock:
            self._codes[code] = grant

    def authenticate(self, authorization: str | None, form: Mapping[str, str]) -> tuple[ClientAuth, bool]:
        """Which way the client authenticated, and whether with our client id and secret."""
        basic = None
        scheme, _, credentials = (authorization or "").partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            client_id, _, secret = decoded.partition(":")
            basic = (unquote_plus(client_id), unquote_plus(secret))
        posted = (form["client_id"], form["client_secret"]) if "client_secret" in form else None
        if basic is not None and posted is not None:
            return "both", False
        method: ClientAuth = (
            "client_secret_basic" if basic is not None else "client_secret_post" if posted is not None else "none"
        )
        presented = basic or posted
        if presented is None or method not in self.token_auth_methods:
            return method, False
        # Constant time for the secret, as a real server must.
        matched = hmac.compare_digest(presented[1].encode(), self.client_secret.encode())
        return method, matched and presented[0] == self.client_id

    def token_response(self, form: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            return self._exchange_code(form)
        if grant_type == "refresh_token":
            return self._refresh(form)
        return 400, {"error": "unsupported_grant_type"}

    def _exchange_code(self, form: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            grant = self._codes.pop(form.get("code", ""), None)  # single use, whatever happens next
        verifier = form.get("code_verifier")
        if grant is None or grant.expires_at < time.time() or form.get("redirect_uri") != grant.redirect_uri:
            return 400, {"error": "invalid_grant"}
        if grant.code_challenge is None:
            if verifier is not None:
                return 400, {"error": "invalid_grant", "error_description": "no code_challenge was sent"}
        elif verifier is None or not hmac.compare_digest(
            b64url(hashlib.sha256(verifier.encode("ascii", "replace")).digest()), grant.code_challenge
        ):
            return 400, {"error": "invalid_grant", "error_description": "PKCE verification failed"}
        id_token = self.id_token(grant.user, nonce=grant.nonce, fault=self.id_token_fault)
        return 200, self._tokens(grant, id_token=id_token, new_refresh_token=self.issue_refresh_tokens)

    def _refresh(self, form: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        if self.refresh_fault == "invalid_grant":
            return 400, {"error": "invalid_grant", "error_description": "the refresh token was revoked"}
        presented = form.get("refresh_token", "")
        with self._lock:
            grant = self._refresh_tokens.get(presented)
            if self.rotate_refresh_tokens:
                self._refresh_tokens.pop(presented, None)
        if grant is None:
            return 400, {"error": "invalid_grant"}
        # A refreshed id_token carries no nonce (OIDC Core 12.2).
        id_token = (
            self.id_token(grant.user, nonce=None, fault=self.id_token_fault) if self.id_token_on_refresh else None
        )
        return 200, self._tokens(grant, id_token=id_token, new_refresh_token=self.rotate_refresh_tokens)

    def _tokens(self, grant: _Grant, *, id_token: str | None, new_refresh_token: bool) -> dict[str, Any]:
        access_token = self.opaque_token()
        answer: dict[str, Any] = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": grant.scope,
        }
        if id_token is not None:
            answer["id_token"] = id_token
        with self._lock:
            self._access_tokens[access_token] = grant.user
            if new_refresh_token:
                refresh_token = self.opaque_token()
                self._refresh_tokens[refresh_token] = grant
                answer["refresh_token"] = refresh_token
        return answer

    def user_of_access_token(self, token: str) -> SaaSUser | None:
        with self._lock:
            return self._access_tokens.get(token)
