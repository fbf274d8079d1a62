"""`mcp-access-guard check`: the diagnosis for "Access says 403 and I don't know why".

Three checks, each run when its input is given:

- the configuration `serve` would run with (`configuration.py`): `--config guard.toml` and then the environment for
  what the file leaves out, as `GuardConfig.load` reads it;
- `--token JWT` (`--token -` reads it from stdin, which keeps it out of shell history) (`token.py`);
- `--url URL` with a service token (`--client-id` / `--client-secret`, or `CF_ACCESS_CLIENT_ID` /
  `CF_ACCESS_CLIENT_SECRET`) (`url.py`).

In OAuth mode the configuration's part also asks the Access for SaaS application (`oauth.py`), and `--url` sends a
bearer token nobody issued, to see whether this server or something in front of it answers.

Each finding is one line (`report.py`): a mark (`ok`, `FAIL`, `warn`, or `info` for facts), what was found, and the
fix. The exit status is 0 only when no line says FAIL; warnings do not change it. No token, signature, shared secret
or client secret is ever printed: lines show claim values and shortened AUD tags and key ids, a URL is shown without
its query string, every line passes through a redactor that knows every secret this command was given, and through
an escaper, so that nothing read from a token, a header or an answer can act on the terminal.
"""

from __future__ import annotations

import argparse
import os
import sys

import anyio

from ..identity import SERVICE_TOKEN_SUFFIX
from .configuration import check_configuration
from .oauth import check_oauth_url
from .report import Report, library_logs_captured, without_query
from .token import check_token, secret_parts
from .url import check_url

_OAUTH_SECRET_VARIABLES = ("ACCESS_CLIENT_SECRET", "COOKIE_ENCRYPTION_KEY")


def run_check(args: argparse.Namespace) -> int:
    """Run the checks `args` ask for, print one line per finding, and return 0 only when none failed."""
    report = Report()
    client_id = (args.client_id or os.environ.get("CF_ACCESS_CLIENT_ID") or "").strip() or None
    client_secret = (args.client_secret or os.environ.get("CF_ACCESS_CLIENT_SECRET") or "").strip() or None
    # Every secret known before the configuration is read is given to the redactor before the first line is printed;
    # the configuration's own secrets are given to it as soon as it is read.
    report.never_print(client_secret, os.environ.get("CF_ACCESS_CLIENT_SECRET"))
    if client_id and not client_id.endswith(SERVICE_TOKEN_SUFFIX):
        report.never_print(client_id)  # not shaped like an id: it may well be the secret, swapped
    token = sys.stdin.read() if args.token == "-" else args.token
    if token is not None:
        report.never_print(*secret_parts(token))
    report.never_print(*(secret.strip() for secret in os.environ.get("GUARD_SECRETS", "").split(",")))
    report.never_print(*(os.environ.get(name, "").strip() for name in _OAUTH_SECRET_VARIABLES))
    with library_logs_captured():
        anyio.run(_run, args, token, client_id, client_secret, report)
    report.summary()
    return 1 if report.failed else 0


async def _run(
    args: argparse.Namespace, token: str | None, client_id: str | None, client_secret: str | None, report: Report
) -> None:
    needed = token is not None or not args.url
    config, verifier = await check_configuration(report, args.config, os.environ, needed=needed)
    try:
        if token is not None:
            report.section("token")
            await check_token(report, token, config, verifier)
        oauth = config.oauth if config is not None else None
        if args.url and oauth is not None:
            report.section(f"OAuth mode test of {without_query(args.url)}")
            await check_oauth_url(report, args.url, oauth, args.timeout)
        if args.url and (oauth is None or client_id or client_secret):
            # In OAuth mode, a service token is tested only when one is given (direct pairs beside OAuth).
            report.section(f"service token test of {without_query(args.url)}")
            await check_url(report, args.url, client_id, client_secret, args.timeout)
    finally:
        if verifier is not None:
            await verifier.aclose()


__all__ = ["run_check"]
