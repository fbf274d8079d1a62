"""The pieces under the tool-policy layer: bounded bodies, strict parsing, edits, the guard's own request ids, and
JSON/SSE response rewriting."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from starlette.types import Message

from mcp_access_guard.jsonrpc import (
    DROP_EVENT,
    GUARD_ID_PREFIX,
    GUARD_TEXTS,
    ClientGone,
    GuardId,
    ListingFilter,
    ListingShapes,
    RejectedRequest,
    Rewrite,
    SSERewriter,
    StreamingReplace,
    apply_edits,
    caller_id_text,
    error_body,
    guard_ids_in,
    item_spans,
    listing_filter,
    parse_json_body,
    read_body,
    replace_all,
    replaying,
    restore,
    rewrite_json_body,
    same_json_value,
    string_mark,
    value_span,
)

# -- reading bodies ----------------------------------------------------------------------------------------------


def receiver(*messages: Message) -> Any:
    queue = list(messages)

    async def receive() -> Message:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    return receive


@pytest.mark.anyio
async def test_read_body_joins_chunks() -> None:
    receive = receiver(
        {"type": "http.request", "body": b'{"a":', "more_body": True},
        {"type": "http.request", "body": b"1}", "more_body": False},
    )
    assert await read_body(receive, 100, None) == b'{"a":1}'


@pytest.mark.anyio
async def test_read_body_refuses_a_declared_length_over_the_limit_without_reading() -> None:
    reads = 0

    async def receive() -> Message:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"x", "more_body": False}

    with pytest.raises(RejectedRequest) as refused:
        await read_body(receive, 10, "11")
    assert (refused.value.status, refused.value.reason, reads) == (413, "body_too_large", 0)


@pytest.mark.anyio
async def test_read_body_refuses_an_undeclared_body_once_it_passes_the_limit() -> None:
    chunks = [{"type": "http.request", "body": b"x" * 6, "more_body": True} for _ in range(3)]
    with pytest.raises(RejectedRequest) as refused:
        await read_body(receiver(*chunks), 10, None)
    assert refused.value.status == 413


@pytest.mark.anyio
async def test_read_body_accepts_exactly_the_limit_and_ignores_a_garbled_length() -> None:
    receive = receiver({"type": "http.request", "body": b"x" * 10, "more_body": False})
    assert await read_body(receive, 10, "ten") == b"x" * 10


@pytest.mark.anyio
async def test_read_body_reports_a_client_that_left() -> None:
    with pytest.raises(ClientGone):
        await read_body(receiver({"type": "http.request", "body": b"{", "more_body": True}), 10, None)


@pytest.mark.anyio
async def test_replaying_gives_the_body_once_then_the_real_receive() -> None:
    replay = replaying(b"body", receiver())
    assert await replay() == {"type": "http.request", "body": b"body", "more_body": False}
    assert await replay() == {"type": "http.disconnect"}


# -- parsing -------------------------------------------------------------------------------------------------------


def test_parse_reads_plain_utf8_json_with_escapes_decoded() -> None:
    assert parse_json_body(b'{"name":"s\\u0065cret","x":"\xc3\xa9"}') == {"name": "secret", "x": "é"}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"name":"add","name":"secret"}', "duplicate_key"),
        (b'{"params":{"name":"add","n\\u0061me":"secret"}}', "duplicate_key"),
        (b'\xef\xbb\xbf{"a":1}', "encoding"),
        ('{"a":1}'.encode("utf-16"), "encoding"),
        ('{"a":1}'.encode("utf-16-le"), "parse_error"),
        ('{"a":1}'.encode("utf-16-be"), "parse_error"),
        ('{"a":1}'.encode("utf-32"), "encoding"),
        ('{"a":1}'.encode("utf-32-le"), "parse_error"),
        (b'{"a":"\xff"}', "encoding"),
        (b'{"a":1} trailing', "parse_error"),
        (b"", "parse_error"),
        (b"[" * 100_000 + b"]" * 100_000, "parse_error"),
        (b'{"a":' + b"9" * 5000 + b"}", "parse_error"),
    ],
)
def test_parse_refuses_anything_another_parser_could_read_differently(body: bytes, reason: str) -> None:
    with pytest.raises(RejectedRequest) as refused:
        parse_json_body(body)
    assert (refused.value.status, refused.value.reason) == (400, reason)
    assert json.loads(refused.value.body())["error"]["code"] == -32700


def test_error_body_is_a_json_rpc_error_without_id() -> None:
    assert json.loads(error_body(-32600, "nope")) == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32600, "message": "nope"},
    }


# -- locating and marking values -----------------------------------------------------------------------------------


def test_value_span_finds_nested_values_past_decoys() -> None:
    text = '{ "id" : 7 , "params" : {"arguments":{"name":"inner"}, "x\\"name" : 1, "name" : "outer"}}'
    start, end = value_span(text, ("params", "name"))  # type: ignore[misc]
    assert text[start:end] == '"outer"'
    start, end = value_span(text, ("id",))  # type: ignore[misc]
    assert text[start:end] == "7"
    assert value_span(text, ("params", "missing")) is None
    assert value_span(text, ("id", "deeper")) is None
    assert value_span("{}", ("id",)) is None


def mark(text: str, path: tuple[str, ...], marker: str, *, prefix: bool) -> str:
    span = value_span(text, path)
    assert span is not None
    return apply_edits(text, [string_mark(text, span, marker, prefix=prefix)])


def test_string_mark_changes_only_the_named_string() -> None:
    text = '{"method":"tools/call","params":{"name":"s\\u00e9cret","arguments":{"name":"secret"}}}'
    marked = mark(text, ("params", "name"), "-m1", prefix=False)
    assert marked == text.replace('"s\\u00e9cret"', '"s\\u00e9cret-m1"')
    assert json.loads(marked)["params"]["name"] == "sécret-m1"
    front = mark('{"params":{"uri":"file:///a"}}', ("params", "uri"), "m1", prefix=True)
    assert json.loads(front)["params"]["uri"] == "m1file:///a"


def test_string_mark_refuses_a_non_string() -> None:
    with pytest.raises(ValueError, match="not a JSON string"):
        mark('{"params":{"name":5}}', ("params", "name"), "m", prefix=False)


def test_same_json_value_keeps_json_types_apart() -> None:
    assert same_json_value(1, 1)
    assert not same_json_value(1, 1.0)
    assert not same_json_value(1, True)
    assert not same_json_value(1, "1")


# -- rewriting listings --------------------------------------------------------------------------------------------


def listing(request_id: Any, names: list[str], **extra: Any) -> str:
    result = {"tools": [{"name": name, "inputSchema": {"type": "object"}} for name in names], **extra}
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}, separators=(",", ":"))


def secrets_hidden(names: frozenset[str]) -> frozenset[str]:
    return frozenset(name for name in names if name.startswith("secret"))


def public_only(request_id: Any, shapes: ListingShapes | None = None) -> Rewrite:
    return listing_filter(request_id, "tools", "name", secrets_hidden, shapes)


def hiding_all_but(visible: set[str]) -> Callable[[frozenset[str]], frozenset[str]]:
    return lambda names: names - visible


def test_listing_filter_drops_entries_and_keeps_every_other_byte() -> None:
    text = listing(3, ["add", "secret", "mul", "secret2"], nextCursor="page-2", _meta={"k": "é\u2028"})
    rewritten = public_only(3)(text)
    assert rewritten == listing(3, ["add", "mul"], nextCursor="page-2", _meta={"k": "é\u2028"})


def test_listing_filter_leaves_other_messages_alone() -> None:
    rewrite = public_only(3)
    assert rewrite(listing(3, ["add"])) is None  # nothing to drop
    assert rewrite(listing(4, ["secret"])) is None  # another request's answer
    assert rewrite(listing("3", ["secret"])) is None  # same digits, different id
    assert rewrite('{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}') is None
    assert rewrite('{"jsonrpc":"2.0","id":3,"error":{"code":-1,"message":"x"}}') is None
    assert rewrite('{"jsonrpc":"2.0","id":3,"result":{"tools":{"name":"secret"}}}') is None
    assert rewrite("not json") is None
    assert rewrite("") is None


def test_listing_filter_drops_entries_it_cannot_name() -> None:
    text = '{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"add"},{"name":7},"x",{"title":"t"}]}}'
    assert public_only(1)(text) == '{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"add"}]}}'


def test_listing_filter_handles_pretty_printed_and_empty_results() -> None:
    text = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "secret"}]}}, indent=2)
    assert json.loads(public_only(1)(text) or "")["result"]["tools"] == []
    assert public_only(1)(listing(1, [])) is None


def test_a_remembered_listing_is_judged_again_for_each_caller_and_gives_what_a_fresh_reading_gives() -> None:
    shapes = ListingShapes()
    names = ["add", "secret", "mul", "secret2", "div"]
    text = listing(3, names, nextCursor="c")
    for visible in ({"add", "mul"}, {"secret", "div"}, set(names), set()):
        remembered = listing_filter(3, "tools", "name", hiding_all_but(visible), shapes)(text)
        fresh = listing_filter(3, "tools", "name", hiding_all_but(visible))(text)
        assert remembered == fresh
        expected = None if visible == set(names) else listing(3, [n for n in names if n in visible], nextCursor="c")
        assert remembered == expected
    # The same listing under another request's id: the shape is the text from the list on, the id is not in it.
    assert listing_filter(4, "tools", "name", secrets_hidden, shapes)(listing(4, names, nextCursor="c")) == listing(
        4, ["add", "mul", "div"], nextCursor="c"
    )


def test_a_remembered_listing_is_not_read_with_another_name_key() -> None:
    shapes = ListingShapes()
    text = (
        '{"jsonrpc":"2.0","id":1,"result":{"resources":[{"uri":"a://x","name":"secret"},{"uri":"a://y","name":"y"}]}}'
    )
    by_name = listing_filter(1, "resources", "name", secrets_hidden, shapes)(text)
    by_uri = listing_filter(1, "resources", "uri", hiding_all_but({"a://x"}), shapes)(text)
    assert by_name == '{"jsonrpc":"2.0","id":1,"result":{"resources":[{"uri":"a://y","name":"y"}]}}'
    assert by_uri == '{"jsonrpc":"2.0","id":1,"result":{"resources":[{"uri":"a://x","name":"secret"}]}}'


def test_listing_shapes_keep_no_more_bytes_than_their_bound() -> None:
    shapes = ListingShapes(max_bytes=20_000)
    for count in range(1, 40):
        text = listing(1, [f"tool{index}" for index in range(count)] + ["secret"])
        filtered = json.loads(listing_filter(1, "tools", "name", secrets_hidden, shapes)(text) or "")
        assert [tool["name"] for tool in filtered["result"]["tools"]] == [f"tool{index}" for index in range(count)]
        assert json.loads(listing_filter(1, "tools", "name", hiding_all_but(set()), shapes)(text) or "") == json.loads(
            listing(1, [])
        )
    kept = shapes._shapes
    assert 0 < len(kept) < 39
    assert kept.currsize <= 20_000
    # Each counted as its result, its entries and every result it keeps written for a caller.
    assert all(kept.getsizeof(shape) == shape.size for shape in kept.values())
    assert all(
        shape.size > len(shape.result) + sum(map(len, filter(None, shape.written.values()))) for shape in kept.values()
    )
    assert any(len(shape.written) == 2 for shape in kept.values())
    # A listing larger than the bound is not kept, and still filtered.
    big = listing(1, [f"tool{index}" for index in range(400)] + ["secret"])
    assert len(big) > 20_000
    assert "secret" not in (public_only(1, shapes)(big) or "")
    assert all(len(shape.entries) < 400 for shape in kept.values())


def finished_the_general_way(body: bytes, listing_filter_: ListingFilter, guard_id: GuardId) -> bytes:
    return replace_all(rewrite_json_body(body, listing_filter_), guard_id.restorations())


def answer_under(guard_id: GuardId, names: list[str], **extra: Any) -> bytes:
    return listing(guard_id.text, names, **extra).encode()


@pytest.mark.parametrize("caller", ["7", '"req-1"'])
def test_a_listing_finished_in_one_step_is_what_the_general_way_gives(caller: str) -> None:
    shapes = ListingShapes(reserved=GUARD_TEXTS)
    listings = [
        ["add", "secret", "mul", "secret2"],
        ["café", "secret", "\u2028", "ß" * 40, "add"],  # offsets into the text are not offsets into the bytes
        ["secret"],
        [],
        ["add", "mul"],
    ]
    for names in listings:
        for visible in ({"add"}, set(names), set(), {"secret", "ß" * 40, "\u2028"}):
            for extra in ({}, {"nextCursor": "page-2", "_meta": {"k": "é"}}):
                guard_id = GuardId.new("t", caller)
                filter_ = listing_filter(guard_id.text, "tools", "name", hiding_all_but(visible), shapes)
                body = answer_under(guard_id, names, **extra)
                finished = filter_.finished_body(body, caller)
                assert finished == finished_the_general_way(body, filter_, guard_id)
                expected = json.loads(listing(json.loads(caller), [n for n in names if n in visible], **extra))
                assert json.loads(finished or b"") == expected


def test_two_callers_with_different_visible_sets_get_their_own_answers_from_the_same_listing_bytes() -> None:
    shapes = ListingShapes(reserved=GUARD_TEXTS)
    names = ["add", "secret", "mul", "payroll"]
    callers = {"eve": {"add", "mul"}, "boss": {"add", "secret", "mul", "payroll"}, "hr": {"add", "payroll"}}
    for _ in range(3):
        for caller, visible in callers.items():
            guard_id = GuardId.new("t", "1")
            body = answer_under(guard_id, names)
            finished = listing_filter(guard_id.text, "tools", "name", hiding_all_but(visible), shapes).finished_body(
                body, "1"
            )
            shown = [tool["name"] for tool in json.loads(finished or b"")["result"]["tools"]]
            assert shown == [name for name in names if name in visible], caller
    # One listing read, a result written per set of hidden names (boss's hides none: the listing as it came).
    (shape,) = shapes._shapes.values()
    assert set(shape.written) == {frozenset({"secret", "payroll"}), frozenset(), frozenset({"secret", "mul"})}


def test_a_changed_listing_of_the_same_length_is_read_anew() -> None:
    shapes = ListingShapes(reserved=GUARD_TEXTS)
    padding = [f"tool{index:03}" for index in range(100)]  # a listing long enough to be found by its ends
    for names in (
        ["add", "secret"],
        ["add", "public"],
        ["secret", "add"],
        ["add", "secret"],
        [*padding, "secret", *padding],
        [*padding, "public", *padding],
        [*padding, "secret", *padding],
    ):
        guard_id = GuardId.new("t", "1")
        body = answer_under(guard_id, names)
        finished = public_only(guard_id.text, shapes).finished_body(body, "1")
        assert [tool["name"] for tool in json.loads(finished or b"")["result"]["tools"]] == [
            name for name in names if name != "secret"
        ]


def test_a_listing_holding_the_guards_own_texts_takes_the_general_way() -> None:
    # A server that echoed the guard's id (or a marker) into its listing: that text must be restored, so the answer
    # is not finished from a result written for another request.
    shapes = ListingShapes(reserved=GUARD_TEXTS)
    guard_id = GuardId.new("t", "1")
    for echoed in (guard_id.text, guard_id.marker):
        filter_ = public_only(guard_id.text, shapes)
        body = answer_under(guard_id, ["add", "secret"], _meta={"echo": echoed})
        assert filter_.finished_body(body, "1") is None
        general = json.loads(finished_the_general_way(body, filter_, guard_id))
        assert general["result"]["_meta"]["echo"] in (1, "")  # the id put back, the marker taken out
    # And only answers written the usual way, to this request, that are listings, are finished in one step.
    filter_ = public_only(guard_id.text, shapes)
    assert filter_.finished_body(answer_under(GuardId.new("t", "1"), ["secret"]), "1") is None
    pretty = json.dumps({"jsonrpc": "2.0", "id": guard_id.text, "result": {"tools": [{"name": "secret"}]}}, indent=1)
    assert filter_.finished_body(pretty.encode(), "1") is None
    assert filter_.finished_body(listing(guard_id.text, []).replace('"tools"', '"other"').encode(), "1") is None
    assert public_only(guard_id.text).finished_body(answer_under(guard_id, ["secret"]), "1") is None  # no shapes


def test_rewrite_json_body_leaves_what_it_cannot_read() -> None:
    def remove(text: str) -> str | None:
        return text.replace("-m1", "") if "-m1" in text else None

    assert rewrite_json_body(b'{"text":"Unknown tool: secret-m1"}', remove) == b'{"text":"Unknown tool: secret"}'
    assert rewrite_json_body(b'{"text":"ok"}', remove) == b'{"text":"ok"}'
    assert rewrite_json_body(b"\xff-m1", remove) == b"\xff-m1"


# -- SSE -----------------------------------------------------------------------------------------------------------


def sse(*payloads: str, ending: str = "\r\n") -> bytes:
    return "".join(f"event: message{ending}data: {payload}{ending}{ending}" for payload in payloads).encode()


def run_sse(rewriter: SSERewriter, stream: bytes, chunk_size: int) -> bytes:
    out = b"".join(rewriter.feed(stream[i : i + chunk_size]) for i in range(0, len(stream), chunk_size))
    return out + rewriter.close()


@pytest.mark.parametrize("ending", ["\r\n", "\n", "\r"])
@pytest.mark.parametrize("chunk_size", [1, 2, 7, 10_000])
def test_sse_rewriter_filters_the_answer_whatever_the_chunking_and_line_endings(ending: str, chunk_size: int) -> None:
    notification = '{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}'
    stream = f": keepalive{ending}{ending}".encode() + sse(notification, listing(9, ["add", "secret"]), ending=ending)
    out = run_sse(SSERewriter(public_only(9)), stream, chunk_size)
    expected = f": keepalive{ending}{ending}".encode() + sse(notification, listing(9, ["add"]), ending=ending)
    assert out == expected


@pytest.mark.parametrize("chunk_size", [1, 5, 10_000])
def test_sse_rewriter_drops_the_events_a_rewrite_takes_out_whatever_the_chunking(chunk_size: int) -> None:
    ours, theirs = listing("guards-own", ["add"]), listing(3, ["add"])
    stream = b": ping\r\n\r\n" + sse(theirs, ours, theirs)
    rewriter = SSERewriter(lambda text: DROP_EVENT if '"guards-own"' in text else None)
    assert run_sse(rewriter, stream, chunk_size) == b": ping\r\n\r\n" + sse(theirs, theirs)


def test_sse_rewriter_passes_untouched_frames_byte_for_byte() -> None:
    stream = b"id: 1\r\nretry: 5\r\n\r\nevent: message\r\ndata:" + listing(1, ["add"]).encode() + b"\r\n\r\n"
    assert run_sse(SSERewriter(public_only(1)), stream, 3) == stream


def test_sse_rewriter_joins_multi_line_data_and_keeps_other_fields() -> None:
    text = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "secret"}, {"name": "add"}]}}, indent=1)
    frame = "id: 42\n" + "".join(f"data: {line}\n" for line in text.split("\n")) + "\n"
    out = run_sse(SSERewriter(public_only(1)), frame.encode(), 1).decode()
    assert out.startswith("id: 42\ndata: ")
    data = "\n".join(line.removeprefix("data: ") for line in out.strip("\n").split("\n")[1:])
    assert json.loads(data)["result"]["tools"] == [{"name": "add"}]


def test_sse_rewriter_returns_an_unterminated_tail_as_it_came() -> None:
    rewriter = SSERewriter(public_only(1))
    tail = b"data: " + listing(1, ["secret"]).encode() + b"\r"
    assert rewriter.feed(tail) == b""
    assert rewriter.close() == tail


def test_sse_rewriter_filters_500_tools_fed_one_byte_at_a_time() -> None:
    names = [f"tool{i}" if i % 2 else f"secret{i}" for i in range(500)]
    stream = sse(listing(1, names))
    out = run_sse(SSERewriter(public_only(1)), stream, 1)
    data = out.decode().split("data: ", 1)[1].split("\r\n", 1)[0]
    assert [tool["name"] for tool in json.loads(data)["result"]["tools"]] == names[1::2]
    assert out == sse(listing(1, names[1::2]))


@pytest.mark.parametrize("chunk_size", [1, 3, 5, 1000])
def test_streaming_replace_removes_a_marker_split_across_chunks(chunk_size: int) -> None:
    stream = b"data: Unknown tool: secret-m-123 and -m- -m-12 secret-m-123\r\n\r\n"
    replace = StreamingReplace([(b"-m-123", b"")])
    out = b"".join(replace.feed(stream[i : i + chunk_size]) for i in range(0, len(stream), chunk_size))
    assert out + replace.close() == stream.replace(b"-m-123", b"")


@pytest.mark.parametrize("chunk_size", [1, 2, 7, 64, 10_000])
def test_streaming_replace_makes_several_replacements_in_order_whatever_the_chunking(chunk_size: int) -> None:
    guard_id = GuardId.new("x", '"req-1"')
    text = (
        f'data: {{"id":{guard_id.json},"result":{{"content":[{{"text":"Unknown tool: secret{guard_id.marker}'
        f' (request {guard_id.text})"}}]}}}}\r\n\r\n'
    ).encode()
    replace = StreamingReplace(guard_id.restorations())
    out = b"".join(replace.feed(text[i : i + chunk_size]) for i in range(0, len(text), chunk_size)) + replace.close()
    assert out == b'data: {"id":"req-1","result":{"content":[{"text":"Unknown tool: secret (request req-1)"}]}}\r\n\r\n'
    assert out == replace_all(text, guard_id.restorations())


# -- the guard's own request ids -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1, "1"),
        (-7, "-7"),
        (0, "0"),
        (10**127, str(10**127)),
        ("1", '"1"'),
        ("", '""'),
        ("req 1/a:b{}", '"req 1/a:b{}"'),
        ("x" * 126, '"' + "x" * 126 + '"'),
    ],
)
def test_caller_id_text_is_what_every_encoder_writes(value: Any, text: str) -> None:
    assert caller_id_text(value) == text
    assert json.loads(text) == value
    assert json.dumps(value) == text


@pytest.mark.parametrize(
    "value",
    [1.0, 1.5, True, False, None, [1], {"a": 1}, "x" * 127, "caf\u00e9", 'a"b', "a\\b", "a\nb", "\x7f", 10**128],
)
def test_caller_id_text_refuses_ids_that_could_be_written_two_ways_or_are_too_long(value: Any) -> None:
    assert caller_id_text(value) is None


def test_a_guard_id_is_unique_and_carries_its_kind_and_the_callers_id() -> None:
    first, second = GuardId.new("t", "100"), GuardId.new("t", "100")
    assert first.text != second.text
    assert first.text.startswith(GUARD_ID_PREFIX)
    assert first.marker != second.marker
    text = f'{{"id":{first.json},"note":"see {second.text}"}}'
    assert guard_ids_in(text) == [first, second]
    assert restore(text, first) == f'{{"id":100,"note":"see {second.text}"}}'
    assert restore(restore(text, first), second) == '{"id":100,"note":"see 100"}'


def test_guard_ids_in_skips_what_only_looks_like_one() -> None:
    bogus_caller = GUARD_ID_PREFIX + "t" + "0" * 32 + ":" + b"1.5".hex() + ":"
    no_caller = GUARD_ID_PREFIX + "t" + "0" * 32 + "::"
    short_nonce = GUARD_ID_PREFIX + "t" + "0" * 31 + ":" + b"1".hex() + ":"
    assert guard_ids_in(f"{bogus_caller} {no_caller} {short_nonce}") == []


# -- finding and editing values ----------------------------------------------------------------------------------


def test_item_spans_and_edits_change_only_what_they_name() -> None:
    text = '{"params" : {"notifications":{"resourceSubscriptions": [ "a://1" ,"b://\\u0032", 7 ]}}, "id":5}'
    spans = item_spans(text, ("params", "notifications", "resourceSubscriptions"))
    assert [text[start:end] for start, end in spans] == ['"a://1"', '"b://\\u0032"', "7"]
    edits = [string_mark(text, span, "-m", prefix=True) for span in spans[:2]]
    id_span = value_span(text, ("id",))
    assert id_span is not None
    edited = apply_edits(text, [*edits, (*id_span, '"mine"')])
    assert edited == text.replace('"a://1"', '"-ma://1"').replace('"b://', '"-mb://').replace('"id":5', '"id":"mine"')
    assert item_spans(text, ("params", "missing")) == []
    assert item_spans('{"params":{"x":"[1]"}}', ("params", "x")) == []
