"""The pieces under the tool-policy layer: bounded bodies, strict parsing, edits, the guard's own request ids, and
JSON/SSE response rewriting."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.types import Message

from mcp_access_guard.jsonrpc import (
    DROP_EVENT,
    GUARD_ID_PREFIX,
    ClientGone,
    GuardId,
    RejectedRequest,
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


def keep_public(tool: Any) -> bool:
    name = tool.get("name") if isinstance(tool, dict) else None
    return isinstance(name, str) and not name.startswith("secret")


def test_listing_filter_drops_entries_and_keeps_every_other_byte() -> None:
    text = listing(3, ["add", "secret", "mul", "secret2"], nextCursor="page-2", _meta={"k": "é\u2028"})
    rewritten = listing_filter(3, "tools", keep_public)(text)
    assert rewritten == listing(3, ["add", "mul"], nextCursor="page-2", _meta={"k": "é\u2028"})


def test_listing_filter_leaves_other_messages_alone() -> None:
    rewrite = listing_filter(3, "tools", keep_public)
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
    assert (
        listing_filter(1, "tools", keep_public)(text) == '{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"add"}]}}'
    )


def test_listing_filter_handles_pretty_printed_and_empty_results() -> None:
    text = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "secret"}]}}, indent=2)
    assert json.loads(listing_filter(1, "tools", keep_public)(text) or "")["result"]["tools"] == []
    assert listing_filter(1, "tools", keep_public)(listing(1, [])) is None


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
    out = run_sse(SSERewriter(listing_filter(9, "tools", keep_public)), stream, chunk_size)
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
    assert run_sse(SSERewriter(listing_filter(1, "tools", keep_public)), stream, 3) == stream


def test_sse_rewriter_joins_multi_line_data_and_keeps_other_fields() -> None:
    text = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "secret"}, {"name": "add"}]}}, indent=1)
    frame = "id: 42\n" + "".join(f"data: {line}\n" for line in text.split("\n")) + "\n"
    out = run_sse(SSERewriter(listing_filter(1, "tools", keep_public)), frame.encode(), 1).decode()
    assert out.startswith("id: 42\ndata: ")
    data = "\n".join(line.removeprefix("data: ") for line in out.strip("\n").split("\n")[1:])
    assert json.loads(data)["result"]["tools"] == [{"name": "add"}]


def test_sse_rewriter_returns_an_unterminated_tail_as_it_came() -> None:
    rewriter = SSERewriter(listing_filter(1, "tools", keep_public))
    tail = b"data: " + listing(1, ["secret"]).encode() + b"\r"
    assert rewriter.feed(tail) == b""
    assert rewriter.close() == tail


def test_sse_rewriter_filters_500_tools_fed_one_byte_at_a_time() -> None:
    names = [f"tool{i}" if i % 2 else f"secret{i}" for i in range(500)]
    stream = sse(listing(1, names))
    out = run_sse(SSERewriter(listing_filter(1, "tools", keep_public)), stream, 1)
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
