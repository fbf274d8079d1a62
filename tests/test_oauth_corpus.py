"""The OAuth attack corpus (issue 14, item 5): cases as data under `tests/corpus/oauth/`, one TOML file per family,
each sent through `guard()` in OAuth mode over real uvicorn, logging in through a real `LocalAccessSaaS`. The
individual tests in test_oauth_*.py prove each mechanism once; this is the broad, data-driven version.

Families (the file says each case's format at its top):

    redirect_uris     registration and /authorize: look-alikes, user info, fragments, dot segments, encodings, IDN,
                      ports, schemes, our own origin and callback, loopback variants, private-use schemes
    id_tokens         what Access's id_token may be: LocalAccessSaaS's faults, claim and header mutations, keys,
                      at the login and at a refresh
    front_channel     /authorize, /consent and /oauth/callback: PKCE, resource, state, the CSRF value, the browser
                      cookie, the Origin, what Access sends back, open redirects
    token_endpoint    /token and /revoke: code replay, verifiers, redirect URIs, resource, client authentication,
                      client mix-ups, refresh rotation and reuse, revocation, Access failing at a refresh
    client_metadata   client ID metadata documents (a variant with them on): private addresses, redirects, size,
                      a document whose client_id differs, bad documents

Every case is also held to these, whatever it expects: no answer of ours is a 5xx (but a 503 the case expects, for
Access out of reach); no redirect of ours leads anywhere but the Access application's authorization endpoint or a
redirect URI the client registered (the loopback rule: the one it asked for); no credential, code, verifier, state,
CSRF value, cookie value or secret the case saw appears in any log record (and each is registered with the suite's
leak scan); a refusal that names a `reason` is logged with it.

Placeholders filled in at run time (no credential is written in a file): `{ours}` (the public URL), `{port}` (its
port), `{other_port}` (a free port), `{issuer}` and `{saas_client_id}` (the Access application's), `{docs}` (the
client metadata document server), `{doc}` (this case's document URL). The string "<drop>" leaves a field out.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import logging
import secrets
import time
import tomllib
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import httpx
import pytest

from leak_scan import LogRecorder, find_leaks, remember_minted
from mcp_access_guard import GuardConfig, Rule, guard
from mcp_access_guard.mcp_request import modern_request
from mcp_access_guard.oauth import ClientMetadataFetcher, OAuthServer
from mcp_access_guard.oauth.records import CREDENTIAL
from mcp_access_guard.settings import LimitSettings
from mcp_access_guard.testing import DROP, LocalAccessSaaS, free_port, serve
from oauth_browser import parse_forms, walk
from oauth_harness import SECRET_KEY, Pkce, mcp_app, oauth_config
from test_oauth_client_metadata import DocumentServer
from test_oauth_guard import the_server

__all__ = ["SECRET_KEY"]  # declared for the leak scan

CORPUS = Path(__file__).parent / "corpus" / "oauth"
MINIMUM = {"redirect_uris": 60, "id_tokens": 50, "front_channel": 40, "token_endpoint": 30, "client_metadata": 20}
FAMILIES = tuple(MINIMUM)
DROP_MARK = "<drop>"
CLIENT_REDIRECT = "http://127.0.0.1:9/callback"
USER = "alice@example.com"
# LocalAccessSaaS's switches: put back after every case, so that no case depends on the one before.
SAAS_SWITCHES = (
    "user",
    "allow",
    "audience_as_list",
    "iss_in_authorization_response",
    "id_token_on_refresh",
    "issue_refresh_tokens",
    "rotate_refresh_tokens",
    "require_pkce",
    "fault",
    "fault_endpoints",
    "id_token_fault",
    "id_token_headers",
    "refresh_fault",
    "discovery_issuer",
    "redirect_uris",
    "keys",
)


# -- the corpus -------------------------------------------------------------------------------------------------------


def load_family(family: str) -> list[dict[str, Any]]:
    with open(CORPUS / f"{family}.toml", "rb") as file:
        cases: list[dict[str, Any]] = tomllib.load(file)["case"]
    for case in cases:
        case["family"] = family
    return cases


ALL_CASES = [case for family in FAMILIES for case in load_family(family)]


def test_corpus_is_complete_and_well_formed() -> None:
    for family, minimum in MINIMUM.items():
        count = sum(case["family"] == family for case in ALL_CASES)
        assert count >= minimum, f"{family}: {count} cases, {minimum} wanted"
    names = [f"{case['family']}:{case['name']}" for case in ALL_CASES]
    assert len(names) == len(set(names)), "case names must be unique within a family"
    for case in ALL_CASES:
        assert case.get("why"), f"{case['name']}: say why the outcome is expected"
        assert "expect" in case or "steps" in case, case["name"]
        assert case.get("variant", "base") in VARIANTS, case["name"]
    # Every family has controls that must be accepted, so that a guard refusing everything fails it.
    for family in FAMILIES:
        outcomes = {accepted_expected(case) for case in ALL_CASES if case["family"] == family}
        assert outcomes == {True, False}, family


def accepted_expected(case: dict[str, Any]) -> bool:
    """Whether the case's attack, or request, should succeed (for the counts in SECURITY.md)."""
    if "steps" in case:
        return all(step["expect"]["status"] < 400 for step in case["steps"])
    return bool(case["expect"].get("accepted", case["expect"].get("code", False)))


