"""The consent step: the page, its CSRF value, the cookie that binds a login to the browser that approved it, and the
optional remembered consent.

The browser cookie holds a random value (`mag_br_...`) set at /authorize. The consent form carries the pending
authorization sealed (`request`) and a CSRF value (`csrf`) that is an HMAC of the browser value and the request's
nonce: a form posted from another browser, or without its CSRF value, is refused. The upstream transaction keeps
only the browser value's hash, which the callback compares in constant time. Over https the cookies are
`__Host-` prefixed and `Secure`; on an `http://` loopback public URL (development, tests) the same without either,
which browsers do not reliably keep over http.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from html import escape
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from starlette.requests import Request
from starlette.responses import Response

from .clients import is_loopback_redirect, redirect_shown
from .config import OAuthConfig
from .crypto import DecryptionError, ValueCipher
from .records import BROWSER_PREFIX, ClientRecord, Record, mint, well_formed
from .web import page

# A consent page is good for this long; remembered consent for this long.
CONSENT_PAGE_TTL = 600
REMEMBER_CONSENT_FOR = 30 * 86_400
MAX_REMEMBERED = 16
_COOKIE_LIMIT = 3500


@dataclass(frozen=True, slots=True)
class PendingAuthorization(Record):
    """A validated /authorize request waiting for the person's decision (sealed into the consent form)."""

    client_id: str
    redirect_uri: str
    redirect_uri_sent: bool
    client_state: str | None = field(repr=False)
    code_challenge: str
    scopes: tuple[str, ...]
    resource: str
    nonce: str = field(repr=False)
    expires_at: float


def _derived_key(secret_key: str, purpose: str) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=b"mcp-access-guard/v1/" + purpose.encode()).derive(
        secret_key.encode()
    )


def browser_hash(browser: str) -> str:
    return hashlib.sha256(browser.encode()).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ConsentKeys:
    """The keys and cookie names of the consent step, derived from `secret_key`."""

    def __init__(self, config: OAuthConfig) -> None:
        self.config = config
        secure = config.public_url.startswith("https://")
        prefix = "__Host-" if secure else ""
        self.browser_cookie = f"{prefix}mag_browser"
        self.remembered_cookie = f"{prefix}mag_consent"
        self._attributes = "; Path=/; HttpOnly; SameSite=Lax" + ("; Secure" if secure else "")
        self._csrf_key = _derived_key(config.secret_key, "consent-csrf")
        self._remember_key = _derived_key(config.secret_key, "remembered-consent")
        self._requests = ValueCipher(config.secret_key, "consent-request")

    # -- the browser binding ----------------------------------------------------------------------------------

    def browser(self, request: Request) -> str | None:
        value = request.cookies.get(self.browser_cookie)
        return value if value is not None and well_formed(value, BROWSER_PREFIX) else None

    def new_browser(self) -> str:
        return mint(BROWSER_PREFIX)

    def set_browser(self, response: Response, browser: str) -> None:
        response.headers.append("Set-Cookie", f"{self.browser_cookie}={browser}{self._attributes}")

    def csrf(self, browser: str, nonce: str) -> str:
        return _b64(hmac.new(self._csrf_key, f"{browser}|{nonce}".encode(), hashlib.sha256).digest())

    def csrf_matches(self, presented: str | None, browser: str, nonce: str) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.csrf(browser, nonce).encode())

    # -- the pending request ------------------------------------------------------------------------------------

    def seal(self, pending: PendingAuthorization) -> str:
        return _b64(self._requests.encrypt(pending.to_bytes(), bound_to="consent"))

    def open(self, sealed: str | None) -> PendingAuthorization | None:
        """The pending authorization a consent form carries, if it is ours and not expired."""
        if not sealed or len(sealed) > 8192:
            return None
        try:
            pending = PendingAuthorization.from_bytes(self._requests.decrypt(_unb64(sealed), bound_to="consent"))
        except (DecryptionError, ValueError, TypeError):
            return None
        return pending if pending.expires_at > time.time() else None

    # -- remembered consent ---------------------------------------------------------------------------------------

    def remembered(self, request: Request, client_id: str, redirect_uri: str) -> bool:
        entry = [client_id, _redirect_digest(redirect_uri)]
        return any(item[:2] == entry for item in self._remembered_entries(request))

    def remember(self, request: Request, response: Response, client_id: str, redirect_uri: str) -> None:
        """Add (client, redirect URI) to the signed cookie, newest first, dropping the oldest beyond its bounds."""
        now = int(time.time())
        entry = [client_id, _redirect_digest(redirect_uri)]
        entries: list[list[object]] = [[*entry, now + REMEMBER_CONSENT_FOR]]
        entries += [item for item in self._remembered_entries(request) if item[:2] != entry]
        value = ""
        while entries:
            entries = entries[:MAX_REMEMBERED]
            payload = _b64(json.dumps(entries, separators=(",", ":")).encode())
            value = f"{payload}.{self._sign(payload)}"
            if len(value) <= _COOKIE_LIMIT:
                break
            entries = entries[:-1]
        response.headers.append(
            "Set-Cookie", f"{self.remembered_cookie}={value}{self._attributes}; Max-Age={REMEMBER_CONSENT_FOR}"
        )

    def _remembered_entries(self, request: Request) -> list[list[object]]:
        value = request.cookies.get(self.remembered_cookie)
        if not value or len(value) > _COOKIE_LIMIT:
            return []
        payload, _, signature = value.partition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return []
        try:
            entries = json.loads(_unb64(payload))
        except ValueError:
            return []
        now = time.time()
        if not isinstance(entries, list):
            return []
        return [
            item
            for item in entries
            if isinstance(item, list) and len(item) == 3 and isinstance(item[2], int) and item[2] > now
        ]

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._remember_key, payload.encode(), hashlib.sha256).digest())


