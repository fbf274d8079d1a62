"""Dev mode: `serve --dev` (an embedded `LocalAccess` issuer, the state file `token` reads, the ready-to-paste client
commands), `serve --dev --oauth` (OAuth mode with an embedded `LocalAccessSaaS` as the login, and the OAuth clients'
commands) and the `token` command. The one command module that imports the test issuers; `serve` imports it only
with --dev, so a production server never loads a key that mints tokens."""

from __future__ import annotations

import argparse
import json
import secrets
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .identity import SERVICE_TOKEN_SUFFIX
from .mcp_request import tools_list_request
from .oauth.config import OAUTH_ENVIRONMENT, UPSTREAM_ENVIRONMENT
from .oauth.metadata import AUTHORIZATION_SERVER_PATH
from .testing import LocalAccess, LocalAccessSaaS

DEV_USER = "alice@example.com"
DEV_SERVICE_TOKEN = "dev-robot.access"
DEV_TOKEN_SECONDS = 3600
# The Inspector's 2.x line; the standalone `inspector-cli` 1.0.3 package is broken.
INSPECTOR_PACKAGE = "@modelcontextprotocol/inspector@2"


@contextmanager
def running_issuer() -> Iterator[LocalAccess]:
    """A throwaway Access issuer on loopback, for as long as the server runs."""
    issuer = LocalAccess().start()
    try:
        yield issuer
    finally:
        issuer.stop()


@contextmanager
def state_file(issuer: LocalAccess, path: Path) -> Iterator[None]:
    """The issuer's state, key included, at `path` for `token` to read (owner-only, never through a symbolic link),
    removed when the server stops. Raises OSError when it cannot be written."""
    issuer.save(path)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def instructions(issuer: LocalAccess, args: argparse.Namespace, state_path: Path) -> str:
    """What --dev prints: the warning, where things are, and client commands with fresh tokens."""
    url = f"{dev_public_url(args)}/mcp"
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


# -- serve --dev --oauth ----------------------------------------------------------------------------------------------


def dev_public_url(args: argparse.Namespace) -> str:
    """Where clients reach the dev server: its loopback address (a wildcard --host is reached through 127.0.0.1)."""
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host  # noqa: S104 (a wildcard is not a URL)
    return f"http://{f'[{host}]' if ':' in host else host}:{args.port}"


@contextmanager
def running_saas(public_url: str) -> Iterator[LocalAccessSaaS]:
    """A throwaway Access for SaaS application on loopback that signs everyone in as DEV_USER, with our callback as
    its one registered redirect URL, for as long as the server runs."""
    saas = LocalAccessSaaS(redirect_uris=[public_url + "/oauth/callback"]).start()
    saas.login_as(DEV_USER)
    try:
        yield saas
    finally:
        saas.stop()


def saas_environment(saas: LocalAccessSaaS, public_url: str, store: str) -> dict[str, str]:
    """OAuth mode's variables for the dev application, as a deployment sets them (Cloudflare's names): every worker
    reads the same ones. A new COOKIE_ENCRYPTION_KEY each run, like the application's new keys."""
    upstream = saas.config()
    return {
        UPSTREAM_ENVIRONMENT["client_id"]: upstream.client_id,
        UPSTREAM_ENVIRONMENT["client_secret"]: upstream.client_secret,
        UPSTREAM_ENVIRONMENT["issuer"]: upstream.issuer,
        UPSTREAM_ENVIRONMENT["authorization_url"]: saas.authorization_url,
        UPSTREAM_ENVIRONMENT["token_url"]: saas.token_url,
        UPSTREAM_ENVIRONMENT["jwks_url"]: saas.jwks_url,
        OAUTH_ENVIRONMENT["public_url"]: public_url,
        OAUTH_ENVIRONMENT["secret_key"]: secrets.token_hex(32),
        OAUTH_ENVIRONMENT["store"]: store,
    }


def oauth_instructions(saas: LocalAccessSaaS, args: argparse.Namespace, public_url: str) -> str:
    """What --dev --oauth prints: the warning, where things are, and the OAuth clients' commands."""
    url = f"{public_url}/mcp"
    lines = [
        "!" * 100,
        "!! DEV MODE, FOR LOCAL USE ONLY: a throwaway Access for SaaS login runs in this process and signs in anyone",
        f"!! who reaches it as {DEV_USER}, with no password.",
        "!" * 100,
        "",
        f"Serving {args.app} at {url} in OAuth mode behind the full guard stack ({args.workers} worker(s)).",
        f"Login: a dev Access for SaaS application at {saas.issuer}, which signs everyone in as {DEV_USER}.",
        f"Clients find everything else at {public_url}{AUTHORIZATION_SERVER_PATH}, register themselves, and open",
        "your browser at the consent page; approve, and they are signed in.",
        "",
        "mcp-remote:",
        f"  {shlex.join(['npx', '-y', 'mcp-remote', url])}",
        "",
        "Claude Desktop, Cursor and other stdio clients (an mcpServers entry, through mcp-remote):",
        *(f"  {line}" for line in oauth_mcp_remote_entry(url).splitlines()),
        "",
        "MCP Inspector CLI (2.x; needs Node 22.19 or later):",
        f"  {oauth_inspector_command(url)}",
        "",
        "Press Ctrl-C to stop.",
        "",
    ]
    return "\n".join(lines)


def oauth_inspector_command(url: str) -> str:
    return shlex.join(["npx", "-y", INSPECTOR_PACKAGE, "--cli", url, "--transport", "http", "--method", "tools/list"])


def oauth_mcp_remote_entry(url: str) -> str:
    entry = {"command": "npx", "args": ["-y", "mcp-remote", url]}
    return json.dumps({"mcpServers": {"mcp-access-guard-dev": entry}}, indent=2)


def curl_command(url: str, token: str) -> str:
    request = tools_list_request()
    words = ["curl", "-sS", url, "-H", f"Cf-Access-Jwt-Assertion: {token}"]
    for name, value in request.headers.items():
        words += ["-H", f"{name}: {value}"]
    words += ["--data", json.dumps(request.body, separators=(",", ":"))]
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


# -- mcp-access-guard token -------------------------------------------------------------------------------------------


def run_token(args: argparse.Namespace) -> int:
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
        claims = {"groups": args.group} if args.group else None
        token = issuer.service_token(args.service_token + suffix, expires_in=args.expires_in, claims=claims)
    print(token)
    return 0


def _fail(message: str) -> int:
    print(f"mcp-access-guard token: error: {message}", file=sys.stderr)
    return 2
