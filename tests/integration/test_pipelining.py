"""A connection's messages overlap: queued together, committed together, answered in order.

A client may write many requests without waiting for replies. The server begins them in order
and does not wait for one message's commit before queueing the next, so a burst shares one
commit and leaves in one write per recipient. These tests pin the promises that must survive
that overlap: replies in request order, sequence numbers in sender order, an error in the
middle touching only its own request, and a connection reading its own writes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from newcomer import Newcomer

from beseda.server.app import Server
from storage_helpers import writes_held


@pytest.fixture
async def user(server: Server) -> AsyncIterator[Callable[[str], Awaitable[Newcomer]]]:
    """``await user("alice")``: a raw connection logged in as alice, closed after the test."""
    opened: list[Newcomer] = []

    async def make(name: str) -> Newcomer:
        conn = await Newcomer.user(server.port, name)
        opened.append(conn)
        return conn

    yield make
    for conn in opened:
        await conn.close()


async def replies_in_order(conn: Newcomer, ids: list[int]) -> list[dict[str, Any]]:
    """Read the replies to ``ids``; fail unless they arrive in exactly that order."""
    got = []
    while len(got) < len(ids):
        message = await conn.read()
        assert message is not None, "closed before every reply came"
        if message["type"] in ("result", "error"):
            got.append(message)
    assert [m["id"] for m in got] == ids
    return got


@pytest.mark.timeout(60)
async def test_a_burst_written_at_once_shares_commits_and_is_acked_in_order(
    server: Server, user: Callable[[str], Awaitable[Newcomer]]
) -> None:
    sender = await user("alice")
    reader = await user("bob")
    before = server.storage.stats
    # Hold the database's write lock from outside, so that the writer's first commit waits
    # and every later message queues behind it: the sharing is then certain, not a race.
    count = 60  # below the connection's bounds (64 waiting, 256 in flight)
    async with writes_held(server.storage):
        ids = [sender.send("send", client_id=f"b{i}", text=f"burst {i}") for i in range(count)]
        await sender.writer.drain()
        # Nothing is acknowledged before it is committed.
        assert await _nothing_within(sender, 0.3)
    replies = await replies_in_order(sender, ids)
    seqs = [r["data"]["message"]["seq"] for r in replies]
    assert seqs == list(range(seqs[0], seqs[0] + count))
    after = server.storage.stats
    commits = after["batches"] - before["batches"]
    # One commit was waiting for the lock with the first message; the rest share at most a
    # few more (the writer takes everything queued when it is free).
    assert after["writes"] - before["writes"] == count
    assert commits <= 3, commits
    received = [await reader.event("message") for _ in range(count)]
    assert [m["message"]["text"] for m in received] == [f"burst {i}" for i in range(count)]


async def _nothing_within(conn: Newcomer, seconds: float) -> bool:
    """True when no reply comes within ``seconds`` (events such as presence may)."""
    try:
        while True:
            message = await conn.read(timeout=seconds)
            assert message is not None, "closed"
            assert message["type"] not in ("result", "error"), f"unexpected {message}"
    except TimeoutError:
        return True


@pytest.mark.timeout(60)
async def test_an_error_in_a_pipeline_answers_only_its_own_request(
    server: Server, user: Callable[[str], Awaitable[Newcomer]]
) -> None:
    alice = await user("alice")
    await user("bob")
    ids = [
        alice.send("send", client_id="p1", text="one"),
        alice.send("send", client_id="p2", text="   "),  # empty: refused
        alice.send("dm", client_id="p3", to="nobody", text="hi"),  # unknown user
        alice.send("dm", client_id="p4", to="bob", text="two"),
        alice.send("send", client_id="p1", text="changed"),  # client id reused
        alice.send("send", client_id="p5", text="three"),
    ]
    replies = await replies_in_order(alice, ids)
    kinds = [r["type"] if r["type"] == "result" else r["code"] for r in replies]
    assert kinds == [
        "result",
        "empty_message",
        "unknown_user",
        "result",
        "client_id_reused",
        "result",
    ]
    texts = [r["data"]["message"]["text"] for r in replies if r["type"] == "result"]
    assert texts == ["one", "two", "three"]


@pytest.mark.timeout(60)
async def test_a_request_after_messages_sees_them(
    server: Server, user: Callable[[str], Awaitable[Newcomer]]
) -> None:
    """Read your writes: history and sync asked in the same write as the sends include them,
    although the sends were not yet committed when the reads were read."""
    alice = await user("alice")
    await user("bob")
    async with writes_held(server.storage):
        ids = [alice.send("send", client_id=f"r{i}", text=f"mine {i}") for i in range(5)]
        ids.append(alice.send("dm", client_id="r-dm", to="bob", text="private"))
        ids.append(alice.send("history", conversation="general", limit=50))
        ids.append(alice.send("sync", cursors={}))
        await alice.writer.drain()
        assert await _nothing_within(alice, 0.2)
    replies = await replies_in_order(alice, ids)
    history = [m["text"] for m in replies[6]["data"]["messages"]]
    assert history[-5:] == [f"mine {i}" for i in range(5)]
    synced = [m["text"] for m in replies[7]["data"]["messages"]]
    assert "private" in synced
    assert "mine 4" in synced


@pytest.mark.timeout(60)
async def test_replies_in_flight_are_sent_before_the_connection_closes(
    server: Server, user: Callable[[str], Awaitable[Newcomer]]
) -> None:
    """A client that writes its messages and closes its sending side still gets every ack."""
    alice = await user("alice")
    async with writes_held(server.storage):
        ids = [alice.send("send", client_id=f"c{i}", text=f"last {i}") for i in range(20)]
        await alice.writer.drain()
        alice.writer.write_eof()
        assert await _nothing_within(alice, 0.2)
    replies = await replies_in_order(alice, ids)
    assert all(r["type"] == "result" for r in replies)
    assert await alice.read() is None  # then the server closes


@pytest.mark.timeout(60)
async def test_shutdown_answers_the_messages_in_flight_then_says_bye(
    server: Server, user: Callable[[str], Awaitable[Newcomer]]
) -> None:
    alice = await user("alice")
    ids = [alice.send("send", client_id=f"s{i}", text=f"before stop {i}") for i in range(30)]
    await alice.writer.drain()
    await replies_in_order(alice, ids[:1])  # the server has begun them
    await server.stop()
    rest = await alice.closing()
    results = [m for m in rest if m["type"] == "result"]
    assert [m["id"] for m in results] == ids[1:]
    assert rest[-1]["type"] == "bye"
    assert rest[-1]["code"] == "server_shutdown"


@pytest.mark.timeout(60)
async def test_messages_in_flight_are_bounded_per_connection(
    make_server: Callable[..., Server],
) -> None:
    """Past ``max_in_flight`` uncommitted messages a connection waits for the oldest commit:
    with a bound of 4, ten messages written at once take at least three commits."""
    server = make_server(max_in_flight=4)
    await server.start()
    alice = await Newcomer.user(server.port, "alice")
    try:
        before = server.storage.stats["batches"]
        async with writes_held(server.storage):
            ids = [alice.send("send", client_id=f"f{i}", text=f"bounded {i}") for i in range(10)]
            await alice.writer.drain()
            assert await _nothing_within(alice, 0.2)
        replies = await replies_in_order(alice, ids)
        assert [r["data"]["message"]["text"] for r in replies] == [
            f"bounded {i}" for i in range(10)
        ]
        assert server.storage.stats["batches"] - before >= 3
    finally:
        await alice.close()
