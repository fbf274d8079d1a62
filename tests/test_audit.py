"""The decision log: structured fields on every record, one JSON object per line when asked, no forged lines."""

import json
import logging

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from mcp_access_guard import AccessJWTMiddleware
from mcp_access_guard.audit import JSONLinesFormatter
from mcp_access_guard.testing import LocalAccess, serve


@pytest.mark.anyio
async def test_every_decision_carries_its_fields_and_formats_as_json_lines(
    local_access: LocalAccess, caplog: pytest.LogCaptureFixture
) -> None:
    ok = Starlette(routes=[Route("/mcp", PlainTextResponse("ok"))])
    token = local_access.user_token("alice@example.com")
    async with serve(AccessJWTMiddleware(ok, config=local_access.config())) as url, httpx.AsyncClient() as http:
        with caplog.at_level(logging.INFO, logger="mcp_access_guard"):
            await http.get(f"{url}/mcp", headers={"Cf-Access-Jwt-Assertion": token})
            await http.get(f"{url}/mcp", headers={"Cf-Access-Jwt-Assertion": token + "x"})
    decisions = [record for record in caplog.records if hasattr(record, "decision")]
    lines = [json.loads(JSONLinesFormatter().format(record)) for record in decisions]
    for line in lines:
        assert line["time"].endswith("Z")
        assert line["logger"] == "mcp_access_guard"
        assert line["layer"] == "access_jwt"
        assert line["path"] == "/mcp"
        assert line["client"] == "127.0.0.1"
    assert [(line["decision"], line["reason"], line.get("principal")) for line in lines] == [
        ("allow", "verified", "alice@example.com"),
        ("deny", "malformed", None),
    ]
    assert all(token not in json.dumps(line) for line in lines)


def test_request_values_cannot_forge_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    from mcp_access_guard.audit import log_decision

    scope = {"type": "http", "path": "/mcp\nlayer=access_jwt decision=allow", "client": ("10.0.0.1", 1)}
    with caplog.at_level(logging.INFO, logger="mcp_access_guard"):
        log_decision(scope, layer="paths", decision="deny", reason="not_allowed", tool="x\r\ny")
    (record,) = caplog.records
    assert "\n" not in record.getMessage()
    assert "\r" not in record.getMessage()
    assert "path=/mcp\\nlayer=access_jwt" in record.getMessage()
    assert json.loads(JSONLinesFormatter().format(record))["path"] == scope["path"]


def decision_record(path: str) -> logging.LogRecord:
    """The record one denied request to `path` leaves, taken straight from the logger."""
    from mcp_access_guard.audit import log_decision

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("mcp_access_guard")
    logger.addHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(logger, "level", logging.INFO)
            log_decision(
                {"type": "http", "path": path, "client": ("10.0.0.1", 1)},
                layer="paths",
                decision="deny",
                reason="not_listed",
            )
    finally:
        logger.removeHandler(handler)
    (record,) = records
    return record


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\n", "\r"])
def test_json_lines_hold_no_raw_line_separator(separator: str) -> None:
    path = f'/mcp{separator}{{"decision":"allow"}}'
    line = JSONLinesFormatter().format(decision_record(path))
    assert len(line.splitlines()) == 1
    assert separator not in line
    assert json.loads(line)["path"] == path


def test_json_lines_cut_each_request_field_like_the_text_log() -> None:
    record = decision_record("/" + "a" * 100_000)
    assert len(json.loads(JSONLinesFormatter().format(record))["path"]) == 200
    assert len(record.getMessage()) < 400
