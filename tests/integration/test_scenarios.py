"""The issue's "Done means" scenarios, end to end: real servers on loopback, real SQLite files.

1. Framing and order: 1,000 general messages back to back (``:``, newlines, Cyrillic, emoji,
   some ~10 KB long), from the client library and from a raw socket that writes many requests
   in one ``write``: a second client receives all of them in order, the sender gets one
   acknowledgement each with increasing seq, history returns each exactly once.
2. Crash: the server is killed with SIGKILL in the middle of a stream and started again on the
   same database and port; nothing acknowledged is lost or doubled, the sender's order is kept,
   and clients that resume from their cursors get exactly what they missed.
3. Slow reader: a client that stops reading while 10,000 messages are broadcast delays nobody,
   is dropped as a slow consumer, the server's memory stays bounded, and after reconnecting it
   has every message exactly once.
4. Restart: after SIGTERM and a new start, a client with saved cursors gets exactly what it
   missed.

Each test prints what it measured (``pytest -s`` shows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from beseda.client import Client, ConnectionState, MessageReceived, StateChanged
from beseda.protocol import codec, errors, schema
from beseda.server.app import Server
from conftest import TIMEOUT_FACTOR, ServerProcess, wait_for
from storage_helpers import integrity, query

PASSWORD = "password123"
LONG = 10_000
"""Characters of a "long" message (the limit is schema.MAX_TEXT_CHARS)."""


# -- helpers ----------------------------------------------------------------------------------


def varied_texts(n: int, tag: str, *, seed: int = 1) -> list[str]:
    """``n`` distinct texts with the characters that broke the original's framing."""
    rng = random.Random(seed)
    pieces = [
        "key: value: more",
        "line one\nline two\n\nline four",
        "Привет, мир! Съешь же ещё этих мягких французских булок",
        "emoji 😀👍🏽🇷🇺👨‍👩‍👧‍👦",
        'quotes " and \\ backslash and {"json": [1, 2]}',
        "tab\tcr\r\ncrlf and \u2028 line separator \u2029 paragraph",
        "combining: е\u0301 й",
        "   leading and trailing spaces   ",
    ]
    texts = []
    for i in range(n):
        text = f"{tag}-{i:04d} " + rng.choice(pieces) + " " + rng.choice(pieces)
        if i % 50 == 7:  # twenty ~10 KB messages per thousand, all kinds of characters
            filler = "".join(rng.choice(pieces) for _ in range(LONG // 20))
            text = (text + "\n" + filler)[:LONG]
        texts.append(text)
    return texts


async def collect(client: Client, n: int, conversation: str = schema.GENERAL) -> list[Any]:
    """The next ``n`` messages ``client`` receives in ``conversation``, in delivery order."""
    got: list[schema.Message] = []
    while len(got) < n:
        event = await client.next_event(timeout=30 * TIMEOUT_FACTOR)
        if isinstance(event, MessageReceived) and event.message.conversation == conversation:
            got.append(event.message)
    return got


def drain_events(client: Client) -> list[Any]:
    """Every event queued on ``client`` so far."""
    events = []
    while (event := client.next_event_nowait()) is not None:
        events.append(event)
    return events


def received(events: Iterable[Any], conversation: str | None = None) -> list[schema.Message]:
    return [
        e.message
        for e in events
        if isinstance(e, MessageReceived)
        and (conversation is None or e.message.conversation == conversation)
    ]


async def full_history(
    client: Client, conversation: str = schema.GENERAL, *, peer: str | None = None
) -> list[schema.Message]:
    """The whole conversation, paging back with ``before``; oldest first."""
    pages: list[list[schema.Message]] = []
    before = None
    while True:
        if peer is not None:
            page = await client.history(peer=peer, before=before, limit=schema.MAX_PAGE)
        else:
            page = await client.history(conversation, before=before, limit=schema.MAX_PAGE)
        if page.messages:
            pages.append(page.messages)
            before = page.messages[0].seq
        if not page.more:
            break
    return [m for page in reversed(pages) for m in page]


def assert_exactly_once_in_order(messages: list[schema.Message], first_seq: int = 1) -> None:
    """Seqs are first_seq, first_seq + 1, … with no gap and no repeat."""
    seqs = [m.seq for m in messages]
    assert seqs == list(range(first_seq, first_seq + len(messages))), seqs[:20]


async def logged_in(port: int, name: str, **kwargs: Any) -> Client:
    """A connected Client registered as ``name``."""
    client = Client("127.0.0.1", port, **kwargs)
    await client.connect()
    await client.register(name, PASSWORD)
    return client


async def send_stream(
    client: Client,
    texts: list[str],
    prefix: str,
    window: int,
    acked: list[Any],
    acked_at: dict[str, float] | None = None,
) -> None:
    """Send ``texts`` in order with up to ``window`` unacknowledged; acks go to ``acked``.

    Requests leave in the order their tasks start, which is the order they are created.
    """
    gate = asyncio.Semaphore(window)
    tasks = []

    async def one(i: int, text: str) -> None:
        try:
            message = await client.send(text, client_id=f"{prefix}-{i}")
            acked.append(message)
            if acked_at is not None:
                acked_at[message.client_id] = time.monotonic()
        finally:
            gate.release()

    for i, text in enumerate(texts):
        await gate.acquire()
        tasks.append(asyncio.create_task(one(i, text)))
    await asyncio.gather(*tasks)


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None, status
    return int(match.group(1))


def report(title: str, figures: dict[str, object]) -> None:
    print(f"\n[{title}]")
    for name, value in figures.items():
        print(f"  {name}: {round(value, 3) if isinstance(value, float) else value}")


class Raw:
    """A bare protocol connection (socket + codec): what a client written from the docs does."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, sock: socket.socket | None = None) -> Raw:
        if sock is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
        else:
            reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
        raw = cls(reader, writer)
        assert isinstance(await raw.receive(), schema.Hello)
        return raw

    async def receive(self) -> schema.AnyServerMessage:
        line = await asyncio.wait_for(self.reader.readline(), 30 * TIMEOUT_FACTOR)
        if not line:
            raise ConnectionResetError("closed by the server")
        return codec.decode_server_message(line)

    async def call(self, request: schema.Request, result_type: type[Any]) -> Any:
        self.writer.write(codec.encode(request))
        while True:
            reply = await self.receive()
            if isinstance(reply, schema.Result | schema.Error) and reply.id == request.id:
                break
        assert isinstance(reply, schema.Result), reply
        return msgspec.json.decode(reply.data, type=result_type)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


# -- 1. framing and order ---------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_thousand_pipelined_messages_arrive_in_order_exactly_once(
    server: Server, connect: Callable[..., Awaitable[Client]]
) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    texts = varied_texts(1000, "lib")
    receiving = asyncio.create_task(collect(bob, len(texts)))

    started = time.monotonic()
    # All 1,000 at once: each request is written as its task starts, in this order.
    acks = await asyncio.gather(
        *(alice.send(text, client_id=f"lib-{i}") for i, text in enumerate(texts))
    )
    acked_in = time.monotonic() - started
    got = await asyncio.wait_for(receiving, 60 * TIMEOUT_FACTOR)
    received_in = time.monotonic() - started

    assert len(acks) == 1000
    assert [a.text for a in acks] == texts
    assert [a.client_id for a in acks] == [f"lib-{i}" for i in range(1000)]
    assert_exactly_once_in_order(acks)
    assert all(a.sender == "alice" for a in acks)
    assert [m.text for m in got] == texts
    assert got == acks

    history = await full_history(bob)
    assert history == acks
    report(
        "framing and order: client library",
        {
            "messages": len(texts),
            "10 KB messages": sum(len(t) >= LONG for t in texts),
            "bytes of text (UTF-8)": sum(len(t.encode()) for t in texts),
            "seconds to the last ack": acked_in,
            "seconds until the receiver had all": received_in,
            "history pages of 200": -(-len(history) // schema.MAX_PAGE),
        },
    )


@pytest.mark.timeout(120)
async def test_raw_socket_requests_in_one_write_are_framed_and_ordered(
    server: Server, connect: Callable[..., Awaitable[Client]]
) -> None:
    bob = await connect("bob")
    raw = await Raw.open(server.port)
    await raw.call(
        schema.Register(id="reg", username="carol", password=PASSWORD), schema.AuthResult
    )
    texts = varied_texts(1000, "raw", seed=2)
    lines = [
        codec.encode(schema.Send(id=i, client_id=f"raw-{i}", text=text))
        for i, text in enumerate(texts)
    ]
    receiving = asyncio.create_task(collect(bob, len(texts)))
    replies: list[schema.Result | schema.Error] = []

    async def read_replies() -> None:
        while len(replies) < len(lines):
            message = await raw.receive()
            if isinstance(message, schema.Result | schema.Error):
                replies.append(message)

    reading = asyncio.create_task(read_replies())
    started = time.monotonic()
    # The first half in a single write call …
    raw.writer.write(b"".join(lines[:500]))
    await raw.writer.drain()
    # … the rest cut at arbitrary bytes, inside JSON strings and UTF-8 sequences, with
    # several requests in most pieces.
    rest = b"".join(lines[500:])
    rng = random.Random(3)
    pieces = 0
    position = 0
    while position < len(rest):
        size = rng.choice([1, 2, 3, 7, 100, 4096, 30_000])
        raw.writer.write(rest[position : position + size])
        position += size
        pieces += 1
        if pieces % 10 == 0:
            await raw.writer.drain()
            await asyncio.sleep(0)
    await raw.writer.drain()
    await asyncio.wait_for(reading, 60 * TIMEOUT_FACTOR)
    got = await asyncio.wait_for(receiving, 60 * TIMEOUT_FACTOR)
    elapsed = time.monotonic() - started

    errors_seen = [r for r in replies if isinstance(r, schema.Error)]
    assert not errors_seen, errors_seen[:3]
    assert [r.id for r in replies] == list(range(1000))  # one reply each, in request order
    acks = [msgspec.json.decode(r.data, type=schema.SendResult) for r in replies]  # type: ignore[union-attr]
    assert not any(a.duplicate for a in acks)
    stored = [a.message for a in acks]
    assert [m.text for m in stored] == texts
    assert_exactly_once_in_order(stored)
    assert got == stored
    assert await full_history(bob) == stored
    await raw.close()
    report(
        "framing and order: raw socket",
        {
            "messages": len(texts),
            "requests in the first write": 500,
            "writes for the other 500": pieces,
            "bytes sent": sum(len(line) for line in lines),
            "seconds until acked and received": elapsed,
        },
    )


# -- 2. crash ---------------------------------------------------------------------------------


@pytest.mark.timeout(180)
async def test_sigkill_mid_stream_loses_and_doubles_nothing(
    server_process: Callable[..., ServerProcess],
) -> None:
    proc = server_process("--message-rate", "100000", "--message-burst", "100000")
    port = proc.port
    fast_reconnect = {"min_backoff": 0.05, "max_backoff": 0.5}
    alice = await logged_in(port, "alice", **fast_reconnect)
    # carol stays connected: the crash disconnects her and she resumes by herself.
    carol = await logged_in(port, "carol", **fast_reconnect)
    # dave leaves before the crash and comes back after it with his saved cursors.
    dave = await logged_in(port, "dave", reconnect=False)
    dave_token = dave.token

    total = 1500
    texts = varied_texts(total, "crash", seed=4)
    acked: list[schema.Message] = []
    started = time.monotonic()
    streaming = asyncio.create_task(send_stream(alice, texts, "c", 50, acked))

    await wait_for(lambda: len(acked) >= 100, 60)
    await wait_for(lambda: dave.cursors.get(schema.GENERAL, 0) >= 100, 30)
    await dave.close()
    dave_cursors = dave.cursors
    dave_before = received(drain_events(dave))

    await wait_for(lambda: len(acked) >= 400, 60)
    assert not streaming.done()
    acked_before_kill = [m.client_id for m in acked]
    carol_cursor_at_kill = carol.cursors.get(schema.GENERAL, 0)
    await asyncio.to_thread(proc.kill)
    killed = time.monotonic()
    integrity_at_kill = integrity(proc.db)
    stored_at_kill = {
        row[0]
        for row in query(proc.db, "SELECT client_id FROM messages WHERE conversation = 'general'")
    }
    assert integrity_at_kill == "ok"
    # Persist, then acknowledge: whatever was acknowledged before the kill is on disk.
    assert set(acked_before_kill) <= stored_at_kill
    await asyncio.to_thread(proc.start)
    downtime = time.monotonic() - killed

    await asyncio.wait_for(streaming, 120 * TIMEOUT_FACTOR)
    elapsed = time.monotonic() - started
    await wait_for(lambda: carol.cursors.get(schema.GENERAL, 0) >= total, 60)

    # Every message acknowledged once, in the sender's order, each under its own client id.
    assert len(acked) == total
    by_client_id = {m.client_id: m for m in acked}
    assert len(by_client_id) == total
    in_order = [by_client_id[f"c-{i}"] for i in range(total)]
    assert [m.text for m in in_order] == texts
    assert_exactly_once_in_order(in_order)

    # History over the wire: every acknowledged message, exactly once, as acknowledged.
    history = await full_history(carol)
    assert history == in_order

    # carol, connected through the crash, has every message exactly once, in order.
    carol_events = drain_events(carol)
    carol_got = received(carol_events, schema.GENERAL)
    assert carol_got == history
    reconnected = [
        e
        for e in carol_events
        if isinstance(e, StateChanged) and e.state is ConnectionState.RECONNECTING
    ]
    assert reconnected, "the crash should have disconnected carol"

    # dave resumes from his cursors: exactly what he missed, no gap, no repeat.
    assert dave_before == history[: len(dave_before)]
    dave2 = Client("127.0.0.1", port, cursors=dave_cursors, reconnect=False)
    await dave2.connect()
    await dave2.login(token=dave_token)
    await dave2.sync()
    await wait_for(lambda: dave2.cursors.get(schema.GENERAL, 0) >= total, 30)
    dave_missed = received(drain_events(dave2), schema.GENERAL)
    assert dave_missed == history[dave_cursors[schema.GENERAL] :]

    for client in (alice, carol, dave2):
        await client.close()
    assert proc.terminate() == 0

    sound = integrity(proc.db)
    rows = query(
        proc.db,
        "SELECT m.id, m.seq, m.client_id, m.text FROM messages m "
        "JOIN users u ON u.id = m.sender_id WHERE u.name = 'alice' ORDER BY m.seq",
    )
    general_rows = query(proc.db, "SELECT count(*) FROM messages WHERE conversation = 'general'")[
        0
    ][0]
    assert sound == "ok"
    assert general_rows == total
    assert len(rows) == total
    assert len({row[2] for row in rows}) == total  # no client id stored twice
    assert len({row[3] for row in rows}) == total  # no text stored twice (under a new id)
    assert [(row[0], row[1], row[2], row[3]) for row in rows] == [
        (m.id, m.seq, m.client_id, m.text) for m in in_order
    ]
    log = proc.log.read_text()
    assert "Traceback" not in log
    report(
        "crash",
        {
            "messages": total,
            "acknowledged before SIGKILL": len(acked_before_kill),
            "stored at the SIGKILL (those not yet acknowledged are resent)": len(stored_at_kill),
            "seconds from SIGKILL to listening again": downtime,
            "seconds for the whole stream": elapsed,
            "carol's cursor at the kill": carol_cursor_at_kill,
            "carol reconnects": len(reconnected),
            "dave's saved cursor": dave_cursors[schema.GENERAL],
            "dave received on resume": len(dave_missed),
            "integrity_check after the SIGKILL, at the end": (integrity_at_kill, sound),
        },
    )


# -- 3. slow reader ---------------------------------------------------------------------------

SLOW_TEXT = 1000
"""Characters per message in the slow-reader test: 10,000 of them make ~11 MB per reader."""
SENDERS = 4
MEMORY_BOUND_MIB = 100
"""Documented bound: the server's RSS during the broadcast stays below its RSS before + this."""


def kernel_send_buffer_max() -> int:
    """The most a loopback socket's send buffer may autotune to (``tcp_wmem`` max)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 * 1024 * 1024


@pytest.mark.timeout(180)
async def test_a_reader_that_stops_delays_nobody_and_loses_nothing(
    server_process: Callable[..., ServerProcess],
) -> None:
    proc = server_process("--message-rate", "100000", "--message-burst", "100000")
    port = proc.port
    pid = proc.proc.pid
    # Four senders: the server handles each connection's requests one at a time, each waiting
    # for its commit; several connections share a commit (group commit).
    senders = [await logged_in(port, f"sender{k}", reconnect=False) for k in range(SENDERS)]
    fast = await logged_in(port, "fast", reconnect=False)
    registering = await logged_in(port, "slow", reconnect=False)
    slow_token = registering.token
    await registering.close()

    # The slow reader: a raw socket with a tiny receive buffer that, once logged in, reads
    # nothing more.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    slow = await Raw.open(port, sock)
    await slow.call(schema.Login(id=1, token=slow_token), schema.AuthResult)
    cursor = (await fast.history(limit=1)).messages
    slow_cursor = cursor[-1].seq if cursor else 0
    slow.writer.transport.pause_reading()

    total = 10_000
    padding = "ж" * 100 + "x" * (SLOW_TEXT - 112)
    texts = [f"slow-{i:05d} {padding}" for i in range(total)]
    line_bytes = len(
        codec.encode(
            schema.MessageEvent(
                message=schema.Message(
                    id=total,
                    conversation=schema.GENERAL,
                    seq=total,
                    sender="sender0",
                    text=texts[-1],
                    ts=int(time.time() * 1000),
                    client_id=f"s-{total}",
                )
            )
        )
    )
    send_buffer = 2 * 1024 * 1024  # the server's default send_buffer_bytes
    # What the slow reader is sent exceeds everything that could hold it without the server
    # dropping it: the server's bound, the kernel's send buffer and its own receive buffer.
    assert total * line_bytes > send_buffer + kernel_send_buffer_max() + 1024 * 1024

    await asyncio.sleep(0.3)
    drain_events(fast)
    rss_before = rss_kib(pid)
    samples = [rss_before]
    sampling = True
    acked: list[schema.Message] = []
    dropped_after: int | None = None  # messages acknowledged when the server dropped it

    async def sample() -> None:
        nonlocal dropped_after
        while sampling:
            samples.append(rss_kib(pid))
            if dropped_after is None and "slow consumer" in proc.log.read_text():
                dropped_after = len(acked)
            await asyncio.sleep(0.02)

    received_at: dict[str, float] = {}

    async def fast_receives() -> list[schema.Message]:
        got: list[schema.Message] = []
        while len(got) < total:
            event = await fast.next_event(timeout=30 * TIMEOUT_FACTOR)
            if isinstance(event, MessageReceived):
                got.append(event.message)
                received_at[event.message.client_id] = time.monotonic()
        return got

    sampler = asyncio.create_task(sample())
    receiving = asyncio.create_task(fast_receives())
    acked_at: dict[str, float] = {}
    started = time.monotonic()
    await asyncio.wait_for(
        asyncio.gather(
            *(
                send_stream(sender, texts[k::SENDERS], f"s{k}", 100, acked, acked_at)
                for k, sender in enumerate(senders)
            )
        ),
        120 * TIMEOUT_FACTOR,
    )
    last_ack = time.monotonic()
    got = await asyncio.wait_for(receiving, 60 * TIMEOUT_FACTOR)
    last_received = time.monotonic()
    sampling = False
    await sampler
    # How long after the sender's acknowledgement the fast client had each message (it may
    # have it first: delivery precedes the acknowledgement).
    lags = sorted(received_at[m.client_id] - acked_at[m.client_id] for m in acked)

    # The fast client had everything, in order, while the slow one still read nothing.
    acked.sort(key=lambda m: m.seq)
    assert_exactly_once_in_order(acked, acked[0].seq)
    assert sorted(m.text for m in acked) == texts
    for k in range(SENDERS):  # each sender's order kept
        assert [m.text for m in acked if m.sender == f"sender{k}"] == texts[k::SENDERS]
    assert got == acked
    assert slow.writer.transport.is_reading() is False
    # The server dropped the slow one, and only it, as a slow consumer: it holds no buffer
    # for it any more.
    await wait_for(lambda: "dropped as a slow consumer" in proc.log.read_text(), 10)
    assert proc.log.read_text().count("dropped as a slow consumer") == 1
    # Generous: a fast client blocked behind the slow one would not get them at all.
    assert lags[-1] < 10 * TIMEOUT_FACTOR
    slow.writer.transport.resume_reading()
    slow_bytes = 0
    with contextlib.suppress(ConnectionResetError):
        while data := await asyncio.wait_for(slow.reader.read(1 << 20), 10 * TIMEOUT_FACTOR):
            slow_bytes += len(data)
    await slow.close()
    sock.close()

    # Memory stayed bounded.
    peak = max(samples)
    assert peak - rss_before < MEMORY_BOUND_MIB * 1024, (rss_before, peak)

    # The slow reader comes back with the client library and its old cursor: every message,
    # exactly once, in order.
    back = Client("127.0.0.1", port, cursors={schema.GENERAL: slow_cursor}, reconnect=False)
    await back.connect()
    await back.login(token=slow_token)
    resumed = time.monotonic()
    await back.sync()
    await wait_for(lambda: back.cursors.get(schema.GENERAL, 0) >= acked[-1].seq, 60)
    synced_in = time.monotonic() - resumed
    recovered = received(drain_events(back), schema.GENERAL)
    assert recovered == acked
    for client in (*senders, fast, back):
        await client.close()
    report(
        "slow reader",
        {
            "messages": total,
            "senders": SENDERS,
            "bytes per message line": line_bytes,
            "MB broadcast to each reader": round(total * line_bytes / 1e6, 1),
            "server send buffer bound KiB": send_buffer // 1024,
            "seconds to send and acknowledge all": last_ack - started,
            "seconds until the fast client had all": last_received - started,
            "fast client's last message after the last ack, s": last_received - last_ack,
            "fast client's lag after each ack, p50 / max, ms": (
                round(lags[len(lags) // 2] * 1000, 1),
                round(lags[-1] * 1000, 1),
            ),
            "messages acknowledged when the slow reader was dropped": dropped_after,
            "bytes the slow reader got before the drop": slow_bytes,
            "server RSS before MiB": round(rss_before / 1024, 1),
            "server RSS peak MiB (sampled)": round(peak / 1024, 1),
            "RSS samples": len(samples),
            "documented bound MiB": round(rss_before / 1024 + MEMORY_BOUND_MIB, 1),
            "slow reader's sync after reconnecting, s": synced_in,
        },
    )


# -- 4. graceful restart ----------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_client_with_saved_cursors_gets_what_it_missed_over_a_restart(
    server_process: Callable[..., ServerProcess],
) -> None:
    proc = server_process("--message-rate", "100000", "--message-burst", "100000")
    port = proc.port
    alice = await logged_in(port, "alice", min_backoff=0.05, max_backoff=0.5)
    bob = await logged_in(port, "bob", reconnect=False)
    bob_token = bob.token

    async def post(n: int, tag: str) -> None:
        await asyncio.gather(*(alice.send(f"{tag} general {i}") for i in range(n)))
        await asyncio.gather(*(alice.dm("bob", f"{tag} direct {i}") for i in range(n // 5)))

    await post(50, "before")
    (dm_id,) = [c.conversation for c in await alice.conversations() if c.peer == "bob"]
    await wait_for(lambda: bob.cursors.get(schema.GENERAL, 0) >= 50, 30)
    await wait_for(lambda: bob.cursors.get(dm_id, 0) >= 10, 30)
    saved = bob.cursors
    await bob.close()

    await post(50, "missed")  # bob is away
    alice_events: list[Any] = []

    async def alice_reconnecting() -> None:
        while True:
            event = await alice.next_event(timeout=20 * TIMEOUT_FACTOR)
            alice_events.append(event)
            if isinstance(event, StateChanged) and event.state is ConnectionState.RECONNECTING:
                return

    watching = asyncio.create_task(alice_reconnecting())
    assert await asyncio.to_thread(proc.terminate) == 0
    await watching
    # Told why: the server said goodbye before closing.
    assert alice_events[-1].reason == errors.SERVER_SHUTDOWN
    # While the server is down, alice's sends wait for the reconnect.
    queued = asyncio.gather(*(alice.send(f"down {i}") for i in range(20)))
    await asyncio.sleep(0.3)
    assert not queued.done()
    await asyncio.to_thread(proc.start)
    await asyncio.wait_for(queued, 30 * TIMEOUT_FACTOR)
    await post(50, "after")

    general = await full_history(alice)
    direct = await full_history(alice, peer="bob")
    assert_exactly_once_in_order(general)
    assert_exactly_once_in_order(direct)
    assert len(general) == 170
    assert len(direct) == 30

    back = Client("127.0.0.1", port, cursors=saved, reconnect=False)
    await back.connect()
    await back.login(token=bob_token)
    await back.sync()
    events = drain_events(back)
    missed_general = received(events, schema.GENERAL)
    missed_direct = received(events, dm_id)
    assert missed_general == general[saved[schema.GENERAL] :]
    assert missed_direct == direct[saved[dm_id] :]
    assert len(received(events)) == len(missed_general) + len(missed_direct)
    for client in (alice, back):
        await client.close()
    assert proc.terminate() == 0
    report(
        "graceful restart",
        {
            "bob's saved cursors": saved,
            "general messages missed and received": len(missed_general),
            "direct messages missed and received": len(missed_direct),
            "alice's reason for reconnecting": alice_events[-1].reason,
        },
    )
