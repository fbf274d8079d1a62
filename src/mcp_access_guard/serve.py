"""`mcp-access-guard serve MODULE:APP`: any ASGI MCP app (or an MCP server object) behind the whole `guard()` stack,
run by uvicorn. `--dev` runs it against an embedded issuer, `--dev --oauth` in OAuth mode against an embedded Access
for SaaS application (`dev.py`, imported only then).

The configuration is read here, in this process, with `GuardConfig.load` (the file, then the environment for what it
leaves out). With several workers uvicorn needs an import string, so only then does this process put what to build
in the environment, and each worker rebuilds the same guarded app through `app_from_environment`. Each worker keeps
its own key cache; nothing is shared between them.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .config import AccessConfig, ConfigError, is_loopback
from .oauth.config import OAUTH_ENVIRONMENT, UPSTREAM_ENVIRONMENT
from .settings import GuardConfig
from .stack import guard

if TYPE_CHECKING:
    from .testing import LocalAccess, LocalAccessSaaS

# How the serving process tells each worker what to build (see `app_from_environment`), with --workers above 1.
APP_VARIABLE = "MCP_ACCESS_GUARD_APP"
APP_DIR_VARIABLE = "MCP_ACCESS_GUARD_APP_DIR"
CONFIG_VARIABLE = "MCP_ACCESS_GUARD_CONFIG"
DEV_ISSUER_VARIABLE = "MCP_ACCESS_GUARD_DEV_ISSUER"
DEV_AUDIENCE_VARIABLE = "MCP_ACCESS_GUARD_DEV_AUDIENCE"
DEV_OAUTH_VARIABLE = "MCP_ACCESS_GUARD_DEV_OAUTH"
# What the embedded issuers replace in the environment (each mode's own settings, so that the other mode's are not
# read beside them).
ACCESS_VARIABLES = ("TEAM_DOMAIN", "POLICY_AUD", "ACCESS_CERTS_URL")

OPEN_MODE_BANNER = """\
{bar}
!! OPEN MODE: no Cloudflare Access verification. This server answers ANYONE who reaches {url}
!! (dev mode is on, GUARD_DEV or dev = true, and no team domain and audience are configured).
!! For local experiments only: set TEAM_DOMAIN and POLICY_AUD ([access] in the file) to guard it.
{bar}""".replace("{bar}", "!" * 100)


class ServeError(Exception):
    """Input that cannot be served; the message is one line that says what is wrong."""


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


def load_config(
    config_path: str | None,
    environ: Mapping[str, str],
    *,
    dev_issuer: tuple[str, str] | None = None,
    dev_oauth: bool = False,
) -> GuardConfig:
    """`GuardConfig.load`'s precedence (the file, then the environment for what it leaves out). `dev_issuer` (its
    URL and audience) replaces the team and audience, wherever they came from; other Access settings stay.
    `dev_oauth`: the environment holds the dev Access for SaaS application's settings (`dev.saas_environment`), and
    they replace the public URL, the application, the key and the store wherever those came from; the other OAuth
    settings stay."""
    if dev_oauth:
        return GuardConfig.load(config_path, environ, over={"oauth": _dev_oauth_table(environ)})
    if dev_issuer is None:
        return GuardConfig.load(config_path, environ)
    url, audience = dev_issuer
    environ = {name: value for name, value in environ.items() if name != "ACCESS_CERTS_URL"}
    config = GuardConfig.load(config_path, {**environ, "TEAM_DOMAIN": url, "POLICY_AUD": audience})
    dev_access = AccessConfig(url, audience)
    if config.access is not None:
        dev_access = dataclasses.replace(
            config.access, team_domain=url, audiences=dev_access.audiences, certs_url=dev_access.certs_url
        )
    return dataclasses.replace(config, access=dev_access)


def _dev_oauth_table(environ: Mapping[str, str]) -> dict[str, Any]:
    """The [oauth] keys of the dev Access for SaaS application, from the variables `dev.saas_environment` set."""
    own = {key: environ[variable] for key, variable in OAUTH_ENVIRONMENT.items()}
    upstream = {key: environ[variable] for key, variable in UPSTREAM_ENVIRONMENT.items()}
    return {**own, "upstream": upstream}


def build_guarded_app(
    spec: str,
    app_dir: str,
    config_path: str | None,
    environ: Mapping[str, str],
    dev_issuer: tuple[str, str] | None,
    *,
    dev_oauth: bool = False,
) -> tuple[ASGIApp, GuardConfig]:
    app = import_app(spec, app_dir)
    config = load_config(config_path, environ, dev_issuer=dev_issuer, dev_oauth=dev_oauth)
    # In every process that serves (the workers too): the access log never carries a query string, where OAuth mode
    # has Access's code and state on /oauth/callback.
    access_log = logging.getLogger("uvicorn.access")
    if not any(isinstance(existing, WithoutQueryString) for existing in access_log.filters):
        access_log.addFilter(WithoutQueryString())
    try:
        return FreezeHeapAfterStartup(guard(app, config)), config
    except ValueError as exc:  # a layer refused a setting (a weak secret, a reserved header name)
        raise ServeError(f"the configuration cannot be served: {exc}") from None


class FreezeHeapAfterStartup:
    """`app` as it is, except that once its start-up is done every object then alive is frozen (`gc.freeze()`):
    a full garbage collection walks every object the collector tracks, the mcp SDK's 100,000 among them (some 100
    ms on a small machine, with the event loop held, every few hundred requests under load); frozen, they are
    never walked again. This process owns its heap, so it may; a library may not."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def freeze_when_started(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                gc.collect()  # what start-up left behind goes now, not frozen with the rest
                gc.freeze()
            await send(message)

        await self.app(scope, receive, freeze_when_started)


