"""Channel management in the desktop client: settings, roles, archived channels (fakes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from beseda.client import EntryReceived
from beseda.gui import events, i18n
from beseda.gui.preferences import Preferences
from beseda.gui.presenter import GENERAL_KEY, Presenter
from beseda.protocol import schema

from .fakes import Clock, FakeBackend, FakeView
from .test_gui_conversations import DEV, GROUP, SERVER, feed, info, infos, sign_in

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("english")]


@pytest.fixture
def presenter(view: FakeView, backend: FakeBackend, tmp_path: Path) -> Presenter:
    prefs = Preferences(tmp_path / "config")
    return Presenter(view, backend, prefs, server=SERVER, clock=Clock(), wall=lambda: 1.7e9)


def managed(role: str = "admin", *, archived: bool = False) -> list[schema.ConversationInfo]:
    """The usual conversations, the user ``role`` of #dev."""
    out = []
    for item in infos():
        if item.conversation == DEV:
            item = info(DEV, "channel", name="dev", topic="Release on Friday", role=role)
            if archived:
                item = schema.ConversationInfo(
                    conversation=DEV, kind="channel", name="dev", role=role, archived=True
                )
        out.append(item)
    return out


def entry(seq: int, kind: str, **fields: str) -> EntryReceived:
    return EntryReceived(
        schema.Entry(id=seq, conversation=DEV, seq=seq, kind=kind, sender="boris", ts=1, **fields)
    )


def members(*pairs: tuple[str, str]) -> events.MembersLoaded:
    rows = [schema.MemberEntry(name=n, role=r, online=True) for n, r in pairs]
    return events.MembersLoaded(DEV, schema.MembersResult(members=rows))


# -- the settings button ----------------------------------------------------------------------


@pytest.mark.parametrize("role", ["owner", "admin"])
def test_owners_and_admins_of_a_channel_see_channel_settings(
    presenter: Presenter, view: FakeView, role: str
) -> None:
    sign_in(presenter, managed(role))
    presenter.select(DEV)
    assert view.header is not None
    assert view.header.settings


def test_members_general_groups_and_direct_conversations_have_no_settings(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter)  # a plain member of #dev, owner of the group
    for key in (DEV, GENERAL_KEY, GROUP, "@bob"):
        presenter.select(key)
        assert view.header is not None
        assert not view.header.settings, key
    presenter.select(DEV)
    presenter.open_settings()
    assert view.settings is None
    assert not presenter.save_settings("ops", "")
    assert backend.of("rename") == []


def test_being_made_admin_shows_the_settings_button(presenter: Presenter, view: FakeView) -> None:
    sign_in(presenter)
    presenter.select(DEV)
    feed(presenter, entry(9, "role", target="alice", role="admin"))
    assert view.header is not None
    assert view.header.settings


# -- the settings dialog ----------------------------------------------------------------------


def test_settings_rename_and_set_the_topic(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter, managed())
    presenter.select(DEV)
    presenter.open_settings()
    assert view.settings is not None
    assert (view.settings.title, view.settings.name, view.settings.topic) == (
        "Settings of # dev",
        "dev",
        "Release on Friday",
    )
    assert not presenter.save_settings("  # ", "x")  # a name is needed
    assert presenter.save_settings("#ops ", " On call ")
    assert backend.of("rename") == [(DEV, "ops")]
    assert backend.of("set_topic") == [(DEV, "On call")]


def test_settings_send_only_what_changed(presenter: Presenter, backend: FakeBackend) -> None:
    sign_in(presenter, managed())
    presenter.select(DEV)
    presenter.open_settings()
    assert presenter.save_settings("dev", "Release on Monday")
    assert backend.of("rename") == []
    assert backend.of("set_topic") == [(DEV, "Release on Monday")]


def test_archiving_asks_first(presenter: Presenter, view: FakeView, backend: FakeBackend) -> None:
    sign_in(presenter, managed("owner"))
    presenter.select(DEV)
    presenter.open_settings()
    assert not presenter.archive()  # not asked yet
    presenter.ask_archive()
    assert view.settings is not None
    assert view.settings.confirm.startswith("Archive # dev? No one will be able to post")
    presenter.cancel_archive()
    assert view.settings is not None
    assert view.settings.confirm == ""
    assert not presenter.archive()
    presenter.ask_archive()
    assert presenter.archive()
    assert backend.of("archive") == [DEV]


def test_a_refused_rename_is_told_as_other_refusals(presenter: Presenter, view: FakeView) -> None:
    sign_in(presenter, managed())
    presenter.select(DEV)
    presenter.open_settings()
    presenter.save_settings("random", "")
    feed(presenter, events.ActionFailed("name_taken", "a channel has that name"))
    assert view.error == "The server refused: a channel has that name"


