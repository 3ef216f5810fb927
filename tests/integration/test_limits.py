"""Limits and bad input (issue 2, item 9), against a real server over loopback.

Over-long lines close the connection without growing memory; malformed requests get an error
and leave the connection usable and the database untouched; idle anonymous connections time
out; each user's message rate and each address's connection count are capped; a client that
stops reading is dropped without slowing anyone, and loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from newcomer import PASSWORD, Newcomer

from beseda.client import Client, MessageReceived, ServerRefusedError
from beseda.protocol.errors import TOO_MANY_CONNECTIONS
from beseda.protocol.schema import MAX_LINE_BYTES, MAX_TEXT_CHARS
from beseda.server.app import Server
from beseda.server.transports.tcp import TcpConnection
from conftest import ServerProcess, wait_for


def connection_of(server: Server, name: str) -> TcpConnection:
    (found,) = [
        c
        for c in server.tcp.connections
        if c.session.user is not None and c.session.user.name == name
    ]
    return found


async def stored_texts(port: int) -> list[str]:
    conn = await Newcomer.user(port, "inspector")
    page = await conn.call("history", conversation="general", limit=200)
    await conn.close()
    return [m["text"] for m in page["messages"]]


# -- line size -------------------------------------------------------------------------------


async def test_an_over_long_line_is_refused_and_the_connection_closed(server: Server) -> None:
    conn = await Newcomer.user(server.port, "alice")
    other = await Newcomer.user(server.port, "bob")
    # One byte over the limit, without a newline, in pieces as a slow client would send it.
    # (Sending no more than that lets the server read it all, so its close is a clean FIN.)
    remaining = MAX_LINE_BYTES + 1
    while remaining:
        piece = min(remaining, 65536)
        conn.writer.write(b"a" * piece)
        await conn.writer.drain()
        remaining -= piece
    messages = await conn.closing()
    errors = [m for m in messages if m["type"] == "error"]
    assert errors == [
        {"type": "error", "id": None, "code": "line_too_long", "message": errors[0]["message"]}
    ]
    assert str(MAX_LINE_BYTES) in errors[0]["message"]
    await conn.close()
    # Nobody else is affected, and nothing was stored.
    assert await other.call("ping") == {}
    assert await stored_texts(server.port) == []
    await other.close()


async def test_a_line_at_the_limit_is_read(server: Server) -> None:
    conn = await Newcomer.user(server.port, "alice")
    head = b'{"id":1,"type":"ping","padding":"'
    line = head + b"p" * (MAX_LINE_BYTES - len(head) - 2) + b'"}'
    assert len(line) == MAX_LINE_BYTES
    conn.send_line(line)
    assert await conn.reply(1) == {"type": "result", "id": 1, "data": {}}
    await conn.close()


@pytest.fixture
def child_server(
    server_process: Callable[..., ServerProcess],
) -> Callable[..., ServerProcess]:
    return server_process


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1))


async def test_over_long_lines_do_not_grow_server_memory(
    child_server: Callable[..., ServerProcess],
) -> None:
    proc = child_server()
    # Warm up: a connection that does everything once, so lazily allocated things exist.
    warm = await Newcomer.user(proc.port, "alice")
    await warm.call("send", client_id="warm", text="warm")
    await warm.close()
    before = rss_kib(proc.pid)

    async def flood() -> list[dict[str, Any]]:
        conn = await Newcomer.open(proc.port)
        chunk = b"x" * (1 << 20)
        with contextlib.suppress(ConnectionError):
            for _ in range(16):  # 16 MiB without a newline
                conn.writer.write(chunk)
                await conn.writer.drain()
        seen = await conn.closing()
        await conn.close()
        return seen

    # 8 × 16 MiB: the server would hold 128 MiB if it buffered unfinished lines.
    results = await asyncio.gather(*(flood() for _ in range(8)))
    for seen in results:
        assert [m["code"] for m in seen if m["type"] == "error"] in (["line_too_long"], [])
    grown = rss_kib(proc.pid) - before
    assert grown < 24 * 1024, f"server grew by {grown} KiB"
    check = await Newcomer.open(proc.port)
    await check.call("login", username="alice", password=PASSWORD)
    await check.close()


# -- bad requests ----------------------------------------------------------------------------

BAD_LINES = [
    (b"not json", "bad_json", None),
    (b"{", "bad_json", None),
    (b"\xff\xfe{}", "bad_json", None),
    (b'{"id":1,"type":"send","client_id":"a","text":"\xc3\x28"}', "bad_json", None),
    (b'{"id":0,"type":"ping","x":' + b"[" * 50_000 + b"]" * 50_000 + b"}", "bad_json", None),
    (b"[1, 2]", "bad_request", None),
    (b'"send"', "bad_request", None),
    (b'{"type":"ping"}', "bad_request", None),
    (b'{"id":{"nested":1},"type":"ping"}', "bad_request", None),
    (b'{"id":2,"type":"frobnicate"}', "unknown_type", 2),
    (b'{"id":3}', "bad_request", 3),
    (b'{"id":4,"type":"send","text":"hi"}', "bad_request", 4),
    (b'{"id":5,"type":"send","client_id":7,"text":"hi"}', "bad_request", 5),
    (b'{"id":6,"type":"send","client_id":"a","text":["hi"]}', "bad_request", 6),
    (b'{"id":7,"type":"send","client_id":"","text":"hi"}', "bad_request", 7),
    (b'{"id":8,"type":"send","client_id":"' + b"c" * 65 + b'","text":"hi"}', "bad_request", 8),
    (b'{"id":9,"type":"dm","client_id":"a","text":"hi"}', "bad_request", 9),
    (b'{"id":10,"type":"history","conversation":"general","limit":"5"}', "bad_request", 10),
    (b'{"id":11,"type":"sync","cursors":{"general":-1}}', "bad_request", 11),
    (b'{"id":"x","type":"send","client_id":"a","text":null}', "bad_request", "x"),
    (b'{"id":12,"type":"login","username":5,"password":"p"}', "bad_request", 12),
]


async def test_malformed_requests_get_an_error_and_the_connection_stays_usable(
    server: Server,
) -> None:
    conn = await Newcomer.user(server.port, "alice")
    for line, code, request_id in BAD_LINES:
        conn.send_line(line)
        reply = await conn.reply(request_id)
        assert reply["type"] == "error", line[:60]
        assert reply["code"] == code, line[:60]
        assert reply["message"]
        assert await conn.call("ping") == {}
    # Blank lines and CRLF endings are tolerated.
    conn.writer.write(b"\n\r\n" + b'{"id":"crlf","type":"ping"}\r\n')
    assert (await conn.reply("crlf"))["type"] == "result"
    assert await stored_texts(server.port) == []
    conversations = await conn.call("conversations")
    assert [c["last_seq"] for c in conversations["conversations"]] == [0]
    await conn.close()


async def test_malformed_requests_before_login_are_answered_too(server: Server) -> None:
    conn = await Newcomer.open(server.port)
    for line, code, request_id in BAD_LINES:
        conn.send_line(line)
        reply = await conn.reply(request_id)
        assert reply["code"] == code, line[:60]
    await conn.call("register", username="alice", password=PASSWORD)
    await conn.close()


@pytest.mark.parametrize("kind", ["send", "dm"])
async def test_message_length_and_emptiness(server: Server, kind: str) -> None:
    conn = await Newcomer.user(server.port, "alice")
    bob = await Newcomer.user(server.port, "bob")
    extra = {"to": "bob"} if kind == "dm" else {}
    cases = [
        ("", "empty_message"),
        ("   \n\t ", "empty_message"),
        ("я" * (MAX_TEXT_CHARS + 1), "message_too_long"),
        ("🙂" * (MAX_TEXT_CHARS + 1), "message_too_long"),
    ]
    for n, (text, code) in enumerate(cases):
        reply = await conn.request(kind, client_id=f"bad-{n}", text=text, **extra)
        assert reply["code"] == code
    # The limit counts code points: exactly the limit is fine, in any script.
    longest = "🙂" * MAX_TEXT_CHARS
    ack = await conn.call(kind, client_id="longest", text=longest, **extra)
    assert ack["message"]["seq"] == 1
    synced = await bob.call("sync", cursors={})
    assert [m["text"] for m in synced["messages"]] == [longest]
    for c in (conn, bob):
        await c.close()


# -- time and rate ---------------------------------------------------------------------------


async def test_an_idle_anonymous_connection_is_closed(make_server: Callable[..., Server]) -> None:
    server = make_server(auth_timeout=0.3)
    await server.start()
    idle = await Newcomer.open(server.port)
    assert idle.hello is not None
    assert idle.hello["limits"]["auth_timeout"] == 0.3
    assert await idle.closing() == [
        {"type": "bye", "code": "auth_timeout", "message": "No login within the time allowed."}
    ]
    await idle.close()
    # A request that is not a login does not count as one.
    busy = await Newcomer.open(server.port)
    assert await busy.call("ping") == {}
    seen = await busy.closing()
    assert [m["code"] for m in seen] == ["auth_timeout"]
    await busy.close()


async def test_a_logged_in_connection_does_not_time_out(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(auth_timeout=1.0)
    await server.start()
    conn = await Newcomer.user(server.port, "alice")
    await asyncio.sleep(1.5)  # past the timeout: that is what is being tested
    assert await conn.call("ping") == {}
    await conn.close()


async def test_messages_over_the_rate_are_held_in_order(
    make_server: Callable[..., Server],
) -> None:
    # The default: over the rate, a connection's messages wait their turn (the replies come
    # later) instead of being refused, so a fast sender keeps its order and needs no retry.
    server = make_server(message_rate=20, message_burst=5, message_max_delay=2.0)
    await server.start()
    alice = await Newcomer.user(server.port, "alice")
    started = time.monotonic()
    ids = [alice.send("send", client_id=f"a{n}", text=f"a{n}") for n in range(30)]
    replies = [await alice.reply(request_id) for request_id in ids]
    held_for = time.monotonic() - started
    assert [r["type"] for r in replies] == ["result"] * 30
    assert [r["data"]["message"]["seq"] for r in replies] == list(range(1, 31))
    assert await stored_texts(server.port) == [f"a{n}" for n in range(30)]
    # 25 beyond the burst at 20 per second: paced, not all at once.
    assert held_for >= 25 / 20 * 0.9
    await alice.close()


async def test_message_rate_is_limited_per_user(make_server: Callable[..., Server]) -> None:
    # With no holding allowed, every message over the rate is refused at once.
    server = make_server(message_rate=5, message_burst=5, message_max_delay=0.0)
    await server.start()
    alice = await Newcomer.user(server.port, "alice")
    bob = await Newcomer.user(server.port, "bob")
    # Thirty at once: the burst passes, the rest are refused (a slow machine may refill a few).
    ids = [alice.send("send", client_id=f"a{n}", text=f"a{n}") for n in range(30)]
    replies = [await alice.reply(request_id) for request_id in ids]
    accepted = [r["data"]["message"]["text"] for r in replies if r["type"] == "result"]
    limited = [r for r in replies if r["type"] == "error"]
    assert len(accepted) >= 5
    assert limited
    for reply in limited:
        assert reply["code"] == "rate_limited"
        assert 0 < reply["retry_after"] <= 0.2 + 1e-6

    # Bob has his own allowance.
    bob_ids = [bob.send("send", client_id=f"b{n}", text=f"b{n}") for n in range(5)]
    assert [(await bob.reply(i))["type"] for i in bob_ids] == ["result"] * 5
    assert await stored_texts(server.port) == accepted + [f"b{n}" for n in range(5)]

    # After waiting as told, alice may send again; the refused client ids were not used up.
    await asyncio.sleep(limited[-1]["retry_after"])
    first_refused = next(f"a{n}" for n in range(30) if f"a{n}" not in accepted)
    again = await alice.call("send", client_id=first_refused, text=first_refused)
    assert again.get("duplicate", False) is False
    for conn in (alice, bob):
        await conn.close()


async def test_the_client_library_waits_out_the_rate_limit(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(message_rate=20, message_burst=5)
    await server.start()
    async with Client("127.0.0.1", server.port) as client:
        await client.register("alice", PASSWORD)
        sent = await asyncio.gather(*(client.send(f"m{n}") for n in range(15)))
        assert sorted(m.seq for m in sent) == list(range(1, 16))
    assert sorted(await stored_texts(server.port)) == sorted(f"m{n}" for n in range(15))


async def test_connections_per_address_are_capped(make_server: Callable[..., Server]) -> None:
    server = make_server(max_connections_per_address=3)
    await server.start()
    conns = [await Newcomer.open(server.port) for _ in range(3)]
    await conns[0].call("register", username="alice", password=PASSWORD)
    fourth = await Newcomer.open(server.port, hello=False)
    assert await fourth.closing() == [
        {
            "type": "bye",
            "code": "too_many_connections",
            "message": "Too many connections from your address.",
        }
    ]
    await fourth.close()
    # The client library raises the refusal with its code.
    with pytest.raises(ServerRefusedError) as refused:
        await Client("127.0.0.1", server.port, reconnect=False).connect()
    assert refused.value.code == TOO_MANY_CONNECTIONS
    # The others are unaffected; closing one makes room.
    assert await conns[0].call("ping") == {}
    await conns[2].close()
    await wait_for(lambda: len(server.tcp.connections) == 2)
    again = await Newcomer.open(server.port)
    await again.call("login", username="alice", password=PASSWORD)
    for conn in (*conns[:2], again):
        await conn.close()


# -- slow consumers --------------------------------------------------------------------------


async def test_a_client_that_stops_reading_is_dropped_and_misses_nothing(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(send_buffer_bytes=64 * 1024)
    await server.start()
    slow = await Newcomer.open(server.port, rcvbuf=4096)
    await slow.call("register", username="slow", password=PASSWORD)
    slow_side = connection_of(server, "slow")
    # From here on the slow client reads nothing.
    async with (
        Client("127.0.0.1", server.port) as alice,
        Client("127.0.0.1", server.port) as bob,
    ):
        await alice.register("alice", PASSWORD)
        await bob.register("bob", PASSWORD)
        received: list[int] = []

        async def bob_reads() -> None:
            while True:
                event = await bob.next_event(timeout=30)
                if isinstance(event, MessageReceived):
                    received.append(event.message.id)

        reader = asyncio.create_task(bob_reads())
        text = "ж" * 16_000  # about 32 KB on the wire
        sent: list[int] = []
        # The kernel buffers a few MiB between the two ends before the server's own buffer
        # grows; keep sending until the slow client is dropped, and a little after.
        while len(sent) < 5000 and not slow_side.closed.done():
            sent.append((await alice.send(f"{len(sent)} {text}")).id)
            # Bob keeps up the whole time (no timing asserted, only that he never falls
            # far behind, which he would if a blocked peer held up the fan-out).
            if len(sent) % 20 == 0:
                await wait_for(lambda: len(received) >= len(sent) - 20)
        assert slow_side.closed.done(), "the slow client was never dropped"
        for n in range(20):
            sent.append((await alice.send(f"after {n}")).id)
        await wait_for(lambda: len(received) == len(sent), timeout=30)
        assert received == sent
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    await slow.close()

    # The slow user reconnects with the library, syncs, and has everything.
    async with Client("127.0.0.1", server.port) as again:
        await again.login("slow", PASSWORD)
        caught_up: list[int] = []
        while len(caught_up) < len(sent):
            event = await again.next_event(timeout=30)
            if isinstance(event, MessageReceived):
                caught_up.append(event.message.id)
        assert caught_up == sent
        assert await again.sync() == []


async def test_a_logged_out_connection_must_log_in_again_within_the_timeout(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(auth_timeout=0.5)
    await server.start()
    alice = await Newcomer.user(server.port, "alice")
    await asyncio.sleep(0.7)  # logged in: no timeout
    await alice.call("ping")
    await alice.call("logout")
    bye = await alice.event("bye")
    assert bye["code"] == "auth_timeout"
    await alice.close()
