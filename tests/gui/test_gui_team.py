"""The team scenario in three real windows: a private channel, a group, a public channel,
mentions and a removal, driven through the dialogs and the composer as people would."""

from __future__ import annotations

import pytest

from beseda.gui.app import App
from beseda.gui.presenter import CHANNELS, DIRECT, GENERAL_KEY
from beseda.gui.views import SECTION

from .conftest import ServerThread, Windows
from .test_gui_windows import chat_title, shown, sign_up, type_and_send, unread_badge

pytestmark = [pytest.mark.gui, pytest.mark.timeout(60)]


def sidebar(app: App, section: str) -> list[str]:
    """The titles in one section of the sidebar, top to bottom, as shown."""
    tree = app.window.chat.chat_list
    return [chat_title(tree, i) for i in tree.get_children(SECTION + section)]


def key_of(app: App, title: str) -> str:
    """The sidebar row with this title."""
    tree = app.window.chat.chat_list
    for section in (CHANNELS, DIRECT):
        for item in tree.get_children(SECTION + section):
            if chat_title(tree, item) == title:
                return str(item)
    raise LookupError(title)


def title(app: App) -> str:
    return str(app.window.chat.title_label.cget("text"))


def open_chat(windows: Windows, app: App, name: str) -> None:
    """A click on a sidebar row."""
    tree = app.window.chat.chat_list
    windows.wait(lambda: name in sidebar(app, CHANNELS) + sidebar(app, DIRECT))
    tree.focus_force()
    tree.selection_set(key_of(app, name))
    windows.wait(lambda: title(app) == name)


def create_channel(windows: Windows, app: App, name: str, *, public: bool) -> None:
    app.window.chat.new_channel_button.invoke()
    dialog = app.window.chat.channel_dialog
    assert dialog is not None
    dialog.channel_name.set(name)
    dialog.public.set(public)
    dialog.create_button.invoke()
    windows.wait(lambda: title(app) == "# " + name)
    assert not dialog.winfo_exists()


