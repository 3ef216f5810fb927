"""Conversations of protocol 3 in the desktop client: a presenter with a fake view and backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from beseda.client import EntryReceived, MessageReceived, ReadMarker, TypingStarted
from beseda.gui import events, i18n
from beseda.gui.preferences import Preferences
from beseda.gui.presenter import GENERAL_KEY, Presenter, dm_key
from beseda.protocol import schema

from .fakes import Clock, FakeBackend, FakeView, message

SERVER = "127.0.0.1:7993"
DEV = "c:7"
GROUP = "c:9"

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("english")]


@pytest.fixture
def presenter(view: FakeView, backend: FakeBackend, tmp_path: Path, clock: Clock) -> Presenter:
    prefs = Preferences(tmp_path / "config")
    return Presenter(view, backend, prefs, server=SERVER, clock=clock, wall=lambda: 1.7e9)


def info(
    conversation: str,
    kind: str,
    *,
    name: str | None = None,
    peer: str | None = None,
    topic: str = "",
    role: str | None = "member",
    last_seq: int = 0,
    read_seq: int = 0,
    unread: int = 0,
    mentions: int = 0,
    last_ts: int = 1_000_000,
) -> schema.ConversationInfo:
    return schema.ConversationInfo(
        conversation=conversation,
        kind=kind,
        name=name,
        peer=peer,
        topic=topic,
        role=role,
        last_seq=last_seq,
        read_seq=read_seq,
        unread=unread,
        mentions=mentions,
        last_ts=last_ts,
    )


def infos() -> list[schema.ConversationInfo]:
    return [
        info("general", "channel", name="General", last_seq=2, read_seq=2),
        info(
            DEV,
            "channel",
            name="dev",
            topic="Release on Friday",
            last_seq=8,
            read_seq=5,
            unread=3,
            mentions=1,
            last_ts=3_000_000,
        ),
        info("dm:1:2", "direct", peer="bob", last_seq=4, read_seq=3, unread=1, last_ts=2_000_000),
        info(GROUP, "group", last_seq=1, read_seq=1, last_ts=4_000_000),
    ]


def feed(presenter: Presenter, *items: events.Event) -> None:
    for item in items:
        presenter.handle(presenter.session, item)
    presenter.render()


def sign_in(
    presenter: Presenter, conversations: list[schema.ConversationInfo] | None = None
) -> None:
    presenter.sign_in(SERVER, "alice", "password123", remember=True, create=False)
    feed(presenter, events.SignedIn("alice", "token-1", conversations or infos(), {}))


def group_members() -> events.MembersLoaded:
    members = [
        schema.MemberEntry(name=n, role=r, online=n == "boris")
        for n, r in (("alice", "owner"), ("anna", "member"), ("boris", "member"))
    ]
    return events.MembersLoaded(GROUP, schema.MembersResult(members=members))


def row(view: FakeView, key: str):  # type: ignore[no-untyped-def]
    return next(r for r in view.conversations if r.key == key)


# -- 1. the sidebar ---------------------------------------------------------------------------


def test_sidebar_has_channels_then_direct_messages_with_groups_named_by_their_members(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter)
    assert GROUP in backend.of("members")  # a group's title is its members' names
    feed(presenter, group_members())
    assert [(r.title, r.section) for r in view.conversations] == [
        ("# dev", "channels"),
        ("General", "channels"),
        ("anna, boris", "direct"),
        ("bob", "direct"),
    ]


def test_unread_and_mention_badges_come_from_the_server_counts(
    presenter: Presenter, view: FakeView
) -> None:
    sign_in(presenter)
    assert (row(view, DEV).unread, row(view, DEV).mentions) == (3, 1)
    assert (row(view, dm_key("bob")).unread, row(view, dm_key("bob")).mentions) == (1, 0)
    assert view.title == "(4) alice — beseda"


def test_the_header_shows_a_channels_topic(presenter: Presenter, view: FakeView) -> None:
    sign_in(presenter)
    presenter.select(DEV)
    assert view.header is not None
    assert (view.header.title, view.header.subtitle, view.header.shared) == (
        "# dev",
        "Release on Friday",
        True,
    )
    presenter.select(dm_key("bob"))
    assert view.header.shared is False


# -- 2. reading clears the badge everywhere -----------------------------------------------------


def test_opening_a_conversation_at_the_bottom_sends_its_read_marker(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter)
    presenter.select(DEV)
    assert backend.last("read") == (DEV, 8)
    assert row(view, DEV).unread == 0
    assert row(view, DEV).mentions == 0


def test_a_message_that_arrives_while_scrolled_up_is_read_only_at_the_bottom(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter)
    presenter.select(DEV)
    presenter.scrolled(0.2, 0.6)  # the reader scrolls up
    reads = len(backend.of("read"))
    feed(presenter, MessageReceived(message(9, "later", conversation=DEV)))
    assert len(backend.of("read")) == reads
    assert row(view, DEV).unread == 1
    presenter.scrolled(0.5, 1.0)
    assert backend.last("read") == (DEV, 9)
    assert row(view, DEV).unread == 0


def test_a_read_marker_from_another_device_clears_the_badge(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter)
    assert row(view, DEV).mentions == 1
    feed(presenter, ReadMarker(DEV, 8))
    assert (row(view, DEV).unread, row(view, DEV).mentions) == (0, 0)
    assert view.title == "(1) alice — beseda"


# -- 3. creating, browsing, joining -------------------------------------------------------------


def test_create_a_private_channel_and_it_opens(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter)
    assert presenter.create_channel("  ", public=True) is False
    assert presenter.create_channel("#ops ", public=False, topic=" on call ") is True
    assert backend.last("create_channel") == ("ops", False, "on call")
    created = info("c:12", "channel", name="ops", topic="on call", role="owner", last_ts=0)
    feed(presenter, events.ConversationOpened(created))
    assert view.selected == "c:12"
    assert view.header is not None
    assert view.header.title == "# ops"
    assert row(view, "c:12").section == "channels"


def test_browse_public_channels_and_join_one(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter)
    presenter.browse_channels(" ra ")
    request, query = backend.last("channels")
    assert query == "ra"
    found = schema.ChannelsResult(
        channels=[
            schema.ChannelEntry(
                conversation="c:20", name="random", public=True, members=5, joined=False
            ),
        ]
    )
    feed(presenter, events.ChannelsFound(request, found))
    assert [(c.name, c.members, c.joined) for c in view.channels] == [("random", 5, False)]
    presenter.join("c:20")
    assert backend.last("join") == "c:20"
    feed(presenter, events.ConversationOpened(info("c:20", "channel", name="random")))
    assert view.selected == "c:20"
    presenter.join(DEV)  # already a member: just opens it
    assert backend.last("join") == "c:20"
    assert view.selected == DEV


def test_a_group_needs_two_other_people(presenter: Presenter, backend: FakeBackend) -> None:
    sign_in(presenter)
    assert presenter.create_group(["anna", "alice"]) is False
    assert backend.of("create_group") == []
    assert presenter.create_group(["anna", "boris", "Anna"]) is True
    assert backend.last("create_group") == ["Anna", "boris"]


def test_a_refused_action_is_told(presenter: Presenter, view: FakeView) -> None:
    sign_in(presenter)
    feed(presenter, events.ActionFailed("name_taken", "a channel has that name"))
    assert view.error == "The server refused: a channel has that name"


# -- 4. members and leaving ---------------------------------------------------------------------


def test_an_owner_sees_members_and_may_invite_and_remove(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter)
    presenter.select(GROUP)
    presenter.open_members()
    feed(presenter, group_members())
    assert view.members is not None
    assert [(m.name, m.role, m.removable) for m in view.members.rows] == [
        ("alice", "owner", False),
        ("anna", "member", True),
        ("boris", "member", True),
    ]
    assert view.members.can_invite
    assert view.members.can_leave
    presenter.invite("carol, @dima")
    assert backend.last("invite") == (GROUP, ["carol", "dima"])
    presenter.remove_member("anna")
    assert backend.last("remove") == (GROUP, "anna")


def test_a_plain_member_of_a_channel_may_not_remove_anyone(
    presenter: Presenter, view: FakeView
) -> None:
    sign_in(presenter)
    presenter.select(DEV)
    presenter.open_members()
    members = [
        schema.MemberEntry(name="boris", role="owner", online=True),
        schema.MemberEntry(name="alice", role="member", online=True),
    ]
    feed(presenter, events.MembersLoaded(DEV, schema.MembersResult(members=members)))
    assert view.members is not None
    assert not any(m.removable for m in view.members.rows)
    assert view.members.can_invite is False


def test_leaving_a_channel_takes_it_off_the_sidebar(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter)
    presenter.select(DEV)
    presenter.leave()
    assert backend.last("leave") == DEV
    feed(presenter, events.ConversationLeft(DEV))
    assert DEV not in [r.key for r in view.conversations]
    assert view.selected == GENERAL_KEY
    # The "left" entry that the client syncs afterwards does not bring it back.
    feed(presenter, EntryReceived(message(9, "", "alice", conversation=DEV, kind="left")))
    assert DEV not in [r.key for r in view.conversations]


def test_a_message_in_a_new_group_adds_it_and_asks_who_is_in_it(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter)
    feed(presenter, MessageReceived(message(1, "welcome", "anna", conversation="c:30")))
    assert backend.last("lookup") == "c:30"
    assert row(view, "c:30").unread == 1
    group = info("c:30", "group", last_seq=1, unread=1)
    feed(presenter, events.ConversationOpened(group, select=False))
    assert backend.last("members") == "c:30"
    assert row(view, "c:30").section == "direct"
    assert row(view, "c:30").unread == 1


# -- 5. typing ----------------------------------------------------------------------------------


def test_typing_is_sent_at_most_every_three_seconds(
    presenter: Presenter, backend: FakeBackend, clock: Clock
) -> None:
    sign_in(presenter)
    presenter.select(DEV)
    presenter.composer_changed()
    clock.now += 1
    presenter.composer_changed()
    assert backend.of("typing") == [DEV]
    clock.now += schema.TYPING_INTERVAL
    presenter.composer_changed()
    assert backend.of("typing") == [DEV, DEV]


def test_someone_typing_shows_for_six_seconds_then_hides(
    presenter: Presenter, view: FakeView, clock: Clock
) -> None:
    sign_in(presenter)
    presenter.select(DEV)
    feed(presenter, TypingStarted(DEV, "anna"))
    assert view.typing == "anna is typing…"
    feed(presenter, TypingStarted(DEV, "boris"))
    assert view.typing == "anna and boris are typing…"
    feed(presenter, TypingStarted(GENERAL_KEY, "carol"))  # not an id: ignored
    clock.now += schema.TYPING_EXPIRY - 1
    presenter.tick()
    assert view.typing == "anna and boris are typing…"
    feed(presenter, MessageReceived(message(9, "done", "boris", conversation=DEV)))
    assert view.typing == "anna is typing…"  # the message came: no longer typing
    clock.now += 1.5
    presenter.tick()
    assert view.typing == ""


def test_typing_in_another_conversation_is_not_shown_here(
    presenter: Presenter, view: FakeView
) -> None:
    sign_in(presenter)
    presenter.select(DEV)
    feed(presenter, TypingStarted("dm:1:2", "bob"))
    assert view.typing == ""
    presenter.select(dm_key("bob"))
    assert view.typing == "bob is typing…"


# -- 6. change entries --------------------------------------------------------------------------


def test_a_change_is_a_small_line_in_the_timeline(presenter: Presenter, view: FakeView) -> None:
    sign_in(presenter)
    presenter.select(DEV)
    added = message(9, "", "anna", conversation=DEV, kind="added", target="boris")
    feed(presenter, EntryReceived(added))
    assert view.rows[-1].event
    assert view.rows[-1].text == "anna added boris"
    assert row(view, DEV).unread == 0  # a change is not an unread message


def test_changes_read_in_russian(presenter: Presenter, view: FakeView) -> None:
    i18n.install("ru")
    sign_in(presenter)
    presenter.select(DEV)
    feed(
        presenter,
        EntryReceived(message(9, "", "Анна", conversation=DEV, kind="added", target="Борис")),
        EntryReceived(message(10, "", "Анна", conversation=DEV, kind="left")),
    )
    assert [r.text for r in view.rows if r.event] == [
        "Анна: добавлен(а) Борис",
        "Анна: выход из беседы",
    ]


def test_a_topic_change_updates_the_header(presenter: Presenter, view: FakeView) -> None:
    sign_in(presenter)
    presenter.select(DEV)
    feed(presenter, EntryReceived(message(9, "", "bob", conversation=DEV, kind="topic")))
    assert view.header is not None
    assert view.header.subtitle == ""
    topic = schema.Entry(
        id=10, conversation=DEV, seq=10, kind="topic", sender="bob", ts=1, topic="Ship it"
    )
    feed(presenter, EntryReceived(topic))
    assert view.header.subtitle == "Ship it"
    assert view.rows[-1].text == "bob set the topic: Ship it"


# -- 7. mentions ------------------------------------------------------------------------------


def test_a_message_that_mentions_me_is_highlighted_and_counted(
    presenter: Presenter, view: FakeView
) -> None:
    sign_in(presenter)
    feed(
        presenter,
        MessageReceived(message(9, "@Alice look", conversation=DEV, mentions=["alice"])),
        MessageReceived(message(10, "@channel lunch", conversation=DEV, mention_all=True)),
        MessageReceived(message(11, "plain", conversation=DEV)),
    )
    assert (row(view, DEV).unread, row(view, DEV).mentions) == (6, 3)
    presenter.select(DEV)
    shown = {r.text: r.mention for r in view.rows if not r.marker}
    assert shown["@Alice look"]
    assert shown["@channel lunch"]
    assert not shown["plain"]


def test_a_channel_message_is_posted_and_a_direct_one_is_sent(
    presenter: Presenter, backend: FakeBackend
) -> None:
    sign_in(presenter)
    presenter.select(DEV)
    assert presenter.send("hello dev")
    _local_id, conversation, text = backend.last("post")
    assert (conversation, text) == (DEV, "hello dev")
    presenter.select(dm_key("bob"))
    assert presenter.send("hi bob")
    assert backend.last("send")[1:] == ("bob", "hi bob")


def test_being_made_admin_lets_one_remove_members(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter)
    presenter.select(DEV)
    made = schema.Entry(
        id=9,
        conversation=DEV,
        seq=9,
        kind="role",
        sender="boris",
        ts=1,
        target="alice",
        role="admin",
    )
    feed(presenter, EntryReceived(made))
    assert view.rows[-1].text == "boris made alice admin"
    presenter.open_members()
    members = [schema.MemberEntry(name="carol", role="member", online=False)]
    feed(presenter, events.MembersLoaded(DEV, schema.MembersResult(members=members)))
    assert view.members is not None
    assert [m.removable for m in view.members.rows] == [True]


def test_the_switcher_finds_channels_by_name(presenter: Presenter, view: FakeView) -> None:
    sign_in(presenter)
    presenter.switcher_search("de")
    assert [(r.key, r.title, r.detail) for r in view.switcher] == [
        (DEV, "# dev", "Release on Friday")
    ]
