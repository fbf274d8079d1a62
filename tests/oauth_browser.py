"""A scripted browser for OAuth mode: it walks an authorization URL as a person's browser would, following redirects
(to Access's login and back), keeping cookies, and answering the consent page by pressing one of its two buttons
(with the Origin header a browser would send).

Used by the tests as a library (`walk`) and, for external clients such as mcp-remote and the Inspector, as the
program `$BROWSER` names: `python oauth_browser.py URL` walks to the client's own callback and loads it, as the real
browser would. `OAUTH_BROWSER_DECISION=deny` presses "deny"; `OAUTH_BROWSER_DELAY` waits that many seconds first
(mcp-remote drops an answer that reaches its callback before it starts waiting).
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx

MAX_STEPS = 20


@dataclass
class Form:
    action: str | None = None
    method: str = "get"
    hidden: dict[str, str] = field(default_factory=dict)
    buttons: dict[str, list[str]] = field(default_factory=dict)


class _FormParser(HTMLParser):
    """The page's forms: action, method, hidden inputs and named submit buttons."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.forms.append(Form(action=values.get("action"), method=values.get("method", "get").lower()))
        elif self.forms and tag in ("input", "button"):
            kind = values.get("type", "submit" if tag == "button" else "text").lower()
            name = values.get("name")
            if not name:
                return
            if kind == "hidden":
                self.forms[-1].hidden[name] = values.get("value", "")
            elif kind == "submit":
                self.forms[-1].buttons.setdefault(name, []).append(values.get("value", ""))


@dataclass
class Walk:
    """Where the walk ended, and what it passed through."""

    final_url: str
    visited: list[str]
    consent_pages: int
    last_response: httpx.Response | None


def parse_forms(html: str) -> list[Form]:
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


async def walk(
    url: str,
    *,
    decision: str | None = "approve",
    stop_at: str | None = None,
    http: httpx.AsyncClient | None = None,
) -> Walk:
    """Follow `url` until a redirect leads to `stop_at` (returned, not loaded) or a page that is neither a redirect nor
    a consent form. `decision=None` stops at the consent page instead of answering it."""
    own = http is None
    client = http or httpx.AsyncClient(timeout=30)
    visited: list[str] = []
    consent_pages = 0
    method, data, headers = "GET", None, {}
    response: httpx.Response | None = None
    try:
        for _ in range(MAX_STEPS):
            if stop_at is not None and url.startswith(stop_at):
                return Walk(url, visited, consent_pages, response)
            visited.append(url)
            response = await client.request(method, url, data=data, headers=headers, follow_redirects=False)
            method, data, headers = "GET", None, {}
            if response.is_redirect:
                url = urljoin(url, response.headers["location"])
                continue
            forms = [
                form for form in parse_forms(response.text) if form.method == "post" and "decision" in form.buttons
            ]
            if not forms or decision is None:
                return Walk(url, visited, consent_pages, response)
            (form,) = forms
            consent_pages += 1
            if decision not in form.buttons["decision"]:
                raise AssertionError(f"the consent page has no {decision!r} button: {form.buttons}")
            method, data = "POST", {**form.hidden, "decision": decision}
            headers = {"Origin": _form_origin(url, response)}
            url = urljoin(url, form.action or url)
        raise AssertionError(f"more than {MAX_STEPS} steps: {visited}")
    finally:
        if own:
            await client.aclose()


def _form_origin(page_url: str, page: httpx.Response) -> str:
    """The Origin a browser sends with a form POST from this page: `null` under the page's `no-referrer` policy (as
    Chromium does), its own origin otherwise."""
    if page.headers.get("referrer-policy", "").strip().lower() == "no-referrer":
        return "null"
    parts = urlsplit(page_url)
    return f"{parts.scheme}://{parts.netloc}"


async def _main(url: str) -> int:
    await asyncio.sleep(float(os.environ.get("OAUTH_BROWSER_DELAY", "0")))
    result = await walk(url, decision=os.environ.get("OAUTH_BROWSER_DECISION", "approve"))
    status = result.last_response.status_code if result.last_response is not None else 0
    print(f"oauth_browser: {len(result.visited)} steps, ended with HTTP {status}", file=sys.stderr)
    return 0 if status < 400 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(sys.argv[-1])))
