"""The client library (issue 2, item 12) against real servers: every call, the event stream,
and reconnecting to a server that was killed and started again, losing and doubling nothing."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from beseda.client import (
    Client,
    ClientEvent,
    ConnectionLostError,
    ConnectionState,
    MessageReceived,
    PresenceChanged,
    StateChanged,
)
from beseda.protocol import schema
from beseda.protocol.errors import ProtocolError
from beseda.server.app import Server
from conftest import TIMEOUT_FACTOR, ServerProcess, wait_for
from storage_helpers import query

PASSWORD = "password123"


@pytest.fixture
def child_server(
    server_process: Callable[..., ServerProcess],
) -> Callable[..., ServerProcess]:
    return server_process


class Recorder:
    """Drains a client's event stream in the background into lists."""

    def __init__(self, client: Client) -> None:
        self.events: list[ClientEvent] = []
        self._task = asyncio.create_task(self._drain(client))

    async def _drain(self, client: Client) -> None:
        async for event in client.events():
            self.events.append(event)

    @property
    def messages(self) -> list[tuple[str, int, str]]:
        return [
            (e.message.conversation, e.message.seq, e.message.text)
            for e in self.events
            if isinstance(e, MessageReceived)
        ]

    @property
    def states(self) -> list[ConnectionState]:
        return [e.state for e in self.events if isinstance(e, StateChanged)]

    async def stop(self) -> None:
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task


async def test_accounts_through_the_library(server: Server) -> None:
    async with Client("127.0.0.1", server.port) as first:
        registered = await first.register("Alice", PASSWORD)
        assert registered.user == first.user == "Alice"
        assert first.hello is not None
        assert first.hello.protocol == schema.PROTOCOL_VERSION == 4
        with pytest.raises(ProtocolError) as refused:
            await first.login("Alice", PASSWORD)
        assert refused.value.code == "already_authenticated"

    async with Client("127.0.0.1", server.port) as second:
        with pytest.raises(ProtocolError) as wrong:
            await second.login("alice", "not the password")
        assert wrong.value.code == "bad_credentials"
        logged_in = await second.login("ALICE", PASSWORD)
        assert logged_in.user == "Alice"
        token = logged_in.token

    async with Client("127.0.0.1", server.port) as third:
        assert (await third.login(token=token)).user == "Alice"
        await third.logout()
        assert third.token is None
        with pytest.raises(ProtocolError) as after:
            await third.send("logged out")
        assert after.value.code == "not_authenticated"

    async with Client("127.0.0.1", server.port) as fourth:
        with pytest.raises(ProtocolError) as revoked:
            await fourth.login(token=token)
        assert revoked.value.code == "bad_credentials"


async def test_every_call_and_the_event_stream(server: Server, connect) -> None:  # type: ignore[no-untyped-def]
    alice: Client = await connect("alice")
    bob: Client = await connect("bob")
    alice_events = Recorder(alice)
    bob_events = Recorder(bob)

    hello = await alice.send("hello: всем 👋")
    assert (hello.conversation, hello.seq, hello.sender) == ("general", 1, "alice")
    secret = await bob.dm("Alice", "a secret")
    assert secret.to == "alice"
    assert secret.sender == "bob"
    await wait_for(lambda: len(alice_events.messages) == 2 and len(bob_events.messages) == 2)
    # Each side sees both, its own included, once, in order.
    expected = [("general", 1, "hello: всем 👋"), (secret.conversation, 1, "a secret")]
    assert alice_events.messages == expected
    assert bob_events.messages == expected
    assert alice.cursors == bob.cursors == {"general": 1, secret.conversation: 1}

    assert [m.text for m in (await alice.history()).messages] == ["hello: всем 👋"]
    assert (await alice.history(peer="bob")).messages == [secret]
    assert (await bob.history(secret.conversation)).messages == [secret]
    assert await alice.sync() == []  # nothing new
    users = await alice.users()
    assert [(u.name, u.online) for u in users.users] == [("alice", True), ("bob", True)]
    assert [u.name for u in (await alice.users("BO")).users] == ["bob"]
    conversations = await bob.conversations()
    assert sorted((c.conversation, c.peer or "", c.last_seq) for c in conversations) == [
        (secret.conversation, "alice", 1),
        ("general", "", 1),
    ]
    await alice.ping()

    # Presence of watched users reaches the event stream (their states now, then changes);
    # closing ends the client for good.
    watched = await alice.watch(["BOB", "nobody"])
    assert [(u.name, u.online) for u in watched.users] == [("bob", True)]
    assert watched.unknown == ["nobody"]
    await wait_for(lambda: PresenceChanged("bob", True) in alice_events.events)
    await bob.close()
    await wait_for(lambda: PresenceChanged("bob", False) in alice_events.events)
    assert bob.state is ConnectionState.OFFLINE
    with pytest.raises(ConnectionLostError):
        await bob.send("closed")
    await alice_events.stop()
    await bob_events.stop()


