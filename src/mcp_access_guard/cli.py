"""The `mcp-access-guard` command: demo | serve | check | token."""

from __future__ import annotations

import argparse
import logging
import re
import sys

import anyio

TOKEN_HELP = """\
Mint an application token that a running `mcp-access-guard serve --dev` accepts, from the dev issuer state it
wrote. Only the token is printed, so it fits in $(...):
  curl -H "Cf-Access-Jwt-Assertion: $(mcp-access-guard token --email alice@example.com)" ...
For local testing only: these tokens are signed by a throwaway key, never by Cloudflare.
"""

_DURATION = re.compile(r"(-?\d+)([smhd]?)")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.ERROR, format="%(levelname)s %(message)s"
    )
    if args.command == "demo":
        from .demo import run_demo

        return 0 if anyio.run(run_demo) else 1
    if args.command == "serve":
        from .serve import run_serve

        return run_serve(args)
    if args.command == "token":
        return run_token(args)
    if args.command == "check":
        from .check import run_check

        return run_check(args)
    parser.error(f"unknown command {args.command}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcp-access-guard", description="Put an MCP server behind Cloudflare Access.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run a guarded MCP server on loopback and call it as several callers")
    _add_verbose(demo)

    from .serve import CONFIG_HELP, add_serve_arguments

    serve = commands.add_parser(
        "serve",
        help="run an MCP app behind the whole guard stack with uvicorn",
        description="Wrap MODULE:APP with guard() and run it with uvicorn.",
        epilog=CONFIG_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_serve_arguments(serve)
    _add_verbose(serve)

    check = commands.add_parser("check", help="check a deployment's configuration")
    try:
        from .check import add_check_arguments
    except ImportError:  # written alongside this file; the other commands must work without it
        pass
    else:
        add_check_arguments(check)
    if "--verbose" not in check._option_string_actions:  # check.py may define its own
        _add_verbose(check)

    token = commands.add_parser(
        "token",
        help="(dev only) mint a token that `serve --dev` accepts",
        description=TOKEN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    who = token.add_mutually_exclusive_group(required=True)
    who.add_argument("--email", help="a user's token, for this email")
    who.add_argument(
        "--service-token", metavar="CLIENT_ID", help="a service token's token (`.access` is added when missing)"
    )
    token.add_argument("--group", action="append", default=None, help="add a group claim (repeat for several)")
    token.add_argument(
        "--expires-in",
        type=_duration,
        default=3600,
        metavar="DURATION",
        help="lifetime: seconds, or 30m, 8h, 1d; --expires-in=-1h for an expired token (default: 1h)",
    )
    from .serve import DEFAULT_DEV_STATE

    token.add_argument(
        "--dev-state",
        metavar="PATH",
        default=DEFAULT_DEV_STATE,
        help="the state file `serve --dev` wrote (default: %(default)s)",
    )
    return parser


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="show the guard's decision log")


def _duration(value: str) -> int:
    match = _DURATION.fullmatch(value.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{value!r}: expected seconds, or a number with s, m, h or d (e.g. 30m)")
    return int(match[1]) * _SECONDS[match[2]]


def run_token(args: argparse.Namespace) -> int:
    from .identity import SERVICE_TOKEN_SUFFIX
    from .testing import LocalAccess

    try:
        issuer = LocalAccess.load(args.dev_state)
    except FileNotFoundError:
        return _fail(f"no dev issuer state at {args.dev_state}: start `mcp-access-guard serve --dev` first")
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else exc
        return _fail(f"cannot use the dev issuer state in {args.dev_state}: {reason}")
    if args.email is not None:
        if "@" not in args.email:
            return _fail(f"--email {args.email!r}: expected an email address")
        token = issuer.user_token(args.email, groups=args.group, expires_in=args.expires_in)
    else:
        suffix = "" if args.service_token.endswith(SERVICE_TOKEN_SUFFIX) else SERVICE_TOKEN_SUFFIX
        client_id = args.service_token + suffix
        claims = {"groups": args.group} if args.group else None
        token = issuer.service_token(client_id, expires_in=args.expires_in, claims=claims)
    print(token)
    return 0


def _fail(message: str) -> int:
    print(f"mcp-access-guard token: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
