"""Client ID metadata documents (a client_id that is an https URL), served by a real TLS server on loopback with its
own certificate: the fetch rules (https only, no private or loopback address unless the testing switch says so, no
redirects, 5 KiB, the timeout, the document's client_id equal to the URL), the cache, the consent page, and the mcp
SDK's client completing the flow with its `client_metadata_url`."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mcp_access_guard.oauth import ClientMetadataFetcher
from mcp_access_guard.testing import LocalAccessSaaS
from oauth_harness import SECRET_KEY, Pkce, Registered, authorize_url, deployment, oauth_config

pytestmark = pytest.mark.anyio

__all__ = ["SECRET_KEY"]  # declared for the leak scan

REDIRECT = "http://127.0.0.1/callback"


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None, issuer_key: Any
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        ).add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    return builder.sign(issuer_key if issuer else key, hashes.SHA256())


class DocumentServer:
    """An https server on 127.0.0.1 publishing client metadata documents at the paths of `documents`, and a few
    misbehaving paths."""

    def __init__(self, directory: Path) -> None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _certificate("test CA", ca_key, None, None)
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = _certificate("127.0.0.1", key, ca, ca_key)
        (directory / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        (directory / "leaf.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        self.trust = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
        served = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        served.load_cert_chain(directory / "leaf.pem", directory / "leaf.key")
        self.documents: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        self.hits: dict[str, int] = {}
        self.delay = 0.0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits[self.path] = owner.hits.get(self.path, 0) + 1
                time.sleep(owner.delay)
                status, body, headers = owner.documents.get(self.path, (404, b"not found", {}))
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.socket = served.wrap_socket(self._server.socket, server_side=True)
        self.base = f"https://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def publish(
        self,
        path: str,
        document: Any = None,
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> str:
        url = self.base + path
        body = raw if raw is not None else json.dumps(document if document is not None else self.document(url)).encode()
        self.documents[path] = (status, body, headers or {})
        return url

    @staticmethod
    def document(url: str, **changes: Any) -> dict[str, Any]:
        return {"client_id": url, "client_name": "Document Client", "redirect_uris": [REDIRECT], **changes}

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def documents(tmp_path: Path) -> Iterator[DocumentServer]:
    server = DocumentServer(tmp_path)
    yield server
    server.stop()


def fetcher_for(saas: LocalAccessSaaS, documents: DocumentServer, **options: Any) -> ClientMetadataFetcher:
    config = oauth_config(saas, "http://127.0.0.1:1", client_metadata_documents=True)
    return ClientMetadataFetcher(config, allow_loopback=True, verify=documents.trust, **options)


def reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.reason for record in caplog.records if getattr(record, "layer", None) == "oauth_client_metadata"]


async def test_a_good_document_is_a_client(local_access_saas: LocalAccessSaaS, documents: DocumentServer) -> None:
    url = documents.publish("/client.json")
    fetcher = fetcher_for(local_access_saas, documents)
    try:
        client = await fetcher.client(url)
    finally:
        await fetcher.aclose()
    assert client is not None
    assert (client.client_id, client.name, client.redirect_uris, client.auth_method) == (
        url,
        "Document Client",
        (REDIRECT,),
        "none",
    )


@pytest.mark.parametrize(
    ("path", "publish", "reason"),
    [
        ("/redirect.json", {"status": 302, "headers": {"Location": "/client.json"}, "raw": b""}, "http_302"),
        ("/missing.json", None, "http_404"),
        ("/big.json", {"raw": b"{" + b" " * 6000 + b"}"}, "too_large"),
        ("/text.json", {"raw": b"hello"}, "not_json"),
        ("/list.json", {"raw": b"[]"}, "not_json"),
        (
            "/other.json",
            {"document": {"client_id": "https://127.0.0.1/else.json", "redirect_uris": [REDIRECT]}},
            "client_id_mismatch",
        ),
        ("/noredirect.json", {"document": "NO_REDIRECTS"}, "redirect_uris"),
        ("/httpredirect.json", {"document": "HTTP_REDIRECT"}, "redirect_uri"),
        ("/secret.json", {"document": "SECRET_METHOD"}, "auth_method"),
    ],
)
async def test_documents_refused(
    local_access_saas: LocalAccessSaaS,
    documents: DocumentServer,
    caplog: pytest.LogCaptureFixture,
    path: str,
    publish: dict[str, Any] | None,
    reason: str,
) -> None:
    url = documents.base + path
    if publish is not None:
        options = dict(publish)
        special = options.get("document")
        if special == "NO_REDIRECTS":
            options["document"] = documents.document(url, redirect_uris=[])
        elif special == "HTTP_REDIRECT":
            options["document"] = documents.document(url, redirect_uris=["http://app.example.com/cb"])
        elif special == "SECRET_METHOD":
            options["document"] = documents.document(url, token_endpoint_auth_method="client_secret_basic")
        documents.publish(path, **options)
    fetcher = fetcher_for(local_access_saas, documents)
    caplog.set_level(logging.WARNING, "mcp_access_guard")
    try:
        assert await fetcher.client(url) is None
    finally:
        await fetcher.aclose()
    assert reasons(caplog) == [reason]


async def test_a_slow_document_times_out(
    local_access_saas: LocalAccessSaaS, documents: DocumentServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = documents.publish("/slow.json")
    documents.delay = 1.0
    fetcher = fetcher_for(local_access_saas, documents, timeout=0.2)
    caplog.set_level(logging.WARNING, "mcp_access_guard")
    try:
        assert await fetcher.client(url) is None
    finally:
        await fetcher.aclose()
    assert reasons(caplog) == ["timeout"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://127.0.0.1:1/client.json", "private_address"),
        ("https://localhost/client.json", "private_address"),
        ("https://10.1.2.3/client.json", "private_address"),
        ("https://192.168.0.1/client.json", "private_address"),
        ("https://169.254.169.254/latest/meta-data", "private_address"),
        ("https://[::1]/client.json", "private_address"),
        ("https://[::ffff:127.0.0.1]/client.json", "private_address"),
        ("https://[fe80::1]/client.json", "private_address"),
        ("https://100.64.0.1/client.json", "private_address"),
        ("https://0.0.0.0/client.json", "private_address"),
        ("http://client.example.com/client.json", "url_not_https"),
        ("https://client.example.com", "url_no_path"),
        ("https://client.example.com/", "url_no_path"),
        ("https://client.example.com/client.json#x", "url_fragment"),
        ("https://user@client.example.com/client.json", "url_user_info"),
        ("https://client.example.com/a/../client.json", "url_dot_segments"),
        ("https://client.example.com/a/%2E%2E/client.json", "url_dot_segments"),
        ("https://client.example.com/client json", "url_not_plain_ascii"),
    ],
)
async def test_addresses_and_urls_refused_before_any_request(
    local_access_saas: LocalAccessSaaS, caplog: pytest.LogCaptureFixture, url: str, reason: str
) -> None:
    # The production fetcher: no loopback, the system's trust store.
    fetcher = ClientMetadataFetcher(
        oauth_config(local_access_saas, "http://127.0.0.1:1", client_metadata_documents=True)
    )
    caplog.set_level(logging.WARNING, "mcp_access_guard")
    try:
        assert await fetcher.client(url) is None
    finally:
        await fetcher.aclose()
    assert reasons(caplog) == [reason]


async def test_documents_are_cached_as_their_headers_say(
    local_access_saas: LocalAccessSaaS, documents: DocumentServer
) -> None:
    cached = documents.publish("/cached.json", headers={"Cache-Control": "public, max-age=600"})
    uncached = documents.publish("/uncached.json", headers={"Cache-Control": "no-store"})
    failing = documents.publish("/failing.json", status=500, raw=b"")
    fetcher = fetcher_for(local_access_saas, documents, cache_size=10)
    try:
        for _ in range(3):
            assert await fetcher.client(cached) is not None
            assert await fetcher.client(uncached) is not None
            assert await fetcher.client(failing) is None
    finally:
        await fetcher.aclose()
    # A failure is remembered briefly too, so a stranger's URL is not fetched on every request.
    assert documents.hits == {"/cached.json": 1, "/uncached.json": 3, "/failing.json": 1}


async def test_the_cache_is_bounded(local_access_saas: LocalAccessSaaS, documents: DocumentServer) -> None:
    urls = [documents.publish(f"/c{n}.json") for n in range(5)]
    fetcher = fetcher_for(local_access_saas, documents, cache_size=2)
    try:
        for url in urls:
            await fetcher.client(url)
        await fetcher.client(urls[0])
    finally:
        await fetcher.aclose()
    assert len(fetcher._cache) == 2
    assert documents.hits["/c0.json"] == 2


async def test_consent_names_the_document_host_and_authorize_refuses_when_off(
    local_access_saas: LocalAccessSaaS, documents: DocumentServer
) -> None:
    url = documents.publish("/client.json")
    client = Registered(url, "http://127.0.0.1:4567/callback", None, "none", {})
    async with (
        deployment(
            local_access_saas,
            client_metadata_documents=True,
            server_options={"client_metadata": fetcher_for(local_access_saas, documents)},
        ) as site,
        httpx.AsyncClient() as http,
    ):
        page = await http.get(authorize_url(site.url, client, Pkce()))
    async with deployment(local_access_saas) as off, httpx.AsyncClient() as http:
        refused = await http.get(authorize_url(off.url, client, Pkce()))
    assert page.status_code == 200
    assert "<dt>The app is described at</dt><dd>127.0.0.1:" in page.text
    assert "Document Client" in page.text
    assert refused.status_code == 400
    assert "location" not in refused.headers


async def test_the_sdk_client_uses_its_metadata_document(
    local_access_saas: LocalAccessSaaS, documents: DocumentServer
) -> None:
    from mcp.client.auth import OAuthClientProvider
    from mcp.shared.auth import OAuthClientMetadata

    from test_oauth_sdk import MemoryTokens, ScriptedPerson, connected

    local_access_saas.login_as("alice@example.com")
    person = ScriptedPerson("http://127.0.0.1:4567/callback")
    url = documents.publish(
        "/sdk-client.json",
        documents.document(documents.base + "/sdk-client.json", redirect_uris=["http://127.0.0.1/callback"]),
    )
    async with deployment(
        local_access_saas,
        client_metadata_documents=True,
        server_options={"client_metadata": fetcher_for(local_access_saas, documents)},
    ) as site:
        tokens = MemoryTokens()
        provider = OAuthClientProvider(
            server_url=f"{site.url}/mcp",
            client_metadata=OAuthClientMetadata(redirect_uris=[person.redirect_uri], client_name="SDK"),
            storage=tokens,
            redirect_handler=person.redirect,
            callback_handler=person.callback,
            client_metadata_url=url,
        )
        async with connected(provider, site.url, "auto") as client:
            who = (await client.call_tool("whoami", {})).structured_content
    assert who is not None
    assert who["oauth_client_id"] == url
    assert who["email"] == "alice@example.com"
    # No registration: the document was the client.
    assert tokens.client is not None
    assert tokens.client.client_id == url
    assert documents.hits["/sdk-client.json"] == 1
