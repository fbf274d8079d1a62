"""`mcp-access-guard serve MODULE:APP`: any ASGI MCP app (or an MCP server object) behind the whole `guard()` stack,
run by uvicorn. `--dev` runs it against an embedded `LocalAccess` issuer and prints ready-to-paste client commands.

With several workers uvicorn needs an import string, so each worker rebuilds the guarded app through
`app_from_environment`, from the variables the serving process sets before it starts uvicorn. Each worker keeps its
own key cache; nothing is shared between them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import shlex
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import uvicorn
from starlette.types import ASGIApp

from .config import AccessConfig, ConfigError
from .settings import GuardConfig
from .stack import guard
from .testing import LocalAccess

# How the serving process tells each worker what to build (see `app_from_environment`).
APP_VARIABLE = "MCP_ACCESS_GUARD_APP"
APP_DIR_VARIABLE = "MCP_ACCESS_GUARD_APP_DIR"
CONFIG_VARIABLE = "MCP_ACCESS_GUARD_CONFIG"
DEV_ISSUER_VARIABLE = "MCP_ACCESS_GUARD_DEV_ISSUER"

DEFAULT_DEV_STATE = ".mcp-access-guard-dev.json"
DEV_USER = "alice@example.com"
DEV_SERVICE_TOKEN = "dev-robot.access"
DEV_TOKEN_SECONDS = 3600
# The Inspector's 2.x line; the standalone `inspector-cli` 1.0.3 package is broken.
INSPECTOR_PACKAGE = "@modelcontextprotocol/inspector@2"
# One request that lists tools with no session: the modern protocol era carries the version in every request.
MODERN_PROTOCOL = "2026-07-28"

CONFIG_HELP = """\
Where the guard's settings come from:
  --config FILE   the file (shaped like examples/guard.toml) decides every setting it names; the environment
                  (TEAM_DOMAIN, POLICY_AUD, GUARD_SECRETS, ...) fills in every setting the file leaves out.
  no --config     every setting comes from the environment (TEAM_DOMAIN, POLICY_AUD, GUARD_* ...; see the README).
  --dev           as above, except that Access is always the embedded dev issuer: the file's [access] team and
                  audience and TEAM_DOMAIN/POLICY_AUD are replaced by it (the file's other [access] keys still apply).
"""


class ServeError(Exception):
    """Input that cannot be served; the message is one line that says what is wrong."""


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "app", metavar="MODULE:APP", help="an ASGI app, or an MCP server object with streamable_http_app()"
    )
    parser.add_argument("--config", metavar="FILE", help="a guard.toml (see the precedence below)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    parser.add_argument("--workers", type=_positive, default=1, help="worker processes (default: %(default)s)")
    parser.add_argument(
        "--proxy-headers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="trust X-Forwarded-Proto/For from --forwarded-allow-ips, as uvicorn does (default: on)",
    )
    parser.add_argument(
        "--forwarded-allow-ips", metavar="IPS", help="who may set proxy headers (uvicorn's default: 127.0.0.1)"
    )
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument(
        "--dev",
        action="store_true",
        help="local use only: run against an embedded Access issuer, print client commands",
    )
    parser.add_argument(
        "--dev-state",
        metavar="PATH",
        default=DEFAULT_DEV_STATE,
        help="with --dev: where the dev issuer state (with its key) is kept for `token` (default: %(default)s)",
    )


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected 1 or more")
    return number


# -- building the guarded app ---------------------------------------------------------------------------------------


def import_app(spec: str, app_dir: str) -> ASGIApp:
    """`MODULE:ATTR` -> an ASGI app, imported the way uvicorn does (with `app_dir` first on sys.path). An object with
    `streamable_http_app()` (the SDK's MCPServer, FastMCP) is served through that app."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ServeError(f"{spec!r}: expected MODULE:APP, e.g. examples.reference_server:mcp")
    directory = os.path.abspath(app_dir)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(f"{exc.name}.")):
            raise ServeError(f"cannot import {module_name!r}: no such module (looked in {directory} too)") from None
        raise ServeError(f"importing {module_name!r} failed: {exc}") from None
    except Exception as exc:  # the user's module failed while loading: say so in one line
        raise ServeError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    for name in attribute.split("."):
        if not hasattr(target, name):
            raise ServeError(f"{spec!r}: {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, name)
    http_app = getattr(target, "streamable_http_app", None)
    if callable(http_app):
        target = http_app()
    if not callable(target):
        raise ServeError(f"{spec!r} is neither an ASGI app nor an MCP server with streamable_http_app()")
    return cast(ASGIApp, target)


def load_config(config_path: str | None, environ: Mapping[str, str], *, dev_issuer: bool) -> GuardConfig:
    """`GuardConfig.load`'s precedence (the file, then the environment for what it leaves out). With `dev_issuer`,
    the team and audience are the embedded issuer's, which the serving process put in TEAM_DOMAIN/POLICY_AUD; the
    other Access settings stay as configured."""
    config = GuardConfig.load(config_path, environ)
    if not dev_issuer:
        return config
    dev_access = AccessConfig.from_env(environ)
    if config.access is not None:
        dev_access = dataclasses.replace(
            config.access,
            team_domain=dev_access.team_domain,
            audiences=dev_access.audiences,
            certs_url=dev_access.certs_url,
        )
    return dataclasses.replace(config, access=dev_access)


def build_guarded_app(environ: Mapping[str, str]) -> ASGIApp:
    app = import_app(environ[APP_VARIABLE], environ.get(APP_DIR_VARIABLE, "."))
    config = load_config(
        environ.get(CONFIG_VARIABLE) or None, environ, dev_issuer=environ.get(DEV_ISSUER_VARIABLE) == "1"
    )
    return guard(app, config)


def app_from_environment() -> ASGIApp:
    """The uvicorn factory each worker calls (`--workers N`): the same guarded app, built in the worker."""
    return build_guarded_app(os.environ)


# -- running it -----------------------------------------------------------------------------------------------------


def run_serve(args: argparse.Namespace, echo: Callable[[str], None] = print) -> int:
    issuer: LocalAccess | None = None
    state_path: Path | None = None
    # uvicorn shuts down gracefully on SIGTERM, then raises it again under the handler it found: make that an exit
    # that still runs the clean-up below (the default handler would end the process with the dev state left behind).
    previous_sigterm = signal.signal(signal.SIGTERM, _exit_quietly)
    try:
        if args.dev:
            issuer = LocalAccess().start()
            # The served app (and every worker) reads its Access settings from here, as a real deployment does.
            os.environ.update(TEAM_DOMAIN=issuer.url, POLICY_AUD=issuer.audience)
            os.environ.pop("ACCESS_CERTS_URL", None)
        os.environ.update(
            {
                APP_VARIABLE: args.app,
                APP_DIR_VARIABLE: os.getcwd(),
                CONFIG_VARIABLE: args.config or "",  # workers share this working directory
                DEV_ISSUER_VARIABLE: "1" if args.dev else "",
            }
        )
        # Built here even with several workers: a bad app or configuration fails now, in one line.
        app = build_guarded_app(os.environ)
        if issuer is not None:
            state_path = Path(args.dev_state)
            try:
                issuer.save(state_path)
            except OSError as exc:
                raise ServeError(f"cannot write the dev state file {args.dev_state}: {exc.strerror}") from None
            echo(dev_instructions(issuer, args, state_path))
            sys.stdout.flush()
        _run_uvicorn(app, args)
    except (ServeError, ConfigError) as exc:
        print(f"mcp-access-guard serve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass  # uvicorn has shut down cleanly and re-raised the Ctrl-C it caught
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        if state_path is not None:
            state_path.unlink(missing_ok=True)
        if issuer is not None:
            issuer.stop()
    return 0


def _exit_quietly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _run_uvicorn(app: ASGIApp, args: argparse.Namespace) -> None:
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "proxy_headers": args.proxy_headers,
        "log_level": args.log_level,
        "lifespan": "on",
    }
    if args.forwarded_allow_ips:
        options["forwarded_allow_ips"] = args.forwarded_allow_ips
    if args.workers > 1:
        uvicorn.run(f"{__name__}:app_from_environment", factory=True, workers=args.workers, **options)
    else:
        uvicorn.run(app, **options)


# -- what --dev prints ------------------------------------------------------------------------------------------------


def dev_instructions(issuer: LocalAccess, args: argparse.Namespace, state_path: Path) -> str:
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host  # noqa: S104 (a wildcard is not a URL)
    url = f"http://{f'[{host}]' if ':' in host else host}:{args.port}/mcp"
    user = issuer.user_token(DEV_USER, expires_in=DEV_TOKEN_SECONDS)
    robot = issuer.service_token(DEV_SERVICE_TOKEN, expires_in=DEV_TOKEN_SECONDS)
    lines = [
        "!" * 100,
        "!! DEV MODE, FOR LOCAL USE ONLY: a throwaway Access issuer runs in this process, and its private key is in",
        f"!! {state_path} until it stops. Anyone holding that file can mint tokens this server accepts.",
        "!" * 100,
        "",
        f"Serving {args.app} at {url} behind the full guard stack ({args.workers} worker(s)).",
        f"Dev Access issuer {issuer.url}, audience {issuer.audience}.",
        f"The tokens below are for {DEV_USER} and the service token {DEV_SERVICE_TOKEN}, valid for 1 hour.",
        f"Mint more: mcp-access-guard token --email bob@example.com --dev-state {shlex.quote(str(state_path))}",
        "",
        "curl (lists the tools in one request, no session):",
        f"  {curl_command(url, user)}",
        "",
        "MCP Inspector CLI (2.x; needs Node 22.19 or later):",
        f"  {inspector_command(url, user)}",
        "",
        "Claude Desktop, Cursor and other stdio clients (an mcpServers entry, through mcp-remote):",
        *(f"  {line}" for line in mcp_remote_entry(url, user).splitlines()),
        "",
        "A service token's token, to use in place of the user's in any of the above:",
        f"  {robot}",
        "",
        "Press Ctrl-C to stop.",
        "",
    ]
    return "\n".join(lines)


def tools_list_request() -> dict[str, object]:
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN_PROTOCOL,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}}


