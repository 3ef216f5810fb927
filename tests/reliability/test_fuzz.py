"""Prove 4: hostile bytes. The codec turns any input into a request or a protocol error,
and a live server answers any byte sequence without an unhandled exception and keeps
serving. Property-based, with hypothesis; atheris runs the codec too where it is installed."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beseda.protocol import codec, errors, schema
from beseda.protocol.errors import ProtocolError
from conftest import (
    NO_RATE_LIMITS,
    TIMEOUT_FACTOR,
    RawConnection,
    ServerProcess,
    register_all,
    report,
    sizes,
    unhandled_errors,
)

DECODE_ERRORS = {errors.BAD_JSON, errors.BAD_REQUEST, errors.UNKNOWN_TYPE}
FIELDS = [
    "id",
    "type",
    "username",
    "password",
    "token",
    "client_id",
    "text",
    "to",
    "conversation",
    "peer",
    "before",
    "limit",
    "cursors",
    "query",
    "after",
]
TYPES = sorted(schema.REQUEST_TYPES)

# -- strategies of hostile input -----------------------------------------------------------------

NASTY_SCALARS = st.sampled_from(
    [
        "NaN",
        "-NaN",
        "Infinity",
        "-Infinity",
        "1e999999",
        "-1e999999",
        "1e-999999",
        "-0",
        "0.0",
        "9" * 5000,
        "-" + "9" * 400,
        "18446744073709551616",
        "-9223372036854775809",
        "1.7976931348623157e309",
        "true",
        "false",
        "null",
        '""',
        '"\\ud800"',
        '"\\udfff\\ud800"',
        '"a\\ud83d"',
        '"\\u0000"',
        '"\\u202e"',
        '"dm:1:2"',
        '"dm:0:0"',
        '"general"',
        "[]",
        "{}",
        '"' + "x" * 70 + '"',
        "01",
        "1.",
        ".5",
        "+1",
        "0x10",
        "'single'",
        "undefined",
    ]
)


def nested(depth: int, kind: str) -> str:
    return "[" * depth + "]" * depth if kind == "array" else '{"a":' * depth + "1" + "}" * depth


NESTING = st.builds(
    nested, st.integers(min_value=1, max_value=50_000), st.sampled_from(["array", "object"])
)
SAFE_TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | SAFE_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(SAFE_TEXT, inner, max_size=4),
    max_leaves=10,
).map(json.dumps)
VALUES = st.one_of(NASTY_SCALARS, NESTING, JSON_VALUES)
KEYS = st.sampled_from(FIELDS) | SAFE_TEXT


@st.composite
def hostile_objects(draw: st.DrawFn) -> bytes:
    """A JSON object that looks like a request: known keys (repeated at will), nasty values."""
    pairs = []
    if draw(st.booleans()):
        kinds = st.sampled_from([*TYPES, "", "Send", "send ", "result", "hello"])
        pairs.append(("type", json.dumps(draw(kinds))))
    if draw(st.booleans()):
        pairs.append(("id", draw(st.integers(min_value=-(2**70), max_value=2**70).map(str))))
    pairs += draw(st.lists(st.tuples(KEYS, VALUES), max_size=6))
    order = draw(st.permutations(pairs))
    text = "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in order) + "}"
    return text.encode("utf-8")


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """Bytes with invalid UTF-8, encoded surrogates, cuts and control bytes spliced in."""
    data = draw(base)
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        at = draw(st.integers(min_value=0, max_value=len(data)))
        piece = draw(
            st.sampled_from(
                [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00", b"\r", b"\\"]
            )
            | st.binary(max_size=4)
        )
        data = data[:at] + piece + data[at:] if draw(st.booleans()) else data[:at]
    return data


VALID_REQUESTS = st.one_of(
    st.builds(schema.Ping, id=st.integers(0, 10**6)),
    st.builds(
        schema.Send,
        id=st.integers(0, 10**6),
        client_id=st.text("abcdef0123", min_size=1, max_size=8),
        text=SAFE_TEXT,
    ),
    st.builds(
        schema.DirectMessage,
        id=st.integers(0, 10**6),
        to=st.sampled_from(["peer", "fuzzer", "nobody", "ＰＥＥＲ"]),
        client_id=st.text("abcdef0123", min_size=1, max_size=8),
        text=SAFE_TEXT,
    ),
    st.builds(
        schema.History,
        id=st.integers(0, 10**6),
        conversation=st.sampled_from(["general", "dm:1:2", "dm:2:3", "dm:x", "nope"]),
        before=st.none() | st.integers(0, 100),
        limit=st.integers(1, 200),
    ),
    st.builds(
        schema.Sync,
        id=st.integers(0, 10**6),
        cursors=st.dictionaries(st.sampled_from(["general", "dm:1:2", "x"]), st.integers(0, 50)),
    ),
    st.builds(schema.Users, id=st.integers(0, 10**6), query=SAFE_TEXT),
    st.builds(schema.Conversations, id=st.integers(0, 10**6)),
    st.builds(
        schema.Login,
        id=st.integers(0, 10**6),
        username=st.none() | SAFE_TEXT,
        password=st.none() | SAFE_TEXT,
        token=st.none() | SAFE_TEXT,
    ),
    st.builds(schema.Register, id=st.integers(0, 10**6), username=SAFE_TEXT, password=SAFE_TEXT),
    st.builds(schema.Logout, id=st.integers(0, 10**6)),
).map(lambda request: codec.encode(request)[:-1])

HOSTILE_LINES = st.one_of(
    st.binary(max_size=200),
    hostile_objects(),
    mutated(hostile_objects()),
    mutated(VALID_REQUESTS),
    VALID_REQUESTS,
)


def decode_or_refuse(line: bytes) -> schema.AnyRequest | ProtocolError:
    try:
        return codec.decode_request(line)
    except ProtocolError as exc:
        return exc


# -- the codec -----------------------------------------------------------------------------------


@pytest.mark.parametrize("examples", sizes(2000, 80_000, fast_timeout=150, soak_timeout=3600))
def test_codec_turns_any_bytes_into_a_request_or_a_protocol_error(examples: int) -> None:
    seen: dict[str, int] = {}

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(HOSTILE_LINES)
    def decode(line: bytes) -> None:
        outcome = decode_or_refuse(line)
        if isinstance(outcome, ProtocolError):
            assert outcome.code in DECODE_ERRORS
            assert not outcome.fatal
            key = outcome.code
        else:
            # A decoded request survives a round trip unchanged.
            assert codec.decode_request(codec.encode(outcome)) == outcome
            key = "decoded"
        seen[key] = seen.get(key, 0) + 1

    decode()
    report("fuzz: codec", {"inputs": sum(seen.values()), **seen})
    assert sum(seen.values()) >= examples


@pytest.mark.parametrize("examples", sizes(300, 10_000, fast_timeout=60, soak_timeout=1800))
def test_line_buffer_is_bounded_and_splits_exactly(examples: int) -> None:
    max_line = 64
    count = 0

    @settings(max_examples=examples, deadline=None, database=None)
    @given(st.lists(st.binary(max_size=100) | st.sampled_from([b"\n", b"\r\n", b"x" * 65])))
    def feed(chunks: list[bytes]) -> None:
        nonlocal count
        count += 1
        buffer = codec.LineBuffer(max_line)
        lines: list[bytes] = []
        overflowed = False
        for chunk in chunks:
            try:
                lines.extend(buffer.feed(chunk))
            except ProtocolError as exc:
                if exc.code != errors.LINE_TOO_LONG or not exc.fatal:
                    raise
                overflowed = True
                break
            assert buffer.pending <= max_line
        complete = b"".join(chunks).split(b"\n")[:-1]
        if overflowed:
            assert lines == complete[: len(lines)]
            assert any(len(line) > max_line for line in complete) or (
                len(b"".join(chunks).rsplit(b"\n", 1)[-1]) > max_line
            )
            assert list(buffer.feed(b"more\n")) == []  # dead after overflowing
        else:
            assert lines == complete

    feed()
    report("fuzz: line buffer", {"inputs": count})


ATHERIS_HARNESS = textwrap.dedent(
    """
    import sys
    import atheris
    with atheris.instrument_imports():
        from beseda.protocol import codec, errors
        from beseda.protocol.errors import ProtocolError
    CODES = {errors.BAD_JSON, errors.BAD_REQUEST, errors.UNKNOWN_TYPE}

    def one(data):
        try:
            request = codec.decode_request(data)
        except ProtocolError as exc:
            assert exc.code in CODES, exc
        else:
            assert codec.decode_request(codec.encode(request)) == request
        buffer = codec.LineBuffer(64)
        try:
            list(buffer.feed(data))
        except ProtocolError as exc:
            assert exc.code == errors.LINE_TOO_LONG

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
    """
)


@pytest.mark.parametrize("runs", sizes(20_000, 200_000, fast_timeout=120, soak_timeout=1800))
def test_atheris_codec(runs: int, tmp_path: Any) -> None:
    pytest.importorskip("atheris")
    result = subprocess.run(
        [sys.executable, "-c", ATHERIS_HARNESS, f"-atheris_runs={runs}", "-max_len=4096"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=1700,
    )
    report("fuzz: atheris", {"runs": runs, "exit": result.returncode})
    assert result.returncode == 0, result.stderr[-3000:]


# -- a live server -------------------------------------------------------------------------------


def read_line(sock: socket.socket, pending: bytearray) -> bytes | None:
    while b"\n" not in pending:
        data = sock.recv(65536)
        if not data:
            return None
        pending += data
    line, _, rest = bytes(pending).partition(b"\n")
    pending[:] = rest
    return line


@pytest.mark.parametrize("examples", sizes(150, 5000, fast_timeout=150, soak_timeout=3600))
def test_live_server_survives_hostile_bytes(
    examples: int, server_process: Callable[..., ServerProcess]
) -> None:
    proc = server_process(*NO_RATE_LIMITS)
    tokens = asyncio.run(register_all(proc.port, ["fuzzer", "peer"]))
    login = codec.encode(schema.Login(id="login", token=tokens["fuzzer"]))
    probe = codec.encode(schema.Ping(id="probe"))
    stats = {"connections": 0, "lines": 0, "replies": 0, "closed by the server": 0}

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        st.booleans(),
        st.lists(HOSTILE_LINES, min_size=1, max_size=8),
        st.integers(min_value=0, max_value=30),
    )
    def session(authenticate: bool, lines: list[bytes], oversize: int) -> None:
        # About one session in thirty ends with a line longer than the server accepts.
        if oversize == 17:
            lines = [*lines, b"x" * (schema.MAX_LINE_BYTES + 1)]
        stats["connections"] += 1
        stats["lines"] += len(lines)
        with socket.create_connection(("127.0.0.1", proc.port), timeout=20 * TIMEOUT_FACTOR) as s:
            pending = bytearray()
            hello = read_line(s, pending)
            assert hello is not None
            assert isinstance(codec.decode_server_message(hello), schema.Hello)
            payload = b"\n".join(lines) + b"\n" + probe
            too_long = any(len(x) > schema.MAX_LINE_BYTES for x in payload.split(b"\n"))
            while True:
                try:
                    if payload:
                        s.sendall((login if authenticate else b"") + payload)
                        payload = b""
                    line = read_line(s, pending)
                except (ConnectionResetError, BrokenPipeError):
                    # The server closed after a line too long, with our bytes still unread.
                    assert too_long
                    line = None
                if line is None:
                    # Only a line that is too long closes the connection.
                    stats["closed by the server"] += 1
                    assert too_long
                    return
                stats["replies"] += 1
                message = codec.decode_server_message(line)  # the server sends only protocol
                assert not (
                    isinstance(message, schema.Error) and message.code == errors.INTERNAL_ERROR
                ), message
                if isinstance(message, schema.Error) and message.code == errors.LINE_TOO_LONG:
                    continue
                if isinstance(message, schema.Result) and message.id == "probe":
                    return

    session()

    async def still_serving() -> schema.Message:
        # From another address: the fuzzer's failed logins have used up 127.0.0.1's allowance.
        conn = await RawConnection.open(proc.port, local="127.0.0.9")
        try:
            await conn.call(schema.Login(id=0, token=tokens["peer"]), schema.AuthResult)
            sent = await conn.call(
                schema.Send(id=0, client_id="still", text="still serving"), schema.SendResult
            )
        finally:
            await conn.close()
        return sent.message

    message = asyncio.run(still_serving())
    assert message.text == "still serving"
    bad = unhandled_errors(proc.log.read_text())
    report("fuzz: live server", {**stats, "unhandled errors in the log": len(bad)})
    assert bad == []
    assert proc.proc is not None
    assert proc.proc.poll() is None


def test_hostile_examples_named_by_the_issue() -> None:
    """Each kind of hostile input the issue names, decoded once, for the record."""
    cases = {
        "invalid UTF-8": b'{"id":1,"type":"send","client_id":"a","text":"\xff\xfe"}',
        "encoded surrogate": b'{"id":1,"type":"send","client_id":"a","text":"\xed\xa0\x80"}',
        "lone surrogate escape": b'{"id":1,"type":"send","client_id":"a","text":"\\ud800"}',
        "deep nesting": b'{"id":1,"type":"ping","x":' + nested(100_000, "array").encode() + b"}",
        "NaN": b'{"id":NaN,"type":"ping"}',
        "Infinity": b'{"id":1,"type":"history","conversation":"general","limit":Infinity}',
        "huge number": b'{"id":' + b"9" * 5000 + b',"type":"ping"}',
        "huge float": b'{"id":1,"type":"history","conversation":"general","before":1e999}',
        "duplicate keys": b'{"id":1,"id":"x","type":"ping","type":"send"}',
    }
    outcomes = {}
    for name, line in cases.items():
        outcome = decode_or_refuse(line)
        outcomes[name] = (
            outcome.code if isinstance(outcome, ProtocolError) else msgspec.json.encode(outcome)
        )
    report("fuzz: named cases", outcomes)
    for name, outcome in outcomes.items():
        assert outcome in DECODE_ERRORS or isinstance(outcome, bytes), name
    too_long = codec.LineBuffer(schema.MAX_LINE_BYTES)
    with pytest.raises(ProtocolError) as info:
        list(too_long.feed(b"x" * (schema.MAX_LINE_BYTES + 1)))
    assert info.value.code == errors.LINE_TOO_LONG


# -- hostile values in well-formed requests ----------------------------------------------------

DIGITS = st.sampled_from(
    ["1", "2", "01", "0", "²", "①", "٣", "１", "𝟙", "9" * 30, "-1", "+1", " 1"]
)
CONVERSATION_IDS = st.one_of(
    st.sampled_from(["general", "General", "general ", "c:", "dm:", "dm:1", "dm:1:2:3", "c:1:"]),
    st.builds(lambda a, b: f"dm:{a}:{b}", DIGITS, DIGITS),
    st.builds(lambda a: f"c:{a}", DIGITS),
    st.text(max_size=40),
)
NAMES = st.one_of(
    st.sampled_from(
        ["fuzzer", "peer", "FUZZER", "ｐｅｅｒ", "pеer", "", " ", "@channel", "a" * 2000]
    ),
    st.text(max_size=40),
)
MARKERS = st.one_of(st.none(), st.text(max_size=30), st.builds(lambda a: f"{a}:c:1", DIGITS))
VALUE_REQUESTS = st.one_of(
    st.builds(lambda c: {"type": "history", "conversation": c}, CONVERSATION_IDS),
    st.builds(lambda p: {"type": "history", "peer": p}, NAMES),
    st.builds(
        lambda keys, seqs: {"type": "sync", "cursors": dict(zip(keys, seqs, strict=False))},
        st.lists(CONVERSATION_IDS, max_size=5),
        st.lists(st.integers(min_value=0, max_value=2**70), max_size=5),
    ),
    st.builds(
        lambda c, t: {"type": "post", "conversation": c, "client_id": "f", "text": t},
        CONVERSATION_IDS,
        st.text(min_size=1, max_size=60).map(lambda t: "@" + t),
    ),
    *(
        st.builds(lambda c, kind=kind: {"type": kind, "conversation": c}, CONVERSATION_IDS)
        for kind in ("join", "leave", "archive", "conversation", "typing", "members")
    ),
    st.builds(
        lambda c, s: {"type": "read", "conversation": c, "seq": s},
        CONVERSATION_IDS,
        st.integers(min_value=0, max_value=2**70),
    ),
    st.builds(
        lambda c, u: {"type": "invite", "conversation": c, "users": u},
        CONVERSATION_IDS,
        st.lists(NAMES, max_size=3),
    ),
    st.builds(
        lambda c, u: {"type": "remove", "conversation": c, "user": u}, CONVERSATION_IDS, NAMES
    ),
    st.builds(
        lambda c, u, r: {"type": "set_role", "conversation": c, "user": u, "role": r},
        CONVERSATION_IDS,
        NAMES,
        st.sampled_from(["owner", "admin", "member", "god", ""]),
    ),
    st.builds(
        lambda c, n: {"type": "rename", "conversation": c, "name": n}, CONVERSATION_IDS, NAMES
    ),
    st.builds(lambda n: {"type": "create_channel", "name": n}, NAMES),
    st.builds(lambda m: {"type": "create_group", "members": m}, st.lists(NAMES, max_size=4)),
    st.builds(lambda q, a: {"type": "channels", "query": q, "after": a}, NAMES, MARKERS),
    st.builds(lambda a: {"type": "conversations", "after": a}, MARKERS),
    st.builds(lambda q, a: {"type": "users", "query": q, "after": a}, NAMES, MARKERS),
    st.builds(lambda n: {"type": "watch", "users": n}, st.lists(NAMES, max_size=4)),
    st.builds(lambda t: {"type": "dm", "to": t, "client_id": "f", "text": "x"}, NAMES),
)


@pytest.mark.parametrize("examples", sizes(150, 5000, fast_timeout=150, soak_timeout=3600))
def test_live_server_answers_hostile_values_without_a_server_error(
    examples: int, server_process: Callable[..., ServerProcess]
) -> None:
    """Well-formed requests whose values reach the core (conversation ids, cursors, names,
    page markers) get a result or an error code, never ``internal_error``."""
    proc = server_process(*NO_RATE_LIMITS)
    tokens = asyncio.run(register_all(proc.port, ["fuzzer", "peer"]))
    login = (
        json.dumps({"id": "login", "type": "login", "token": tokens["fuzzer"], "protocol": 3})
        + "\n"
    ).encode()
    probe = codec.encode(schema.Ping(id="probe"))
    stats = {"requests": 0, "results": 0, "errors": 0}
    codes: dict[str, int] = {}

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(VALUE_REQUESTS, min_size=1, max_size=6))
    def session(requests: list[dict[str, Any]]) -> None:
        lines = [
            json.dumps({"id": n, **request}, ensure_ascii=False).encode()
            for n, request in enumerate(requests)
        ]
        stats["requests"] += len(lines)
        with socket.create_connection(("127.0.0.1", proc.port), timeout=20 * TIMEOUT_FACTOR) as s:
            pending = bytearray()
            assert read_line(s, pending) is not None  # hello
            s.sendall(login + b"\n".join(lines) + b"\n" + probe)
            while True:
                line = read_line(s, pending)
                assert line is not None, "the server closed the connection"
                message = codec.decode_server_message(line)
                if isinstance(message, schema.Error):
                    assert message.code != errors.INTERNAL_ERROR, (requests, message)
                    stats["errors"] += 1
                    codes[message.code] = codes.get(message.code, 0) + 1
                elif isinstance(message, schema.Result):
                    if message.id == "probe":
                        return
                    stats["results"] += 1

    session()
    bad = unhandled_errors(proc.log.read_text())
    report("fuzz: hostile values", {**stats, **codes, "unhandled errors in the log": len(bad)})
    assert bad == []