class WithoutQueryString(logging.Filter):
    """Cuts the query string off the path in uvicorn's access-log lines (`client - "METHOD path HTTP/v" status`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].partition("?")[0], *args[3:])
        return True


def app_from_environment() -> ASGIApp:
    """The uvicorn factory each worker calls (`--workers N`): the same guarded app, built in the worker."""
    environ = os.environ
    issuer = environ.get(DEV_ISSUER_VARIABLE)
    dev_issuer = (issuer, environ[DEV_AUDIENCE_VARIABLE]) if issuer else None
    app, _ = build_guarded_app(
        environ[APP_VARIABLE],
        environ[APP_DIR_VARIABLE],
        environ.get(CONFIG_VARIABLE) or None,
        environ,
        dev_issuer,
        dev_oauth=environ.get(DEV_OAUTH_VARIABLE) == "1",
    )
    return app


# -- running it -----------------------------------------------------------------------------------------------------


def run_serve(args: argparse.Namespace) -> int:
    # uvicorn shuts down gracefully on SIGTERM, then raises it again under the handler it found: make that an exit
    # that still runs the clean-up below (the default handler would end the process with the dev state left behind).
    previous_sigterm = signal.signal(signal.SIGTERM, _exit_quietly)
    try:
        with ExitStack() as cleanup:
            _serve(args, cleanup)
    except (ServeError, ConfigError) as exc:
        print(f"mcp-access-guard serve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass  # uvicorn has shut down cleanly and re-raised the Ctrl-C it caught
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
    return 0


def _serve(args: argparse.Namespace, cleanup: ExitStack) -> None:
    issuer: LocalAccess | None = None
    saas: LocalAccessSaaS | None = None
    dev_issuer = None
    if args.oauth and not args.dev:
        raise ServeError(
            "--oauth goes with --dev (an embedded Access for SaaS login); a real deployment is put in OAuth mode by "
            "its settings (ACCESS_CLIENT_ID, ... or an [oauth] table)"
        )
    if args.dev:
        what = "a login that signs in anyone" if args.oauth else "an issuer whose key is in a local file"
        _refuse_off_loopback(args, f"--dev ({what})")
        for name in ACCESS_VARIABLES:
            os.environ.pop(name, None)
        if args.oauth:
            from .dev import dev_public_url, running_saas, saas_environment

            public_url = dev_public_url(args)
            saas = cleanup.enter_context(running_saas(public_url))
            # One worker keeps its grants in memory; several share a SQLite file that goes when the server stops.
            store = "memory:"
            if args.workers > 1:
                scratch = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="mcp-access-guard-dev-"))
                store = f"sqlite:///{Path(scratch, 'oauth.sqlite3').resolve()}"
            # As a deployment sets them: the served app, and every worker, read the same settings.
            os.environ.update(saas_environment(saas, public_url, store))
        else:
            from .dev import running_issuer

            issuer = cleanup.enter_context(running_issuer())
            dev_issuer = (issuer.url, issuer.audience)
            # The served app may read its Access settings from the environment itself, as a real deployment does.
            os.environ.update(TEAM_DOMAIN=issuer.url, POLICY_AUD=issuer.audience)
    # Built here even with several workers: a bad app or configuration fails now, in one line.
    app, config = build_guarded_app(
        args.app, os.getcwd(), args.config, os.environ, dev_issuer, dev_oauth=saas is not None
    )
    if config.oauth is not None and args.workers > 1 and config.oauth.store.startswith("memory:"):
        raise ServeError(
            "the memory: OAuth store lives in one process: with --workers above 1, a code or token issued by one "
            "worker is unknown to the others; use sqlite:/// (one host) or redis:// (several hosts)"
        )
    if config.access is None and config.oauth is None:
        _refuse_off_loopback(args, "open mode (no Access verification)")
        print(OPEN_MODE_BANNER.format(url=_url(args)), file=sys.stderr, flush=True)
    if args.workers > 1:
        os.environ.update(
            {
                APP_VARIABLE: args.app,
                APP_DIR_VARIABLE: os.getcwd(),
                CONFIG_VARIABLE: args.config or "",  # workers share this working directory
                DEV_ISSUER_VARIABLE: dev_issuer[0] if dev_issuer else "",
                DEV_AUDIENCE_VARIABLE: dev_issuer[1] if dev_issuer else "",
                DEV_OAUTH_VARIABLE: "1" if saas is not None else "",
            }
        )
    if issuer is not None:
        from .dev import instructions, state_file

        state_path = Path(args.dev_state)
        try:
            cleanup.enter_context(state_file(issuer, state_path))
        except OSError as exc:
            raise ServeError(f"cannot write the dev state file {args.dev_state}: {exc.strerror or exc}") from None
        print(instructions(issuer, args, state_path), flush=True)
    if saas is not None:
        from .dev import dev_public_url, oauth_instructions

        print(oauth_instructions(saas, args, dev_public_url(args)), flush=True)
    if "FORWARDED_ALLOW_IPS" in os.environ:
        print(
            "mcp-access-guard serve: FORWARDED_ALLOW_IPS is not read; proxy headers are trusted from "
            f"--forwarded-allow-ips {args.forwarded_allow_ips}",
            file=sys.stderr,
            flush=True,
        )
    _run_uvicorn(app, args)


def _refuse_off_loopback(args: argparse.Namespace, what: str) -> None:
    if not is_loopback(args.host) and not args.allow_dev_on_network:
        raise ServeError(
            f"refusing {what} on --host {args.host or repr('')}, which other machines can reach; use a loopback "
            f"host (127.0.0.1), or add --allow-dev-on-network if that is really meant"
        )


def _url(args: argparse.Namespace) -> str:
    host = f"[{args.host}]" if ":" in args.host else args.host or "0.0.0.0"  # noqa: S104 (shown, not bound)
    return f"http://{host}:{args.port}"


def _exit_quietly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def uvicorn_options(args: argparse.Namespace) -> dict[str, Any]:
    """What uvicorn is told; `forwarded_allow_ips` always explicit, so its environment variable is never read."""
    return {
        "host": args.host,
        "port": args.port,
        "proxy_headers": args.proxy_headers,
        "forwarded_allow_ips": args.forwarded_allow_ips,
        "log_level": args.log_level,
        "lifespan": "on",
    }


def _run_uvicorn(app: ASGIApp, args: argparse.Namespace) -> None:
    options = uvicorn_options(args)
    if args.workers > 1:
        uvicorn.run(f"{__name__}:app_from_environment", factory=True, workers=args.workers, **options)
    else:
        uvicorn.run(app, **options)