def test_a_team_of_three_channels_a_group_mentions_and_a_removal(
    windows: Windows, chat_server: ServerThread
) -> None:
    boris = sign_up(windows, chat_server, "boris")
    vera = sign_up(windows, chat_server, "vera")
    anna = sign_up(windows, chat_server, "anna")

    # Anna creates a private channel and adds Boris in its Members dialog.
    create_channel(windows, anna, "secret", public=False)
    anna.window.chat.members_button.invoke()
    members = anna.window.chat.members_dialog
    assert members is not None
    windows.wait(lambda: members.list.get_children() == ("anna",))
    assert members.invite_row.winfo_ismapped()
    members.invite_names.set("@boris")
    members.invite_button.invoke()
    windows.wait(lambda: set(members.list.get_children()) == {"anna", "boris"})
    assert members.list.set("anna", "role") == "owner"
    assert members.list.set("boris", "role") == "member"
    members.close()
    windows.wait(lambda: "anna added boris" in shown(anna))
    windows.wait(lambda: "# secret" in sidebar(boris, CHANNELS))

    # Anna creates a group of the three in the New group dialog.
    anna.window.chat.new_group_button.invoke()
    group_dialog = anna.window.chat.group_dialog
    assert group_dialog is not None
    windows.wait(lambda: {"boris", "vera"} <= set(group_dialog.names))
    assert "anna" not in group_dialog.names
    for name in ("boris", "vera"):
        group_dialog.list.selection_set(group_dialog.names.index(name))
    group_dialog.create_button.invoke()
    windows.wait(lambda: title(anna) == "boris, vera")
    assert not group_dialog.winfo_exists()
    type_and_send(windows, anna, "Team, hello")
    windows.wait(lambda: "anna, vera" in sidebar(boris, DIRECT))
    windows.wait(lambda: "anna, boris" in sidebar(vera, DIRECT))

    # Vera creates a public channel; Anna finds it in Browse channels and joins.
    create_channel(windows, vera, "lobby", public=True)
    type_and_send(windows, vera, "Welcome to the lobby")
    anna.window.chat.browse_button.invoke()
    browser = anna.window.chat.browser
    assert browser is not None

    def listed() -> list[str]:
        return [str(browser.list.item(i, "text")) for i in browser.list.get_children()]

    windows.wait(lambda: any("lobby" in row for row in listed()))
    lobby = next(i for i in browser.list.get_children() if "lobby" in browser.list.item(i, "text"))
    browser.list.selection_set(lobby)
    browser.join_button.invoke()
    windows.wait(lambda: title(anna) == "# lobby")
    windows.wait(lambda: "Welcome to the lobby" in shown(anna))
    windows.wait(lambda: "anna joined" in shown(vera))
    type_and_send(windows, anna, "Thanks, Vera")
    windows.wait(lambda: "Thanks, Vera" in shown(vera))

    # The group talks: each sees the others' words.
    open_chat(windows, vera, "anna, boris")
    windows.wait(lambda: "Team, hello" in shown(vera))
    type_and_send(windows, vera, "Hi both")
    open_chat(windows, boris, "anna, vera")
    windows.wait(lambda: "Team, hello" in shown(boris) and "Hi both" in shown(boris))

    # Boris looks at General; Anna mentions him in the private channel: an @ badge.
    open_chat(windows, boris, "General")
    open_chat(windows, anna, "# secret")
    type_and_send(windows, anna, "@boris the plan is ready")
    secret = key_of(boris, "# secret")
    windows.wait(lambda: unread_badge(boris, secret) == "@1")
    assert "mention" in boris.window.chat.chat_list.item(secret, "tags")
    open_chat(windows, boris, "# secret")
    windows.wait(lambda: "the plan is ready" in shown(boris))
    windows.wait(lambda: unread_badge(boris, secret) == "")
    type_and_send(windows, boris, "Got it")
    windows.wait(lambda: "Got it" in shown(anna))

    # Anna removes Boris in the Members dialog; what she posts after it stays with her.
    anna.window.chat.members_button.invoke()
    members = anna.window.chat.members_dialog
    assert members is not None
    windows.wait(lambda: set(members.list.get_children()) == {"anna", "boris"})
    assert members.remove_button.winfo_ismapped()
    members.list.selection_set("boris")
    members.remove_button.invoke()
    windows.wait(lambda: members.list.get_children() == ("anna",))
    members.close()
    windows.wait(lambda: "anna removed boris" in shown(anna))
    windows.wait(lambda: "anna removed boris" in shown(boris))
    type_and_send(windows, anna, "after Boris left")
    windows.wait(lambda: "after Boris left" in shown(anna) and "✓" in shown(anna))
    # A later message in the group reaches Boris: the removal's one did not, and will not.
    open_chat(windows, anna, "boris, vera")
    type_and_send(windows, anna, "a later word")
    windows.wait(lambda: unread_badge(boris, key_of(boris, "anna, vera")) == "1")
    assert "after Boris left" not in shown(boris)
    assert "Got it" in shown(boris)

    # What each window shows, as its user sees it.
    assert sidebar(anna, CHANNELS) == ["# secret", "# lobby", "General"]  # recent first
    assert sidebar(anna, DIRECT) == ["boris, vera"]
    assert set(sidebar(boris, CHANNELS)) == {"# secret", "General"}
    assert sidebar(boris, DIRECT) == ["anna, vera"]
    assert set(sidebar(vera, CHANNELS)) == {"# lobby", "General"}
    assert sidebar(vera, DIRECT) == ["anna, boris"]
    assert GENERAL_KEY in vera.window.chat.chat_list.get_children(SECTION + CHANNELS)
    open_chat(windows, vera, "anna, boris")
    windows.wait(lambda: "a later word" in shown(vera))
    assert shown(vera).startswith("Today\nanna created the conversation")
    assert vera.window.chat.subtitle_label.cget("text") == "3 members"
    # Vera cannot find the private channel either.
    vera.window.chat.browse_button.invoke()
    vera_browser = vera.window.chat.browser
    assert vera_browser is not None
    windows.wait(lambda: len(vera_browser.list.get_children()) == 2)
    assert [vera_browser.list.item(i, "text") for i in vera_browser.list.get_children()] == [
        "# General",
        "# lobby",
    ]
    vera_browser.destroy()
    # Boris still has the channel, read-only: its history up to his removal, no Members.
    open_chat(windows, boris, "# secret")
    timeline = shown(boris)
    assert "anna added boris" in timeline
    assert "the plan is ready" in timeline
    assert timeline.rstrip().splitlines()[-1].startswith("anna removed boris")
    assert not boris.window.chat.members_button.winfo_ismapped()
    type_and_send(windows, boris, "still here?")
    # The server refuses a non-member's post, and his window says so.
    windows.wait(lambda: "not sent: you are not a member of this conversation" in shown(boris))
    open_chat(windows, anna, "# secret")
    windows.pump(0.3)
    assert "still here?" not in shown(anna)


def test_the_new_group_dialog_lists_people_who_signed_up_after_the_user(
    windows: Windows, chat_server: ServerThread
) -> None:
    anna = sign_up(windows, chat_server, "anna")
    boris = sign_up(windows, chat_server, "boris")
    vera = sign_up(windows, chat_server, "vera")
    anna.window.chat.new_group_button.invoke()
    dialog = anna.window.chat.group_dialog
    assert dialog is not None
    windows.wait(lambda: dialog.names == ["boris", "vera"])
    dialog.list.selection_set(0, "end")
    dialog.create_button.invoke()
    windows.wait(lambda: title(anna) == "boris, vera")
    windows.wait(lambda: sidebar(boris, DIRECT) == ["anna, vera"])
    windows.wait(lambda: sidebar(vera, DIRECT) == ["anna, boris"])
