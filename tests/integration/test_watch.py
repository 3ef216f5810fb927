"""Presence by subscription: a connection ``watch``es users and gets presence events for
those only (so a login costs one delivery per watcher, not one per connection).

Absence is proved with a marker: after the action under test, another user posts to the
general room; every event of the action is delivered before that message (one hub, one
order), so what did not come before the marker does not come at all.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from newcomer import PASSWORD, Newcomer

from beseda.client import Client, ConnectionState, PresenceChanged, StateChanged
from beseda.protocol import schema
from beseda.protocol.errors import ProtocolError
from beseda.server.app import Server
from conftest import wait_for

_marks = itertools.count(1)


async def register(port: int, *names: str) -> None:
    for name in names:
        conn = await Newcomer.open(port)
        await conn.call("register", username=name, password=PASSWORD)
        await conn.close()


async def presence_until_mark(marker: Newcomer, *watchers: Newcomer) -> list[list[Any]]:
    """For each watcher, the presence events ``[user, online]`` that came before the marker's
    next message (sent now); the events kept while waiting for replies count too."""
    text = f"mark {next(_marks)}"
    await marker.call("send", client_id=text, text=text)
    seen: list[list[Any]] = []
    for conn in watchers:
        changes = [[e["user"], e["online"]] for e in conn.events if e["type"] == "presence"]
        conn.events.clear()
        while True:
            message = await conn.read()
            assert message is not None
            if message["type"] == "message" and message["message"]["text"] == text:
                break
            assert message["type"] == "presence", message
            changes.append([message["user"], message["online"]])
        seen.append(changes)
    return seen


@pytest.fixture
async def marker(server: Server) -> Any:
    conn = await Newcomer.user(server.port, "marker")
    yield conn
    await conn.close()


async def test_presence_reaches_the_watchers_only(server: Server, marker: Newcomer) -> None:
    await register(server.port, "alice", "bob")
    await wait_for(lambda: server.hub.sessions == 1)
    watcher = await Newcomer.user(server.port, "watcher")
    other = await Newcomer.user(server.port, "other")
    await watcher.call("watch", users=["alice"])
    assert await presence_until_mark(marker, watcher, other) == [[], []]

    alice = await Newcomer.user(server.port, "alice")
    bob = await Newcomer.user(server.port, "bob")
    assert await presence_until_mark(marker, watcher, other) == [[["alice", True]], []]
    await alice.call("logout")
    await bob.close()
    await wait_for(lambda: server.hub.sessions == 3)
    assert await presence_until_mark(marker, watcher, other) == [[["alice", False]], []]
    # Nobody got their own presence on logging in: nobody watched them.
    for conn in (alice, watcher, other):
        assert [e for e in conn.events if e["type"] == "presence"] == []
    for conn in (alice, watcher, other):
        await conn.close()


async def test_the_reply_gives_the_state_now_and_reports_unknown_names(
    server: Server, marker: Newcomer
) -> None:
    await register(server.port, "Zoë", "Bob")
    bob = await Newcomer.user(server.port, "bob")
    me = await Newcomer.user(server.port, "me")
    data = await me.call("watch", users=["BOB", "nobody", "ＺＯË", "bob", " zoë", "me", "Nobody"])
    # Each user once, in the order asked, by the registered name; unknown names as sent.
    assert data == {
        "users": [
            {"name": "Bob", "online": True},
            {"name": "Zoë", "online": False},
            {"name": "me", "online": True},
        ],
        "unknown": ["nobody", " zoë"],
    }
    assert await me.call("watch", users=["Bob"]) == {"users": [{"name": "Bob", "online": True}]}
    assert await me.call("watch", users=[]) == {"users": []}
    await bob.close()
    await me.close()


async def test_a_new_watch_replaces_the_old_and_an_empty_one_stops_all(
    server: Server, marker: Newcomer
) -> None:
    await register(server.port, "alice", "bob")
    me = await Newcomer.user(server.port, "me")
    await wait_for(lambda: server.hub.sessions == 2)
    await me.call("watch", users=["alice", "bob"])
    await me.call("watch", users=["bob"])
    alice = await Newcomer.user(server.port, "alice")
    bob = await Newcomer.user(server.port, "bob")
    assert await presence_until_mark(marker, me) == [[["bob", True]]]
    await me.call("watch", users=[])
    await alice.close()
    await bob.close()
    await wait_for(lambda: server.hub.sessions == 2)
    assert await presence_until_mark(marker, me) == [[]]
    assert server.hub.watchers == 0
    await me.close()


async def test_a_watch_ends_with_logout_and_with_the_connection(
    server: Server, marker: Newcomer
) -> None:
    await register(server.port, "alice")
    me = await Newcomer.user(server.port, "me")
    await me.call("watch", users=["alice"])
    assert server.hub.watchers == 1
    await me.call("logout")
    assert server.hub.watchers == 0
    # Logged in again on the same connection: a new session, watching nobody.
    await me.call("login", username="me", password=PASSWORD)
    alice = await Newcomer.user(server.port, "alice")
    assert await presence_until_mark(marker, me) == [[]]

    await me.call("watch", users=["alice"])
    assert server.hub.watchers == 1
    await me.close()
    await wait_for(lambda: server.hub.watchers == 0)
    await alice.close()


async def test_a_watch_belongs_to_its_connection(server: Server, marker: Newcomer) -> None:
    await register(server.port, "alice")
    await wait_for(lambda: server.hub.sessions == 1)
    laptop = await Newcomer.user(server.port, "me")
    phone = await Newcomer.user(server.port, "me")
    await laptop.call("watch", users=["alice"])
    alice = await Newcomer.user(server.port, "alice")
    assert await presence_until_mark(marker, laptop, phone) == [[["alice", True]], []]
    await alice.close()
    await laptop.close()
    await phone.close()


async def test_too_many_names_and_wrong_types_are_refused(server: Server) -> None:
    me = await Newcomer.user(server.port, "me")
    names = [f"user{n}" for n in range(schema.MAX_WATCH)]
    data = await me.call("watch", users=names)
    assert data == {"users": [], "unknown": names}
    too_many = await me.request("watch", users=[*names, "one more"])
    assert too_many["code"] == "bad_request"
    assert "1000" in too_many["message"]
    assert "users" in too_many["message"]
    for bad in ({}, {"users": "alice"}, {"users": ["alice", 7]}, {"users": [["alice"]]}):
        reply = await me.request("watch", **bad)
        assert reply["code"] == "bad_request", (bad, reply)
        assert "users" in reply["message"]
    # The refused watches changed nothing, and the connection works.
    assert server.hub.watchers == 0
    assert await me.call("ping") == {}
    anonymous = await Newcomer.open(server.port)
    assert (await anonymous.request("watch", users=["me"]))["code"] == "not_authenticated"
    await anonymous.close()
    await me.close()


async def test_the_client_library_watches_again_after_a_reconnect(server: Server) -> None:
    await register(server.port, "bob")
    alice = Client("127.0.0.1", server.port, min_backoff=0.05, max_backoff=0.2)
    await alice.connect()
    await alice.register("alice", PASSWORD)
    events: list[Any] = []

    async def drain() -> None:
        async for event in alice.events():
            events.append(event)

    drainer = asyncio.create_task(drain())
    try:
        result = await alice.watch(["bob", "nobody"])
        assert result == schema.WatchResult(
            users=[schema.UserEntry(name="bob", online=False)], unknown=["nobody"]
        )
        # The reply's states are on the event stream too.
        await wait_for(lambda: PresenceChanged("bob", False) in events)
        bob = await Newcomer.user(server.port, "bob")
        await wait_for(lambda: events[-1] == PresenceChanged("bob", True))

        # A refused watch changes nothing, on the server or in what the library re-sends.
        with pytest.raises(ProtocolError) as refused:
            await alice.watch(["bob"] * (schema.MAX_WATCH + 1))
        assert refused.value.code == "bad_request"

        # Drop alice's connection from the server's side; bob leaves while she is away.
        (conn,) = [
            c for c in server.tcp.connections if c.session.user and c.session.user.name == "alice"
        ]
        assert conn._transport is not None
        conn._transport.abort()
        await wait_for(
            lambda: any(
                isinstance(e, StateChanged) and e.state is ConnectionState.RECONNECTING
                for e in events
            )
        )
        await bob.close()
        await wait_for(lambda: alice.state is ConnectionState.CONNECTED)
        # Whether bob left before or after she was back, she learns it (from the new
        # watch's reply, or from an event of it) …
        await wait_for(
            lambda: (
                [e for e in events if isinstance(e, PresenceChanged)][-1]
                == PresenceChanged("bob", False)
            )
        )
        # … and the new connection watches him: his next login reaches her.
        bob = await Newcomer.user(server.port, "bob")
        await wait_for(lambda: events[-1] == PresenceChanged("bob", True))
        await bob.close()
        await wait_for(lambda: events[-1] == PresenceChanged("bob", False))

        # After logout the set is forgotten, by the server and the library.
        await alice.logout()
        await wait_for(lambda: server.hub.watchers == 0)
    finally:
        drainer.cancel()
        await alice.close()
