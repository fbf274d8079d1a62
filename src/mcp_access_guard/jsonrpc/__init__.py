"""JSON-RPC over HTTP as the tool-policy layer handles it; no policy here, and no logging.

`bodies` reads request bodies (bounded) exactly as strictly as any server could, and edits them in place;
`responses` edits what a server answered, JSON or SSE, with as few bytes changed as possible; `ids` gives the
requests whose answers are edited ids of the guard's own. All three work on the text itself: `_scanner` (the json
module's C scanner, called directly) finds values without decoding what lies around them.
"""

from .bodies import (
    DEFAULT_MAX_BODY_BYTES,
    REWRITE_ROOM,
    SDK_MAX_BODY_BYTES,
    ClientGone,
    Edit,
    RejectedRequest,
    apply_edits,
    error_body,
    item_spans,
    parse_json_body,
    read_body,
    replaying,
    string_mark,
    value_span,
)
from .ids import GUARD_ID_PREFIX, GUARD_TEXTS, MARKER, GuardId, caller_id_text, guard_ids_in, restore
from .responses import (
    DROP_EVENT,
    ListingFilter,
    ListingShapes,
    Replacement,
    Rewrite,
    SSERewriter,
    StreamingReplace,
    listing_filter,
    replace_all,
    rewrite_json_body,
    same_json_value,
)

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DROP_EVENT",
    "GUARD_ID_PREFIX",
    "GUARD_TEXTS",
    "MARKER",
    "REWRITE_ROOM",
    "SDK_MAX_BODY_BYTES",
    "ClientGone",
    "Edit",
    "GuardId",
    "ListingFilter",
    "ListingShapes",
    "RejectedRequest",
    "Replacement",
    "Rewrite",
    "SSERewriter",
    "StreamingReplace",
    "apply_edits",
    "caller_id_text",
    "error_body",
    "guard_ids_in",
    "item_spans",
    "listing_filter",
    "parse_json_body",
    "read_body",
    "replace_all",
    "replaying",
    "restore",
    "rewrite_json_body",
    "same_json_value",
    "string_mark",
    "value_span",
]