# -- the deployments ----------------------------------------------------------------------------------------------


@dataclass
class Variant:
    """A deployment's settings beside the base ones, and its Access application's own switches."""

    config: dict[str, Any] = field(default_factory=dict)
    saas: dict[str, Any] = field(default_factory=dict)
    # client metadata documents: None (off), "loopback" (the testing switch on), "strict" (as deployed)
    documents: str | None = None


VARIANTS = {
    "base": Variant(),
    "redirect_hosts": Variant(config={"redirect_hosts": ["claude.ai", "*.example.com", "cursor:", "127.0.0.1"]}),
    "allow": Variant(config={"allow": Rule(email_domains=["example.com"])}),
    "no_iss": Variant(saas={"iss_in_authorization_response": False}),
    "documents": Variant(config={"client_metadata_documents": True}, documents="loopback"),
    "documents_strict": Variant(config={"client_metadata_documents": True}, documents="strict"),
    # A deployment of its own, started for the case (key rotations: one unknown key id per cooldown).
    "fresh": Variant(),
}
DOCUMENT_TIMEOUT = 2.0


@dataclass
class Site:
    url: str
    port: int
    server: OAuthServer
    saas: LocalAccessSaaS
    baseline: dict[str, Any]

    def reset(self) -> None:
        self.saas.come_back()
        for name, value in self.baseline.items():
            setattr(self.saas, name, value)