def test_the_open_dialog_follows_a_rename_and_closes_when_no_longer_allowed(
    presenter: Presenter, view: FakeView
) -> None:
    sign_in(presenter, managed())
    presenter.select(DEV)
    presenter.open_settings()
    feed(presenter, entry(9, "renamed", name="ops"))
    assert view.settings is not None
    assert view.settings.name == "ops"
    assert view.header is not None
    assert view.header.title == "# ops"
    feed(presenter, entry(10, "role", target="alice", role="member"))
    assert view.settings is None
    assert presenter.settings_of is None


# -- archived channels ------------------------------------------------------------------------


def test_an_archived_entry_makes_the_channel_read_only_at_once(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter, managed())
    presenter.select(DEV)
    presenter.open_settings()
    assert view.composer_note == ""
    feed(presenter, entry(9, "archived"))
    assert view.header is not None
    assert view.header.note == "archived"
    assert not view.header.settings
    assert view.settings is None  # the dialog closes
    assert view.composer_note == "This channel is archived: it is read-only."
    assert view.rows[-1].text == "boris archived the channel"
    assert not presenter.send("anyone?")
    assert backend.of("post") == []
    presenter.select(GENERAL_KEY)
    assert view.composer_note == ""
    assert view.header is not None
    assert view.header.note == ""


def test_a_channel_archived_before_sign_in_shows_as_archived(
    presenter: Presenter, view: FakeView
) -> None:
    sign_in(presenter, managed(archived=True))
    presenter.select(DEV)
    assert view.header is not None
    assert view.header.note == "archived"
    assert view.composer_note == "This channel is archived: it is read-only."


def test_archived_reads_in_russian(presenter: Presenter, view: FakeView) -> None:
    i18n.install("ru")
    sign_in(presenter, managed(archived=True))
    presenter.select(DEV)
    assert view.header is not None
    assert view.header.note == "в архиве"
    assert view.composer_note == "Канал в архиве: писать в него нельзя."


# -- roles ------------------------------------------------------------------------------------


def test_an_admin_makes_a_member_admin_and_an_admin_a_member(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter, managed("admin"))
    presenter.select(DEV)
    presenter.open_members()
    feed(
        presenter,
        members(("boris", "owner"), ("alice", "admin"), ("carol", "admin"), ("dima", "member")),
    )
    assert view.members is not None
    assert {m.name: m.roles for m in view.members.rows} == {
        "boris": (),
        "alice": (),
        "carol": ("member",),
        "dima": ("admin",),
    }
    presenter.set_role("dima", "admin")
    presenter.set_role("carol", "member")
    presenter.set_role("dima", "owner")  # only an owner makes owners: not sent
    presenter.set_role("boris", "member")
    assert backend.of("set_role") == [(DEV, "dima", "admin"), (DEV, "carol", "member")]


def test_an_owner_may_also_make_and_unmake_owners(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter, managed("owner"))
    presenter.select(DEV)
    presenter.open_members()
    feed(presenter, members(("alice", "owner"), ("boris", "owner"), ("dima", "member")))
    assert view.members is not None
    assert {m.name: m.roles for m in view.members.rows} == {
        "alice": (),
        "boris": ("admin", "member"),
        "dima": ("owner", "admin"),
    }
    presenter.set_role("dima", "owner")
    assert backend.last("set_role") == (DEV, "dima", "owner")


def test_a_role_entry_reloads_the_open_members_panel(
    presenter: Presenter, backend: FakeBackend
) -> None:
    sign_in(presenter, managed())
    presenter.select(DEV)
    presenter.open_members()
    before = len(backend.of("members"))
    feed(presenter, entry(9, "role", target="dima", role="admin"))
    assert len(backend.of("members")) == before + 1


def test_plain_members_and_groups_offer_no_role_changes(
    presenter: Presenter, view: FakeView
) -> None:
    sign_in(presenter)
    presenter.select(DEV)
    presenter.open_members()
    feed(presenter, members(("boris", "owner"), ("dima", "member")))
    assert view.members is not None
    assert all(m.roles == () for m in view.members.rows)
    presenter.select(GROUP)
    presenter.open_members()
    group = [
        schema.MemberEntry(name=n, role=r, online=True)
        for n, r in (("alice", "owner"), ("anna", "member"))
    ]
    feed(presenter, events.MembersLoaded(GROUP, schema.MembersResult(members=group)))
    assert all(m.roles == () for m in view.members.rows)


def test_role_buttons_read_in_russian() -> None:
    ru = i18n.translations("ru")
    assert ru.gettext("Make admin") == "Сделать администратором"
    assert ru.gettext("Channel settings") == "Настройки канала"
