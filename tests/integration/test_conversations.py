"""Conversations (protocol 3) as the people of a team use them: channels, groups, invitations,
removals, read markers, mentions, typing and the limits, over real loopback sockets and a real
SQLite file, through raw sockets (the wire itself) and through the client library."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from newcomer import PASSWORD, Newcomer

from beseda.client import (
    Client,
    EntryReceived,
    MessageReceived,
    ReadMarker,
    TypingStarted,
)
from beseda.client.connection import ClientEvent
from beseda.protocol import errors, schema
from beseda.protocol.errors import ProtocolError
from beseda.server.app import Server

Connect = Callable[..., Any]


# -- helpers ---------------------------------------------------------------------------------


async def v3(port: int, name: str) -> Newcomer:
    """A raw connection registered (or logged in) as ``name``, speaking protocol 3."""
    conn = await Newcomer.open(port)
    reply = await conn.request("register", username=name, password=PASSWORD, protocol=3)
    if reply["type"] == "error" and reply["code"] == "name_taken":
        reply = await conn.request("login", username=name, password=PASSWORD, protocol=3)
    assert reply["type"] == "result", reply
    return conn


async def code_of(conn: Newcomer, type_: str, **fields: Any) -> str | None:
    reply = await conn.request(type_, **fields)
    return reply["code"] if reply["type"] == "error" else None


async def failure(coro: Any) -> str:
    try:
        await coro
    except ProtocolError as exc:
        return exc.code
    raise AssertionError("the request succeeded")


async def settle(client: Client) -> list[ClientEvent]:
    """Catch up (sync) and return every event the client has queued so far."""
    await client.sync()
    await client.ping()
    out = []
    while (event := client.next_event_nowait()) is not None:
        out.append(event)
    return out


def entries_of(events: list[ClientEvent], conversation: str | None = None) -> list[schema.Entry]:
    out = []
    for event in events:
        if isinstance(event, MessageReceived):
            entry = event.message
        elif isinstance(event, EntryReceived):
            entry = event.entry
        else:
            continue
        if conversation is None or entry.conversation == conversation:
            out.append(entry)
    return out


def kinds(entries: list[schema.Entry]) -> list[str]:
    return [e.kind for e in entries]


def raw_entries(events: list[dict[str, Any]], conversation: str) -> list[dict[str, Any]]:
    return [
        e["entry"]
        for e in events
        if e["type"] == "entry" and e["entry"]["conversation"] == conversation
    ]


async def flushed(conn: Newcomer) -> list[dict[str, Any]]:
    """Every event that reached ``conn`` so far (a ping's reply comes after them)."""
    await conn.call("ping")
    events, conn.events = conn.events, []
    return events


# -- who sees what ---------------------------------------------------------------------------


async def test_three_users_in_a_private_channel_a_group_and_a_public_channel_see_their_own(
    connect: Connect,
) -> None:
    ann, bob, cat = await connect("ann"), await connect("bob"), await connect("cat")
    for client in (ann, bob, cat):
        await settle(client)

    design = await ann.create_channel("design", public=False, members=["bob"])
    group = await ann.create_group(["bob", "cat"])
    news = await ann.create_channel("news", topic="What is new")
    assert (design.kind, design.public, design.role, design.members) == (
        "channel",
        False,
        "owner",
        2,
    )
    assert (group.kind, group.members) == ("group", 3)
    assert news.public
    assert news.topic == "What is new"

    await cat.join(news.conversation)
    await ann.post(design.conversation, "a secret plan for @bob")
    await bob.post(group.conversation, "hello all three")
    await cat.post(news.conversation, "news for everyone")

    ann_seen, bob_seen, cat_seen = await settle(ann), await settle(bob), await settle(cat)
    # Ann and Bob see the private channel, Cat does not.
    design_for_bob = entries_of(bob_seen, design.conversation)
    assert kinds(design_for_bob) == ["created", "message"]
    assert design_for_bob[1].mentions == ["bob"]
    assert kinds(entries_of(ann_seen, design.conversation)) == ["created", "message"]
    assert entries_of(cat_seen, design.conversation) == []
    # Everyone sees the group; Bob, who is not in news, sees nothing of it.
    for seen in (ann_seen, bob_seen, cat_seen):
        assert [e.text for e in entries_of(seen, group.conversation) if e.kind == "message"] == [
            "hello all three"
        ]
    assert entries_of(bob_seen, news.conversation) == []
    assert kinds(entries_of(cat_seen, news.conversation)) == ["created", "joined", "message"]

    assert {c.name for c in await cat.channels()} == {"General", "news"}
    assert {c.name for c in await bob.channels()} == {"General", "design", "news"}
    cat_conversations = {c.conversation for c in await cat.conversations()}
    assert design.conversation not in cat_conversations
    assert {group.conversation, news.conversation} <= cat_conversations
    assert await failure(cat.history(design.conversation)) == errors.UNKNOWN_CONVERSATION
    members = await ann.members(design.conversation)
    assert [(m.name, m.role) for m in members] == [("ann", "owner"), ("bob", "member")]

    # Ann removes Bob from the private channel: Bob gets the removal, nothing after it.
    removal = await ann.remove(design.conversation, "bob")
    assert (removal.kind, removal.target) == ("removed", "bob")
    await ann.post(design.conversation, "after bob left")
    bob_seen = await settle(bob)
    assert kinds(entries_of(bob_seen, design.conversation)) == ["removed"]
    page = await bob.history(design.conversation)
    assert kinds(page.entries) == ["created", "message", "removed"]
    assert page.messages == page.entries  # the version-2 name still works
    assert await failure(bob.post(design.conversation, "let me in")) == errors.NOT_A_MEMBER
    ann_page = await ann.history(design.conversation)
    assert [e.text for e in ann_page.entries][-1] == "after bob left"


async def test_a_user_added_while_offline_gets_the_conversation_and_its_entries_on_the_next_sync(
    server: Server, connect: Connect
) -> None:
    ann = await connect("ann")
    dan = await connect("dan")
    await dan.close()
    channel = await ann.create_channel("plans", public=False)
    await ann.post(channel.conversation, "before dan")
    await ann.invite(channel.conversation, ["dan"])
    await ann.post(channel.conversation, "after dan")

    dan = Client("127.0.0.1", server.port)
    await dan.connect()
    try:
        await dan.login("dan", "password123")
        seen = entries_of(await settle(dan), channel.conversation)
        # A channel's member reads all of it, from before they were added.
        assert kinds(seen) == ["created", "message", "added", "message"]
        assert [e.seq for e in seen] == [1, 2, 3, 4]
        assert channel.conversation in {c.conversation for c in await dan.conversations()}
        assert dan.cursors[channel.conversation] == 4
    finally:
        await dan.close()


async def test_a_removed_user_gets_the_removal_and_nothing_after_it_live_or_by_any_request(
    server: Server,
) -> None:
    ann, bob = await v3(server.port, "ann"), await v3(server.port, "bob")
    try:
        created = await ann.call("create_channel", name="ops", public=False, members=["bob"])
        conversation = created["conversation"]["conversation"]
        await ann.call("post", conversation=conversation, client_id="m1", text="one")
        removal = await ann.call("remove", conversation=conversation, user="bob")
        await ann.call("post", conversation=conversation, client_id="m2", text="secret two")
        await ann.call("set_topic", conversation=conversation, topic="bob is gone")

        live = raw_entries(await flushed(bob), conversation)
        assert [e.get("kind", "message") for e in live] == ["created", "message", "removed"][
            -len(live) :
        ]
        assert live[-1]["seq"] == removal["seq"]
        history = await bob.call("history", conversation=conversation)
        assert history["entries"][-1]["seq"] == removal["seq"]
        assert all(e.get("text") != "secret two" for e in history["entries"])
        sync = await bob.call("sync", cursors={conversation: 0})
        mine = [e for e in sync["entries"] if e["conversation"] == conversation]
        assert mine
        assert mine[-1]["seq"] == removal["seq"]
        after = await bob.call("sync", cursors={conversation: removal["seq"]})
        assert [e for e in after["entries"] if e["conversation"] == conversation] == []
        assert (
            await code_of(bob, "post", conversation=conversation, client_id="x", text="hi")
            == errors.NOT_A_MEMBER
        )
        assert await code_of(bob, "typing", conversation=conversation) == errors.NOT_A_MEMBER
        info = await bob.call("conversation", conversation=conversation)
        assert info["conversation"]["member"] is False
        assert raw_entries(await flushed(bob), conversation) == []
    finally:
        await ann.close()
        await bob.close()


async def test_a_non_member_of_a_private_channel_gets_unknown_conversation_for_every_request(
    server: Server,
) -> None:
    ann, eve = await v3(server.port, "ann"), await v3(server.port, "eve")
    try:
        created = await ann.call("create_channel", name="hidden", public=False)
        real = created["conversation"]["conversation"]
        for conversation in (real, "c:999"):
            requests: list[tuple[str, dict[str, Any]]] = [
                ("post", {"client_id": "x", "text": "hi"}),
                ("history", {}),
                ("join", {}),
                ("leave", {}),
                ("invite", {"users": ["eve"]}),
                ("remove", {"user": "ann"}),
                ("set_role", {"user": "ann", "role": "member"}),
                ("rename", {"name": "mine"}),
                ("set_topic", {"topic": "mine"}),
                ("archive", {}),
                ("conversation", {}),
                ("members", {}),
                ("read", {"seq": 1}),
                ("typing", {}),
            ]
            for type_, fields in requests:
                code = await code_of(eve, type_, conversation=conversation, **fields)
                assert code == errors.UNKNOWN_CONVERSATION, (conversation, type_, code)
        sync = await eve.call("sync", cursors={real: 0})
        assert [e for e in sync["entries"] if e["conversation"] == real] == []
        assert raw_entries(await flushed(eve), real) == []
    finally:
        await ann.close()
        await eve.close()


async def test_a_new_group_member_sees_history_from_when_added_and_a_new_channel_member_all_of_it(
    connect: Connect,
) -> None:
    ann, bob, cat, dan = [await connect(n) for n in ("ann", "bob", "cat", "dan")]
    group = await ann.create_group(["bob", "cat"])
    channel = await ann.create_channel("team", public=False)
    await ann.post(group.conversation, "before dan came")
    await ann.post(channel.conversation, "channel before dan")
    await settle(dan)
    await bob.invite(group.conversation, ["dan"])  # any member of a group may add people
    await ann.invite(channel.conversation, ["dan"])
    await ann.post(group.conversation, "welcome dan")

    seen = await settle(dan)
    in_group = entries_of(seen, group.conversation)
    assert kinds(in_group) == ["added", "message"]
    assert in_group[1].text == "welcome dan"
    assert kinds(entries_of(seen, channel.conversation)) == ["created", "message", "added"]
    page = await dan.history(group.conversation)
    assert [e.text for e in page.entries if e.kind == "message"] == ["welcome dan"]
    assert page.more is False
    assert await failure(cat.invite(channel.conversation, ["bob"])) == errors.UNKNOWN_CONVERSATION
    await ann.invite(channel.conversation, ["cat"])
    assert await failure(cat.invite(channel.conversation, ["bob"])) == errors.NOT_ALLOWED


# -- read markers, mentions, typing ----------------------------------------------------------


async def test_reading_on_one_connection_moves_the_marker_on_the_other_and_counts_survive_a_restart(
    make_server: Callable[..., Server],
) -> None:
    first = make_server()
    await first.start()
    ann_phone = Client("127.0.0.1", first.port)
    ann_laptop = Client("127.0.0.1", first.port)
    bob = Client("127.0.0.1", first.port)
    for client in (ann_phone, ann_laptop, bob):
        await client.connect()
    try:
        await ann_phone.register("ann", "password123")
        await bob.register("bob", "password123")
        await ann_laptop.login("ann", "password123")
        channel = await ann_phone.create_channel("room", members=["bob"])
        room = channel.conversation
        await bob.post(room, "one")
        second = await bob.post(room, "two for @ann")
        await bob.post(room, "three")
        await ann_phone.post(room, "my own message is never unread")

        info = await ann_laptop.conversation(room)
        assert (info.unread, info.mentions, info.read_seq) == (3, 1, 0)
        await settle(ann_laptop)
        assert await ann_phone.read(room, second.seq) == second.seq
        marker = next(
            e
            for e in await settle(ann_laptop)
            if isinstance(e, ReadMarker) and e.conversation == room
        )
        assert marker.seq == second.seq
        assert not [e for e in await settle(ann_phone) if isinstance(e, ReadMarker)]
        assert await ann_phone.read(room, 1) == second.seq  # never moves back
        info = await ann_laptop.conversation(room)
        assert (info.unread, info.mentions, info.read_seq) == (1, 0, second.seq)
    finally:
        for client in (ann_phone, ann_laptop, bob):
            await client.close()
    await first.stop()

    again = make_server()
    await again.start()
    ann = Client("127.0.0.1", again.port)
    await ann.connect()
    try:
        await ann.login("ann", "password123")
        (info,) = [c for c in await ann.conversations() if c.conversation == room]
        assert (info.unread, info.mentions, info.read_seq) == (1, 0, second.seq)
    finally:
        await ann.close()


async def test_only_owners_and_admins_of_a_channel_may_mention_everyone_with_at_channel(
    connect: Connect,
) -> None:
    ann, bob, cat = await connect("ann"), await connect("bob"), await connect("cat")
    room = (await ann.create_channel("lobby", members=["bob", "cat"])).conversation
    group = (await ann.create_group(["bob", "cat"])).conversation

    assert (await bob.post(room, "@channel look")).mention_all is False
    assert (await ann.post(room, "@channel look")).mention_all is True
    role = await ann.set_role(room, "bob", "admin")
    assert (role.kind, role.target, role.role) == ("role", "bob", "admin")
    assert (await bob.post(room, "@all look")).mention_all is True
    assert (await cat.post(group, "@channel look")).mention_all is True  # any group member
    assert (await cat.post(schema.GENERAL, "@everyone look")).mention_all is False
    info = await cat.conversation(room)
    assert info.mentions == 2  # the two messages that may mention everyone


async def test_typing_reaches_other_members_once_per_three_seconds_and_never_non_members(
    server: Server,
) -> None:
    ann, bob, eve = [await v3(server.port, n) for n in ("ann", "bob", "eve")]
    try:
        room = (await ann.call("create_channel", name="quiet", public=False, members=["bob"]))[
            "conversation"
        ]["conversation"]
        for _ in range(3):
            await ann.call("typing", conversation=room)
        typing = [e for e in await flushed(bob) if e["type"] == "typing"]
        assert typing == [{"type": "typing", "conversation": room, "user": "ann"}]
        assert [e for e in await flushed(ann) if e["type"] == "typing"] == []  # not to oneself
        assert [e for e in await flushed(eve) if e["type"] == "typing"] == []
        await asyncio.sleep(schema.TYPING_INTERVAL + 0.2)
        await ann.call("typing", conversation=room)
        assert len([e for e in await flushed(bob) if e["type"] == "typing"]) == 1
        assert [e for e in await flushed(eve) if e["type"] == "typing"] == []
    finally:
        for conn in (ann, bob, eve):
            await conn.close()


async def test_the_library_reports_typing_of_others_as_typing_started(connect: Connect) -> None:
    ann, bob = await connect("ann"), await connect("bob")
    room = (await ann.create_channel("chat", members=["bob"])).conversation
    await settle(bob)
    await ann.typing(room)
    assert TypingStarted(room, "ann") in await settle(bob)


# -- limits, with clear errors ---------------------------------------------------------------


async def test_channel_names_follow_the_name_rules_and_are_unique_after_case_folding(
    connect: Connect,
) -> None:
    ann = await connect("ann")
    design = await ann.create_channel("Design")
    assert design.name == "Design"
    assert await failure(ann.create_channel("design")) == errors.NAME_TAKEN
    assert await failure(ann.create_channel("DESIGN", public=False)) == errors.NAME_TAKEN
    assert await failure(ann.create_channel("general")) == errors.NAME_TAKEN
    for bad in ("", "a b", "x" * 200, "bad\nname"):
        assert await failure(ann.create_channel(bad)) == errors.INVALID_NAME, bad
    other = await ann.create_channel("other")
    assert await failure(ann.rename(other.conversation, "DeSiGn")) == errors.NAME_TAKEN
    renamed = await ann.rename(design.conversation, "design")  # its own name, cased anew
    assert (renamed.kind, renamed.name) == ("renamed", "design")


async def test_a_topic_over_250_characters_is_refused_with_topic_too_long(connect: Connect) -> None:
    ann = await connect("ann")
    too_long = "t" * (schema.MAX_TOPIC_CHARS + 1)
    assert await failure(ann.create_channel("topics", topic=too_long)) == errors.TOPIC_TOO_LONG
    channel = await ann.create_channel("topics", topic="t" * schema.MAX_TOPIC_CHARS)
    assert len(channel.topic) == schema.MAX_TOPIC_CHARS
    assert await failure(ann.set_topic(channel.conversation, too_long)) == errors.TOPIC_TOO_LONG
    assert (await ann.set_topic(channel.conversation, "short")).topic == "short"


async def test_a_group_of_two_or_of_thirty_three_people_is_refused_with_group_size(
    server: Server, connect: Connect
) -> None:
    ann = await connect("ann")
    others = [f"member{i}" for i in range(schema.MAX_GROUP_MEMBERS)]
    for name in others:
        conn = await Newcomer.user(server.port, name)
        await conn.close()
    assert await failure(ann.create_group(others[:1])) == errors.GROUP_SIZE
    assert await failure(ann.create_group(others)) == errors.GROUP_SIZE  # 33 with ann
    group = await ann.create_group(others[:-1])  # 32 with ann: the most
    assert group.members == schema.MAX_GROUP_MEMBERS
    assert await failure(ann.invite(group.conversation, others[-1:])) == errors.GROUP_SIZE


async def test_creating_more_channels_per_hour_than_allowed_is_rate_limited(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(channels_per_hour=2.0)
    await server.start()
    async with Client("127.0.0.1", server.port) as ann:
        await ann.register("ann", "password123")
        await ann.create_channel("one")
        await ann.create_channel("two")
        with pytest.raises(ProtocolError) as caught:
            await ann.create_channel("three")
        assert caught.value.code == errors.RATE_LIMITED
        assert caught.value.retry_after is not None
        assert caught.value.retry_after > 0


async def test_an_archived_channel_refuses_posts_and_joins_with_archived_and_stays_readable(
    connect: Connect,
) -> None:
    ann, bob, cat = await connect("ann"), await connect("bob"), await connect("cat")
    channel = await ann.create_channel("old", members=["bob"])
    await ann.post(channel.conversation, "last words")
    archived = await ann.archive(channel.conversation)
    assert archived.kind == "archived"
    assert await failure(ann.post(channel.conversation, "more")) == errors.ARCHIVED
    assert await failure(cat.join(channel.conversation)) == errors.ARCHIVED
    assert await failure(ann.archive(channel.conversation)) == errors.ARCHIVED
    page = await bob.history(channel.conversation)
    assert [e.text for e in page.entries if e.kind == "message"] == ["last words"]
    assert (await ann.conversation(channel.conversation)).archived is True


async def test_a_conversation_id_in_a_non_canonical_form_is_unknown_never_an_internal_error(
    server: Server,
) -> None:
    ann, bob = await v3(server.port, "ann"), await v3(server.port, "bob")
    try:
        await ann.call("dm", to="bob", client_id="d1", text="hi bob")
        channel = await ann.call("create_channel", name="canon", members=["bob"])
        real = channel["conversation"]["conversation"]
        number = real.split(":")[1]
        odd = [
            "dm:²:1",
            "dm:2:1",
            "dm:1:02",
            "c:0" + number,
            "c:①",
            "c:" + number + " ",
            "C:" + number,
            "c:-1",
            "c:",
            "dm:1:2:3",
            "General",
            "c:99999999999999999999999",
        ]
        for conversation in odd:
            for type_, fields in [
                ("history", {}),
                ("post", {"client_id": "x", "text": "hi"}),
                ("conversation", {}),
                ("members", {}),
                ("read", {"seq": 1}),
                ("typing", {}),
                ("join", {}),
                ("invite", {"users": ["bob"]}),
            ]:
                code = await code_of(ann, type_, conversation=conversation, **fields)
                assert code == errors.UNKNOWN_CONVERSATION, (conversation, type_, code)
        sync = await ann.call("sync", cursors={c: 0 for c in odd})
        assert {e["conversation"] for e in sync["entries"]} <= {"general", "dm:1:2", real}
    finally:
        await ann.close()
        await bob.close()


async def test_conversations_come_in_bounded_pages_linked_by_next(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(channels_per_hour=1000.0)
    await server.start()
    ann = await v3(server.port, "ann")
    try:
        for i in range(7):
            await ann.call("create_channel", name=f"room{i}")
        seen: list[str] = []
        after = None
        pages = 0
        while True:
            fields: dict[str, Any] = {"limit": 3}
            if after is not None:
                fields["after"] = after
            page = await ann.call("conversations", **fields)
            pages += 1
            assert len(page["conversations"]) <= 3
            seen.extend(c["conversation"] for c in page["conversations"])
            after = page.get("next")
            if after is None:
                break
        assert pages == 3
        assert len(seen) == len(set(seen)) == 8  # seven channels and General
        assert (
            await code_of(ann, "conversations", limit=schema.MAX_PAGE + 1)
        ) == errors.BAD_REQUEST
        assert await code_of(ann, "conversations", after="nonsense") == errors.BAD_REQUEST
    finally:
        await ann.close()
    async with Client("127.0.0.1", server.port) as client:
        await client.login("ann", PASSWORD)
        assert sorted(c.conversation for c in await client.conversations()) == sorted(seen)


async def test_a_version_2_client_sees_nothing_of_channels_and_groups(server: Server) -> None:
    ann = await v3(server.port, "ann")
    bob = await Newcomer.user(server.port, "bob")  # no protocol field: version 2
    cat = await v3(server.port, "cat")
    try:
        channel = await ann.call("create_channel", name="new", members=["bob"])
        group = await ann.call("create_group", members=["bob", "cat"])
        room = channel["conversation"]["conversation"]
        talk = group["conversation"]["conversation"]
        await ann.call("post", conversation=room, client_id="p1", text="channel talk")
        await ann.call("post", conversation=talk, client_id="p2", text="group talk")
        await ann.call("typing", conversation=talk)
        await ann.call("send", client_id="s1", text="general talk")

        events = await flushed(bob)
        assert [e["type"] for e in events] == ["message"]
        assert events[0]["message"]["text"] == "general talk"
        sync = await bob.call("sync")
        assert "entries" not in sync
        assert {m["conversation"] for m in sync["messages"]} == {"general"}
        listed = await bob.call("conversations")
        assert {c["conversation"] for c in listed["conversations"]} == {"general"}
        assert "next" not in listed
        for conversation in (room, talk):
            assert (
                await code_of(bob, "history", conversation=conversation)
                == errors.UNKNOWN_CONVERSATION
            )
        history = await bob.call("history", conversation="general")
        assert [m["text"] for m in history["messages"]] == ["general talk"]
        # Cat, in the group on version 3, got it all.
        assert [e["entry"].get("text") for e in await flushed(cat) if e["type"] == "entry"][
            -2:
        ] == ["group talk", "general talk"]
    finally:
        for conn in (ann, bob, cat):
            await conn.close()