def curl_command(url: str, token: str) -> str:
    words = ["curl", "-sS", url]
    for header in (
        f"Cf-Access-Jwt-Assertion: {token}",
        "Content-Type: application/json",
        "Accept: application/json, text/event-stream",
        f"MCP-Protocol-Version: {MODERN_PROTOCOL}",
        "Mcp-Method: tools/list",
    ):
        words += ["-H", header]
    words += ["--data", json.dumps(tools_list_request(), separators=(",", ":"))]
    return shlex.join(words)


def inspector_command(url: str, token: str) -> str:
    return shlex.join(
        [
            "npx",
            "-y",
            INSPECTOR_PACKAGE,
            "--cli",
            url,
            "--transport",
            "http",
            "--header",
            f"Cf-Access-Jwt-Assertion: {token}",
            "--method",
            "tools/list",
        ]
    )


def mcp_remote_entry(url: str, token: str) -> str:
    # mcp-remote's documented form: the header value through an env variable, with no space after the colon (some
    # clients split arguments on spaces).
    entry = {
        "command": "npx",
        "args": ["-y", "mcp-remote", url, "--header", "Cf-Access-Jwt-Assertion:${CF_ACCESS_TOKEN}"],
        "env": {"CF_ACCESS_TOKEN": token},
    }
    return json.dumps({"mcpServers": {"mcp-access-guard-dev": entry}}, indent=2)
