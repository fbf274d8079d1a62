"""The innermost layer: per-caller tool policy, enforced on the JSON-RPC messages themselves.

A refused `tools/call` must look exactly like a call to a tool that does not exist, whatever the server says for
one. So it is not answered here: its name gets a random marker (`secret` becomes `secret-denied-<hex>`), the app
answers for that name in its own words, status and format, and the marker is removed from the answer. Prompts and
resources (marker in front of the URI, so no URI template matches it) work the same way when the policy covers them.

`tools/list` (and the prompt and resource listings) are filtered in the response, JSON or SSE, per caller.

Every POST body is read (bounded) and parsed strictly before the app sees it, because what the app would parse is
what must be judged: anything that two parsers could read differently is refused with a 4xx JSON-RPC error.
Mount this layer around the MCP endpoint; it reads every POST that reaches it.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mcp.shared.inbound import (
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    NAME_BEARING_METHODS,
    decode_header_value,
    encode_header_value,
)
from mcp_types import HEADER_MISMATCH, INVALID_PARAMS, INVALID_REQUEST
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from ..audit import log_decision
from ..identity import AccessIdentity, current_identity
from ..jsonrpc import (
    DEFAULT_MAX_BODY_BYTES,
    ClientGone,
    RejectedRequest,
    Rewrite,
    SSERewriter,
    StreamingReplace,
    listing_filter,
    mark_string,
    parse_json_body,
    read_body,
    replaying,
    rewrite_json_body,
)
from ..policy import Family, ToolPolicy

LAYER = "tool_policy"

# method -> (family, the params key naming the target, whether the marker goes in front)
_TARGETED: dict[str, tuple[Family, str, bool]] = {
    "tools/call": ("tool", "name", False),
    "prompts/get": ("prompt", "name", False),
    "resources/read": ("resource", "uri", True),
}
# method -> (family, the result key holding the list, the key naming each entry)
_LISTINGS: dict[str, tuple[Family, str, str]] = {
    "tools/list": ("tool", "tools", "name"),
    "prompts/list": ("prompt", "prompts", "name"),
    "resources/list": ("resource", "resources", "uri"),
    "resources/templates/list": ("resource", "resourceTemplates", "uriTemplate"),
}
_GUARDED_METHODS = frozenset(_TARGETED) | frozenset(_LISTINGS)
_NOT_A_LETTER = re.compile(r"[^a-z]")
_GUARDED_LETTERS = frozenset(_NOT_A_LETTER.sub("", method) for method in _GUARDED_METHODS)


@dataclass(frozen=True, slots=True)
class _Verdict:
    """What to do with one inspected request: forward `body` and rewrite the answer with `rewrite`, if any."""

    body: bytes
    rewrite: Rewrite | None = None
    marker: bytes | None = None
    mcp_name: str | None = None


class ToolPolicyMiddleware:
    """Enforce a `ToolPolicy` on any MCP server behind it, for the identity `current_identity()` gives."""

    def __init__(self, app: ASGIApp, policy: ToolPolicy, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.policy = policy
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            # JSON-RPC over a websocket is not inspected here, so it is not let through either.
            log_decision(scope, layer=LAYER, decision="deny", reason="websocket", principal=_principal())
            await WebSocketClose(code=1008)(scope, receive, send)
            return
        # Methods are case-sensitive, but a server that folds them must not see an uninspected POST.
        if scope["type"] != "http" or scope["method"].upper() != "POST":
            await self.app(scope, receive, send)
            return

        headers = _RequestHeaders(scope["headers"])
        identity = current_identity()
        try:
            _refuse_other_encodings(headers)
            body = await read_body(receive, self.max_body_bytes, headers.content_length)
            verdict = self._inspect(headers, body, identity, scope)
        except ClientGone:
            return
        except RejectedRequest as refusal:
            log_decision(scope, layer=LAYER, decision="deny", reason=refusal.reason, principal=_principal(identity))
            await _send_refusal(refusal, send)
            return

        if verdict is None:
            await self.app(scope, replaying(body, receive), send)
            return
        if verdict.body is not body or verdict.mcp_name is not None:
            scope = dict(scope, headers=_forwarded_headers(scope, verdict))
        if verdict.rewrite is None and verdict.marker is None:
            await self.app(scope, replaying(verdict.body, receive), send)
        else:
            responder = _RewritingResponder(send, verdict.rewrite, verdict.marker)
            await self.app(scope, replaying(verdict.body, receive), responder.send)

    def _inspect(
        self, headers: _RequestHeaders, body: bytes, identity: AccessIdentity | None, scope: Scope
    ) -> _Verdict | None:
        """What to do with the request; None (the common case) means: forward it as it came."""
        message = parse_json_body(body)
        if isinstance(message, list):
            raise RejectedRequest(400, INVALID_REQUEST, "Batch requests are not accepted", "batch")
        if not isinstance(message, dict):
            raise RejectedRequest(400, INVALID_REQUEST, "Body must be a JSON-RPC object", "not_an_object")
        method = message.get("method")
        _check_routing_headers(headers, message, method)
        if method is None:
            return None  # a client's response to a server request: nothing to decide
        if not isinstance(method, str):
            raise RejectedRequest(400, INVALID_REQUEST, "JSON-RPC method must be a string", "method_not_string")
        if method not in _GUARDED_METHODS:
            if _looks_like_guarded(method):
                raise RejectedRequest(400, INVALID_REQUEST, "Unrecognised method spelling", "method_spelling")
            return None

        targeted = _TARGETED.get(method)
        if targeted is not None:
            return self._inspect_targeted(scope, body, message, method, targeted, identity)
        family, list_key, name_key = _LISTINGS[method]
        if "id" in message and self.policy.covers(family):
            keep = self._keeper(family, name_key, identity)
            log_decision(
                scope, layer=LAYER, decision="allow", reason="listing_filtered", principal=_principal(identity)
            )
            return _Verdict(body, rewrite=listing_filter(message["id"], list_key, keep))
        return None

    def _inspect_targeted(
        self,
        scope: Scope,
        body: bytes,
        message: dict[str, Any],
        method: str,
        targeted: tuple[Family, str, bool],
        identity: AccessIdentity | None,
    ) -> _Verdict | None:
        family, key, marker_in_front = targeted
        params = message.get("params")
        target = params.get(key) if isinstance(params, dict) else None
        if not isinstance(target, str):
            raise RejectedRequest(400, INVALID_PARAMS, f"{method} needs a string params.{key}", f"{key}_not_string")
        allowed, reason = self.policy.decide(family, target, identity)
        log_decision(
            scope,
            layer=LAYER,
            decision="allow" if allowed else "deny",
            reason=reason,
            principal=_principal(identity),
            tool=target,
        )
        if allowed:
            return None
        # Letters, digits and hyphens only: no encoder escapes them, so the app echoes the marker byte for byte.
        marker = f"-denied-{secrets.token_hex(16)}"
        marked_text = mark_string(body.decode("utf-8"), ("params", key), marker, prefix=marker_in_front)
        marked = marker + target if marker_in_front else target + marker
        return _Verdict(marked_text.encode("utf-8"), marker=marker.encode("ascii"), mcp_name=marked)

    def _keeper(self, family: Family, name_key: str, identity: AccessIdentity | None) -> Callable[[Any], bool]:
        decide = self.policy.decide  # called once per listed entry

        def keep(entry: Any) -> bool:
            name = entry.get(name_key) if isinstance(entry, dict) else None
            # An entry we cannot name is not one we can vouch for.
            return isinstance(name, str) and decide(family, name, identity)[0]

        return keep


def _principal(identity: AccessIdentity | None = None) -> str | None:
    identity = identity or current_identity()
    return identity.principal if identity is not None else None


_MCP_METHOD = MCP_METHOD_HEADER.encode("latin-1")
_MCP_NAME = MCP_NAME_HEADER.encode("latin-1")


class _RequestHeaders:
    """The request headers this layer reads, collected in one pass over the raw list (repeats kept).

    Names are compared as the raw bytes ASGI gives (lower case); only the few values read are decoded.
    """

    __slots__ = ("content_encodings", "content_length", "content_type", "mcp_methods", "mcp_names")

    def __init__(self, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.content_length: str | None = None
        self.content_type = ""
        self.content_encodings: list[str] = []
        self.mcp_methods: list[str] = []
        self.mcp_names: list[str] = []
        for name, value in raw_headers:
            if name == b"content-length":
                self.content_length = value.decode("latin-1")
            elif name == b"content-type":
                self.content_type = value.decode("latin-1")
            elif name == _MCP_METHOD:
                self.mcp_methods.append(value.decode("latin-1"))
            elif name == _MCP_NAME:
                self.mcp_names.append(value.decode("latin-1"))
            elif name == b"content-encoding":
                self.content_encodings.append(value.decode("latin-1"))


def _refuse_other_encodings(headers: _RequestHeaders) -> None:
    # The SDK reads raw UTF-8 bytes; a proxy or another server might inflate them or honour a charset first.
    # Either way the body would be read two ways, so only one reading is accepted.
    if headers.content_encodings and any(
        encoding.strip().lower() not in ("", "identity") for encoding in headers.content_encodings
    ):
        raise RejectedRequest(415, INVALID_REQUEST, "Content-Encoding is not accepted on requests", "content_encoding")
    if ";" not in headers.content_type:
        return
    for parameter in headers.content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise RejectedRequest(415, INVALID_REQUEST, "Only UTF-8 request bodies are accepted", "charset")


def _looks_like_guarded(method: str) -> bool:
    """Whether a server that folds case, width, separators or stray characters could read `method` as a guarded one."""
    return _NOT_A_LETTER.sub("", unicodedata.normalize("NFKC", method).casefold()) in _GUARDED_LETTERS


def _check_routing_headers(headers: _RequestHeaders, message: dict[str, Any], method: Any) -> None:
    """`Mcp-Method` and `Mcp-Name` are hints a server or proxy may route on: they must say what the body says."""
    if not headers.mcp_methods and not headers.mcp_names:
        return
    for header, values in ((MCP_METHOD_HEADER, headers.mcp_methods), (MCP_NAME_HEADER, headers.mcp_names)):
        if len(values) > 1:
            raise RejectedRequest(400, HEADER_MISMATCH, f"{header} header appears more than once", "header_repeated")
    if headers.mcp_methods and headers.mcp_methods[0] != method:
        raise _header_mismatch(MCP_METHOD_HEADER)
    name_key = NAME_BEARING_METHODS.get(method) if isinstance(method, str) else None
    if headers.mcp_names and name_key is not None:
        params = message.get("params")
        body_value = params.get(name_key) if isinstance(params, dict) else None
        if decode_header_value(headers.mcp_names[0]) != body_value:
            raise _header_mismatch(MCP_NAME_HEADER)


def _header_mismatch(header: str) -> RejectedRequest:
    return RejectedRequest(400, HEADER_MISMATCH, f"{header} header does not match the request body", "header_mismatch")


def _forwarded_headers(scope: Scope, verdict: _Verdict) -> list[tuple[bytes, bytes]]:
    headers = MutableHeaders(raw=list(scope["headers"]))
    if "content-length" in headers:
        headers["content-length"] = str(len(verdict.body))
    if verdict.mcp_name is not None and MCP_NAME_HEADER in headers:
        headers[MCP_NAME_HEADER] = encode_header_value(verdict.mcp_name)
    return headers.raw


async def _send_refusal(refusal: RejectedRequest, send: Send) -> None:
    body = refusal.body()
    await send(
        {
            "type": "http.response.start",
            "status": refusal.status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _RewritingResponder:
    """Wraps `send`: passes the app's response on with `rewrite` applied to its JSON or SSE messages, or with
    `marker` removed from every byte of it. A body with a length is held until complete so the length can be fixed.
    """

    def __init__(self, send: Send, rewrite: Rewrite | None, marker: bytes | None) -> None:
        self._send = send
        self._rewrite = rewrite
        self._marker = marker
        self._start: Message | None = None
        self._held = bytearray()
        self._stream: SSERewriter | StreamingReplace | None = None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            await self._on_start(message)
        elif message["type"] == "http.response.body" and (self._stream is not None or self._start is not None):
            await self._on_body(message)
        else:
            await self._send(message)

    async def _on_start(self, message: Message) -> None:
        headers = MutableHeaders(raw=list(message.get("headers", [])))
        streaming = headers.get("content-type", "").split(";")[0].strip().lower() == "text/event-stream"
        if self._marker is not None and (streaming or "content-length" not in headers):
            self._stream = StreamingReplace(self._marker)
        elif self._rewrite is not None and streaming:
            self._stream = SSERewriter(self._rewrite)
        elif self._rewrite is not None and not _is_json(headers):
            await self._send(message)
            return
        if self._stream is not None:
            if "content-length" in headers:
                del headers["content-length"]
            await self._send({**message, "headers": headers.raw})
            return
        self._start = message

    async def _on_body(self, message: Message) -> None:
        chunk: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        if self._stream is not None:
            out = self._stream.feed(chunk) + (b"" if more else self._stream.close())
            if out or not more:
                await self._send({"type": "http.response.body", "body": out, "more_body": more})
            return
        self._held += chunk
        if more:
            return
        body = bytes(self._held)
        if self._marker is not None:
            body = body.replace(self._marker, b"")
        elif self._rewrite is not None:
            body = rewrite_json_body(body, self._rewrite)
        assert self._start is not None
        headers = MutableHeaders(raw=list(self._start.get("headers", [])))
        headers["content-length"] = str(len(body))
        await self._send({**self._start, "headers": headers.raw})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})


def _is_json(headers: MutableHeaders) -> bool:
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")
