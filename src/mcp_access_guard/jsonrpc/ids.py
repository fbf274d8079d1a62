"""Request ids of the guard's own, for the requests whose answers it must rewrite.

A server routes an answer by its request's id, and the SDK compares ids as `str(id)`: a request `1` and a request
`"1"` in one session share a route, so the answer to one can come back on the other's response. An answer the guard
must rewrite (a filtered listing, a refused call) therefore travels under an id no client can send: the guard's
prefix, a random nonce, and, hex-encoded, the caller's own id as the server would have echoed it. The id says what
the answer needs, so a stream the guard did not see the request for (a resumed stream, a session's GET stream) can
be rewritten too, and the caller gets its own id back wherever the guard's id appears.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from .responses import Replacement

GUARD_ID_PREFIX = "mcp-access-guard:"
"""Client ids beginning with this are refused: they are the guard's."""

_MAX_CALLER_ID = 128
_INT_BOUND = 10**_MAX_CALLER_ID
# Printable ASCII but `"` and `\`: written the same way by every JSON encoder, and safe inside any JSON string.
_PLAIN_STRING = re.compile(r"[ !#-\[\]-~]*")
_GUARD_ID = re.compile(re.escape(GUARD_ID_PREFIX) + r"([a-z])([0-9a-f]{32}):((?:[0-9a-f]{2})+):")
_MARKER_START = "-denied-"
MARKER = re.compile(_MARKER_START + r"[0-9a-f]{32}")
"""What the guard adds to a refused name, so that the server answers for a name it does not have."""
GUARD_TEXTS = (GUARD_ID_PREFIX.encode("ascii"), _MARKER_START.encode("ascii"))
"""Every text a `GuardId` restores holds one of these: a text without them has nothing of the guard's in it."""


def caller_id_text(value: Any) -> str | None:
    """The JSON text a server echoes for request id `value`, or None for an id the guard does not take over.

    Integers and short plain strings only: any JSON encoder writes those the same way, so the caller's id comes back
    exactly as the server would have written it. (The SDK reads other ids, such as `1.0` or `true`, as notifications.)
    """
    if type(value) is int:
        text = str(value) if -_INT_BOUND < value < _INT_BOUND else ""
    elif type(value) is str and _PLAIN_STRING.fullmatch(value):
        text = f'"{value}"'
    else:
        return None
    return text if 0 < len(text) <= _MAX_CALLER_ID else None


@dataclass(frozen=True, slots=True)
class GuardId:
    """The guard's id for one request: `kind` (a letter) says how to rewrite the answer, `caller` is the caller's id
    as JSON text. Its nonce also names the marker put in the request's refused names."""

    kind: str
    nonce: str
    caller: str
    # Written once: a rewritten request and its answer use it several times.
    text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "text", f"{GUARD_ID_PREFIX}{self.kind}{self.nonce}:{self.caller.encode('ascii').hex()}:"
        )

    @classmethod
    def new(cls, kind: str, caller: str) -> GuardId:
        return cls(kind, secrets.token_hex(16), caller)

    @property
    def json(self) -> str:
        return f'"{self.text}"'

    @property
    def marker(self) -> str:
        return f"{_MARKER_START}{self.nonce}"

    def restorations(self) -> list[Replacement]:
        """Where the guard's id is a JSON value, the caller's id; inside other text, the caller's id unquoted; and
        no marker anywhere."""
        text = self.text.encode("ascii")
        caller = self.caller.encode("ascii")
        return [(b'"' + text + b'"', caller), (text, caller.strip(b'"')), (self.marker.encode("ascii"), b"")]


def guard_ids_in(text: str) -> list[GuardId]:
    """Every guard id in `text` (none from a client can be there: their ids are refused, and nonces are random)."""
    ids = []
    for match in _GUARD_ID.finditer(text):
        try:
            caller = bytes.fromhex(match[3]).decode("ascii")
        except UnicodeDecodeError:
            continue
        if caller_id_text(_json_id(caller)) == caller:
            ids.append(GuardId(match[1], match[2], caller))
    return ids


def _json_id(text: str) -> Any:
    if text.startswith('"'):
        return text[1:-1]
    try:
        return int(text)
    except ValueError:
        return None


def restore(text: str, guard_id: GuardId) -> str:
    """`text` with `guard_id.restorations()` made."""
    for needle, replacement in guard_id.restorations():
        text = text.replace(needle.decode("ascii"), replacement.decode("ascii"))
    return text
