"""The conversation widgets in a real Tk window under Xvfb, the presenter on a fake backend."""

from __future__ import annotations

import tkinter as tk
from collections.abc import Iterator
from pathlib import Path

import pytest

from beseda.client import EntryReceived, MessageReceived, TypingStarted
from beseda.gui import events, i18n, theme
from beseda.gui.preferences import Preferences
from beseda.gui.presenter import Presenter, dm_key
from beseda.gui.views import SECTION, MainWindow
from beseda.protocol import schema

from .fakes import Clock, FakeBackend, message
from .test_gui_channel_settings import managed
from .test_gui_conversations import DEV, GROUP, SERVER, group_members, infos
from .test_gui_windows import badge, chat_title

pytestmark = [pytest.mark.gui, pytest.mark.timeout(60)]


class Window:
    def __init__(self, tmp_path: Path) -> None:
        self.root = tk.Tk()
        self.view = MainWindow(self.root, theme.apply(self.root))
        self.backend = FakeBackend()
        self.clock = Clock()
        self.presenter = Presenter(
            self.view,
            self.backend,
            Preferences(tmp_path / "config"),
            server=SERVER,
            clock=self.clock,
            wall=lambda: 1.7e9,
        )
        self.view.presenter = self.presenter

    def feed(self, *items: events.Event) -> None:
        for item in items:
            self.presenter.handle(self.presenter.session, item)
        self.presenter.render()
        self.root.update()

    def sign_in(self, conversations: list[schema.ConversationInfo] | None = None) -> None:
        self.presenter.sign_in(SERVER, "alice", "password123", remember=True, create=False)
        self.feed(
            events.SignedIn("alice", "token-1", conversations or infos(), {}), group_members()
        )


@pytest.fixture
def window(display: str, tmp_path: Path) -> Iterator[Window]:
    i18n.install("en")
    opened = Window(tmp_path)
    yield opened
    opened.root.destroy()


def test_the_sidebar_shows_sections_and_a_mention_badge_in_the_accent_colour(
    window: Window,
) -> None:
    window.sign_in()
    tree = window.view.chat.chat_list
    assert tree.item(SECTION + "channels", "text") == "Channels"
    assert tree.item(SECTION + "direct", "text") == "Direct messages"
    assert tree.get_children(SECTION + "channels") == (DEV, "#general")
    assert tree.get_children(SECTION + "direct") == (GROUP, dm_key("bob"))
    assert chat_title(tree, GROUP) == "anna, boris"
    assert badge(tree, DEV) == "@1"
    assert "mention" in tree.item(DEV, "tags")
    assert badge(tree, dm_key("bob")) == "1"
    assert str(tree.tag_configure("mention", "foreground")) == theme.PALETTE.accent


def test_opening_a_channel_shows_its_topic_clears_its_badge_and_reads_it(window: Window) -> None:
    window.sign_in()
    chat = window.view.chat
    chat.chat_list.selection_set(DEV)
    window.root.update()
    assert chat.title_label.cget("text") == "# dev"
    assert chat.subtitle_label.cget("text") == "Release on Friday"
    assert chat.members_button.winfo_ismapped()
    assert badge(chat.chat_list, DEV) == ""
    assert window.backend.last("read") == (DEV, 8)


def test_changes_typing_and_mentions_show_in_the_timeline(window: Window) -> None:
    window.sign_in()
    window.presenter.select(DEV)
    window.feed(
        EntryReceived(message(9, "", "anna", conversation=DEV, kind="added", target="boris")),
        MessageReceived(message(10, "@alice please look", conversation=DEV, mentions=["alice"])),
        TypingStarted(DEV, "anna"),
    )
    messages = window.view.chat.messages.text
    shown = messages.get("1.0", "end")
    assert "anna added boris" in shown
    assert "event" in messages.tag_names(messages.search("anna added", "1.0"))
    assert "mention" in messages.tag_names(messages.search("please look", "1.0"))
    assert window.view.chat.typing_label.cget("text") == "anna is typing…"
    window.clock.now += 7
    window.presenter.tick()
    window.root.update()
    assert window.view.chat.typing_label.cget("text") == ""


