"""Every allow and deny decision, on one logger, with machine-readable fields and never a credential."""

from __future__ import annotations

import json
import logging
import time
from typing import Literal

from starlette.types import Scope

logger = logging.getLogger("mcp_access_guard")

Decision = Literal["allow", "deny"]

_MAX_FIELD = 200


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
) -> None:
    level = logging.INFO if decision == "allow" else logging.WARNING
    if not logger.isEnabledFor(level):
        return
    client = scope.get("client")
    fields: dict[str, object] = {
        "layer": layer,
        "decision": decision,
        "reason": reason,
        "principal": principal,
        "path": scope.get("path"),
        "tool": tool,
        "client": client[0] if client else None,
    }
    text = " ".join(f"{key}={_printable(value)}" for key, value in fields.items() if value is not None)
    logger.log(level, text, extra=fields)


AUDIT_FIELDS = ("layer", "decision", "reason", "principal", "path", "tool", "client")


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
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)
