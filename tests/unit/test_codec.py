"""The sans-I/O codec: framing, request decoding and its errors, server message round trips."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beseda.protocol import codec, errors, schema
from beseda.protocol.errors import ProtocolError


def feed_all(buffer: codec.LineBuffer, *chunks: bytes) -> list[bytes]:
    lines: list[bytes] = []
    for chunk in chunks:
        lines.extend(buffer.feed(chunk))
    return lines


def request(**fields: object) -> bytes:
    return json.dumps(fields, ensure_ascii=False).encode()


def refused(line: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        codec.decode_request(line)
    return caught.value


# -- framing ----------------------------------------------------------------------------------


def test_lines_are_split_on_newline() -> None:
    buffer = codec.LineBuffer()
    assert feed_all(buffer, b"one\ntwo\n") == [b"one", b"two"]
    assert buffer.pending == 0


def test_a_line_split_across_feeds_is_joined() -> None:
    buffer = codec.LineBuffer()
    assert feed_all(buffer, b'{"type":', b'"ping",', b'"id":1}') == []
    assert buffer.pending == len(b'{"type":"ping","id":1}')
    assert feed_all(buffer, b"\n") == [b'{"type":"ping","id":1}']
    assert buffer.pending == 0


def test_many_lines_and_a_partial_one_in_one_chunk() -> None:
    buffer = codec.LineBuffer()
    chunk = b"".join(b"line %d\n" % i for i in range(1000)) + b"tail"
    assert feed_all(buffer, chunk) == [b"line %d" % i for i in range(1000)]
    assert buffer.pending == 4
    assert feed_all(buffer, b" end\n") == [b"tail end"]


def test_byte_by_byte_feeding_gives_the_same_lines() -> None:
    data = "привет: мир 😀\nsecond\n\nthird\n".encode()
    buffer = codec.LineBuffer()
    lines = feed_all(buffer, *(data[i : i + 1] for i in range(len(data))))
    assert lines == [line.encode() for line in ["привет: мир 😀", "second", "", "third"]]


def test_crlf_lines_decode_like_lf_lines() -> None:
    buffer = codec.LineBuffer()
    lines = feed_all(buffer, b'{"type":"ping","id":1}\r\n{"type":"ping","id":2}\r', b"\n")
    assert [codec.decode_request(line) for line in lines] == [
        schema.Ping(id=1),
        schema.Ping(id=2),
    ]


def test_a_line_of_exactly_the_bound_is_accepted() -> None:
    buffer = codec.LineBuffer(max_line=10)
    assert feed_all(buffer, b"x" * 10, b"\n") == [b"x" * 10]
    assert feed_all(buffer, b"y" * 10 + b"\n") == [b"y" * 10]


def test_an_oversize_complete_line_is_refused() -> None:
    buffer = codec.LineBuffer(max_line=10)
    with pytest.raises(ProtocolError) as caught:
        feed_all(buffer, b"x" * 11 + b"\n")
    assert caught.value.code == errors.LINE_TOO_LONG
    assert caught.value.fatal
    assert buffer.overflowed


def test_an_oversize_partial_line_is_refused_without_growing_memory() -> None:
    bound = 1000
    buffer = codec.LineBuffer(max_line=bound)
    chunk = b"z" * 97
    held: list[int] = []
    error: ProtocolError | None = None
    for _ in range(100):
        try:
            feed_all(buffer, chunk)
        except ProtocolError as exc:
            error = exc
            break
        held.append(buffer.pending)
    assert error is not None
    assert error.code == errors.LINE_TOO_LONG
    assert len(held) == bound // len(chunk)
    assert max(held) <= bound
    assert buffer.pending == 0


def test_lines_before_the_oversize_one_are_delivered() -> None:
    buffer = codec.LineBuffer(max_line=10)
    lines: list[bytes] = []
    with pytest.raises(ProtocolError):
        lines.extend(buffer.feed(b"ok\nfine\n" + b"x" * 50))
    assert lines == [b"ok", b"fine"]


def test_nothing_is_accepted_after_an_overflow() -> None:
    buffer = codec.LineBuffer(max_line=10)
    with pytest.raises(ProtocolError):
        feed_all(buffer, b"x" * 20)
    assert feed_all(buffer, b'{"type":"ping","id":1}\n' * 3) == []
    assert buffer.pending == 0


def test_the_default_bound_is_the_documented_one() -> None:
    buffer = codec.LineBuffer()
    assert buffer.max_line == schema.MAX_LINE_BYTES
    assert feed_all(buffer, b"a" * schema.MAX_LINE_BYTES + b"\n") == [b"a" * schema.MAX_LINE_BYTES]
    with pytest.raises(ProtocolError):
        feed_all(buffer, b"a" * (schema.MAX_LINE_BYTES + 1))


# -- decoding requests ------------------------------------------------------------------------

EVERY_REQUEST = [
    (
        {"type": "register", "id": 1, "username": "alice", "password": "secret123"},
        schema.Register(id=1, username="alice", password="secret123"),
    ),
    (
        {"type": "login", "id": "a", "username": "alice", "password": "secret123"},
        schema.Login(id="a", username="alice", password="secret123"),
    ),
    ({"type": "login", "id": 2, "token": "tok"}, schema.Login(id=2, token="tok")),
    ({"type": "logout", "id": 3}, schema.Logout(id=3)),
    (
        {"type": "send", "id": 4, "client_id": "c1", "text": "a: b\nc 😀"},
        schema.Send(id=4, client_id="c1", text="a: b\nc 😀"),
    ),
    (
        {"type": "dm", "id": 5, "to": "bob", "client_id": "c2", "text": "привет"},
        schema.DirectMessage(id=5, to="bob", client_id="c2", text="привет"),
    ),
    (
        {"type": "history", "id": 6, "conversation": "general"},
        schema.History(id=6, conversation="general", limit=schema.DEFAULT_PAGE),
    ),
    (
        {"type": "history", "id": 7, "peer": "bob", "before": 10, "limit": 5},
        schema.History(id=7, peer="bob", before=10, limit=5),
    ),
    ({"type": "sync", "id": 8}, schema.Sync(id=8, cursors={}, limit=schema.MAX_SYNC_PAGE)),
    (
        {"type": "sync", "id": 9, "cursors": {"general": 3, "dm:1:2": 0}, "limit": 10},
        schema.Sync(id=9, cursors={"general": 3, "dm:1:2": 0}, limit=10),
    ),
    ({"type": "users", "id": 10}, schema.Users(id=10)),
    (
        {"type": "users", "id": 11, "query": "ал", "after": "алекс", "limit": 2},
        schema.Users(id=11, query="ал", after="алекс", limit=2),
    ),
    ({"type": "conversations", "id": 12}, schema.Conversations(id=12)),
    ({"type": "ping", "id": 13}, schema.Ping(id=13)),
    (
        {"type": "watch", "id": 14, "users": ["alice", "Борис"]},
        schema.Watch(id=14, users=["alice", "Борис"]),
    ),
    ({"type": "watch", "id": 15, "users": []}, schema.Watch(id=15, users=[])),
    (
        {"type": "post", "id": 16, "conversation": "c:3", "client_id": "c3", "text": "@anna hi"},
        schema.Post(id=16, conversation="c:3", client_id="c3", text="@anna hi"),
    ),
    (
        {"type": "create_channel", "id": 17, "name": "проект", "public": False},
        schema.CreateChannel(id=17, name="проект", public=False),
    ),
    (
        {"type": "create_group", "id": 18, "members": ["anna", "boris"]},
        schema.CreateGroup(id=18, members=["anna", "boris"]),
    ),
    ({"type": "join", "id": 19, "conversation": "c:1"}, schema.Join(id=19, conversation="c:1")),
    ({"type": "leave", "id": 20, "conversation": "c:1"}, schema.Leave(id=20, conversation="c:1")),
    (
        {"type": "invite", "id": 21, "conversation": "c:1", "users": ["anna"]},
        schema.Invite(id=21, conversation="c:1", users=["anna"]),
    ),
    (
        {"type": "remove", "id": 22, "conversation": "c:1", "user": "anna"},
        schema.Remove(id=22, conversation="c:1", user="anna"),
    ),
    (
        {"type": "set_role", "id": 23, "conversation": "c:1", "user": "anna", "role": "admin"},
        schema.SetRole(id=23, conversation="c:1", user="anna", role="admin"),
    ),
    (
        {"type": "rename", "id": 24, "conversation": "c:1", "name": "ops"},
        schema.Rename(id=24, conversation="c:1", name="ops"),
    ),
    (
        {"type": "set_topic", "id": 25, "conversation": "c:1", "topic": "Deploys"},
        schema.SetTopic(id=25, conversation="c:1", topic="Deploys"),
    ),
    (
        {"type": "archive", "id": 26, "conversation": "c:1"},
        schema.Archive(id=26, conversation="c:1"),
    ),
    (
        {"type": "conversation", "id": 27, "conversation": "c:1"},
        schema.ConversationRequest(id=27, conversation="c:1"),
    ),
    (
        {"type": "members", "id": 28, "conversation": "c:1", "limit": 5},
        schema.Members(id=28, conversation="c:1", limit=5),
    ),
    ({"type": "channels", "id": 29, "query": "pro"}, schema.Channels(id=29, query="pro")),
    (
        {"type": "read", "id": 30, "conversation": "c:1", "seq": 7},
        schema.Read(id=30, conversation="c:1", seq=7),
    ),
    (
        {"type": "typing", "id": 31, "conversation": "c:1"},
        schema.Typing(id=31, conversation="c:1"),
    ),
    (
        {"type": "edit", "id": 32, "conversation": "c:1", "seq": 4, "text": "fixed"},
        schema.Edit(id=32, conversation="c:1", seq=4, text="fixed"),
    ),
    (
        {"type": "delete", "id": 33, "conversation": "c:1", "seq": 4},
        schema.Delete(id=33, conversation="c:1", seq=4),
    ),
    (
        {"type": "react", "id": 34, "conversation": "c:1", "seq": 4, "emoji": "👍"},
        schema.React(id=34, conversation="c:1", seq=4, emoji="👍"),
    ),
    (
        {"type": "unreact", "id": 35, "conversation": "c:1", "seq": 4, "emoji": "👍"},
        schema.Unreact(id=35, conversation="c:1", seq=4, emoji="👍"),
    ),
    (
        {"type": "search", "id": 36, "query": "встреча from:bob", "order": "best"},
        schema.Search(id=36, query="встреча from:bob", order="best"),
    ),
]


@pytest.mark.parametrize(("fields", "expected"), EVERY_REQUEST, ids=lambda v: str(v)[:30])
def test_every_request_type_decodes(fields: dict[str, object], expected: schema.Request) -> None:
    assert codec.decode_request(request(**fields)) == expected


def test_every_request_type_is_covered() -> None:
    assert {fields["type"] for fields, _ in EVERY_REQUEST} == schema.REQUEST_TYPES


def test_unknown_fields_are_ignored() -> None:
    line = request(type="ping", id=1, future_field={"nested": [1, 2]})
    assert codec.decode_request(line) == schema.Ping(id=1)


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"{",
        b"not json",
        b'{"type":"ping","id":1',
        b'{"type":"ping","id":1}trailing',
        b'{"type":"ping",,"id":1}',
        b'{"type":"ping","id":1}{"type":"ping","id":2}',
    ],
)
def test_malformed_json_is_bad_json(line: bytes) -> None:
    error = refused(line)
    assert error.code == errors.BAD_JSON
    assert not error.fatal


@pytest.mark.parametrize(
    "line",
    [
        b'{"type":"send","id":1,"client_id":"c","text":"\xff"}',
        b'{"type":"send","id":1,"client_id":"c","text":"\xc3"}',
        b'{"type":"send","id":1,"client_id":"c","text":"\xed\xa0\x80"}',  # encoded surrogate
        b'{"type":"send","id":1,"client_id":"c","text":"\xc0\xaf"}',  # overlong
        b"\xfe\xff",
    ],
)
def test_invalid_utf8_is_bad_json(line: bytes) -> None:
    assert refused(line).code == errors.BAD_JSON


@pytest.mark.parametrize(
    "escaped", [rb"\ud800", rb"\udc00", rb"x\udfff", rb"\ud800abc", rb"\ud800\u0041"]
)
def test_a_lone_surrogate_escape_is_bad_json(escaped: bytes) -> None:
    line = b'{"type":"send","id":1,"client_id":"c","text":"' + escaped + b'"}'
    assert refused(line).code == errors.BAD_JSON


def test_a_surrogate_pair_escape_is_one_character() -> None:
    line = rb'{"type":"send","id":1,"client_id":"c","text":"\ud83d\ude00"}'
    assert codec.decode_request(line) == schema.Send(id=1, client_id="c", text="😀")


@pytest.mark.parametrize(
    "line",
    [
        # The type is read first, so these fail validation before the JSON error is seen:
        # they are still malformed JSON, not a well-formed request of the wrong shape.
        b'{"type":"nope","id":1,',
        b'{"type":"nope","id":1}trailing',
        rb'{"type":"nope","id":"\ud800"}',
        b'{"type":"send","id":1,"text":5,"client_id":"c", oops',
        b'{"type":"nope","id":1,"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
)
def test_malformed_json_after_a_validation_error_is_still_bad_json(line: bytes) -> None:
    assert refused(line).code == errors.BAD_JSON


def test_deeply_nested_json_is_bad_json() -> None:
    line = b'{"type":"ping","id":1,"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert refused(line).code == errors.BAD_JSON


@pytest.mark.parametrize("line", [b"[]", b'[{"type":"ping","id":1}]', b"3", b'"ping"', b"null"])
def test_a_request_must_be_an_object(line: bytes) -> None:
    error = refused(line)
    assert error.code == errors.BAD_REQUEST
    assert error.request_id is None


def test_a_missing_type_is_bad_request_with_the_id_kept() -> None:
    error = refused(request(id=42, text="hi"))
    assert error.code == errors.BAD_REQUEST
    assert error.request_id == 42
    assert "type" in error.message


def test_an_unknown_type_keeps_the_request_id() -> None:
    error = refused(request(type="teleport", id="req-7"))
    assert error.code == errors.UNKNOWN_TYPE
    assert error.request_id == "req-7"
    assert "teleport" in error.message


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"type": "send", "id": 7, "client_id": 5, "text": "x"}, "client_id"),
        ({"type": "send", "id": 7, "client_id": "c", "text": ["x"]}, "text"),
        ({"type": "send", "id": 7, "client_id": "c"}, "text"),
        ({"type": "dm", "id": 7, "client_id": "c", "text": "x"}, "to"),
        ({"type": "register", "id": 7, "username": "a", "password": None}, "password"),
        ({"type": "history", "id": 7, "conversation": "general", "limit": 0}, "limit"),
        (
            {"type": "history", "id": 7, "conversation": "general", "limit": schema.MAX_PAGE + 1},
            "limit",
        ),
        ({"type": "history", "id": 7, "conversation": "general", "before": -1}, "before"),
        ({"type": "sync", "id": 7, "cursors": {"general": "3"}}, "cursors"),
        ({"type": "sync", "id": 7, "cursors": {"general": -1}}, "cursors"),
        ({"type": "users", "id": 7, "query": 3}, "query"),
        ({"type": "login", "id": 7, "token": 123}, "token"),
        ({"type": "watch", "id": 7}, "users"),
        ({"type": "watch", "id": 7, "users": "alice"}, "users"),
        ({"type": "watch", "id": 7, "users": ["alice", 3]}, "users"),
        ({"type": "watch", "id": 7, "users": [None]}, "users"),
        ({"type": "watch", "id": 7, "users": ["x" * 1025]}, "users"),
    ],
)
def test_a_wrong_or_missing_field_is_bad_request_naming_it(
    fields: dict[str, object], field: str
) -> None:
    error = refused(request(**fields))
    assert error.code == errors.BAD_REQUEST
    assert error.request_id == 7
    assert field in error.message


def test_a_too_long_client_id_is_bad_request() -> None:
    ok = "c" * schema.MAX_CLIENT_ID_CHARS
    assert codec.decode_request(request(type="send", id=1, client_id=ok, text="x"))
    error = refused(request(type="send", id=1, client_id=ok + "c", text="x"))
    assert error.code == errors.BAD_REQUEST
    assert error.request_id == 1
    assert "client_id" in error.message


def test_a_watch_of_too_many_names_is_bad_request_naming_the_limit() -> None:
    names = [f"user{i}" for i in range(schema.MAX_WATCH)]
    assert codec.decode_request(request(type="watch", id=1, users=names))
    error = refused(request(type="watch", id=1, users=[*names, "one more"]))
    assert error.code == errors.BAD_REQUEST
    assert error.request_id == 1
    assert "users" in error.message
    assert str(schema.MAX_WATCH) in error.message


def test_an_empty_client_id_is_bad_request() -> None:
    assert refused(request(type="send", id=1, client_id="", text="x")).code == errors.BAD_REQUEST


def test_a_too_long_request_id_is_bad_request() -> None:
    error = refused(request(type="ping", id="r" * (schema.MAX_REQUEST_ID_CHARS + 1)))
    assert error.code == errors.BAD_REQUEST


@pytest.mark.parametrize("request_id", [None, 1.5, [1], {"a": 1}, True])
def test_a_request_id_must_be_an_int_or_a_string(request_id: object) -> None:
    assert refused(request(type="ping", id=request_id)).code == errors.BAD_REQUEST


# -- server messages --------------------------------------------------------------------------

MESSAGE = schema.Message(
    id=17,
    conversation="dm:1:2",
    seq=3,
    sender="алиса",
    to="bob",
    text="line one\nline two: 😀",
    ts=1_700_000_000_123,
    client_id="c-1",
)


@pytest.mark.parametrize(
    "message",
    [
        schema.Error(id=3, code=errors.RATE_LIMITED, message="slow down", retry_after=0.25),
        schema.Error(id=None, code=errors.BAD_JSON, message="Malformed JSON"),
        schema.MessageEvent(message=MESSAGE),
        schema.MessageEvent(message=msgspec.structs.replace(MESSAGE, to=None)),
        schema.PresenceEvent(user="bob", online=True),
        schema.PresenceEvent(user="bob", online=False),
        schema.Hello(server="beseda", protocol=1, limits={"max_line_bytes": 262144, "r": 0.5}),
        schema.Bye(code=errors.SERVER_SHUTDOWN, message="bye"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_server_messages_round_trip(message: schema.ServerMessage) -> None:
    line = codec.encode(message)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert codec.decode_server_message(line[:-1]) == message


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (schema.SendResult(message=MESSAGE), schema.SendResult),
        (schema.SendResult(message=MESSAGE, duplicate=True), schema.SendResult),
        (schema.AuthResult(user="alice", token="t"), schema.AuthResult),
        (schema.Empty(), schema.Empty),
        (
            schema.HistoryResult(conversation="general", messages=[MESSAGE], more=True),
            schema.HistoryResult,
        ),
        (schema.SyncResult(messages=[MESSAGE, MESSAGE], more=False), schema.SyncResult),
        (
            schema.UsersResult(users=[schema.UserEntry(name="a", online=True)], next="a"),
            schema.UsersResult,
        ),
        (
            schema.ConversationsResult(
                conversations=[schema.ConversationEntry(conversation="general", last_seq=0)]
            ),
            schema.ConversationsResult,
        ),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_results_with_data_round_trip(data: msgspec.Struct, kind: type[msgspec.Struct]) -> None:
    line = codec.encode(schema.Result(id="req-1", data=codec.encode_data(data)))
    decoded = codec.decode_server_message(line.rstrip(b"\n"))
    assert isinstance(decoded, schema.Result)
    assert decoded.id == "req-1"
    assert codec.decode_data(decoded.data, kind) == data


def test_a_result_is_one_line_whatever_the_text() -> None:
    text = "a\nb\r\nc\u2028d\u0000e"
    line = codec.encode(schema.MessageEvent(message=msgspec.structs.replace(MESSAGE, text=text)))
    assert line.count(b"\n") == 1
    assert list(codec.LineBuffer().feed(line)) == [line[:-1]]


@pytest.mark.parametrize("line", [b"{", b"[]", b'{"type":"mystery"}', b"\xff"])
def test_an_unreadable_server_line_is_a_protocol_error(line: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        codec.decode_server_message(line)
    assert caught.value.code == errors.BAD_JSON


# -- hostile bytes ----------------------------------------------------------------------------

JSONISH = st.sampled_from(
    [b"{", b"}", b"[", b"]", b'"', b":", b",", b"\\", b"\\u", b"d800", b"\n", b"\r", b'"type"']
    + [f'"{t}"'.encode() for t in sorted(schema.REQUEST_TYPES)]
    + [b'"id"', b"1", b"-1", b"null", b"true", b"1e999", b"\xff", b"\xed\xa0\x80", b" "]
)


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(
        st.one_of(st.binary(max_size=64), st.lists(JSONISH, max_size=24).map(b"".join)),
        max_size=12,
    )
)
def test_arbitrary_bytes_only_ever_raise_protocol_errors(chunks: list[bytes]) -> None:
    buffer = codec.LineBuffer(max_line=256)
    codes: set[str] = set()
    for chunk in chunks:
        try:
            lines = list(buffer.feed(chunk))
        except ProtocolError as exc:
            codes.add(exc.code)
            break
        assert buffer.pending <= 256
        for line in lines:
            try:
                decoded = codec.decode_request(line)
            except ProtocolError as exc:
                codes.add(exc.code)
            else:
                assert isinstance(decoded, schema.Request)
    expected = {errors.BAD_JSON, errors.BAD_REQUEST, errors.UNKNOWN_TYPE, errors.LINE_TOO_LONG}
    assert codes <= expected
    if errors.LINE_TOO_LONG in codes:
        assert buffer.pending == 0
