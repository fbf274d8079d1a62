"""The `mcp-access-guard` command: the parser, and the dispatch to demo | serve | check | token. A command's module
is imported only when that command runs, so `serve` never loads the dev issuer and `token` never loads uvicorn."""

from __future__ import annotations

import argparse
import functools
import logging
import re
import sys

DEFAULT_DEV_STATE = ".mcp-access-guard-dev.json"
# uvicorn's own default, passed explicitly so that its FORWARDED_ALLOW_IPS variable does not change it unseen.
DEFAULT_FORWARDED_ALLOW_IPS = "127.0.0.1"

CONFIG_HELP = """\
Where the guard's settings come from (GuardConfig.load, as `check` reads them too):
  --config FILE   the file (shaped like examples/guard.toml) decides every setting it names; the environment
                  (TEAM_DOMAIN, POLICY_AUD, GUARD_SECRETS, ...) fills in every setting the file leaves out.
  no --config     every setting comes from the environment (TEAM_DOMAIN, POLICY_AUD, GUARD_* ...; see the README).
  --dev           as above, except that Access is always the embedded dev issuer: the file's [access] team and
                  audience and TEAM_DOMAIN/POLICY_AUD are replaced by it (the file's other [access] keys still apply).
  --dev --oauth   as above, in OAuth mode: an embedded Access for SaaS application is the login, and it replaces
                  the public URL, the application, COOKIE_ENCRYPTION_KEY and the store (the file's other [oauth] keys
                  still apply).

Open mode (GUARD_DEV=1 or dev = true with no team domain and audience) answers anyone: serve says so on stderr at
start, and, like --dev, refuses a --host that is not a loopback address unless --allow-dev-on-network is given.
uvicorn's FORWARDED_ALLOW_IPS variable is not read: --forwarded-allow-ips is the one way to set who may send proxy
headers.
"""

TOKEN_HELP = """\
Mint an application token that a running `mcp-access-guard serve --dev` accepts, from the dev issuer state it
wrote. Only the token is printed, so it fits in $(...):
  curl -H "Cf-Access-Jwt-Assertion: $(mcp-access-guard token --email alice@example.com)" ...
For local testing only: these tokens are signed by a throwaway key, never by Cloudflare.
"""

_DURATION = re.compile(r"(-?\d+)([smhd]?)")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.ERROR, format="%(levelname)s %(message)s"
    )
    if args.command == "demo":
        import anyio

        from .demo import run_demo

        return 0 if anyio.run(functools.partial(run_demo, access=not args.oauth)) else 1
    if args.command == "serve":
        from .serve import run_serve

        return run_serve(args)
    if args.command == "check":
        from .check import run_check

        return run_check(args)
    from .dev import run_token

    return run_token(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcp-access-guard", description="Put an MCP server behind Cloudflare Access.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="run a guarded MCP server on loopback and call it as several callers",
        description="Run a guarded MCP server on loopback and call it as several callers: behind Cloudflare Access, "
        "then in OAuth mode. Exits 0 only when every caller got what it should.",
    )
    demo.add_argument("--oauth", action="store_true", help="show OAuth mode only")
    _add_verbose(demo)

    serve = commands.add_parser(
        "serve",
        help="run an MCP app behind the whole guard stack with uvicorn",
        description="Wrap MODULE:APP with guard() and run it with uvicorn.",
        epilog=CONFIG_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_serve_arguments(serve)
    _add_verbose(serve)

    check = commands.add_parser(
        "check", help="check a deployment's configuration, a token, or a service token against the application"
    )
    _add_check_arguments(check)

    token = commands.add_parser(
        "token",
        help="(dev only) mint a token that `serve --dev` accepts",
        description=TOKEN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_token_arguments(token)
    return parser


def _add_serve_arguments(parser: argparse.ArgumentParser) -> None:
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
        "--forwarded-allow-ips",
        metavar="IPS",
        default=DEFAULT_FORWARDED_ALLOW_IPS,
        help="who may set proxy headers, comma-separated (default: %(default)s; FORWARDED_ALLOW_IPS is not read)",
    )
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument(
        "--dev",
        action="store_true",
        help="local use only: run against an embedded Access issuer, print client commands",
    )
    parser.add_argument(
        "--oauth",
        action="store_true",
        help="with --dev: OAuth mode, an embedded Access for SaaS application as the login; print the OAuth "
        "clients' commands",
    )
    parser.add_argument(
        "--dev-state",
        metavar="PATH",
        default=DEFAULT_DEV_STATE,
        help="with --dev: where the dev issuer state (with its key) is kept for `token` (default: %(default)s)",
    )
    parser.add_argument(
        "--allow-dev-on-network",
        action="store_true",
        help="let --dev, or open mode, listen on a --host that is not a loopback address (other machines reach it)",
    )


def _add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="GUARD_TOML",
        help="this TOML file, then the environment for what it leaves out, as serve reads them "
        "(default: the environment alone: TEAM_DOMAIN, POLICY_AUD, ...)",
    )
    parser.add_argument(
        "--token",
        metavar="JWT",
        help="an Access token to diagnose; '-' reads it from stdin (keeps it out of shell history)",
    )
    parser.add_argument("--url", help="make the service-token test request to this URL of the application")
    parser.add_argument("--client-id", help="service token client id for --url (default: $CF_ACCESS_CLIENT_ID)")
    parser.add_argument(
        "--client-secret",
        help="service token client secret for --url (default: $CF_ACCESS_CLIENT_SECRET, which is safer: "
        "command-line arguments are visible to other users of the machine)",
    )
    parser.add_argument(
        "--timeout", type=_positive_seconds, default=10.0, help="seconds to wait for the --url answer (default: 10)"
    )


def _add_token_arguments(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--email", help="a user's token, for this email")
    who.add_argument(
        "--service-token", metavar="CLIENT_ID", help="a service token's token (`.access` is added when missing)"
    )
    parser.add_argument("--group", action="append", default=None, help="add a group claim (repeat for several)")
    parser.add_argument(
        "--expires-in",
        type=_duration,
        default=3600,
        metavar="DURATION",
        help="lifetime: seconds, or 30m, 8h, 1d; --expires-in=-1h for an expired token (default: 1h)",
    )
    parser.add_argument(
        "--dev-state",
        metavar="PATH",
        default=DEFAULT_DEV_STATE,
        help="the state file `serve --dev` wrote (default: %(default)s)",
    )


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="show the guard's decision log")


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected 1 or more")
    return number


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 < seconds <= 3600:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number of seconds above 0, at most 3600")
    return seconds


def _duration(value: str) -> int:
    match = _DURATION.fullmatch(value.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{value!r}: expected seconds, or a number with s, m, h or d (e.g. 30m)")
    return int(match[1]) * _SECONDS[match[2]]


if __name__ == "__main__":
    sys.exit(main())
