"""`check`'s report: every line redacted, then escaped, whatever text it is given."""

from __future__ import annotations

import pytest

from mcp_access_guard.check.report import Report, printable


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b[31mred", "\\x1b[31mred"),  # ANSI sequences start with ESC
        ("a\rb\nc\td", "a\\rb\\nc\\td"),
        ("\x07\x00\x7f", "\\x07\\x00\\x7f"),
        ("\x85next line", "\\x85next line"),
        ("line\u2028separator\u2029paragraph", "line\\u2028separator\\u2029paragraph"),
        ("\u202eevil\u202c \u2066isolate\u2069 \u200fmark", "\\u202eevil\\u202c \\u2066isolate\\u2069 \\u200fmark"),
        ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff"),
        ("no\u00a0break", "no\\xa0break"),
    ],
)
def test_what_a_terminal_acts_on_is_escaped(text: str, shown: str) -> None:
    assert printable(text) == shown


@pytest.mark.parametrize("text", ["plain ascii", "Zoë Ünïcode 例え…", "quotes ' \" and \\ backslash"])
def test_printable_text_is_left_alone(text: str) -> None:
    assert printable(text) == text


def test_a_line_is_redacted_before_it_is_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    report = Report()
    secret = "s3cret-with-no-control-chars"
    report.never_print(secret, "abc")  # too short to redact: it would garble every line

    report.fail(f"got {secret}\x1b[2K and abc\n  ok   forged")
    report.summary()

    out = capsys.readouterr().out
    assert out.splitlines() == [
        "  FAIL got [redacted]\\x1b[2K and abc\\n  ok   forged",
        "",
        "result: FAIL (1 failure, 0 warnings)",
    ]
    assert report.failed
