"""docs/protocol.md is executable: every example session in it runs against a real server.

Each ```jsonl block with ``session=NAME`` is one session, run against a fresh in-process server
(its own SQLite file, default limits, plus any ``key=value`` limits named in the block's info
string) over real loopback sockets, one line at a time:

* ``NAME> line`` sends the line verbatim (after filling in placeholders and ``«…»`` expansions);
* ``NAME< json`` reads the connection's next line and requires it to be JSON-equal to the one
  shown, where ``"…"`` matches any value and ``"<name>"`` matches a value of the placeholder's
  kind (``<token…>``, ``<ts…>``, ``<retry…>``), the same value wherever the same name recurs;
* ``NAME< (closed)`` requires the server to close the connection;
* ``NAME! close`` closes it from the client side.

The ``hello`` a connection starts with is skipped unless the block shows it; with
``ignore=presence`` in the info string, presence events that the block does not show are
skipped. At the end of a session no connection may have a line the block does not show. The
"client in 30 lines" example is run as a real program.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pytest

from beseda.protocol import errors, schema
from beseda.server.app import Server
from beseda.server.config import Limits
from beseda.server.transports.tcp import TcpConnection
from conftest import TIMEOUT_FACTOR, wait_for

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
READ_TIMEOUT = 5.0 * TIMEOUT_FACTOR
QUIET = 0.2 * TIMEOUT_FACTOR
"""How long a connection must stay silent at the end of a session."""

_FENCE = re.compile(r"^```(\S*)\s*(.*)$")
_STEP = re.compile(r"^([A-Za-z0-9_]*)([<>!]) (.*)$")
_PLACEHOLDER = re.compile(r"^<([a-z]+)(\d*)>$")
_CLIENT_PLACEHOLDER = re.compile(r'"<([a-z]+\d*)>"')
_EXPANSION = re.compile(r"«(.*?)»")
_BYTE = re.compile(r"\\x([0-9a-fA-F]{2})")
ANY = "…"
CLOSED = "(closed)"


# -- parsing -----------------------------------------------------------------------------------


@dataclass
class Step:
    conn: str
    action: str  # ">" send, "<" expect, "!" client action
    text: str
    line: int

    @property
    def who(self) -> str:
        return self.conn or "client"


@dataclass
class Session:
    name: str
    line: int
    options: dict[str, str] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)

    @property
    def limits(self) -> dict[str, int | float]:
        known = {f.name for f in fields(Limits)}
        out: dict[str, int | float] = {}
        for key, value in self.options.items():
            if key in ("session", "ignore"):
                continue
            assert key in known, f"{self.name}: unknown option {key}"
            out[key] = int(value) if value.isdigit() else float(value)
        return out


def parse_doc(text: str) -> tuple[list[Session], dict[str, str]]:
    """The ``jsonl`` sessions of the document, and its ``python example=NAME`` blocks."""
    sessions: list[Session] = []
    examples: dict[str, str] = {}
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        index += 1
        if fence is None:
            continue
        language, info = fence.groups()
        options = dict(item.split("=", 1) for item in info.split() if "=" in item)
        start = index
        while not lines[index].startswith("```"):
            index += 1
        body = lines[start:index]
        index += 1
        if language == "jsonl":
            assert "session" in options, f"line {start}: a jsonl block needs session=NAME"
            session = Session(options["session"], start, options)
            for number, raw in enumerate(body, start + 1):
                if not raw.strip() or raw.startswith("#"):
                    continue
                step = _STEP.match(raw)
                assert step is not None, f"line {number}: not a session line: {raw!r}"
                session.steps.append(Step(step[1], step[2], step[3], number))
            sessions.append(session)
        elif language == "python" and "example" in options:
            examples[options["example"]] = "\n".join(body) + "\n"
    return sessions, examples


SESSIONS, EXAMPLES = parse_doc(DOC.read_text(encoding="utf-8"))


# -- matching ----------------------------------------------------------------------------------


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


KINDS: dict[str, Callable[[Any], bool]] = {
    "token": lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_-]{43}", v) is not None,
    "ts": lambda v: type(v) is int and abs(_now_ms() - v) < 10 * 60 * 1000,
    "retry": lambda v: type(v) in (int, float) and 0 < v < 3600,
}


def match(expected: Any, actual: Any, bindings: dict[str, Any], path: str = "$") -> None:
    """Raise AssertionError unless ``actual`` is what ``expected`` (with placeholders) shows."""
    if expected == ANY:
        return
    if isinstance(expected, str) and (placeholder := _PLACEHOLDER.match(expected)):
        name, kind = expected[1:-1], placeholder[1]
        assert kind in KINDS, f"{path}: unknown placeholder kind {expected}"
        assert KINDS[kind](actual), f"{path}: {actual!r} is not a {kind}"
        if name in bindings:
            assert bindings[name] == actual, f"{path}: {expected} was {bindings[name]!r}"
        bindings[name] = actual
        return
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        assert expected.keys() == actual.keys(), (
            f"{path}: keys {sorted(actual)} but the doc shows {sorted(expected)}"
        )
        for key, value in expected.items():
            match(value, actual[key], bindings, f"{path}.{key}")
        return
    if isinstance(expected, list):
        assert isinstance(actual, list), f"{path}: expected an array, got {actual!r}"
        assert len(expected) == len(actual), f"{path}: {len(actual)} items, doc shows {expected}"
        for number, (item, got) in enumerate(zip(expected, actual, strict=True)):
            match(item, got, bindings, f"{path}[{number}]")
        return
    assert isinstance(expected, bool) == isinstance(actual, bool), f"{path}: {actual!r}"
    assert expected == actual, f"{path}: server sent {actual!r}, doc shows {expected!r}"


def client_bytes(text: str, bindings: dict[str, Any]) -> bytes:
    """A client line as sent: placeholders filled in, ``«…»`` expanded, newline added."""

    def fill(found: re.Match[str]) -> str:
        assert found[1] in bindings, f"<{found[1]}> is used before the server gave it"
        return json.dumps(bindings[found[1]], ensure_ascii=False)

    text = _CLIENT_PLACEHOLDER.sub(fill, text)
    out = bytearray()
    for number, part in enumerate(_EXPANSION.split(text)):
        if number % 2 == 0:
            out += part.encode()
            continue
        unit, _, count = part.rpartition("×") if "×" in part else (part, "", "1")
        chunk = bytearray()
        for piece_number, piece in enumerate(_BYTE.split(unit)):
            chunk += bytes([int(piece, 16)]) if piece_number % 2 else piece.encode()
        out += bytes(chunk) * int(count)
    return bytes(out) + b"\n"


# -- running -----------------------------------------------------------------------------------


@dataclass
class Connection:
    name: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    server_side: TcpConnection | None
    received: int = 0
    closed: bool = False


def _is(data: Any, kind: str) -> bool:
    return isinstance(data, dict) and data.get("type") == kind


class Runner:
    """Plays one session against a server, step by step."""

    def __init__(self, session: Session, server: Server) -> None:
        self.session = session
        self.server = server
        self.connections: dict[str, Connection] = {}
        self.bindings: dict[str, Any] = {}
        self.ignore_presence = session.options.get("ignore") == "presence"

    async def run(self) -> None:
        try:
            for step in self.session.steps:
                try:
                    await self.play(step)
                except AssertionError as exc:
                    where = f"session {self.session.name}, doc line {step.line} ({step.who})"
                    raise AssertionError(f"{where}: {exc}") from None
            await self.check_quiet()
        finally:
            await self.close_all()

    async def play(self, step: Step) -> None:
        conn = await self.connection(step.conn)
        if step.action == ">":
            conn.writer.write(client_bytes(step.text, self.bindings))
            # The server may close first (line_too_long); the next step says so.
            with contextlib.suppress(ConnectionError):
                await conn.writer.drain()
        elif step.action == "!":
            assert step.text == "close", f"unknown action {step.text!r}"
            await self.finished(conn)
        elif step.text == CLOSED:
            data = await self.next_line(conn, None)
            assert data is None, f"the doc shows the server closing, but it sent {data}"
            await self.finished(conn)
        else:
            expected = json.loads(step.text)
            try:
                data = await self.next_line(conn, expected)
            except TimeoutError:
                raise AssertionError(f"nothing came; the doc shows {step.text}") from None
            assert data is not None, f"the server closed; the doc shows {step.text}"
            match(expected, data, self.bindings)

    async def connection(self, name: str) -> Connection:
        """The open connection of this name, opened now if it is new or was closed."""
        conn = self.connections.get(name)
        if conn is None or conn.closed:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", self.server.port, limit=16 * 1024 * 1024
            )
            conn = Connection(name, reader, writer, await self._server_side(reader, writer))
            self.connections[name] = conn
        return conn

    async def _server_side(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> TcpConnection | None:
        """The server's end of a connection, to wait until the server has seen it close;
        None when the server closed it at once (too many connections)."""
        local = writer.get_extra_info("sockname")
        found: list[TcpConnection] = []

        def accepted() -> bool:
            found[:] = [
                c
                for c in self.server.tcp.connections
                if c._transport is not None and c._transport.get_extra_info("peername") == local
            ]
            return bool(found) or reader._eof

        await wait_for(accepted)
        return found[0] if found else None

    async def finished(self, conn: Connection) -> None:
        """Close our end and wait until the server is done with the connection (presence
        announced), so that the next steps meet a server in a known state."""
        conn.closed = True
        conn.writer.close()
        with contextlib.suppress(ConnectionError):
            await conn.writer.wait_closed()
        server_side = conn.server_side
        if server_side is not None:
            await asyncio.wait_for(server_side.closed, READ_TIMEOUT)
            await wait_for(lambda: server_side.session.user is None)

    async def close_all(self) -> None:
        for conn in self.connections.values():
            if not conn.closed:
                await self.finished(conn)

    async def next_line(self, conn: Connection, expected: Any) -> Any:
        """The next server line the doc is to show (JSON), or None when the server closed.

        Skips the opening ``hello`` unless the doc shows it, and presence events the doc does
        not show when the session says ``ignore=presence``. Raises TimeoutError.
        """
        while True:
            try:
                line = await asyncio.wait_for(conn.reader.readline(), READ_TIMEOUT)
            except ConnectionError:
                line = b""
            if not line:
                return None
            assert line.endswith(b"\n"), f"an unterminated line {line!r}"
            conn.received += 1
            data = json.loads(line)
            if conn.received == 1 and _is(data, "hello") and not _is(expected, "hello"):
                continue
            if self.ignore_presence and _is(data, "presence") and not _is(expected, "presence"):
                continue
            return data

    async def check_quiet(self) -> None:
        """No open connection may have a line that the doc does not show."""
        for conn in self.connections.values():
            if conn.closed:
                continue
            try:
                data = await asyncio.wait_for(self.next_line(conn, None), QUIET)
            except TimeoutError:
                continue
            assert data is None, (
                f"session {self.session.name}: the server sent {conn.name or 'client'} a line "
                f"the doc does not show: {data}"
            )


# -- tests -------------------------------------------------------------------------------------


def _limits(session: Session) -> dict[str, Any]:
    """Production defaults (the fixtures' are more generous), with the session's changes."""
    defaults = Limits()
    limits: dict[str, Any] = {f.name: getattr(defaults, f.name) for f in fields(Limits)}
    limits.update(session.limits)
    return limits


@pytest.mark.parametrize("session", SESSIONS, ids=[s.name for s in SESSIONS])
async def test_session(session: Session, make_server: Callable[..., Server]) -> None:
    # make_server is what the ``server`` fixture starts; it lets a session set its limits.
    server = make_server(**_limits(session))
    await server.start()
    await Runner(session, server).run()


def test_the_doc_has_the_examples_it_promises() -> None:
    names = [s.name for s in SESSIONS]
    assert len(names) == len(set(names)), "session names must be unique"
    assert {
        "hello",
        "register",
        "login",
        "general",
        "duplicate",
        "dm",
        "history",
        "sync",
        "presence",
        "watch",
        "errors",
        "line-too-long",
        "rate-limit",
        "auth-timeout",
        "connection-cap",
    } <= set(names)
    assert "client" in EXAMPLES
    sent: set[str] = set()
    shown: set[str] = set()
    for session in SESSIONS:
        for step in session.steps:
            if step.action == ">":
                with contextlib.suppress(ValueError, TypeError, KeyError):  # broken on purpose
                    sent.add(json.loads(client_bytes(step.text, _AnyBindings()))["type"])
            elif step.action == "<" and step.text != CLOSED:
                data = json.loads(step.text)
                if data["type"] in ("error", "bye"):
                    shown.add(data["code"])
    assert sent >= schema.REQUEST_TYPES, f"no example sends {schema.REQUEST_TYPES - sent}"
    for code in ("bad_json", "unknown_type", "bad_request", "not_authenticated"):
        assert code in shown, f"no example shows {code}"


class _AnyBindings(dict[str, Any]):
    """Bindings that know every placeholder (to read client lines without a server)."""

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> str:
        return "x"


def test_the_doc_names_every_error_code_and_limit() -> None:
    text = DOC.read_text(encoding="utf-8")
    for code in errors.MESSAGES:
        assert f"| `{code}` |" in text, f"the Errors or bye table does not explain {code}"
    defaults = Limits()
    for value in (
        schema.MAX_LINE_BYTES,
        schema.MAX_TEXT_CHARS,
        schema.MAX_PAGE,
        schema.MAX_SYNC_PAGE,
        schema.MAX_SYNC_CHARS,
        schema.MAX_SYNC_CURSORS,
        schema.MAX_WATCH,
        defaults.send_buffer_bytes,
        schema.REPLY_PREVIEW_CHARS,
        schema.MAX_REACTIONS,
        schema.MAX_EMOJI_CHARS,
        schema.MAX_SEARCH_QUERY_CHARS,
        schema.MAX_SEARCH_TERMS,
        schema.MAX_SEARCH_PAGE,
        schema.SEARCH_SNIPPET_CHARS,
    ):
        assert f"{value:,}" in text, f"the limit {value:,} is not in the doc"
    for phrase in (
        f"{defaults.auth_timeout:g} s",
        f"{defaults.max_connections_per_address} at once",
        f"{defaults.message_rate:g} per second sustained, bursts of {defaults.message_burst}",
        f"string of at most {schema.MAX_REQUEST_ID_CHARS} characters",
        f"1 to {schema.MAX_CLIENT_ID_CHARS} characters",
    ):
        assert phrase in text, f"the doc does not say {phrase!r}"


async def test_the_client_example_runs(make_server: Callable[..., Server], tmp_path: Path) -> None:
    server = make_server(**_limits(Session("client", 0)))
    await server.start()
    script = tmp_path / "client.py"
    script.write_text(EXAMPLES["client"], encoding="utf-8")
    # bob watches what alice's client does.
    bob = Runner(Session("client-example", 0), server)
    try:
        for action, text in (
            (">", '{"id":1,"type":"register","username":"bob","password":"battery staple"}'),
            ("<", '{"type":"result","id":1,"data":{"user":"bob","token":"<token>"}}'),
        ):
            await bob.play(Step("bob", action, text, 0))
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            "127.0.0.1",
            str(server.port),
            "alice",
            "correct horse",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdin = "hello: world\n@bob привет 👋\n".encode()
        out, err = await asyncio.wait_for(process.communicate(stdin), 4 * READ_TIMEOUT)
        assert process.returncode == 0, err.decode()
        assert out.decode().splitlines() == [
            "! bad_credentials: Wrong username or password.",
            "[general #1] alice: hello: world",
            "[dm:1:2 #1] alice: привет 👋",
        ]
        for expected in (
            '{"type":"message","message":{"id":1,"conversation":"general","seq":1,'
            '"sender":"alice","text":"hello: world","ts":"<ts1>","client_id":"…"}}',
            '{"type":"message","message":{"id":2,"conversation":"dm:1:2","seq":1,'
            '"sender":"alice","to":"bob","text":"привет 👋","ts":"<ts2>","client_id":"…"}}',
        ):
            await bob.play(Step("bob", "<", expected, 0))
    finally:
        await bob.close_all()
