"""Conversations (protocol 3) through the chat core: roles, delivery, read state, typing,
limits and the index kept right when a write fails.

Like ``test_chat_core.py``, every test runs on :class:`MemoryStorage` and on a real SQLite
file: the same test passing on both is what keeps the twin honest.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from beseda.protocol import errors, schema
from beseda.protocol.schema import GENERAL
from beseda.server.chat import Session
from beseda.storage import StorageError

from . import test_chat_core as core
from .test_chat_core import PASSWORD, World, received

# The fixtures of the core tests: a World on each store.
store = core.store
make_world = core.make_world
world = core.world

_client_ids = itertools.count(1)


async def user(world: World, name: str, *, protocol: int = 3) -> Session:
    """A new connection logged in as ``name`` (registered on first use), speaking ``protocol``."""
    session = world.connect()
    if await world.store.storage.user_by_key(name.casefold()) is None:
        await world.call(
            session, schema.Register, username=name, password=PASSWORD, protocol=protocol
        )
    else:
        await world.call(session, schema.Login, username=name, password=PASSWORD, protocol=protocol)
    return session


async def users(world: World, *names: str) -> list[Session]:
    return [await user(world, name) for name in names]


async def channel(
    world: World, owner: Session, name: str, *members: str, public: bool = True, topic: str = ""
) -> str:
    result = await world.call(
        owner,
        schema.CreateChannel,
        name=name,
        public=public,
        topic=topic,
        members=list(members),
    )
    conversation: str = result.conversation.conversation
    return conversation


async def group(world: World, creator: Session, *members: str) -> str:
    result = await world.call(creator, schema.CreateGroup, members=list(members))
    conversation: str = result.conversation.conversation
    return conversation


async def post(world: World, session: Session, conversation: str, text: str) -> schema.Entry:
    result = await world.call(
        session,
        schema.Post,
        conversation=conversation,
        client_id=f"p{next(_client_ids)}",
        text=text,
    )
    entry: schema.Entry = result.entry
    return entry


def entries(session: Session) -> list[schema.Entry]:
    """The entries delivered to ``session`` since last asked."""
    return [m.entry for m in received(session) if isinstance(m, schema.EntryEvent)]


async def info(world: World, session: Session, conversation: str) -> schema.ConversationInfo:
    result = await world.call(session, schema.ConversationRequest, conversation=conversation)
    found: schema.ConversationInfo = result.conversation
    return found


async def listed(world: World, session: Session) -> dict[str, schema.ConversationInfo]:
    page = await world.call(session, schema.Conversations)
    return {c.conversation: c for c in page.conversations}


async def history(world: World, session: Session, conversation: str) -> list[schema.Entry]:
    result = await world.call(session, schema.History, conversation=conversation)
    found: list[schema.Entry] = result.entries
    return found


async def code_of(world: World, session: Session, kind: Any, **fields: Any) -> str:
    return (await world.fails(session, kind, **fields)).code


# -- roles ------------------------------------------------------------------------------------


async def test_a_plain_member_may_not_manage_a_channel(world: World) -> None:
    alice, bob, _carol = await users(world, "alice", "bob", "carol")
    team = await channel(world, alice, "team", "bob", "carol")
    attempts: list[tuple[Any, dict[str, Any]]] = [
        (schema.Rename, {"name": "crew"}),
        (schema.SetTopic, {"topic": "ours"}),
        (schema.Invite, {"users": ["dave"]}),
        (schema.Remove, {"user": "carol"}),
        (schema.SetRole, {"user": "carol", "role": "admin"}),
        (schema.Archive, {}),
    ]
    await user(world, "dave")
    for kind, fields in attempts:
        assert await code_of(world, bob, kind, conversation=team, **fields) == errors.NOT_ALLOWED
    assert (await info(world, bob, team)).name == "team"


async def test_an_admin_manages_the_channel(world: World) -> None:
    alice, bob, carol, dave = await users(world, "alice", "bob", "carol", "dave")
    team = await channel(world, alice, "team", "bob", "carol")
    await world.call(alice, schema.SetRole, conversation=team, user="bob", role="admin")
    await world.call(bob, schema.Rename, conversation=team, name="crew")
    await world.call(bob, schema.SetTopic, conversation=team, topic="the crew")
    await world.call(bob, schema.Invite, conversation=team, users=["dave"])
    await world.call(bob, schema.Remove, conversation=team, user="carol")
    seen = await info(world, dave, team)
    assert (seen.name, seen.topic, seen.members) == ("crew", "the crew", 3)
    assert await code_of(
        world, carol, schema.Post, conversation=team, client_id="x", text="hi"
    ) == (errors.NOT_A_MEMBER)
    await world.call(bob, schema.Archive, conversation=team)
    assert (await info(world, alice, team)).archived


async def test_only_an_owner_makes_or_unmakes_owners(world: World) -> None:
    alice, bob, _carol = await users(world, "alice", "bob", "carol")
    team = await channel(world, alice, "team", "bob", "carol")
    await world.call(alice, schema.SetRole, conversation=team, user="bob", role="admin")
    refused = [
        {"user": "carol", "role": "owner"},
        {"user": "alice", "role": "member"},
        {"user": "alice", "role": "admin"},
    ]
    for fields in refused:
        code = await code_of(world, bob, schema.SetRole, conversation=team, **fields)
        assert code == errors.NOT_ALLOWED
    assert await code_of(world, bob, schema.Remove, conversation=team, user="alice") == (
        errors.NOT_ALLOWED
    )
    await world.call(bob, schema.SetRole, conversation=team, user="carol", role="admin")
    await world.call(alice, schema.SetRole, conversation=team, user="bob", role="owner")
    assert (await info(world, bob, team)).role == "owner"
    assert await code_of(
        world, alice, schema.SetRole, conversation=team, user="bob", role="boss"
    ) == (errors.BAD_REQUEST)


async def test_the_only_owner_cannot_leave_while_others_remain(world: World) -> None:
    alice, bob = await users(world, "alice", "bob")
    team = await channel(world, alice, "team", "bob")
    assert await code_of(world, alice, schema.Leave, conversation=team) == errors.NOT_ALLOWED
    assert await code_of(
        world, alice, schema.SetRole, conversation=team, user="alice", role="member"
    ) == (errors.NOT_ALLOWED)
    await world.call(alice, schema.SetRole, conversation=team, user="bob", role="owner")
    await world.call(alice, schema.Leave, conversation=team)
    assert not (await info(world, alice, team)).member
    await world.call(bob, schema.Leave, conversation=team)  # the last one may go


async def test_nobody_leaves_general_or_a_direct_conversation(world: World) -> None:
    alice, bob = await users(world, "alice", "bob")
    assert alice.user is not None
    assert bob.user is not None
    direct = f"dm:{alice.user.id}:{bob.user.id}"
    await post(world, alice, direct, "hello")
    assert await code_of(world, alice, schema.Leave, conversation=GENERAL) == errors.NOT_ALLOWED
    assert await code_of(world, bob, schema.Leave, conversation=direct) == errors.NOT_ALLOWED
    await post(world, bob, direct, "still here")


async def test_a_group_has_no_managers_but_any_member_adds_people(world: World) -> None:
    alice, bob, _carol, dave = await users(world, "alice", "bob", "carol", "dave")
    talk = await group(world, alice, "bob", "carol")
    assert await code_of(world, bob, schema.Rename, conversation=talk, name="x") == (
        errors.NOT_ALLOWED
    )
    await world.call(bob, schema.Invite, conversation=talk, users=["dave"])
    assert (await info(world, dave, talk)).members == 4


# -- who receives what ------------------------------------------------------------------------


async def test_channel_entries_reach_its_members_and_no_one_else(world: World) -> None:
    alice, bob, carol = await users(world, "alice", "bob", "carol")
    team = await channel(world, alice, "team", "bob", public=False)
    for session in (alice, bob, carol):
        received(session)
    sent = await post(world, alice, team, "members only")
    assert [e.text for e in entries(bob)] == ["members only"]
    assert entries(carol) == []
    assert entries(alice) == []  # the sender has the acknowledgement instead
    assert sent.conversation == team
    private = await world.fails(carol, schema.History, conversation=team)
    made_up = await world.fails(carol, schema.History, conversation="c:999")
    assert private.code == made_up.code == errors.UNKNOWN_CONVERSATION


async def test_the_members_get_the_created_entry(world: World) -> None:
    alice, bob, carol = await users(world, "alice", "bob", "carol")
    team = await channel(world, alice, "team", "bob", topic="hello")
    created = entries(bob)
    assert [(e.conversation, e.seq, e.kind, e.name, e.topic) for e in created] == [
        (team, 1, "created", "team", "hello")
    ]
    assert entries(carol) == []


async def test_a_removed_member_gets_the_removal_and_nothing_after(world: World) -> None:
    alice, bob, carol = await users(world, "alice", "bob", "carol")
    team = await channel(world, alice, "team", "bob", "carol", public=False)
    await post(world, alice, team, "before")
    received(bob)
    received(carol)
    removal = await world.call(alice, schema.Remove, conversation=team, user="bob")
    got = entries(bob)
    assert [(e.kind, e.target) for e in got] == [("removed", "bob")]
    assert got[0].seq == removal.seq
    await post(world, alice, team, "after")
    await world.call(alice, schema.SetTopic, conversation=team, topic="secret plans")
    await world.call(alice, schema.Typing, conversation=team)
    assert received(bob) == []
    assert [e.kind for e in entries(carol)] == ["removed", "message", "topic"]
    seen = [e.seq for e in await history(world, bob, team)]
    assert seen[-1] == removal.seq
    synced = (await world.call(bob, schema.Sync, cursors={team: 0})).entries
    assert [e.seq for e in synced if e.conversation == team] == seen
    assert await code_of(world, bob, schema.Post, conversation=team, client_id="z", text="hi") == (
        errors.NOT_A_MEMBER
    )
    bob_view = await info(world, bob, team)
    assert not bob_view.member
    assert bob_view.role is None


async def test_a_member_who_leaves_gets_the_leaving_entry_and_nothing_after(
    world: World,
) -> None:
    alice, bob = await users(world, "alice", "bob")
    team = await channel(world, alice, "team", "bob")
    other = await user(world, "bob")  # bob's second connection
    received(other)
    await world.call(bob, schema.Leave, conversation=team)
    assert [e.kind for e in entries(other)] == ["left"]
    assert [e.kind for e in entries(alice)] == ["left"]
    await post(world, alice, team, "after")
    assert entries(other) == []


async def test_version_2_sessions_get_no_channel_entries(world: World) -> None:
    alice = await user(world, "alice")
    await user(world, "bob")
    old = await user(world, "bob", protocol=2)  # bob again, on an old client
    team = await channel(world, alice, "team", "bob")
    await user(world, "carol")
    talk = await group(world, alice, "bob", "carol")
    await post(world, alice, team, "in a channel")
    await post(world, alice, talk, "in a group")
    await world.send(alice, "in general")
    got = received(old)
    assert [type(m) for m in got] == [schema.MessageEvent]
    assert [m.message.text for m in got if isinstance(m, schema.MessageEvent)] == ["in general"]
    for conversation in (team, talk):
        assert await code_of(world, old, schema.History, conversation=conversation) == (
            errors.UNKNOWN_CONVERSATION
        )
    synced = (await world.call(old, schema.Sync, cursors={})).messages
    assert {m.conversation for m in synced} == {GENERAL}
    listed_v2 = (await world.call(old, schema.Conversations)).conversations
    assert [c.conversation for c in listed_v2] == [GENERAL]


async def test_a_channel_joiner_reads_its_whole_history(world: World) -> None:
    alice, bob = await users(world, "alice", "bob")
    team = await channel(world, alice, "team")
    await post(world, alice, team, "early")
    assert await code_of(world, bob, schema.History, conversation=team) == errors.NOT_A_MEMBER
    assert await code_of(world, bob, schema.Post, conversation=team, client_id="a", text="a") == (
        errors.NOT_A_MEMBER
    )
    await world.call(bob, schema.Join, conversation=team)
    seen = await history(world, bob, team)
    assert [(e.seq, e.kind) for e in seen] == [(1, "created"), (2, "message"), (3, "joined")]
    await world.call(bob, schema.Join, conversation=team)  # again: nothing new
    assert [e.seq for e in await history(world, bob, team)] == [1, 2, 3]


async def test_a_group_member_reads_from_the_entry_that_added_them(world: World) -> None:
    alice, _bob, _carol, dave = await users(world, "alice", "bob", "carol", "dave")
    talk = await group(world, alice, "bob", "carol")
    await post(world, alice, talk, "before dave")
    added = (await world.call(alice, schema.Invite, conversation=talk, users=["dave"])).entries
    await post(world, alice, talk, "with dave")
    seen = await history(world, dave, talk)
    assert [(e.kind, e.text) for e in seen] == [("added", ""), ("message", "with dave")]
    assert seen[0].seq == added[0].seq
    mine = (await listed(world, dave))[talk]
    assert mine.unread == 1  # "before dave" is not his to read, so not unread either


async def test_a_private_channel_cannot_be_joined_or_seen(world: World) -> None:
    alice, bob = await users(world, "alice", "bob")
    secret = await channel(world, alice, "secret", public=False)
    await channel(world, alice, "open")
    hidden = await world.fails(bob, schema.Join, conversation=secret)
    absent = await world.fails(bob, schema.Join, conversation="c:404")
    assert hidden.code == absent.code == errors.UNKNOWN_CONVERSATION
    directory = (await world.call(bob, schema.Channels)).channels
    assert [c.name for c in directory] == ["General", "open"]


async def test_an_archived_channel_stays_readable_but_takes_no_posts_or_joins(
    world: World,
) -> None:
    alice, bob, carol = await users(world, "alice", "bob", "carol")
    team = await channel(world, alice, "team", "bob")
    await post(world, bob, team, "last words")
    await world.call(alice, schema.Archive, conversation=team)
    assert await code_of(world, bob, schema.Post, conversation=team, client_id="b", text="b") == (
        errors.ARCHIVED
    )
    assert await code_of(world, carol, schema.Join, conversation=team) == errors.ARCHIVED
    assert await code_of(world, alice, schema.Invite, conversation=team, users=["carol"]) == (
        errors.ARCHIVED
    )
    assert await code_of(world, bob, schema.Typing, conversation=team) == errors.ARCHIVED
    assert await code_of(world, alice, schema.Archive, conversation=team) == errors.ARCHIVED
    assert [e.kind for e in await history(world, bob, team)][-1] == "archived"


async def test_a_channel_name_that_looks_like_one_that_exists_is_taken(world: World) -> None:
    (alice,) = await users(world, "alice")
    marketing = await channel(world, alice, "marketing")
    await channel(world, alice, "ops")
    # "rn" looks like "m" (UTS #39 skeletons, of the case-folded name).
    for name in ("rnarketing", "RNARKETING"):
        code = await code_of(world, alice, schema.CreateChannel, name=name)
        assert code == errors.NAME_TAKEN, name
    ops_id = next(c for c in world.chat.index.conversations.values() if c.name == "ops").id
    assert await code_of(world, alice, schema.Rename, conversation=ops_id, name="rnarketing") == (
        errors.NAME_TAKEN
    )
    # A channel may take a look-alike of its own name, and frees the old one.
    await world.call(alice, schema.Rename, conversation=marketing, name="rnarketing")
    assert await code_of(world, alice, schema.CreateChannel, name="marketing") == (
        errors.NAME_TAKEN  # still looks like rnarketing
    )
    await world.call(alice, schema.Rename, conversation=marketing, name="sales")
    await channel(world, alice, "marketing")
    # Digits of another script are refused in a channel name as in a username.
    assert await code_of(world, alice, schema.CreateChannel, name="ops०") == errors.INVALID_NAME


async def test_a_channel_name_is_unique_and_general_is_taken(world: World) -> None:
    (alice,) = await users(world, "alice")
    team = await channel(world, alice, "team")
    crew = await channel(world, alice, "crew")
    for name in ("Team", "TEAM", "general", "General"):
        code = await code_of(world, alice, schema.CreateChannel, name=name)
        assert code == errors.NAME_TAKEN
    assert await code_of(world, alice, schema.Rename, conversation=crew, name="team") == (
        errors.NAME_TAKEN
    )
    assert await code_of(world, alice, schema.Rename, conversation=crew, name="general") == (
        errors.NAME_TAKEN
    )
    await world.call(alice, schema.Rename, conversation=team, name="squad")
    await channel(world, alice, "team")  # the old name is free again


# -- unread, mentions and read markers -------------------------------------------------------


async def test_unread_and_mentions_count_the_others_messages_after_the_read_marker(
    world: World,
) -> None:
    alice, bob = await users(world, "alice", "bob")
    team = await channel(world, alice, "team", "bob")
    await post(world, alice, team, "one")
    second = await post(world, alice, team, "two, @bob")
    await post(world, bob, team, "mine is not unread")
    last = await post(world, alice, team, "three")
    seen = (await listed(world, bob))[team]
    assert (seen.unread, seen.mentions, seen.read_seq) == (3, 1, 0)
    assert seen.last_seq == last.seq
    moved = await world.call(bob, schema.Read, conversation=team, seq=second.seq)
    assert moved.seq == second.seq
    seen = (await listed(world, bob))[team]
    assert (seen.unread, seen.mentions, seen.read_seq) == (1, 0, second.seq)


async def test_the_read_marker_never_moves_back_nor_past_the_last_entry(world: World) -> None:
    alice, bob = await users(world, "alice", "bob")
    team = await channel(world, alice, "team", "bob")
    first = await post(world, alice, team, "one")
    last = await post(world, alice, team, "two")
    assert (await world.call(bob, schema.Read, conversation=team, seq=10**9)).seq == last.seq
    assert (await world.call(bob, schema.Read, conversation=team, seq=first.seq)).seq == last.seq
    seen = await info(world, bob, team)
    assert (seen.read_seq, seen.unread) == (last.seq, 0)
    later = await post(world, alice, team, "three")
    assert (await info(world, bob, team)).unread == 1
    assert (await world.call(bob, schema.Read, conversation=team, seq=later.seq)).seq == later.seq


async def test_a_read_marker_moved_on_one_connection_reaches_the_others(world: World) -> None:
    alice, bob = await users(world, "alice", "bob")
    phone = await user(world, "bob")
    team = await channel(world, alice, "team", "bob")
    entry = await post(world, alice, team, "hi")
    received(phone)
    await world.call(bob, schema.Read, conversation=team, seq=entry.seq)
    got = [m for m in received(phone) if isinstance(m, schema.ReadEvent)]
    assert [(m.conversation, m.seq) for m in got] == [(team, entry.seq)]
    assert not [m for m in received(bob) if isinstance(m, schema.ReadEvent)]


async def test_a_removed_member_reads_no_further_than_the_removal(world: World) -> None:
    alice, bob, _carol = await users(world, "alice", "bob", "carol")
    team = await channel(world, alice, "team", "bob", "carol")
    removal = await world.call(alice, schema.Remove, conversation=team, user="bob")
    await post(world, alice, team, "after")
    moved = await world.call(bob, schema.Read, conversation=team, seq=10**6)
    assert moved.seq == removal.seq


async def test_mentioned_by_name_and_by_channel_counts_once(world: World) -> None:
    alice, bob = await users(world, "alice", "bob")
    team = await channel(world, alice, "team", "bob")
    entry = await post(world, alice, team, "@channel and especially @bob")
    assert entry.mentions == ["bob"]
    assert entry.mention_all
    seen = (await listed(world, bob))[team]
    assert (seen.unread, seen.mentions) == (1, 1)


async def test_only_managers_mention_a_whole_channel_and_any_member_a_group(
    world: World,
) -> None:
    alice, bob, _carol = await users(world, "alice", "bob", "carol")
    team = await channel(world, alice, "team", "bob")
    talk = await group(world, alice, "bob", "carol")
    in_team = await post(world, bob, team, "@channel look")
    in_group = await post(world, bob, talk, "@all look")
    in_general = await post(world, alice, GENERAL, "@everyone look")
    assert not in_team.mention_all
    assert in_group.mention_all
    assert not in_general.mention_all
    assert (await listed(world, alice))[team].mentions == 0
    assert (await listed(world, alice))[talk].mentions == 1


async def test_only_members_are_mentioned(world: World) -> None:
    alice, _bob, _carol = await users(world, "alice", "bob", "carol")
    team = await channel(world, alice, "team", "bob")
    entry = await post(world, alice, team, "@bob @carol @alice @nobody")
    assert entry.mentions == ["bob"]


# -- typing -----------------------------------------------------------------------------------


def typing_in(session: Session) -> list[tuple[str, str]]:
    return [
        (m.conversation, m.user) for m in received(session) if isinstance(m, schema.TypingEvent)
    ]


async def test_typing_reaches_the_other_members_once_per_interval(world: World) -> None:
    alice, bob, carol = await users(world, "alice", "bob", "carol")
    alice_too = await user(world, "alice")
    team = await channel(world, alice, "team", "bob")
    for session in (alice, alice_too, bob, carol):
        received(session)
    await world.call(alice, schema.Typing, conversation=team)
    assert typing_in(bob) == [(team, "alice")]
    assert typing_in(carol) == []
    assert typing_in(alice_too) == []
    world.now += 1.0
    await world.call(alice, schema.Typing, conversation=team)
    world.now += 1.5
    await world.call(alice, schema.Typing, conversation=team)
    assert typing_in(bob) == []
    world.now += schema.TYPING_INTERVAL
    await world.call(alice, schema.Typing, conversation=team)
    assert typing_in(bob) == [(team, "alice")]


async def test_typing_in_general_reaches_every_version_3_session(world: World) -> None:
    alice, bob = await users(world, "alice", "bob")
    old = await user(world, "carol", protocol=2)
    received(bob)
    await world.call(alice, schema.Typing, conversation=GENERAL)
    assert typing_in(bob) == [(GENERAL, "alice")]
    assert received(old) == []


async def test_a_non_member_cannot_type_in_a_conversation(world: World) -> None:
    alice, bob = await users(world, "alice", "bob")
    team = await channel(world, alice, "team")
    secret = await channel(world, alice, "secret", public=False)
    assert await code_of(world, bob, schema.Typing, conversation=team) == errors.NOT_A_MEMBER
    assert await code_of(world, bob, schema.Typing, conversation=secret) == (
        errors.UNKNOWN_CONVERSATION
    )


# -- a failed write leaves the index as it was -----------------------------------------------


@pytest.fixture
def failing(world: World, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``with failing():`` makes every ``append_entry`` of the world's store fail."""
    import contextlib

    storage = world.store.storage

    def broken(new: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_exception(StorageError("the disk is full"))
        return future

    @contextlib.contextmanager
    def fail() -> Any:
        with monkeypatch.context() as patch:
            patch.setattr(storage, "append_entry", broken)
            yield

    return fail


async def test_a_failed_leave_keeps_the_member_who_can_still_post(
    world: World, failing: Any
) -> None:
    alice, bob = await users(world, "alice", "bob")
    team = await channel(world, alice, "team", "bob")
    with failing(), pytest.raises(StorageError):
        await world.call(bob, schema.Leave, conversation=team)
    seen = await info(world, bob, team)
    assert (seen.member, seen.role, seen.members) == (True, "member", 2)
    received(bob)
    await post(world, bob, team, "still here")
    await post(world, alice, team, "welcome back")
    assert [e.text for e in entries(bob)] == ["welcome back"]
    await world.call(bob, schema.Leave, conversation=team)
    assert not (await info(world, bob, team)).member


async def test_a_failed_removal_keeps_the_member(world: World, failing: Any) -> None:
    alice, bob = await users(world, "alice", "bob")
    team = await channel(world, alice, "team", "bob", public=False)
    with failing(), pytest.raises(StorageError):
        await world.call(alice, schema.Remove, conversation=team, user="bob")
    assert (await info(world, bob, team)).member
    await post(world, bob, team, "still here")
    members = (await world.call(alice, schema.Members, conversation=team)).members
    assert [(m.name, m.role) for m in members] == [("alice", "owner"), ("bob", "member")]


async def test_a_failed_join_or_invitation_makes_no_member(world: World, failing: Any) -> None:
    alice, bob, carol = await users(world, "alice", "bob", "carol")
    team = await channel(world, alice, "team")
    secret = await channel(world, alice, "secret", public=False)
    with failing():
        with pytest.raises(StorageError):
            await world.call(bob, schema.Join, conversation=team)
        with pytest.raises(StorageError):
            await world.call(alice, schema.Invite, conversation=secret, users=["carol"])
    assert await code_of(world, bob, schema.Post, conversation=team, client_id="b", text="b") == (
        errors.NOT_A_MEMBER
    )
    assert await code_of(world, carol, schema.History, conversation=secret) == (
        errors.UNKNOWN_CONVERSATION
    )
    assert (await info(world, alice, team)).members == 1
    await world.call(bob, schema.Join, conversation=team)
    await world.call(alice, schema.Invite, conversation=secret, users=["carol"])
    assert (await info(world, carol, secret)).members == 2


async def test_a_failed_rename_topic_role_or_archive_changes_nothing(
    world: World, failing: Any
) -> None:
    alice, bob = await users(world, "alice", "bob")
    team = await channel(world, alice, "team", "bob", topic="old topic")
    with failing():
        for kind, fields in (
            (schema.Rename, {"name": "crew"}),
            (schema.SetTopic, {"topic": "new topic"}),
            (schema.SetRole, {"user": "bob", "role": "admin"}),
            (schema.Archive, {}),
        ):
            with pytest.raises(StorageError):
                await world.call(alice, kind, conversation=team, **fields)
    seen = await info(world, bob, team)
    assert (seen.name, seen.topic, seen.archived, seen.role) == (
        "team",
        "old topic",
        False,
        "member",
    )
    await post(world, bob, team, "not archived")
    assert await code_of(world, bob, schema.SetTopic, conversation=team, topic="x") == (
        errors.NOT_ALLOWED
    )
    await channel(world, alice, "crew")  # the name never taken
    assert await code_of(world, alice, schema.CreateChannel, name="team") == errors.NAME_TAKEN


# -- rate limits ------------------------------------------------------------------------------


async def test_creating_channels_and_groups_is_limited_per_hour(make_world: Any) -> None:
    world = make_world(channels_per_hour=2.0)
    alice, _bob, _carol = await users(world, "alice", "bob", "carol")
    await channel(world, alice, "one")
    await group(world, alice, "bob", "carol")
    refused = await world.fails(alice, schema.CreateChannel, name="three")
    assert refused.code == errors.RATE_LIMITED
    assert refused.retry_after is not None
    assert refused.retry_after > 0
    assert await code_of(world, alice, schema.CreateGroup, members=["bob", "carol"]) == (
        errors.RATE_LIMITED
    )
    world.now += 1800  # one more per half hour at 2 an hour
    await channel(world, alice, "three")


async def test_adding_people_is_limited_per_minute(make_world: Any) -> None:
    world = make_world(invitations_per_minute=3.0)
    alice, _bob, _carol, _dave, erin = await users(world, "alice", "bob", "carol", "dave", "erin")
    team = await channel(world, alice, "team", "bob", "carol")
    await world.call(alice, schema.Invite, conversation=team, users=["dave"])
    refused = await world.fails(alice, schema.Invite, conversation=team, users=["erin"])
    assert refused.code == errors.RATE_LIMITED
    assert refused.retry_after is not None
    assert await code_of(world, erin, schema.History, conversation=team) == errors.NOT_A_MEMBER
    world.now += 20  # one more every 20 s at 3 a minute
    await world.call(alice, schema.Invite, conversation=team, users=["erin"])
    assert (await info(world, alice, team)).members == 5


# -- limits -----------------------------------------------------------------------------------


async def test_a_group_has_three_to_thirty_two_members(world: World) -> None:
    names = [f"user{i}" for i in range(schema.MAX_GROUP_MEMBERS + 1)]
    sessions = await users(world, *names)
    creator = sessions[0]
    assert await code_of(world, creator, schema.CreateGroup, members=names[1:2]) == (
        errors.GROUP_SIZE
    )
    assert await code_of(world, creator, schema.CreateGroup, members=names[1:]) == (
        errors.GROUP_SIZE
    )
    talk = await group(world, creator, *names[1 : schema.MAX_GROUP_MEMBERS])
    assert (await info(world, creator, talk)).members == schema.MAX_GROUP_MEMBERS
    last = names[schema.MAX_GROUP_MEMBERS]
    assert await code_of(world, creator, schema.Invite, conversation=talk, users=[last]) == (
        errors.GROUP_SIZE
    )
    await world.call(sessions[1], schema.Leave, conversation=talk)
    await world.call(creator, schema.Invite, conversation=talk, users=[last])
    assert (await info(world, creator, talk)).members == schema.MAX_GROUP_MEMBERS


async def test_a_topic_has_at_most_its_limit_of_characters(world: World) -> None:
    (alice,) = await users(world, "alice")
    longest = "é" * schema.MAX_TOPIC_CHARS
    team = await channel(world, alice, "team", topic=longest)
    assert (await info(world, alice, team)).topic == longest
    too_long = longest + "x"
    assert await code_of(world, alice, schema.CreateChannel, name="other", topic=too_long) == (
        errors.TOPIC_TOO_LONG
    )
    assert await code_of(world, alice, schema.SetTopic, conversation=team, topic=too_long) == (
        errors.TOPIC_TOO_LONG
    )
    assert await code_of(world, alice, schema.SetTopic, conversation=team, topic="a\u200bb") == (
        errors.BAD_REQUEST
    )
    assert (await info(world, alice, team)).topic == longest


async def test_nobody_is_in_more_than_the_most_channels_and_groups(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schema, "MAX_MEMBERSHIPS", 2)
    alice, bob, _carol = await users(world, "alice", "bob", "carol")
    one = await channel(world, alice, "one")
    await group(world, alice, "bob", "carol")
    assert alice.user is not None
    await post(world, alice, f"dm:{alice.user.id}:{alice.user.id}", "notes do not count")
    assert await code_of(world, alice, schema.CreateChannel, name="three") == (
        errors.TOO_MANY_CONVERSATIONS
    )
    await channel(world, bob, "bobs")
    assert await code_of(world, bob, schema.Join, conversation=one) == (
        errors.TOO_MANY_CONVERSATIONS
    )
    assert await code_of(world, bob, schema.CreateChannel, name="more") == (
        errors.TOO_MANY_CONVERSATIONS
    )
    assert await code_of(world, alice, schema.Invite, conversation=one, users=["bob"]) == (
        errors.TOO_MANY_CONVERSATIONS
    )
    assert await code_of(world, alice, schema.CreateChannel, name="x", members=["bob"]) == (
        errors.TOO_MANY_CONVERSATIONS
    )
    await world.call(alice, schema.Leave, conversation=one)
    await channel(world, alice, "three")


async def test_a_failed_rejoin_leaves_a_former_member_reading_what_they_could(
    world: World, failing: Any
) -> None:
    alice, bob = await users(world, "alice", "bob")
    team = await channel(world, alice, "team", "bob")
    await world.call(bob, schema.Leave, conversation=team)
    left = [e.seq for e in await history(world, bob, team)]
    await post(world, alice, team, "while bob is away")
    with failing(), pytest.raises(StorageError):
        await world.call(bob, schema.Join, conversation=team)
    assert not (await info(world, bob, team)).member
    assert [e.seq for e in await history(world, bob, team)] == left
    assert (await info(world, alice, team)).members == 1
    await world.call(bob, schema.Join, conversation=team)
    assert [e.text for e in await history(world, bob, team)][-2] == "while bob is away"


# -- a restart: the index loaded from the store is the one the core kept ----------------------


async def test_a_restarted_core_sees_every_conversation_as_before(make_world: Any) -> None:
    world = make_world()
    alice, bob, carol, dave = await users(world, "alice", "bob", "carol", "dave")
    team = await channel(world, alice, "team", "bob", "carol", topic="first")
    talk = await group(world, alice, "bob", "carol")
    await post(world, alice, talk, "before dave")
    await world.call(carol, schema.Invite, conversation=talk, users=["dave"])
    await post(world, bob, team, "hi @alice")
    await world.call(alice, schema.SetRole, conversation=team, user="bob", role="admin")
    await world.call(bob, schema.Remove, conversation=team, user="carol")
    await world.call(alice, schema.Rename, conversation=team, name="crew")
    await world.call(alice, schema.SetTopic, conversation=team, topic="second")
    last = await post(world, bob, talk, "@all see this")
    await world.call(dave, schema.Read, conversation=talk, seq=last.seq - 1)
    assert alice.user is not None
    assert dave.user is not None
    await post(world, dave, f"dm:{alice.user.id}:{dave.user.id}", "psst")
    before = {
        name: await listed(world, session)
        for name, session in (("alice", alice), ("bob", bob), ("carol", carol), ("dave", dave))
    }
    later = make_world()  # a new core on the same store
    await later.chat.open()
    for name, seen in before.items():
        session = await user(later, name)
        assert await listed(later, session) == seen, name
        for conversation in (team, talk):
            if conversation in seen:
                assert await history(later, session, conversation) == await history(
                    world, await user(world, name), conversation
                )
