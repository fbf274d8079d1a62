"""The outermost layer: only listed paths get through; everything else is a 404 before any other layer runs."""

from __future__ import annotations

import re
from collections.abc import Iterable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..audit import log_decision

LAYER = "paths"
HEALTH_PATH = "/health"

# Every byte a path may hold: RFC 3986 `pchar` and "/", minus "%" and ";". There is no percent-decoding at all, so
# the bytes on the wire, the decoded `path` and what we match are one and the same string; an escape of anything
# (even an unreserved character) is refused rather than decoded into a path that might be allowed. ";" is refused
# because some servers and proxies treat `/mcp;x` as `/mcp`. Control bytes, spaces, "\", non-ASCII, "#" and "?"
# in the path are all outside this set.
_PATH_CHARACTERS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@/]*")


def _refusal_reason(path: str) -> str | None:
    """Why `path` is not a whole, normalised path, or None when it is one."""
    if not path.startswith("/"):
        return "not_absolute"
    if "%" in path:
        return "percent_encoded"
    if ";" in path:
        return "path_parameter"
    if not _PATH_CHARACTERS.fullmatch(path):
        return "bad_character"
    segments = path.split("/")[1:]
    # A trailing slash is an empty last segment: matched literally (so `/mcp/` only where listed), never removed.
    if "" in segments[:-1]:
        return "empty_segment"
    # "." and ".." and dot runs like "..." (which some file systems shorten) mean a different path somewhere.
    if any(segment and segment.strip(".") == "" for segment in segments):
        return "dot_segment"
    return None


def _route_path(scope: Scope) -> str | None:
    """The path below `root_path`, as Starlette routes it, or None when the request is ambiguous."""
    path: str = scope["path"]
    raw_path: bytes | None = scope.get("raw_path")
    if raw_path is not None and raw_path.decode("latin-1") != path:
        return None
    root_path: str = scope.get("root_path", "")
    # Servers that put the mount prefix into `path` (uvicorn, Starlette's Mount) and those that do not both exist.
    if root_path and path.startswith(root_path) and path[len(root_path) : len(root_path) + 1] == "/":
        return path[len(root_path) :]
    return path


def parse_allow_entry(entry: str) -> tuple[str, bool]:
    """An allow-list entry -> (path, whether it allows the subtree below it); ValueError for anything else.

    `"/prefix/*"` gives `("/prefix/", True)`: `/prefix/` itself and every path below it, never `/prefix`.
    """
    path, is_subtree = (entry[:-1], True) if entry.endswith("/*") else (entry, False)
    if "*" in path or _refusal_reason(path) is not None:
        raise ValueError(f"allow list entry {entry!r} is not a whole, normalised path")
    if is_subtree and path == "/":
        raise ValueError("allow list entry '/*' would let every path through; leave the layer out to mean that")
    return path, is_subtree


class PathAllowlistMiddleware:
    """Let through only whole paths on the allow list (`"/prefix/*"` for `/prefix/` and the subtree below it); answer
    the rest with 404.

    With `health=True` this layer answers `GET`/`HEAD /health` itself with `{"status":"ok"}`, with no credential,
    so a health check never reaches the MCP app.
    """

    def __init__(self, app: ASGIApp, allow: Iterable[str] = ("/mcp", HEALTH_PATH), *, health: bool = False) -> None:
        exact: set[str] = set()
        subtrees: list[str] = []
        for entry in allow:
            path, is_subtree = parse_allow_entry(entry)
            if is_subtree:
                subtrees.append(path)
            else:
                exact.add(path)
        self.app = app
        self.exact_paths = frozenset(exact)
        # Each listed path with the only `raw_path` that, sent with it, needs no further check (see `__call__`).
        self._exact_raw_paths = {path: path.encode("latin-1") for path in exact}
        self.subtree_prefixes = tuple(subtrees)
        self.health = health

    def is_allowed(self, path: str) -> bool:
        return path in self.exact_paths or any(path.startswith(prefix) for prefix in self.subtree_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        path = scope["path"]
        listed_raw_path = self._exact_raw_paths.get(path)
        if listed_raw_path is not None and scope.get("raw_path") == listed_raw_path and not scope.get("root_path"):
            # A listed path, sent as exactly those bytes, with no mount prefix: it was validated when the list was
            # built, so the checks below could only agree. The usual request takes this branch.
            if self.health and path == HEALTH_PATH:
                await self._answer_health(scope, receive, send)
            else:
                log_decision(scope, layer=LAYER, decision="allow", reason="path_allowed")
                await self.app(scope, receive, send)
            return

        path = _route_path(scope)
        if path is None:
            await self._refuse(scope, receive, send, "raw_path_mismatch")
        elif (reason := _refusal_reason(path)) is not None:
            await self._refuse(scope, receive, send, reason)
        elif self.health and path == HEALTH_PATH:
            await self._answer_health(scope, receive, send)
        elif not self.is_allowed(path):
            await self._refuse(scope, receive, send, "not_listed")
        else:
            log_decision(scope, layer=LAYER, decision="allow", reason="path_allowed")
            await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, reason: str) -> None:
        log_decision(scope, layer=LAYER, decision="deny", reason=reason)
        await JSONResponse({"error": "not_found"}, status_code=404)(scope, receive, send)

    async def _answer_health(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            log_decision(scope, layer=LAYER, decision="allow", reason="health")
            await JSONResponse({"status": "ok"})(scope, receive, send)
            return
        log_decision(scope, layer=LAYER, decision="deny", reason="health_method")
        response = JSONResponse({"error": "method_not_allowed"}, status_code=405, headers={"Allow": "GET, HEAD"})
        await response(scope, receive, send)