def _redirect_digest(redirect_uri: str) -> str:
    return hashlib.sha256(redirect_uri.encode()).hexdigest()[:32]


# -- the page -------------------------------------------------------------------------------------------------------


def consent_page(
    config: OAuthConfig, client: ClientRecord, pending: PendingAuthorization, *, sealed: str, csrf: str
) -> Response:
    """One form, POSTed to /consent: the sealed request and the CSRF value in hidden inputs, and two submit
    buttons named `decision` (approve, deny). Everything the client supplied is escaped."""
    name = client.name or "An unnamed app"
    server = urlsplit(config.public_url).netloc
    facts = [
        ("After you sign in, you are sent back to", escape(redirect_shown(pending.redirect_uri))),
        ("It will act as you on", f"<code>{escape(config.resource)}</code>"),
        ("Access requested", escape(", ".join(pending.scopes)) if pending.scopes else "use of this server's tools"),
    ]
    if client.client_id.startswith("https://"):
        facts.insert(1, ("The app is described at", escape(urlsplit(client.client_id).netloc)))
    listing = "\n".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in facts)
    warning = ""
    if all(is_loopback_redirect(uri) for uri in client.redirect_uris):
        warning = (
            '<p class="warning">This app receives the sign-in on this computer. Approve only if you started this '
            "sign-in yourself, just now, from an app on this computer.</p>\n"
        )
    body = (
        f"<h1>Allow {escape(name)} to use {escape(server)}?</h1>\n"
        f"<p><strong>{escape(name)}</strong> (the name the app gave itself) asks to use this MCP server as you.</p>\n"
        f"<dl>\n{listing}\n</dl>\n{warning}"
        '<form method="post" action="/consent">\n'
        f'<input type="hidden" name="request" value="{escape(sealed)}">\n'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">\n'
        '<button type="submit" name="decision" value="approve">Approve</button>\n'
        '<button type="submit" name="decision" value="deny">Deny</button>\n'
        "</form>"
    )
    return page(f"Allow {name}?", body)
