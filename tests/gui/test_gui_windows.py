"""Real windows under Xvfb against a real server, driven through their widgets."""

from __future__ import annotations

import asyncio
from tkinter import ttk

import pytest

from beseda.client import Client
from beseda.gui.app import App
from beseda.gui.presenter import GENERAL_KEY, dm_key
from conftest import free_port

from .conftest import ServerThread, Windows

pytestmark = [pytest.mark.gui, pytest.mark.timeout(60)]


def fill_sign_in(app: App, user: str, password: str = "password123") -> None:
    screen = app.window.sign_in_screen
    screen.username.set(user)
    screen.password.set(password)


def sign_up(windows: Windows, server: ServerThread, user: str) -> App:
    app = windows.open(user, server.address)
    windows.pump()
    fill_sign_in(app, user)
    app.window.sign_in_screen.create_button.invoke()
    windows.wait(lambda: app.window.chat.winfo_ismapped())
    return app


def type_and_send(windows: Windows, app: App, text: str) -> None:
    composer = app.window.chat.composer
    composer.focus_force()
    composer.insert("1.0", text)
    windows.pump()
    composer.event_generate("<Return>")
    windows.pump()


def shown(app: App) -> str:
    return app.window.chat.messages.text.get("1.0", "end")


def unread_badge(app: App, key: str) -> str:
    """The badge of a chat in the sidebar (under the time of its last message)."""
    return badge(app.window.chat.chat_list, key)


def badge(tree: ttk.Treeview, key: str) -> str:
    return str(tree.set(key, "meta")).partition("\n")[2]


def chat_title(tree: ttk.Treeview, key: str) -> str:
    """A sidebar row's first line: the chat's name (its last message is under it)."""
    return str(tree.item(key, "text")).strip().split("\n")[0]


def chat_preview(tree: ttk.Treeview, key: str) -> str:
    return str(tree.item(key, "text")).partition("\n")[2].strip()


def test_sign_up_and_talk_in_general_both_ways(windows: Windows, chat_server: ServerThread) -> None:
    alice = sign_up(windows, chat_server, "alice")
    bob = sign_up(windows, chat_server, "bob")
    assert alice.window.chat.title_label.cget("text") == "General"
    type_and_send(windows, alice, "Hello, Bob! Привет 😀")
    assert alice.window.chat.composer.get("1.0", "end-1c") == ""
    windows.wait(lambda: "Hello, Bob! Привет" in shown(bob))
    windows.wait(lambda: "✓" in shown(alice))
    type_and_send(windows, bob, "Hi Alice\u202e!")
    windows.wait(lambda: "Hi Alice\\u202e!" in shown(alice))
    assert shown(alice).count("Hello, Bob!") == 1
    assert alice.window.chat.status_label.cget("text") == ""  # connected: nothing to say


def test_sign_in_errors_are_shown_inline(windows: Windows, chat_server: ServerThread) -> None:
    sign_up(windows, chat_server, "alice")
    app = windows.open("other", chat_server.address)
    windows.pump()
    screen = app.window.sign_in_screen
    fill_sign_in(app, "alice", "wrong-password")
    screen.sign_in_button.invoke()
    windows.wait(lambda: screen.error.cget("text") == "Wrong username or password.")
    fill_sign_in(app, "alice")
    screen.create_button.invoke()
    windows.wait(lambda: "is taken" in screen.error.cget("text"))
    screen.server.set(f"127.0.0.1:{free_port()}")
    fill_sign_in(app, "alice")
    screen.sign_in_button.invoke()
    windows.wait(lambda: "Cannot reach a server" in screen.error.cget("text"))


def test_directory_search_dm_and_unread_badge(windows: Windows, chat_server: ServerThread) -> None:
    alice = sign_up(windows, chat_server, "alice")
    bob = sign_up(windows, chat_server, "bob")
    sign_up(windows, chat_server, "carol")
    chat = alice.window.chat
    chat.tabs.select(1)
    chat.people_query.set("bo")
    people = chat.people_list
    windows.wait(lambda: [people.item(i, "text").strip() for i in people.get_children()] == ["bob"])
    people.selection_set(people.get_children()[0])
    chat._person_chosen()
    windows.wait(lambda: chat.title_label.cget("text") == "bob")
    type_and_send(windows, alice, "psst, bob")
    bob_chats = bob.window.chat.chat_list
    windows.wait(lambda: bob_chats.exists(dm_key("alice")))
    windows.wait(lambda: unread_badge(bob, dm_key("alice")) == "1")
    assert bob.window.root.title().startswith("(1)")
    assert bob.window.chat.tabs.tab(0, "text").endswith("(1)")
    bob_chats.focus_force()  # as a click on the window would
    bob_chats.selection_set(dm_key("alice"))
    windows.wait(lambda: "psst, bob" in shown(bob))
    windows.wait(lambda: unread_badge(bob, dm_key("alice")) == "")
    assert not bob.window.root.title().startswith("(")
    bob_chats.selection_set(GENERAL_KEY)
    windows.wait(lambda: "psst" not in shown(bob))


