"""Private messages (issue 2, item 5): delivered at once to every connection of both parties
and to nobody else, refused for unknown users, kept for offline recipients, unreadable by
anyone else."""

from __future__ import annotations

from typing import Any

from newcomer import PASSWORD, Newcomer, messages_of

from beseda.client import MessageReceived
from beseda.server.app import Server


async def fence(port: int, *readers: Newcomer) -> None:
    """Make sure every event sent to ``readers`` before now has been read.

    A general message reaches every connection after whatever was queued for it earlier, so
    once each reader has it, anything else meant for them is already in their ``events``.
    """
    sender = await Newcomer.user(port, "fence")
    text = f"fence {id(readers)}"
    await sender.call("send", client_id=f"fence-{id(readers)}", text=text)

    def is_fence(message: dict[str, Any]) -> bool:
        return message["type"] == "message" and message["message"]["text"] == text

    for reader in readers:
        if any(is_fence(e) for e in reader.events):
            reader.events = [e for e in reader.events if not is_fence(e)]
            continue
        while not is_fence(message := await reader.read() or {"type": "closed"}):
            assert message["type"] != "closed"
            reader.events.append(message)
    await sender.close()


async def test_dm_reaches_every_connection_of_both_parties_and_nobody_else(
    server: Server,
) -> None:
    alice_laptop = await Newcomer.user(server.port, "alice")
    alice_phone = await Newcomer.open(server.port)
    await alice_phone.call("login", username="alice", password=PASSWORD)
    bob_laptop = await Newcomer.user(server.port, "bob")
    bob_phone = await Newcomer.open(server.port)
    await bob_phone.call("login", username="bob", password=PASSWORD)
    carol = await Newcomer.user(server.port, "carol")

    ack = await alice_laptop.call("dm", to="Bob", client_id="dm-1", text="secret: 🙊")
    stored = ack["message"]
    assert stored["sender"] == "alice"
    assert stored["to"] == "bob"
    assert stored["conversation"].startswith("dm:")
    assert stored["seq"] == 1
    for conn in (alice_phone, bob_laptop, bob_phone):
        assert (await conn.event("message"))["message"] == stored

    reply = await bob_phone.call("dm", to="alice", client_id="dm-2", text="got it")
    for conn in (alice_laptop, alice_phone, bob_laptop):
        event = await conn.event("message")
        assert event["message"] == reply["message"]
        assert event["message"]["seq"] == 2

    everyone = (alice_laptop, alice_phone, bob_laptop, bob_phone, carol)
    await fence(server.port, *everyone)
    assert [m for m in messages_of(carol.events) if m["conversation"] != "general"] == []
    # Each party's connection got each message once (the sender's gets the ack instead).
    assert [m["text"] for m in messages_of(alice_laptop.events)] == []
    for conn in (alice_phone, bob_laptop, bob_phone):
        assert [m for m in messages_of(conn.events) if m["conversation"] != "general"] == []
    for conn in everyone:
        await conn.close()


async def test_dm_to_an_unknown_user_is_refused_and_nothing_is_stored(server: Server) -> None:
    alice = await Newcomer.user(server.port, "alice")
    for to in ("nobody", "", "al ice"):
        reply = await alice.request("dm", to=to, client_id=f"to-{to}", text="hello?")
        assert reply["type"] == "error"
        assert reply["code"] == "unknown_user", to
    conversations = await alice.call("conversations")
    assert [c["conversation"] for c in conversations["conversations"]] == ["general"]
    assert (await alice.call("sync", cursors={}))["messages"] == []
    # The client id was not used up: it stores a real message once the name exists.
    await (await Newcomer.user(server.port, "nobody")).close()
    ack = await alice.call("dm", to="nobody", client_id="to-nobody", text="hello?")
    assert ack["message"]["seq"] == 1
    assert ack.get("duplicate", False) is False
    await alice.close()


async def test_an_offline_recipient_gets_dms_on_next_sync(server: Server, connect) -> None:  # type: ignore[no-untyped-def]
    bob = await Newcomer.user(server.port, "bob")
    await bob.close()
    alice = await connect("alice")
    sent = [await alice.dm("bob", f"while you were away {n}") for n in range(3)]

    # A newcomer asks for everything after nothing …
    raw = await Newcomer.open(server.port)
    await raw.call("login", username="bob", password=PASSWORD)
    synced = await raw.call("sync", cursors={})
    assert [m["text"] for m in synced["messages"]] == [m.text for m in sent]
    assert synced["more"] is False
    # … and after the last one it saw, nothing more.
    conversation = sent[0].conversation
    later = await raw.call("sync", cursors={conversation: 3, "general": 0})
    assert later["messages"] == []
    await raw.close()

    # The client library syncs by itself on login and delivers each message once.
    bob_client = await connect("bob")
    received = []
    while len(received) < 3:
        event = await bob_client.next_event(timeout=10)
        if isinstance(event, MessageReceived):
            received.append(event.message)
    assert received == sent
    assert await bob_client.sync() == []


async def test_a_third_user_can_never_read_a_dm(server: Server) -> None:
    alice = await Newcomer.user(server.port, "alice")
    bob = await Newcomer.user(server.port, "bob")
    carol = await Newcomer.user(server.port, "carol")
    ack = await alice.call("dm", to="bob", client_id="s1", text="for bob only")
    conversation = ack["message"]["conversation"]
    _, low, high = conversation.split(":")

    for name in (conversation, f"dm:{high}:{low}", f"dm:{low}:{high}:", "dm:0:0", "dm:x:y"):
        reply = await carol.request("history", conversation=name)
        assert reply["type"] == "error", name
        assert reply["code"] == "unknown_conversation", name
    # The same answer for a conversation that does not exist at all.
    missing = await carol.request("history", conversation="dm:1000:1001")
    assert missing["code"] == "unknown_conversation"
    # Her own conversation with either party is hers, and empty.
    for peer in ("alice", "bob"):
        page = await carol.call("history", peer=peer)
        assert page["messages"] == []
        assert page["conversation"] != conversation
    general = await carol.call("history", conversation="general")
    assert general["messages"] == []
    # Naming the conversation in sync cursors does not open it either.
    synced = await carol.call("sync", cursors={conversation: 0})
    assert synced["messages"] == []
    conversations = await carol.call("conversations")
    assert conversation not in [c["conversation"] for c in conversations["conversations"]]

    await fence(server.port, bob, carol)
    assert messages_of(carol.events) == []
    assert [m["text"] for m in messages_of(bob.events)] == ["for bob only"]
    # Both parties can read it, by conversation id or by peer.
    for conn, peer in ((alice, "bob"), (bob, "alice")):
        by_id = await conn.call("history", conversation=conversation)
        by_peer = await conn.call("history", peer=peer)
        assert by_id == by_peer
        assert [m["text"] for m in by_id["messages"]] == ["for bob only"]
    for conn in (alice, bob, carol):
        await conn.close()