async def test_a_client_resumes_from_cursors_it_was_given(server: Server, connect) -> None:  # type: ignore[no-untyped-def]
    alice = await connect("alice")
    for n in range(5):
        await alice.send(f"m{n}")
    # A client that remembers having seen up to seq 3 (a previous run) gets only the rest.
    late = await connect(cursors={"general": 3})
    await late.login("alice", PASSWORD)
    got = []
    while len(got) < 2:
        event = await late.next_event(timeout=10)
        if isinstance(event, MessageReceived):
            got.append(event.message.text)
    assert got == ["m3", "m4"]
    assert late.cursors["general"] == 5


def stored_client_ids(db: Path | str) -> Counter[str]:
    return Counter(row[0] for row in query(db, "SELECT client_id FROM messages"))


async def test_reconnect_after_the_server_is_killed_and_restarted(
    child_server: Callable[..., ServerProcess],
) -> None:
    proc = child_server()
    alice = Client("127.0.0.1", proc.port, min_backoff=0.5, max_backoff=1.0)
    bob = Client("127.0.0.1", proc.port, min_backoff=0.1, max_backoff=0.5)
    await alice.connect()
    await bob.connect()
    await alice.register("alice", PASSWORD)
    await bob.register("bob", PASSWORD)
    alice_events = Recorder(alice)
    bob_events = Recorder(bob)
    before = [await bob.send(f"before {n}") for n in range(3)]
    await wait_for(lambda: len(alice_events.messages) == 3)

    # The server freezes, so what alice sends now is written but never acknowledged; then
    # it dies with those requests unread.
    await asyncio.to_thread(proc.pause)
    unacked = [
        asyncio.create_task(alice.send(f"in flight {n}", client_id=f"flight-{n}")) for n in range(3)
    ]
    await asyncio.sleep(0)  # let each task write its request
    await asyncio.to_thread(proc.kill)
    await wait_for(lambda: ConnectionState.RECONNECTING in alice_events.states)
    # Sent while the server is down: queued, sent after the reconnect.
    queued = asyncio.create_task(alice.dm("bob", "queued while down", client_id="queued"))
    await asyncio.to_thread(proc.start)

    # Bob is back first (shorter backoff) and posts; alice missed it whenever she returns.
    await wait_for(lambda: bob.state is ConnectionState.CONNECTED, timeout=30)
    missed = [await bob.send(f"missed {n}") for n in range(3)]

    stored = await asyncio.wait_for(asyncio.gather(*unacked, queued), 30 * TIMEOUT_FACTOR)
    assert [m.client_id for m in stored] == ["flight-0", "flight-1", "flight-2", "queued"]
    assert [m.seq for m in stored[:3]] == sorted(m.seq for m in stored[:3])

    # Everything in general, each once and in order, on both clients.
    everything = [m.text for m in (await bob.history(limit=200)).messages]
    assert sorted(everything) == sorted(
        [m.text for m in before] + [m.text for m in missed] + [m.text for m in stored[:3]]
    )
    assert len(everything) == 9
    general = [("general", n + 1, text) for n, text in enumerate(everything)]
    dm = (stored[3].conversation, 1, "queued while down")
    await wait_for(lambda: len(alice_events.messages) == 10, timeout=30)
    await wait_for(lambda: len(bob_events.messages) == 10, timeout=30)
    for recorder in (alice_events, bob_events):
        received = recorder.messages
        assert [m for m in received if m[0] == "general"] == general
        assert [m for m in received if m[0] != "general"] == [dm]

    # Each client id was stored exactly once, though some were sent twice.
    counts = stored_client_ids(proc.db)
    assert sum(counts.values()) == 10
    assert set(counts.values()) == {1}

    # Connected → reconnecting (one or more attempts) → connected, and never offline.
    states = alice_events.states
    first_reconnecting = states.index(ConnectionState.RECONNECTING)
    assert states[first_reconnecting - 1] is ConnectionState.CONNECTED
    after = states[first_reconnecting:]
    assert set(after[:-1]) == {ConnectionState.RECONNECTING}
    assert after[-1] is ConnectionState.CONNECTED
    assert alice.state is ConnectionState.CONNECTED

    await alice_events.stop()
    await bob_events.stop()
    await alice.close()
    await bob.close()