@contextlib.asynccontextmanager
async def started_site(variant: Variant, documents: DocumentServer | None) -> AsyncIterator[Site]:
    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    with LocalAccessSaaS() as saas:
        for name, value in variant.saas.items():
            setattr(saas, name, value)
        saas.login_as(USER)
        settings = {"registration_rate": 10_000, "registration_cap": 1_000_000, **variant.config}
        # Every case comes from one address, as the registration limits above: the limit on failed credentials off.
        no_limit = LimitSettings(failed_credentials=0)
        app = guard(mcp_app(), GuardConfig(oauth=oauth_config(saas, public_url, **settings), limits=no_limit))
        server = the_server(app)
        if variant.documents is not None:
            assert documents is not None
            # The real fetcher, trusting the test server's certificate; "loopback" also lets it reach 127.0.0.1.
            fetcher = ClientMetadataFetcher(
                server.config,
                allow_loopback=variant.documents == "loopback",
                verify=documents.trust,
                timeout=DOCUMENT_TIMEOUT,
            )
            server.client_metadata = fetcher
            server.clients.documents = fetcher
        baseline = {name: getattr(saas, name) for name in SAAS_SWITCHES}
        async with serve(app, port=port) as url:
            yield Site(url, port, server, saas, baseline)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocumentServer]:
    server = DocumentServer(tmp_path_factory.mktemp("documents"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def sites(documents: DocumentServer) -> AsyncIterator[dict[str, Site]]:
    async with contextlib.AsyncExitStack() as stack:
        started = {
            name: await stack.enter_async_context(started_site(variant, documents))
            for name, variant in VARIANTS.items()
            if name != "fresh"
        }
        yield started


class CaseLog(LogRecorder):
    """The records of one case: their text (for the leak check) and the reasons refused with."""

    def __init__(self) -> None:
        super().__init__()
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        reason = getattr(record, "reason", None)
        if isinstance(reason, str):
            self.reasons.append(reason)


@pytest.fixture
def case_log() -> Iterator[CaseLog]:
    recorder = CaseLog()
    root = logging.getLogger()
    root.addHandler(recorder)
    try:
        yield recorder
    finally:
        root.removeHandler(recorder)


# -- one case's run ---------------------------------------------------------------------------------------------------


@dataclass
class Answer:
    url: str
    status: int
    location: str | None


@dataclass
class Client:
    client_id: str
    redirect_uris: list[str]
    method: str
    secret: str | None

    @property
    def redirect_uri(self) -> str:
        return self.redirect_uris[0]


class Run:
    """One case against one deployment: the HTTP clients it uses (every answer recorded), the values it saw that
    must never be logged, and where redirects of ours may lead."""

    def __init__(self, case: dict[str, Any], site: Site, documents: DocumentServer) -> None:
        self.case = case
        self.site = site
        self.documents = documents
        self.answers: list[Answer] = []
        self.seen: set[str] = set()
        self.redirect_targets: list[str] = [site.saas.authorization_url]
        self.other_port = free_port()
        self.doc_url = f"{documents.base}/cases/{case['family']}/{case['name']}.json"
        self._clients: list[httpx.AsyncClient] = []
        # Where this case's traffic with Access starts in the application's records.
        self._upstream_from = (len(site.saas.authorization_requests), len(site.saas.token_requests))

    # -- values ------------------------------------------------------------------------------------------------

    def fill(self, value: Any) -> Any:
        """Placeholders filled in, recursively; "<drop>" left for the caller to act on."""
        if value == "<null>":
            return None
        if isinstance(value, str):
            replacements = {
                "{ours}": self.site.url,
                "{port}": str(self.site.port),
                "{other_port}": str(self.other_port),
                "{issuer}": self.site.saas.issuer,
                "{saas_client_id}": self.site.saas.client_id,
                "{docs_port}": str(urlsplit(self.documents.base).port),
                "{docs}": self.documents.base,
                "{doc}": self.doc_url,
            }
            for placeholder, replacement in replacements.items():
                value = value.replace(placeholder, replacement)
            return value
        if isinstance(value, list):
            return [self.fill(item) for item in value]
        if isinstance(value, dict):
            if set(value) == {"now"}:
                return int(time.time()) + int(value["now"])
            return {name: self.fill(item) for name, item in value.items()}
        return value

    def saw(self, *values: str | None) -> None:
        self.seen.update(value for value in values if value and len(value) >= 16)

    # -- HTTP ----------------------------------------------------------------------------------------------------

    async def _record(self, response: httpx.Response) -> None:
        self.answers.append(Answer(str(response.request.url), response.status_code, response.headers.get("location")))
        for cookie in response.headers.get_list("set-cookie"):
            self.saw(cookie.partition("=")[2].partition(";")[0])

    def http(self) -> httpx.AsyncClient:
        """A client (with its own cookie jar: one browser) whose every answer is recorded."""
        client = httpx.AsyncClient(timeout=30, event_hooks={"response": [self._record]}, trust_env=False)
        self._clients.append(client)
        return client

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()

    # -- the client's side -----------------------------------------------------------------------------------------

    async def register(self, document: Mapping[str, Any]) -> httpx.Response:
        response = await self.http().post(f"{self.site.url}/register", json=document)
        if response.status_code == 201:
            self.saw(response.json().get("client_secret"))
        return response

    async def new_client(self, redirect_uris: list[str] | None = None, method: str = "none", **fields: Any) -> Client:
        uris = redirect_uris or [CLIENT_REDIRECT]
        document = {"redirect_uris": uris, "client_name": "Corpus client", "token_endpoint_auth_method": method}
        response = await self.register({**document, **fields})
        assert response.status_code == 201, response.text
        answer = response.json()
        self.redirect_targets += answer["redirect_uris"]
        return Client(answer["client_id"], answer["redirect_uris"], method, answer.get("client_secret"))

    def authorize_params(self, client: Client, pkce: Pkce, **overrides: Any) -> dict[str, str]:
        params: dict[str, Any] = {
            "response_type": "code",
            "client_id": client.client_id,
            "redirect_uri": client.redirect_uri,
            "state": secrets.token_urlsafe(24),
            "code_challenge": pkce.challenge,
            "code_challenge_method": "S256",
            "scope": "openid email profile",
            "resource": f"{self.site.url}/mcp",
        }
        params.update(self.fill(overrides))
        self.saw(pkce.verifier, params.get("state"))
        return {name: str(value) for name, value in params.items() if value != DROP_MARK}

    async def login(self, client: Client, pkce: Pkce, browser: httpx.AsyncClient | None = None) -> dict[str, str]:
        """The whole approved front channel: what the client's redirect URI receives."""
        params = self.authorize_params(client, pkce)
        result = await walk(
            f"{self.site.url}/authorize?{urlencode(params)}", stop_at=client.redirect_uri, http=browser or self.http()
        )
        assert result.final_url.startswith(client.redirect_uri), (result.final_url, self.answers[-3:])
        answer = query_of(result.final_url)
        self.saw(answer.get("code"))
        return answer

    def auth(
        self, client: Client, form: dict[str, str], how: str | None = None
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Form and headers of a token or revocation request, authenticated as `client` registered, or as `how`
        says otherwise."""
        how = how or {"none": "none", "client_secret_post": "post", "client_secret_basic": "basic"}[client.method]
        secret = client.secret or ""
        headers: dict[str, str] = {}
        form = {**form}
        if how == "none":
            form["client_id"] = client.client_id
        elif how == "post":
            form.update(client_id=client.client_id, client_secret=secret)
        elif how == "post_no_secret":
            form["client_id"] = client.client_id
        elif how == "post_wrong_secret":
            form.update(client_id=client.client_id, client_secret="mag_cs_" + secrets.token_urlsafe(32))
        elif how.startswith("post_secret:"):
            form.update(client_id=client.client_id, client_secret=how.removeprefix("post_secret:"))
        elif how in ("basic", "basic_and_post", "basic_other_form_id"):
            headers["Authorization"] = basic(client.client_id, secret)
            if how == "basic_and_post":
                form["client_secret"] = secret
            elif how == "basic_other_form_id":
                form["client_id"] = "someone-else-entirely"
        elif how == "basic_wrong_secret":
            headers["Authorization"] = basic(client.client_id, "mag_cs_" + secrets.token_urlsafe(32))
        elif how == "basic_malformed":
            headers["Authorization"] = "Basic !!!not-base64!!!"
        elif how == "basic_no_colon":
            headers["Authorization"] = "Basic " + base64.b64encode(client.client_id.encode()).decode()
        elif how == "unknown_client":
            form["client_id"] = secrets.token_urlsafe(18)
        elif how == "no_client":
            pass
        else:
            raise AssertionError(f"unknown client authentication {how!r}")
        return form, headers

    async def token(
        self, client: Client, form: dict[str, str], how: str | None = None, *, path: str = "/token"
    ) -> httpx.Response:
        body, headers = self.auth(client, form, how)
        body = {name: value for name, value in body.items() if value != DROP_MARK}
        response = await self.http().post(f"{self.site.url}{path}", data=body, headers=headers)
        if response.status_code == 200 and path == "/token":
            answer = response.json()
            self.saw(answer.get("access_token"), answer.get("refresh_token"))
        return response

    async def bearer(self, token: str) -> tuple[int, dict[str, Any] | None]:
        """A whoami call with `token`: the status, and what the tool says when it answered."""
        request = modern_request("tools/call", {"name": "whoami", "arguments": {}})
        response = await self.http().post(
            f"{self.site.url}/mcp", json=request.body, headers={**request.headers, "Authorization": f"Bearer {token}"}
        )
        if response.status_code != 200:
            return response.status_code, None
        text = response.text
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            text = next(line[5:] for line in text.splitlines() if line.startswith("data:"))
        result: dict[str, Any] = json.loads(text)["result"]["structuredContent"]
        return 200, result

    # -- the invariants ------------------------------------------------------------------------------------------

    def check_invariants(self, log: CaseLog, allowed_5xx: set[int]) -> None:
        ours = [answer for answer in self.answers if answer.url.startswith(self.site.url)]
        failed = [(answer.url, answer.status) for answer in ours if answer.status >= 500]
        assert all(status in allowed_5xx for _, status in failed), f"5xx answers: {failed}"
        for answer in ours:
            if answer.location is not None:
                target = urljoin(answer.url, answer.location)
                assert any(leads_to(target, allowed) for allowed in self.redirect_targets), (
                    f"a redirect to {target!r}, not to Access or a registered redirect URI"
                )
        self.collect_upstream_values()
        remember_minted(*self.seen)
        leaks = find_leaks(log.texts, [], sorted(self.seen))
        assert leaks == [], leaks
        assert not any(CREDENTIAL.search(text) for text in log.texts)

    def collect_upstream_values(self) -> None:
        """What went between us and Access (its codes and tokens, our state, nonce and verifier): never logged."""
        saas = self.site.saas
        authorizations, tokens = self._upstream_from
        for request in saas.authorization_requests[authorizations:]:
            self.saw(request.get("state"), request.get("nonce"))
        for token_request in saas.token_requests[tokens:]:
            self.saw(*(token_request.form.get(name) for name in ("code", "code_verifier", "refresh_token")))
        self.saw(saas.client_secret)


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def leads_to(target: str, allowed: str) -> bool:
    return target == allowed or target.startswith((allowed + "?", allowed + "&"))


# -- the families ---------------------------------------------------------------------------------------------------


async def redirect_uri_case(run: Run, case: dict[str, Any], log: CaseLog) -> None:
    expect = case["expect"]
    if case["stage"] == "register":
        document = run.fill(case.get("document")) or {
            "redirect_uris": run.fill(case["uris"]) if "uris" in case else [run.fill(case["uri"])],
            "client_name": "Corpus client",
            "token_endpoint_auth_method": "none",
        }
        response = await run.register(document)
        if expect["accepted"]:
            assert response.status_code == 201, response.text
            assert response.json()["redirect_uris"] == document["redirect_uris"]
        else:
            assert response.status_code == 400, response.text
            assert response.json()["error"] == expect.get("error", "invalid_redirect_uri")
            assert "client_id" not in response.json()
        assert_reason(log, expect)
        return

    client = await run.new_client(run.fill(case["registered"]))
    pkce = Pkce()
    requested = run.fill(case.get("requested", DROP_MARK))
    params = run.authorize_params(client, pkce, redirect_uri=requested)
    browser = run.http()
    response = await browser.get(f"{run.site.url}/authorize?{urlencode(params)}")
    if not expect["accepted"]:
        assert response.status_code == 400, response.text
        assert "location" not in response.headers
        assert response.headers["content-type"].startswith("text/html")
        assert_reason(log, expect)
        return
    assert response.status_code == 200, response.text
    back_to = client.redirect_uri if requested == DROP_MARK else requested
    run.redirect_targets.append(back_to)
    result = await walk(f"{run.site.url}/authorize?{urlencode(params)}", stop_at=back_to, http=browser)
    assert leads_to(result.final_url, back_to), result.final_url
    answer = query_of(result.final_url)
    assert (answer["state"], answer["iss"]) == (params["state"], run.site.url)
    run.saw(answer["code"])
    form = {"grant_type": "authorization_code", "code": answer["code"], "code_verifier": pkce.verifier}
    if requested != DROP_MARK:
        form["redirect_uri"] = requested
    exchanged = await run.token(client, form)
    assert exchanged.status_code == 200, exchanged.text


async def id_token_case(run: Run, case: dict[str, Any], log: CaseLog) -> None:
    saas = run.site.saas
    expect = case["expect"]
    refresh_stage = case.get("at", "login") == "refresh"
    if not refresh_stage:
        arrange_id_token(run, case)
    client = await run.new_client()
    pkce = Pkce()
    answer = await run.login(client, pkce)
    if not refresh_stage:
        assert saas.hits["token"] >= 1, "the login never reached the exchange where the id_token is checked"
        if not expect["accepted"]:
            assert "code" not in answer, answer
            assert answer["error"] == expect.get("error", "server_error")
            assert answer["iss"] == run.site.url
            assert_reason(log, expect)
            return
        assert "error" not in answer, answer
    exchanged = await run.token(
        client,
        {
            "grant_type": "authorization_code",
            "code": answer["code"],
            "code_verifier": pkce.verifier,
            "redirect_uri": client.redirect_uri,
        },
    )
    assert exchanged.status_code == 200, exchanged.text
    tokens = exchanged.json()
    if refresh_stage:
        arrange_id_token(run, case)
        refreshed = await run.token(client, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
        if not expect["accepted"]:
            assert refreshed.status_code == 400, refreshed.text
            assert refreshed.json()["error"] == expect.get("error", "invalid_grant")
            # The grant is gone with it: the access token from the login stops working at once.
            assert (await run.bearer(tokens["access_token"]))[0] == 401
            assert_reason(log, expect)
            return
        assert refreshed.status_code == 200, refreshed.text
        tokens = refreshed.json()
    status, who = await run.bearer(tokens["access_token"])
    assert status == 200
    assert who is not None
    assert who["email"] == expect.get("email", USER)
    if "groups" in expect:
        assert who["groups"] == expect["groups"]


def arrange_id_token(run: Run, case: dict[str, Any]) -> None:
    saas = run.site.saas
    for name, value in run.fill(case.get("switches", {})).items():
        setattr(saas, name, value)
    saas.id_token_fault = case.get("fault")
    claims = case.get("claims")
    if claims is not None:
        filled = {name: DROP if value == DROP_MARK else value for name, value in run.fill(claims).items()}
        saas.login_as(case.get("email", USER), groups=case.get("groups"), subject=case.get("subject"), claims=filled)
    elif "email" in case or "groups" in case or "subject" in case:
        saas.login_as(case.get("email", USER), groups=case.get("groups"), subject=case.get("subject"))
    headers = case.get("headers")
    if headers is not None:
        saas.id_token_headers = {
            name: DROP if value == DROP_MARK else value for name, value in run.fill(headers).items()
        }
    keys = case.get("keys")
    if keys == "rotated":
        saas.rotate()
    elif keys == "rotated_twice":
        saas.rotate()
        saas.rotate()
    elif keys == "only_new":
        saas.rotate()
        saas.drop(saas.keys[0].kid)
    elif keys is not None:
        raise AssertionError(f"unknown keys event {keys!r}")


async def front_channel_case(run: Run, case: dict[str, Any], log: CaseLog) -> None:
    saas = run.site.saas
    expect = case["expect"]
    arrange_saas(run, case.get("saas", {}))
    client = await run.new_client(**run.fill(case.get("client", {})))
    pkce = Pkce()
    browser = run.http()
    params = run.authorize_params(client, pkce, **case.get("authorize", {}))
    response = await browser.get(
        f"{run.site.url}/authorize?{with_extra(params, run.fill(case.get('authorize_extra')))}"
    )
    if expect["stage"] == "authorize":
        await evaluate(run, response, expect, params, client, pkce, log)
        return
    assert response.status_code == 200, response.text
    form = consent_form(response.text)
    run.saw(*form.values())
    for name, value in run.fill(case.get("consent", {})).items():
        if value == DROP_MARK:
            form.pop(name, None)
        elif value == "<tamper>":
            form[name] = tampered(form[name])
        elif value == "<other_page>":
            other = await browser.get(f"{run.site.url}/authorize?{urlencode(run.authorize_params(client, Pkce()))}")
            form[name] = consent_form(other.text)[name]
        else:
            form[name] = value
    poster = await other_browser(run, case.get("consent_browser", "same"), browser, client)
    headers = {"Origin": run.site.url, **run.fill(case.get("consent_headers", {}))}
    headers = {name: value for name, value in headers.items() if value != DROP_MARK}
    logins_before = saas.hits["authorization"]
    response = await post_consent(run, poster, form, headers, case)
    if expect["stage"] == "consent":
        await evaluate(run, response, expect, params, client, pkce, log)
        if expect.get("access_contacted") is False:
            assert saas.hits["authorization"] == logins_before, "Access was asked before the person approved"
        return
    assert response.status_code == 302, response.text
    to_access = response.headers["location"]
    assert leads_to(to_access, saas.authorization_url), to_access
    back = await run.http().get(to_access)
    assert back.status_code == 302, back.text
    callback_url = back.headers["location"]
    assert callback_url.startswith(f"{run.site.url}/oauth/callback?"), callback_url
    run.saw(query_of(callback_url).get("code"), query_of(callback_url).get("state"))
    callback_url = await mutated_callback(run, case, callback_url, client, browser)
    if case.get("access_at_callback") == "down":
        saas.go_down()
    kind = case.get("callback_browser", "same")
    caller = await other_browser(run, kind.removesuffix("_then_same"), browser, client)
    if kind.endswith("_then_same"):
        elsewhere = await caller.get(callback_url)
        assert elsewhere.status_code == 403, elsewhere.text
        caller = browser
    response = await caller.get(callback_url)
    await evaluate(run, response, expect, params, client, pkce, log)
    if "replay" in expect:
        again = await browser.get(callback_url)
        assert again.status_code == expect["replay"], again.text
        assert "location" not in again.headers


def arrange_saas(run: Run, switches: Mapping[str, Any]) -> None:
    saas = run.site.saas
    for name, value in run.fill(dict(switches)).items():
        if name == "user":
            if value == "<none>":
                saas.log_out()
            else:
                saas.login_as(value)
        elif name == "allow":
            saas.allow = Rule(emails=value)
        elif name == "fault_endpoints":
            saas.fault_endpoints = set(value)
        else:
            setattr(saas, name, value)


def with_extra(params: Mapping[str, str], extra: list[list[str]] | None) -> str:
    pairs = list(params.items()) + [(name, value) for name, value in (extra or [])]
    return urlencode(pairs)


def consent_form(html: str) -> dict[str, str]:
    (form,) = [form for form in parse_forms(html) if form.method == "post" and "decision" in form.buttons]
    assert form.action == "/consent"
    return {**form.hidden, "decision": "approve"}


def tampered(value: str) -> str:
    """One character in the middle changed, within the base64url alphabet."""
    middle = len(value) // 2
    replacement = "A" if value[middle] != "A" else "B"
    return value[:middle] + replacement + value[middle + 1 :]


async def other_browser(run: Run, kind: str, same: httpx.AsyncClient, client: Client) -> httpx.AsyncClient:
    """`same`, or a browser with no cookie of ours ("other"), or one with its own ("other_with_cookie": it
    started a sign-in of its own first)."""
    if kind == "same":
        return same
    browser = run.http()
    if kind == "other_with_cookie":
        own = await browser.get(f"{run.site.url}/authorize?{urlencode(run.authorize_params(client, Pkce()))}")
        assert own.status_code == 200
    elif kind != "other":
        raise AssertionError(f"unknown browser {kind!r}")
    return browser


async def post_consent(
    run: Run, browser: httpx.AsyncClient, form: dict[str, str], headers: dict[str, str], case: dict[str, Any]
) -> httpx.Response:
    url = f"{run.site.url}/consent"
    method = case.get("consent_method", "POST")
    if method == "GET":
        return await browser.get(url, headers=headers)
    body = case.get("consent_body")
    if body is not None:
        return await browser.post(
            url, content=run.fill(body).encode(), headers={"Content-Type": case["consent_content_type"], **headers}
        )
    extra = run.fill(case.get("consent_extra"))
    if extra:
        encoded = with_extra(form, extra)
        return await browser.post(
            url, content=encoded, headers={"Content-Type": "application/x-www-form-urlencoded", **headers}
        )
    return await browser.post(url, data=form, headers=headers)


async def mutated_callback(
    run: Run, case: dict[str, Any], callback_url: str, client: Client, browser: httpx.AsyncClient
) -> str:
    changes = run.fill(case.get("callback", {}))
    extra = run.fill(case.get("callback_extra"))
    if not changes and not extra:
        return callback_url
    params = query_of(callback_url)
    for name, value in changes.items():
        if value == DROP_MARK:
            params.pop(name, None)
        elif value == "<tamper>":
            params[name] = tampered(params[name])
        elif value == "<other_login>":
            params[name] = query_of(await callback_of_another_login(run, client, browser))[name]
        else:
            params[name] = value
    return f"{callback_url.partition('?')[0]}?{with_extra(params, extra)}"


async def callback_of_another_login(run: Run, client: Client, browser: httpx.AsyncClient) -> str:
    """A second sign-in of the same client in the same browser, up to Access's redirect back to us (not loaded)."""
    result = await walk(
        f"{run.site.url}/authorize?{urlencode(run.authorize_params(client, Pkce()))}",
        stop_at=f"{run.site.url}/oauth/callback",
        http=browser,
    )
    run.saw(query_of(result.final_url).get("code"), query_of(result.final_url).get("state"))
    return result.final_url


async def evaluate(
    run: Run,
    response: httpx.Response,
    expect: Mapping[str, Any],
    params: Mapping[str, str],
    client: Client,
    pkce: Pkce,
    log: CaseLog,
) -> None:
    """The answer is a page (expect.status, never a redirect), or a redirect back to the client carrying
    expect.error, or our code (expect.code), which then redeems."""
    if "status" in expect:
        assert response.status_code == expect["status"], response.text
        assert "location" not in response.headers
    else:
        assert response.status_code == 302, response.text
        location = response.headers["location"]
        back_to = params.get("redirect_uri", client.redirect_uri)
        assert leads_to(location, back_to), location
        answer = query_of(location)
        assert answer["iss"] == run.site.url
        state = params.get("state")
        if state is not None and len(state) <= 1024:
            assert answer["state"] == state
        else:
            assert "state" not in answer
        if expect.get("code"):
            assert "error" not in answer, answer
            run.saw(answer["code"])
            form = {"grant_type": "authorization_code", "code": answer["code"], "code_verifier": pkce.verifier}
            exchanged = await run.token(client, {**form, "redirect_uri": back_to})
            assert exchanged.status_code == 200, exchanged.text
            assert (await run.bearer(exchanged.json()["access_token"]))[0] == 200
        else:
            assert "code" not in answer, answer
            assert answer["error"] == expect["error"]
    assert_reason(log, expect)


@dataclass
class Grant:
    """What a client holds after signing in: its code and verifier, and every token pair issued so far."""

    client: Client
    code: str = ""
    verifier: str = ""
    access: list[str] = field(default_factory=list)
    refresh: list[str] = field(default_factory=list)


async def token_endpoint_case(run: Run, case: dict[str, Any], log: CaseLog) -> None:
    fields = {"grant_types": case["grant_types"]} if "grant_types" in case else {}
    grants = {"client": Grant(await run.new_client(method=case.get("client", "none"), **fields))}
    if "other_client" in case:
        grants["other"] = Grant(await run.new_client(method=case["other_client"]))
    for grant in grants.values():
        pkce = Pkce()
        grant.code, grant.verifier = (await run.login(grant.client, pkce))["code"], pkce.verifier
    previous: dict[str, Any] | None = None
    for number, step in enumerate(case["steps"], 1):
        response = await token_step(run, grants, step)
        expect = step["expect"]
        where = f"step {number} ({step['do']})"
        assert response.status_code == expect["status"], f"{where}: {response.status_code} {response.text}"
        if "error" in expect:
            assert response.json()["error"] == expect["error"], f"{where}: {response.text}"
        if expect.get("challenge"):
            assert response.headers["www-authenticate"].startswith(expect["challenge"]), where
        if expect.get("same_as_previous"):
            assert previous is not None
            assert response.json() == previous, f"{where}: not the answer given before"
        if response.status_code == 200 and step["do"] in ("exchange", "refresh"):
            previous = response.json()
            holder = grants[step.get("as", "client")]
            holder.access.append(previous["access_token"])
            holder.refresh.append(previous["refresh_token"])
        assert_reason(log, expect)


async def token_step(run: Run, grants: dict[str, Grant], step: dict[str, Any]) -> httpx.Response:
    kind = step["do"]
    own = grants["client"]
    caller = grants[step.get("as", "client")].client  # who authenticates

    def resolve(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        value = run.fill(value)
        for name, grant in grants.items():
            prefix = "" if name == "client" else "other_"
            value = value.replace(f"{{{prefix}code}}", grant.code).replace(
                f"{{{prefix}client_id}}", grant.client.client_id
            )
            for index, token in enumerate(grant.access, 1):
                value = value.replace(f"{{{prefix}access:{index}}}", token)
            for index, token in enumerate(grant.refresh, 1):
                value = value.replace(f"{{{prefix}refresh:{index}}}", token)
        return value

    overrides = {name: resolve(value) for name, value in step.get("form", {}).items()}
    auth = step.get("auth")
    if auth == "secret_of_other":
        auth = f"post_secret:{grants['other'].client.secret}"
    if kind == "bearer":
        status, _ = await run.bearer(resolve(step["token"]))
        return httpx.Response(status)
    if kind == "saas":
        if step.get("down"):
            run.site.saas.go_down()
        if step.get("up"):
            run.site.saas.come_back()
        arrange_saas(run, step.get("switches", {}))
        return httpx.Response(200)
    if kind == "raw":
        body = resolve(step["body"])
        return await run.http().request(
            step.get("method", "POST"),
            f"{run.site.url}/token",
            content=body.encode(step.get("encoding", "utf-8")),
            headers={"Content-Type": step.get("content_type", "application/x-www-form-urlencoded")},
        )
    if kind == "exchange":
        form = {
            "grant_type": "authorization_code",
            "code": own.code,
            "code_verifier": own.verifier,
            "redirect_uri": own.client.redirect_uri,
        }
        return await run.token(caller, {**form, **overrides}, auth)
    if kind == "refresh":
        token = resolve(step["token"]) if "token" in step else own.refresh[-1]
        form = {"grant_type": "refresh_token", "refresh_token": token}
        return await run.token(caller, {**form, **overrides}, auth)
    if kind == "revoke":
        return await run.token(caller, {"token": resolve(step["token"]), **overrides}, auth, path="/revoke")
    raise AssertionError(f"unknown step {kind!r}")


async def client_metadata_case(run: Run, case: dict[str, Any], log: CaseLog) -> None:
    expect = case["expect"]
    documents = run.documents
    path = urlsplit(run.doc_url).path
    publish_document(run, case, path)
    documents.delay = case.get("delay", 0.0)
    try:
        client_id = run.fill(case.get("client_id", "{doc}"))
        redirect_uri = run.fill(case.get("redirect_uri", CLIENT_REDIRECT))
        client = Client(client_id, [redirect_uri], "none", None)
        pkce = Pkce()
        params = run.authorize_params(client, pkce)
        browser = run.http()
        response = await browser.get(f"{run.site.url}/authorize?{urlencode(params)}")
    finally:
        documents.delay = 0.0
    if expect.get("fetched") is False:
        assert documents.hits.get(path, 0) == 0, "the document was fetched"
    if not expect["accepted"]:
        assert response.status_code == 400, response.text
        assert "location" not in response.headers
        assert_reason(log, expect)
        return
    assert response.status_code == 200, response.text
    assert f"The app is described at</dt><dd>{urlsplit(client_id).netloc}" in response.text
    run.redirect_targets.append(redirect_uri)
    result = await walk(f"{run.site.url}/authorize?{urlencode(params)}", stop_at=redirect_uri, http=browser)
    answer = query_of(result.final_url)
    assert "code" in answer, answer
    run.saw(answer["code"])
    form = {"grant_type": "authorization_code", "code": answer["code"], "code_verifier": pkce.verifier}
    exchanged = await run.token(client, {**form, "redirect_uri": redirect_uri})
    assert exchanged.status_code == 200, exchanged.text


def publish_document(run: Run, case: dict[str, Any], path: str) -> None:
    """This case's document at its own path, as the case shapes it (a fresh path: nothing cached)."""
    document: dict[str, Any] = {
        "client_id": run.doc_url,
        "client_name": "Document client",
        "redirect_uris": [CLIENT_REDIRECT],
    }
    for name, value in run.fill(case.get("document", {})).items():
        if value == DROP_MARK:
            document.pop(name, None)
        else:
            document[name] = value
    if "size" in case:
        unpadded = len(json.dumps({**document, "padding": ""}).encode())
        document["padding"] = "x" * (case["size"] - unpadded)
    raw: bytes | None = None
    if "raw" in case:
        raw = run.fill(case["raw"]).encode()
    elif case.get("gzip"):
        raw = gzip.compress(json.dumps(document).encode())
    headers = run.fill(case.get("headers", {}))
    run.documents.publish(path, document, status=case.get("status", 200), headers=headers, raw=raw)


def assert_reason(log: CaseLog, expect: Mapping[str, Any]) -> None:
    reason = expect.get("reason")
    if reason is not None:
        assert reason in log.reasons, f"no refusal logged with reason {reason!r}: {log.reasons}"


# -- the runner -------------------------------------------------------------------------------------------------------

RUNNERS = {
    "redirect_uris": redirect_uri_case,
    "id_tokens": id_token_case,
    "front_channel": front_channel_case,
    "token_endpoint": token_endpoint_case,
    "client_metadata": client_metadata_case,
}


def allowed_5xx(case: dict[str, Any]) -> set[int]:
    """503 where the case expects it (Access or the store out of reach); no other 5xx, ever."""
    expected = [step["expect"] for step in case.get("steps", [])] + [case.get("expect", {})]
    return {503} if any(expect.get("status") == 503 for expect in expected) else set()


def corpus_params() -> list[Any]:
    return [pytest.param(case, id=f"{case['family']}:{case['name']}") for case in ALL_CASES]


@pytest.mark.anyio
@pytest.mark.parametrize("case", corpus_params())
async def test_case(case: dict[str, Any], sites: dict[str, Site], documents: DocumentServer, case_log: CaseLog) -> None:
    variant = case.get("variant", "base")
    async with contextlib.AsyncExitStack() as stack:
        if variant == "fresh":
            site = await stack.enter_async_context(started_site(VARIANTS["fresh"], documents))
        else:
            site = sites[variant]
            stack.callback(site.reset)
        run = Run(case, site, documents)
        stack.push_async_callback(run.aclose)
        await RUNNERS[case["family"]](run, case, case_log)
        run.check_invariants(case_log, allowed_5xx(case))