def test_the_new_channel_dialog_creates_a_private_channel(window: Window) -> None:
    window.sign_in()
    window.view.chat.new_channel_button.invoke()
    dialog = window.view.chat.channel_dialog
    assert dialog is not None
    dialog.channel_name.set("ops")
    dialog.topic.set("on call")
    dialog.public.set(False)
    dialog.create_button.invoke()
    window.root.update()
    assert window.backend.last("create_channel") == ("ops", False, "on call")
    assert not dialog.winfo_exists()


def test_the_channel_browser_lists_channels_and_joins_one(window: Window) -> None:
    window.sign_in()
    window.view.chat.browse_button.invoke()
    request, _query = window.backend.last("channels")
    found = schema.ChannelsResult(
        channels=[
            schema.ChannelEntry(
                conversation="c:20", name="random", public=True, members=5, joined=False
            )
        ]
    )
    window.feed(events.ChannelsFound(request, found))
    browser = window.view.chat.browser
    assert browser is not None
    assert "random" in browser.list.item("c:20", "text")
    browser.join_button.invoke()
    assert window.backend.last("join") == "c:20"


def test_the_channel_settings_dialog_renames_sets_the_topic_and_archives(
    window: Window,
) -> None:
    window.sign_in(managed("owner"))
    window.presenter.select(DEV)
    window.root.update()
    chat = window.view.chat
    assert chat.settings_button.winfo_ismapped()
    chat.settings_button.invoke()
    dialog = chat.settings_dialog
    assert dialog is not None
    assert dialog.channel_name.get() == "dev"
    assert dialog.topic.get() == "Release on Friday"
    dialog.channel_name.set("ops")
    dialog.topic.set("On call")
    dialog.save_button.invoke()
    window.root.update()
    assert window.backend.last("rename") == (DEV, "ops")
    assert window.backend.last("set_topic") == (DEV, "On call")
    assert not dialog.winfo_exists()

    chat.settings_button.invoke()
    dialog = chat.settings_dialog
    assert dialog is not None
    dialog.archive_button.invoke()
    window.root.update()
    assert dialog.confirm_row.winfo_ismapped()
    assert "No one will be able to post" in dialog.confirm_label.cget("text")
    assert window.backend.of("archive") == []
    dialog.confirm_button.invoke()
    window.root.update()
    assert window.backend.of("archive") == [DEV]
    assert not dialog.winfo_exists()

    window.feed(
        EntryReceived(
            schema.Entry(id=9, conversation=DEV, seq=9, kind="archived", sender="alice", ts=1)
        )
    )
    assert chat.note_label.cget("text") == "(archived)"
    assert not chat.settings_button.winfo_ismapped()
    assert str(chat.composer.cget("state")) == "disabled"
    assert chat.send_button.instate(["disabled"])
    assert chat.composer_note.cget("text") == "This channel is archived: it is read-only."
    window.presenter.select("#general")
    window.root.update()
    assert str(chat.composer.cget("state")) == "normal"
    assert not chat.composer_note.winfo_ismapped()


def test_members_dialog_changes_a_role(window: Window) -> None:
    window.sign_in(managed("owner"))
    window.presenter.select(DEV)
    window.root.update()
    chat = window.view.chat
    chat.members_button.invoke()
    rows = [
        schema.MemberEntry(name=n, role=r, online=True)
        for n, r in (("alice", "owner"), ("carol", "admin"), ("dima", "member"))
    ]
    window.feed(events.MembersLoaded(DEV, schema.MembersResult(members=rows)))
    dialog = chat.members_dialog
    assert dialog is not None
    dialog.list.selection_set("dima")
    window.root.update()
    buttons = dialog.role_buttons
    assert buttons["admin"].winfo_ismapped()
    assert buttons["owner"].winfo_ismapped()
    assert not buttons["member"].winfo_ismapped()
    buttons["admin"].invoke()
    assert window.backend.last("set_role") == (DEV, "dima", "admin")
    dialog.list.selection_set("carol")
    window.root.update()
    assert buttons["member"].winfo_ismapped()
    assert not buttons["admin"].winfo_ismapped()
    dialog.list.selection_set("alice")  # oneself: nothing to change
    window.root.update()
    assert not any(button.winfo_ismapped() for button in buttons.values())
