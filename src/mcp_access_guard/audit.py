"""Every allow and deny decision, on one logger, with machine-readable fields and never a credential."""

from __future__ import annotations

import json
import logging
import time
from typing import Literal

from starlette.types import Scope

from . import metrics

logger = logging.getLogger("mcp_access_guard")

Decision = Literal["allow", "deny"]

AUDIT_FIELDS = ("layer", "decision", "reason", "principal", "path", "tool", "client")
_MAX_FIELD = 200
# Line ends that JSON leaves raw but log readers (JavaScript, some terminals and editors) break lines on.
_LINE_BREAKS_IN_JSON = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def _printable(value: object) -> str:
    # Paths and names come from the request: escape control characters so a line cannot be forged.
    text = str(value)[:_MAX_FIELD]
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def log_decision(
    scope: Scope,
    *,
    layer: str,
    decision: Decision,
    reason: str,
    principal: str | None = None,
    tool: str | None = None,
    log: bool = True,
) -> None:
    """Count the decision (always) and log it (unless `log` is False, or the logger is not enabled for it)."""
    metrics.decision(layer, decision, reason)
    level = logging.INFO if decision == "allow" else logging.WARNING
    if not log or not logger.isEnabledFor(level):
        return
    client = scope.get("client")
    values = (layer, decision, reason, principal, scope.get("path"), tool, client[0] if client else None)
    fields = dict(zip(AUDIT_FIELDS, values, strict=True))
    text = " ".join(f"{key}={_printable(value)}" for key, value in fields.items() if value is not None)
    logger.log(level, text, extra=fields)


class JSONLinesFormatter(logging.Formatter):
    """One JSON object per line: time, level, message, and the decision's fields when the record carries them.

    `logging.getLogger("mcp_access_guard").handlers[0].setFormatter(JSONLinesFormatter())`, or in a logging config
    `{"()": "mcp_access_guard.audit.JSONLinesFormatter"}`.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in AUDIT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                # Request values are cut as the text log cuts them: one request, one bounded line.
                entry[name] = value[:_MAX_FIELD] if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str).translate(_LINE_BREAKS_IN_JSON)
