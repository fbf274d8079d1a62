"""A local, Cloudflare-Access-compatible issuer for tests, examples and the demo.

`LocalAccess` serves its signing keys over real HTTP on 127.0.0.1, in Cloudflare's exact shape, and mints
application tokens in Cloudflare's exact shapes for users and service tokens. It can rotate and drop keys and
simulate the faults a real key endpoint has. Never use its keys for anything but tests.
"""

from __future__ import annotations

import base64
import datetime
import errno
import json
import os
import secrets
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from starlette.types import ASGIApp

from .config import AccessConfig

CERTS_PATH = "/cdn-cgi/access/certs"

Fault = Literal["down", "slow", "http_500", "garbage", "html", "empty", "non_rsa", "redirect", "huge"]

DROP: Any = object()
"""Pass as a claim or header override to remove that field."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey

    def jwk(self) -> dict[str, str]:
        numbers = self.private_key.public_key().public_numbers()
        return {
            "kid": self.kid,
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "e": _b64url_uint(numbers.e),
            "n": _b64url_uint(numbers.n),
        }

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


class _CertsHandler(BaseHTTPRequestHandler):
    server: _CertsServer

    def do_GET(self) -> None:
        issuer = self.server.issuer
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
            self.send_response(302)
            self.send_header("Location", f"{issuer.url}/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif fault == "huge":
            self._reply(200, b'{"keys": [], "pad": "' + b"x" * issuer.huge_bytes + b'"}', "application/json")
        else:
            self._reply(200, issuer.certs_body(), "application/json")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a test run's output is for the tests."""


class _CertsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], issuer: LocalAccess) -> None:
        self.issuer = issuer
        super().__init__(address, _CertsHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a client that hangs up mid-answer (as a size-bounded one does) is expected here."""


class LocalAccess:
    """An Access-compatible issuer on 127.0.0.1. Use as a context manager (sync or async) or start()/stop()."""

    def __init__(
        self, *, audience: str | None = None, team: str = "local", key: SigningKey | None = None, port: int = 0
    ) -> None:
        """`key` and `port` rebuild a known issuer (see `load()`); by default both are fresh."""
        self.team = team
        self.audience = audience or secrets.token_hex(32)
        self.keys: list[SigningKey] = [key or SigningKey.generate()]
        self.fault: Fault | None = None
        self.slow_seconds = 10.0
        self.huge_bytes = 50 * 1024 * 1024
        self.requests = 0
        self._port = port
        self._server: _CertsServer | None = None
        self._thread: threading.Thread | None = None

    # -- the HTTP server -------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The issuer, exactly as it appears in `iss`."""
        if not self._port:
            raise RuntimeError("LocalAccess is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def certs_url(self) -> str:
        return self.url + CERTS_PATH

    def config(self, **overrides: Any) -> AccessConfig:
        return AccessConfig(team_domain=self.url, audiences=[self.audience], **overrides)

    def start(self) -> LocalAccess:
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
        self._server = _CertsServer(("127.0.0.1", self._port), self)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="LocalAccess", daemon=True
        )
        self._thread.start()

    def __enter__(self) -> LocalAccess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> LocalAccess:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

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
