"""The `mcp-access-guard` command."""

from __future__ import annotations

import argparse
import logging
import sys

import anyio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mcp-access-guard", description="Put an MCP server behind Cloudflare Access.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a guarded MCP server on loopback and call it as several callers")
    demo.add_argument("-v", "--verbose", action="store_true", help="show the guard's decision log")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(message)s")
    if args.command == "demo":
        from .demo import run_demo

        return 0 if anyio.run(run_demo) else 1
    parser.error(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
