"""End-to-end: two users chat through a real server over loopback."""

from __future__ import annotations

from beseda.client import MessageReceived
from beseda.server.app import Server


async def next_message(client) -> MessageReceived:  # type: ignore[no-untyped-def]
    while True:
        event = await client.next_event(timeout=5)
        if isinstance(event, MessageReceived):
            return event


async def test_general_and_direct_messages(server: Server, connect) -> None:  # type: ignore[no-untyped-def]
    alice = await connect("alice")
    bob = await connect("bob")
    sent = await alice.send("hello: world")
    received = await next_message(bob)
    assert received.message == sent
    dm = await bob.dm("ALICE", "привет 👋")
    got = await next_message(alice)
    while got.message.conversation == "general":
        got = await next_message(alice)
    assert got.message == dm
    assert dm.to == "alice"
    page = await alice.history(peer="bob")
    assert [m.text for m in page.messages] == ["привет 👋"]