def test_reconnect_delivers_the_outbox_once(windows: Windows, chat_server: ServerThread) -> None:
    alice = sign_up(windows, chat_server, "alice")
    bob = sign_up(windows, chat_server, "bob")
    status = alice.window.chat.status_label
    chat_server.stop()
    windows.wait(lambda: "Reconnecting" in status.cget("text"))
    type_and_send(windows, alice, "sent while the server was down")
    windows.wait(lambda: "waiting for connection" in shown(alice))
    chat_server.start()
    windows.wait(lambda: status.cget("text") == "", timeout=20)  # connected again
    windows.wait(lambda: "sent while the server was down" in shown(bob), timeout=20)
    windows.wait(lambda: "waiting for connection" not in shown(alice))
    windows.pump(0.5)
    assert shown(bob).count("sent while the server was down") == 1
    assert shown(alice).count("sent while the server was down") == 1

    async def stored() -> list[str]:
        async with Client("127.0.0.1", chat_server.port, reconnect=False) as client:
            await client.login("bob", "password123")
            return [m.text for m in (await client.history()).messages]

    assert asyncio.run(stored()).count("sent while the server was down") == 1


def test_sign_out_returns_to_the_form(windows: Windows, chat_server: ServerThread) -> None:
    alice = sign_up(windows, chat_server, "alice")
    alice.window.chat.sign_out_button.invoke()
    windows.wait(lambda: alice.window.sign_in_screen.winfo_ismapped())
    assert alice.presenter.preferences.session() is None


def test_a_dm_peers_dot_goes_online_and_offline_live(
    windows: Windows, chat_server: ServerThread
) -> None:
    alice = sign_up(windows, chat_server, "alice")
    bob = sign_up(windows, chat_server, "bob")
    chat = alice.window.chat
    alice.presenter.open_dm("bob")
    windows.wait(lambda: chat.chat_list.exists(dm_key("bob")))

    def dot() -> str:
        return str(chat.chat_list.item(dm_key("bob"), "image")[0])

    online, offline = str(chat.dots[True]), str(chat.dots[False])
    windows.wait(lambda: dot() == online)
    # The window watches bob now (a DM peer), so his changes arrive as they happen.
    bob.window.chat.sign_out_button.invoke()
    windows.wait(lambda: dot() == offline)
    fill_sign_in(bob, "bob")
    bob.window.sign_in_screen.sign_in_button.invoke()
    windows.wait(lambda: dot() == online)


def test_a_channel_is_created_joined_and_its_mention_badge_cleared_on_every_device(
    windows: Windows, chat_server: ServerThread
) -> None:
    alice = sign_up(windows, chat_server, "alice")
    bob = sign_up(windows, chat_server, "bob")
    # Alice creates a public channel with a topic: it opens, the topic in the header.
    alice.window.chat.new_channel_button.invoke()
    dialog = alice.window.chat.channel_dialog
    assert dialog is not None
    dialog.channel_name.set("dev")
    dialog.topic.set("Release on Friday")
    dialog.create_button.invoke()
    windows.wait(lambda: alice.window.chat.title_label.cget("text") == "# dev")
    assert alice.window.chat.subtitle_label.cget("text") == "Release on Friday"
    # Bob finds it in the directory and joins.
    bob.window.chat.browse_button.invoke()
    browser = bob.window.chat.browser
    assert browser is not None
    windows.wait(lambda: len(browser.list.get_children()) == 2)  # General and dev
    dev = next(i for i in browser.list.get_children() if "dev" in browser.list.item(i, "text"))
    browser.list.selection_set(dev)
    browser.join_button.invoke()
    windows.wait(lambda: bob.window.chat.title_label.cget("text") == "# dev")
    windows.wait(lambda: "bob joined" in shown(alice))
    # Alice looks elsewhere; Bob mentions her: an accent badge on the channel.
    alice.window.chat.chat_list.selection_set(GENERAL_KEY)
    windows.wait(lambda: alice.window.chat.title_label.cget("text") == "General")
    type_and_send(windows, bob, "@alice please review")
    windows.wait(lambda: unread_badge(alice, dev) == "@1")
    # Her second device shows the badge too, and reading on the first clears it there.
    second = windows.open("alice-2", chat_server.address)
    windows.pump()
    fill_sign_in(second, "alice")
    second.window.sign_in_screen.sign_in_button.invoke()
    windows.wait(lambda: second.window.chat.winfo_ismapped())
    windows.wait(lambda: unread_badge(second, dev) == "@1")
    second.window.chat.chat_list.selection_set(GENERAL_KEY)
    alice.window.chat.chat_list.focus_force()
    alice.window.chat.chat_list.selection_set(dev)
    windows.wait(lambda: "please review" in shown(alice))
    windows.wait(lambda: unread_badge(alice, dev) == "")
    windows.wait(lambda: unread_badge(second, dev) == "")


def test_someone_typing_in_general_shows_under_the_messages(
    windows: Windows, chat_server: ServerThread
) -> None:
    alice = sign_up(windows, chat_server, "alice")
    bob = sign_up(windows, chat_server, "bob")
    composer = bob.window.chat.composer
    composer.focus_force()
    composer.insert("1.0", "Hel")
    composer.event_generate("<KeyRelease>", keysym="l")
    typing = alice.window.chat.typing_label
    windows.wait(lambda: typing.cget("text") == "bob is typing…")
    composer.insert("end-1c", "lo")
    composer.event_generate("<Return>")
    windows.wait(lambda: "Hello" in shown(alice))
    windows.wait(lambda: typing.cget("text") == "")  # the message came: no longer typing
