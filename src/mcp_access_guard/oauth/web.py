"""What the authorization server's endpoints share: reading bounded requests, and the few shapes of answer (JSON for
clients, a page for a person, a redirect back to a client).

Nothing a request carried is echoed in a body: error descriptions and page texts are fixed strings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from html import escape
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

MAX_FORM_BYTES = 16 * 1024
MAX_QUERY_BYTES = 8 * 1024

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# Every page: never framed, no scripts, nothing fetched; no form-action (Chromium applies it to the whole redirect
# chain after the consent form is submitted, to Access and back to the client, which would break the flow). No
# referrer leaves our origin; not `no-referrer`, under which browsers send the consent POST with `Origin: null`,
# which the same-origin check must refuse.
PAGE_HEADERS = {
    **NO_STORE,
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;color:#222}}
.warning{{background:#fff4e5;border-left:4px solid #f0a020;padding:.5rem 1rem}}
button{{font:inherit;padding:.5rem 1.25rem;margin-right:.5rem}}code{{word-break:break-all}}</style>
</head><body>
{body}
</body></html>
"""


class BadRequest(Exception):
    """The request cannot be read: too large, repeated parameters, the wrong content type. `reason` is logged."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def query_params(request: Request) -> dict[str, str]:
    """The query as a dict; a parameter given twice is refused (RFC 6749 3.1)."""
    return _unique(request.scope.get("query_string", b"").decode("latin-1"), MAX_QUERY_BYTES)


async def form_params(request: Request) -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body of at most MAX_FORM_BYTES, as a dict of unique parameters."""
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise BadRequest("not_form_encoded")
    body = await read_body(request, MAX_FORM_BYTES)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("not_utf8") from None
    return _unique(text, MAX_FORM_BYTES)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BadRequest("body_too_large", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest("body_too_large", 413)
    return bytes(body)


def _unique(text: str, limit: int) -> dict[str, str]:
    if len(text) > limit:
        raise BadRequest("too_large", 413)
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, max_num_fields=100)
    except ValueError:
        raise BadRequest("too_many_parameters") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise BadRequest("repeated_parameter")
        params[name] = value
    return params


def json_response(document: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(document, separators=(",", ":")).encode()
    return Response(body, status, headers={**NO_STORE, **(headers or {})}, media_type="application/json")


def oauth_error(error: str, description: str, status: int = 400, headers: Mapping[str, str] | None = None) -> Response:
    """RFC 6749 5.2: `error` and a fixed, short `error_description`."""
    return json_response({"error": error, "error_description": description}, status, headers)


def page(title: str, body_html: str, status: int = 200, headers: Mapping[str, str] | None = None) -> HTMLResponse:
    """A page for a person. `body_html` must already be escaped."""
    return HTMLResponse(
        _PAGE.format(title=escape(title), body=body_html), status, headers={**PAGE_HEADERS, **(headers or {})}
    )


def error_page(message: str, status: int = 400) -> HTMLResponse:
    """A refusal shown in the browser: used before the client's redirect URI is known good, so never a redirect."""
    return page("Sign-in stopped", f"<h1>Sign-in stopped</h1>\n<p>{escape(message)}</p>", status)


def redirect(location: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        status_code=302, headers={**NO_STORE, "Location": location, "Referrer-Policy": "no-referrer", **(headers or {})}
    )


def with_query(uri: str, params: Mapping[str, str | None]) -> str:
    """`uri` with `params` (those not None) added to its query, RFC 6749 4.1.2 style."""
    query = urlencode({name: value for name, value in params.items() if value is not None})
    separator = "&" if urlsplit(uri).query else "?"
    return f"{uri}{separator}{query}"
