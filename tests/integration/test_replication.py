"""The Replica on a real SQLite store: entries in order, once, gaps read from the database.

The bus is left out: events are handed to the Replica as a shared bus would hand them
(another node's, out of order, some never), and what it delivers is recorded.
"""

from __future__ import annotations

import asyncio

from beseda.bus import BusEvent, EntryPosted, Origin, ReadMoved
from beseda.protocol.schema import Entry
from beseda.server.conversations import Index
from beseda.server.replication import Replica
from beseda.storage import ConversationState, MemberChange, NewConversation, NewEntry
from beseda.storage.sqlite import SQLiteStorage
from conftest import wait_for
from storage_helpers import general

OTHER = Origin("other-node", 1)


async def setup(
    storage: SQLiteStorage, count: int, index: Index | None = None
) -> tuple[Replica, list[BusEvent], list[Entry]]:
    """A replica that has seen nothing yet, and ``count`` entries committed in General."""
    index = index or Index()
    index.load(await storage.load_conversations(), await storage.load_members())
    delivered: list[BusEvent] = []
    replica = Replica(
        node="this-node", storage=storage, index=index, deliver=delivered.append, grace=0.02
    )
    replica.start()
    user = await storage.create_user("Ann", "ann", "x", 1)
    entries = [(await storage.append_message(general(user, f"m{k}")))[0] for k in range(count)]
    return replica, delivered, entries


def seqs(delivered: list[BusEvent]) -> list[int]:
    return [e.entry.seq for e in delivered if isinstance(e, EntryPosted)]


def posted(entry: Entry) -> EntryPosted:
    return EntryPosted(entry, None, OTHER, legacy=True)


async def test_entries_in_order_are_delivered_at_once_and_duplicates_dropped(
    storage: SQLiteStorage,
) -> None:
    replica, delivered, entries = await setup(storage, 3)
    for entry in entries + entries[:2]:
        replica.on_event(posted(entry))
    assert seqs(delivered) == [1, 2, 3]
    assert replica.duplicates == 2
    assert replica.filled == 0
    await replica.close()


async def test_entries_out_of_order_are_held_and_delivered_in_order(
    storage: SQLiteStorage,
) -> None:
    replica, delivered, entries = await setup(storage, 4)
    for k in (0, 2, 3, 1):  # two nodes' publications crossing
        replica.on_event(posted(entries[k]))
    assert seqs(delivered) == [1, 2, 3, 4]
    await asyncio.sleep(0.1)
    assert replica.filled == 0  # no database read was needed
    await replica.close()


async def test_a_lost_entry_is_read_from_the_database(storage: SQLiteStorage) -> None:
    replica, delivered, entries = await setup(storage, 5)
    for k in (0, 3, 4):  # 2 and 3 never come
        replica.on_event(posted(entries[k]))
    assert seqs(delivered) == [1]
    await wait_for(lambda: seqs(delivered) == [1, 2, 3, 4, 5])
    assert replica.filled == 2
    filled = [e for e in delivered if isinstance(e, EntryPosted)][1:3]
    assert [e.entry for e in filled] == entries[1:3]
    assert all(e.recipients is None and e.legacy for e in filled)  # General: everyone
    # A late copy from the bus changes nothing.
    replica.on_event(posted(entries[1]))
    assert seqs(delivered) == [1, 2, 3, 4, 5]
    await replica.close()


async def test_after_a_bus_outage_everything_committed_meanwhile_is_read(
    storage: SQLiteStorage,
) -> None:
    replica, delivered, entries = await setup(storage, 30)
    replica.on_event(posted(entries[0]))
    replica.resumed()  # the bus is back; nothing else ever came
    await wait_for(lambda: seqs(delivered) == list(range(1, 31)))
    assert replica.filled == 29
    await replica.close()


async def test_another_nodes_channel_and_members_reach_the_index(storage: SQLiteStorage) -> None:
    index = Index()
    replica, delivered, _ = await setup(storage, 0, index)
    ann = await storage.user_by_key("ann")
    assert ann is not None
    bob = await storage.create_user("Bob", "bob", "x", 1)
    state, created = await storage.create_conversation(
        NewConversation(
            "channel",
            ann,
            1,
            name="Ops",
            key="ops",
            public=True,
            members=(MemberChange(ann.id, "owner", join=True),),
        )
    )
    assert created is not None
    changes = (MemberChange(ann.id, "owner", join=True),)
    replica.on_event(EntryPosted(created, frozenset({ann.id}), OTHER, state=state, changes=changes))
    channel = index.conversations[state.id]
    assert channel.members == {ann.id}
    assert channel.roles == {ann.id: "owner"}
    assert index.by_key["ops"] == state.id
    # Bob's join is lost on the bus; the next entry skips ahead, and the join is read from
    # the database, with the membership it made.
    joined = await storage.append_entry(
        NewEntry(state.id, "joined", bob, 2, members=(MemberChange(bob.id, join=True),))
    )
    topic = await storage.append_entry(NewEntry(state.id, "topic", ann, 3, topic="Pager"))
    topic_state = ConversationState(
        id=state.id, kind="channel", name="Ops", key="ops", topic="Pager", public=True
    )
    replica.on_event(EntryPosted(topic, frozenset({ann.id, bob.id}), OTHER, state=topic_state))
    await wait_for(
        lambda: [e.entry.seq for e in delivered if isinstance(e, EntryPosted)] == [1, 2, 3]
    )
    assert channel.members == {ann.id, bob.id}
    assert channel.topic == "Pager"
    join_event = [e for e in delivered if isinstance(e, EntryPosted)][1]
    assert join_event.entry == joined
    assert bob.id in (join_event.recipients or ())
    # A read marker moved on another node reaches this node's index.
    replica.on_event(ReadMoved(bob.id, state.id, 3, OTHER))
    membership = index.membership(bob.id, state.id)
    assert membership is not None
    assert membership.read_seq == 3
    assert isinstance(delivered[-1], ReadMoved)
    await replica.close()
