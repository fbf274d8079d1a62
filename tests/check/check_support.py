"""What the `check` tests share: running the command as the CLI parses it, and reading what it printed."""

from __future__ import annotations

import pytest

from mcp_access_guard.check import run_check
from mcp_access_guard.cli import build_parser

CLIENT_ID = "4b1e0c2f9d8a7b6c5d4e3f2a1b0c9d8e.access"


def check(*argv: str) -> int:
    return run_check(build_parser().parse_args(["check", *argv]))


def lines(output: str, mark: str) -> list[str]:
    """The findings with this mark, as "MARK text" (the column padding squeezed out)."""
    found = []
    for line in output.splitlines():
        first, _, rest = line.strip().partition(" ")
        if first == mark:
            found.append(f"{mark} {rest.strip()}")
    return found


def assert_token_not_shown(output: str, token: str) -> None:
    """Neither the token nor any of its three segments (the signature least of all) is printed."""
    for segment in token.split("."):
        if len(segment) >= 8:
            assert segment not in output
    assert token not in output


def run_token_check(capsys: pytest.CaptureFixture[str], token: str) -> tuple[int, str]:
    status = check("--token", token)
    captured = capsys.readouterr()
    assert_token_not_shown(captured.out + captured.err, token)
    return status, captured.out


def run_configuration_check(capsys: pytest.CaptureFixture[str], secret: str, *argv: str) -> tuple[int, str]:
    status = check(*argv)
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    return status, captured.out
