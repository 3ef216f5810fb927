"""The bus contract, on the in-process bus and on Redis, and what only a shared bus does:
events between nodes, presence across nodes and after a node dies, outages, shared limits.

Redis is a real ``redis-server`` started by the test session (``redis_service.py``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from beseda.bus import (
    Bus,
    BusError,
    BusEvent,
    EntryPosted,
    Origin,
    PresenceChanged,
    ReadMoved,
    TypingStarted,
)
from beseda.bus.local import LocalBus
from beseda.bus.redis import RedisBus
from beseda.protocol.schema import Entry
from beseda.storage import ConversationState, MemberChange
from conftest import TIMEOUT_FACTOR, wait_for
from redis_service import RedisServer

pytestmark = pytest.mark.timeout(60)


def entry(seq: int, conversation: str = "c:7", text: str = "hi") -> Entry:
    return Entry(
        id=seq, conversation=conversation, seq=seq, sender="ann", text=text, ts=1_000 + seq
    )


@pytest.fixture
async def make_bus(redis_url: str) -> AsyncIterator[Callable[..., object]]:
    """``await make_bus("redis", "node-a")`` → an open bus; all are closed at the end."""
    buses: list[Bus] = []

    async def make(kind: str, node: str = "node-a", **options: object) -> Bus:
        bus: Bus = (
            LocalBus(node) if kind == "local" else RedisBus(redis_url, node, **options)  # type: ignore[arg-type]
        )
        await bus.open()
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.close()


def collect(bus: Bus) -> list[BusEvent]:
    events: list[BusEvent] = []
    bus.subscribe(events.append)
    return events


# -- the contract, on both buses ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["local", "redis"])
async def test_a_node_gets_its_own_events_at_once_in_the_order_published(
    make_bus: Callable[..., object], kind: str
) -> None:
    bus: Bus = await make_bus(kind)  # type: ignore[misc]
    events = collect(bus)
    published = [EntryPosted(entry(seq), None, Origin(bus.node, 1)) for seq in range(1, 51)]
    for event in published:
        bus.publish(event)
    # Synchronously: local delivery never waits for the network.
    assert events == published


@pytest.mark.parametrize("kind", ["local", "redis"])
async def test_a_user_is_online_from_the_first_connection_to_the_last(
    make_bus: Callable[..., object], kind: str
) -> None:
    bus: Bus = await make_bus(kind)  # type: ignore[misc]
    assert await bus.user_connected(1, "ann") is True
    assert await bus.user_connected(1, "ann") is False
    assert await bus.online([1, 2]) == {1}
    assert await bus.user_disconnected(1, "ann") is False
    assert await bus.online([1]) == {1}
    assert await bus.user_disconnected(1, "ann") is True
    assert await bus.online([1]) == set()


# -- between nodes --------------------------------------------------------------------------------


async def test_every_kind_of_event_crosses_to_another_node_once_and_intact(
    make_bus: Callable[..., object],
) -> None:
    a: Bus = await make_bus("redis", "node-a")  # type: ignore[misc]
    b: Bus = await make_bus("redis", "node-b")  # type: ignore[misc]
    at_a, at_b = collect(a), collect(b)
    state = ConversationState(id="c:7", kind="channel", name="Ops", key="ops", public=True)
    events: list[BusEvent] = [
        EntryPosted(entry(1), frozenset({1, 2}), Origin("node-a", 5), legacy=False),
        EntryPosted(
            entry(2),
            frozenset({1, 2, 3}),
            Origin("node-a", 5),
            state=state,
            changes=(MemberChange(3, "member", join=True),),
        ),
        EntryPosted(entry(1, "general"), None, Origin("node-a", 6), legacy=True),
        PresenceChanged(1, "ann", online=True),
        ReadMoved(1, "c:7", 2, Origin("node-a", 5)),
        TypingStarted("c:7", 1, "ann", frozenset({1, 2})),
    ]
    for event in events:
        a.publish(event)
    await wait_for(lambda: len(at_b) == len(events))
    await asyncio.sleep(0.2)  # nothing more comes, and node A does not get its own back
    assert at_b == events
    assert at_a == events


async def test_a_user_online_on_one_node_is_online_for_the_others(
    make_bus: Callable[..., object],
) -> None:
    a: Bus = await make_bus("redis", "node-a", node_expiry=0.6)  # type: ignore[misc]
    b: Bus = await make_bus("redis", "node-b", node_expiry=0.6)  # type: ignore[misc]
    await asyncio.sleep(0.5)  # a heartbeat: each node knows the other
    assert await a.user_connected(1, "ann") is True
    assert await b.online([1]) == {1}
    # A second connection on another node is not the user's first.
    assert await b.user_connected(1, "ann") is False
    assert await a.user_disconnected(1, "ann") is False
    assert await a.online([1]) == {1}
    assert await b.user_disconnected(1, "ann") is True
    assert await a.online([1]) == set()


CHILD_NODE = textwrap.dedent(
    """
    import asyncio, sys
    from beseda.bus.redis import RedisBus

    async def main():
        bus = RedisBus(sys.argv[1], "doomed", node_expiry=float(sys.argv[2]))
        await bus.open()
        await bus.user_connected(41, "zoe")
        print("ready", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_the_users_of_a_killed_node_go_offline_within_the_expiry(
    make_bus: Callable[..., object], redis_url: str
) -> None:
    expiry = 1.5
    b: Bus = await make_bus("redis", "node-b", node_expiry=expiry)  # type: ignore[misc]
    events = collect(b)
    child = subprocess.Popen(  # noqa: ASYNC220 (a child that is killed, not awaited)
        [sys.executable, "-c", CHILD_NODE, redis_url, str(expiry)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 20 * TIMEOUT_FACTOR)
        assert line.strip() == b"ready"
        deadline = time.monotonic() + 10 * TIMEOUT_FACTOR
        while await b.online([41]) != {41}:  # once node B's heartbeat has seen the child
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
        killed = time.monotonic()
        await wait_for(lambda: PresenceChanged(41, "zoe", online=False) in events, 10)
        took = time.monotonic() - killed
        # The documented bound: the expiry and one heartbeat (a third of it) of a survivor.
        assert took <= (expiry + expiry / 3) * TIMEOUT_FACTOR + 0.5, took
        assert await b.online([41]) == set()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


async def test_a_node_that_cannot_reach_redis_does_not_start() -> None:
    from conftest import free_port

    bus = RedisBus(f"redis://127.0.0.1:{free_port()}/0", "node-a")
    with pytest.raises(BusError, match=r"Cannot reach Redis at redis://127\.0\.0\.1:"):
        await bus.open()


async def test_a_lost_redis_keeps_local_delivery_and_the_bus_recovers_by_itself(
    tmp_path: Path,
) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    a = RedisBus(redis.url, "node-a")
    b = RedisBus(redis.url, "node-b")
    resumed: list[str] = []
    try:
        await a.open()
        await b.open()
        a.on_resume(lambda: resumed.append("a"))
        b.on_resume(lambda: resumed.append("b"))
        at_a, at_b = collect(a), collect(b)
        a.publish(EntryPosted(entry(1), None, Origin("node-a", 1)))
        await wait_for(lambda: len(at_b) == 1)

        redis.stop()
        await asyncio.sleep(0.3)
        # While Redis is gone: a node's own events are still delivered on that node.
        lost = [EntryPosted(entry(seq), None, Origin("node-a", 1)) for seq in (2, 3, 4)]
        for event in lost:
            a.publish(event)
        assert at_a[-3:] == lost
        assert await a.user_connected(9, "ivy") is True  # presence is kept locally

        redis.start()  # same port
        await wait_for(lambda: "a" in resumed and "b" in resumed, 15)
        # The latest entry of each conversation is published again: a receiver that sees
        # it skip ahead reads the gap from the database.
        await wait_for(lambda: any(e.entry.seq == 4 for e in at_b if isinstance(e, EntryPosted)))
        a.publish(EntryPosted(entry(5), None, Origin("node-a", 1)))
        await wait_for(lambda: any(e.entry.seq == 5 for e in at_b if isinstance(e, EntryPosted)))
        # And the user connected during the outage is known to the cluster again.
        deadline = time.monotonic() + 15 * TIMEOUT_FACTOR
        while await b.online([9]) != {9}:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    finally:
        await a.close()
        await b.close()
        redis.stop()


# -- limits across nodes --------------------------------------------------------------------------


async def test_a_rate_limit_is_one_bucket_for_every_node(make_bus: Callable[..., object]) -> None:
    a: RedisBus = await make_bus("redis", "node-a")  # type: ignore[misc]
    b: RedisBus = await make_bus("redis", "node-b")  # type: ignore[misc]
    at_a = a.rate_limit("test", 0.01, 4)
    at_b = b.rate_limit("test", 0.01, 4)
    now = time.monotonic()
    spent = [await limit.take("k", now) for limit in (at_a, at_b, at_a, at_b)]
    assert spent == [0.0, 0.0, 0.0, 0.0]
    # Four tokens between both nodes: the fifth is refused on either.
    assert await at_a.take("k", now) > 0
    assert await at_b.take("k", now) > 0
    assert await at_b.reserve("k", now, 0.5) is None
    await at_a.refund("k")
    assert await at_b.take("k", now) == 0.0
    # Another key has its own bucket.
    assert await at_b.take("other", now) == 0.0


async def test_the_message_rate_leased_in_parts_still_holds_for_every_node(
    make_bus: Callable[..., object],
) -> None:
    a: RedisBus = await make_bus("redis", "node-a")  # type: ignore[misc]
    b: RedisBus = await make_bus("redis", "node-b")  # type: ignore[misc]
    # A burst of 40 is leased four tokens at a time, to whichever node asks.
    limits = [bus.rate_limit("messages", 0.001, 40) for bus in (a, b)]
    now = time.monotonic()
    accepted = 0
    refused = [False, False]
    while not all(refused):
        for k, limit in enumerate(limits):
            wait = await limit.reserve("ann", now, 0.0)
            if wait is None:
                refused[k] = True
            else:
                accepted += 1
    assert accepted == 40


@pytest.mark.parametrize("name", ["", "two words", "x" * 65])
def test_a_node_name_that_cannot_name_a_node_is_refused_at_start(tmp_path: Path, name: str) -> None:
    from beseda.server.app import Server, StartupError
    from beseda.server.config import Settings

    with pytest.raises(StartupError, match="--node-name"):
        Server(Settings(db=tmp_path / "beseda.db", node_name=name))
