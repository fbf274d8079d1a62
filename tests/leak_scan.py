"""Everything the test suite logs, scanned at the end for the credentials the suite used.

conftest.py installs `LogRecorder` for the whole session, makes `LocalAccess` report every token it signs, and collects
the secrets the test modules declare (module-level names containing SECRET) and the values tests register with
`remember_minted` (PKCE verifiers, states, CSRF values, sealed forms: what a test mints itself). `find_leaks` then looks
for any of them, for key material, and for any credential OAuth mode mints (recognised by its prefix), in the
recorded text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from types import ModuleType

from mcp_access_guard.oauth.records import CREDENTIAL

# Runs of the base64url alphabet long enough to be a signature or a key (an RS256 signature is 342 characters).
_LONG_RUN = re.compile(r"[A-Za-z0-9_-]{40,}")
_KEY_MATERIAL = ("-----BEGIN", "PRIVATE KEY")
_MIN_SECRET_LENGTH = 8
_MINTABLE = re.compile(r"[A-Za-z0-9_-]{40,}")

# Values tests minted themselves, scanned for at the end of the session like the tokens the issuers sign.
MINTED: list[str] = []


def remember_minted(*values: str | None) -> None:
    """Register values a test minted (a run of 40 or more base64url characters each; shorter ones are not
    recognisable in a log and are left out)."""
    MINTED.extend(value for value in values if value and _MINTABLE.fullmatch(value))


class LogRecorder(logging.Handler):
    """Keeps the text of every record: the message, and every extra field, since formatters may print them."""

    _STANDARD = frozenset(vars(logging.makeLogRecord({})))

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        extras = [f"{name}={value}" for name, value in vars(record).items() if name not in self._STANDARD]
        text = " ".join([record.name, record.getMessage(), *extras])
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.texts.append(text)


def declared_secrets(modules: Iterable[ModuleType]) -> set[str]:
    """The values of module-level names containing SECRET: strings, and strings inside tuples, lists and dicts."""
    found: set[str] = set()
    for module in modules:
        for name, value in vars(module).items():
            if "SECRET" not in name.upper():
                continue
            values = (
                value.values()
                if isinstance(value, dict)
                else value
                if isinstance(value, list | tuple | set)
                else [value]
            )
            found.update(item for item in values if isinstance(item, str) and len(item) >= _MIN_SECRET_LENGTH)
    return found


def find_leaks(texts: Iterable[str], tokens: Iterable[str], secrets: Iterable[str]) -> list[str]:
    """What leaked, described without repeating it: one line per kind and place."""
    logged = "\n".join(texts)
    runs = set(_LONG_RUN.findall(logged))
    leaks = []
    signatures = {token.rpartition(".")[2] for token in tokens}
    leaked_signatures = signatures & runs
    if leaked_signatures:
        leaks.append(f"{len(leaked_signatures)} token signature(s) appear in the log")
    leaks += [f"a secret of {len(secret)} characters appears in the log" for secret in secrets if secret in logged]
    leaks += [f"key material ({marker!r}) appears in the log" for marker in _KEY_MATERIAL if marker in logged]
    # OAuth mode's own credentials carry a prefix (mag_at_, mag_rt_, mag_ac_, ...): any of them logged is a leak.
    oauth_credentials = set(CREDENTIAL.findall(logged))
    if oauth_credentials:
        leaks.append(f"{len(oauth_credentials)} OAuth credential(s) (mag_..._) appear in the log")
    return leaks
