"""Real windows under Xvfb: where the keys go, what Ctrl+A does, and which messages are in view."""

from __future__ import annotations

import asyncio
import tkinter as tk
from tkinter import ttk

import pytest

from beseda.client import Client
from beseda.gui.app import App
from beseda.gui.presenter import GENERAL_KEY, dm_key

from .conftest import ServerThread, Windows
from .test_gui_windows import shown, sign_up, type_and_send

pytestmark = [pytest.mark.gui, pytest.mark.timeout(60)]


def post(server: ServerThread, user: str, texts: list[str]) -> None:
    """``user`` (registered on first use) sends ``texts`` to General from the client library."""

    async def run() -> None:
        async with Client("127.0.0.1", server.port, reconnect=False) as client:
            try:
                await client.register(user, "password123")
            except Exception:
                await client.login(user, "password123")
            for text in texts:
                await client.send(text)

    asyncio.run(run())


def click(tree: ttk.Treeview, item: str) -> None:
    """Press and release the mouse on a row, as a person would."""
    bbox = tree.bbox(item)
    assert bbox, f"row {item} is not on screen"
    x, y, _width, height = bbox  # type: ignore[misc]
    tree.event_generate("<ButtonPress-1>", x=x + 10, y=y + height // 2)
    tree.event_generate("<ButtonRelease-1>", x=x + 10, y=y + height // 2)


def focused(app: App) -> tk.Misc | None:
    return app.window.root.focus_get()


def newest_in_view(app: App) -> bool:
    return app.window.chat.messages.text.bbox("end-2c") is not None


def test_clicking_a_chat_leaves_the_keys_with_the_composer(
    windows: Windows, chat_server: ServerThread
) -> None:
    sign_up(windows, chat_server, "bob")
    alice = sign_up(windows, chat_server, "alice")
    chat = alice.window.chat
    alice.presenter.open_dm("bob")
    alice.presenter.select(GENERAL_KEY)
    windows.wait(lambda: chat.chat_list.exists(dm_key("bob")))
    chat.chat_list.focus_force()
    windows.wait(lambda: focused(alice) is chat.chat_list)
    click(chat.chat_list, dm_key("bob"))
    windows.wait(lambda: chat.title_label.cget("text") == "bob")
    windows.wait(lambda: focused(alice) is chat.composer)
    alice.window.root.event_generate("<KeyPress-x>")  # typed: it goes where the focus is
    windows.pump()
    assert chat.composer.get("1.0", "end-1c") == "x"


def test_a_chat_chosen_with_ctrl_k_leaves_the_keys_with_the_composer(
    windows: Windows, chat_server: ServerThread
) -> None:
    sign_up(windows, chat_server, "bob")
    alice = sign_up(windows, chat_server, "alice")
    alice.window.chat.chat_list.focus_force()  # the focus was in the list (a click there)
    windows.wait(lambda: focused(alice) is alice.window.chat.chat_list)
    alice.window.open_switcher()
    switcher = alice.window.switcher
    assert switcher is not None
    switcher.entry.focus_force()
    switcher.query.set("bob")
    windows.wait(lambda: any("bob" in row for row in switcher.results.get(0, "end")))
    switcher.entry.event_generate("<Return>")
    windows.wait(lambda: alice.window.chat.title_label.cget("text") == "bob")
    windows.wait(lambda: focused(alice) is alice.window.chat.composer)


def test_a_single_click_in_people_opens_the_direct_chat(
    windows: Windows, chat_server: ServerThread
) -> None:
    sign_up(windows, chat_server, "bob")
    alice = sign_up(windows, chat_server, "alice")
    chat = alice.window.chat
    chat.tabs.select(1)
    chat.people_query.set("bo")
    people = chat.people_list
    windows.wait(lambda: [people.item(i, "text").strip() for i in people.get_children()] == ["bob"])
    windows.pump(0.1)
    click(people, people.get_children()[0])
    windows.wait(lambda: chat.title_label.cget("text") == "bob")
    windows.wait(lambda: focused(alice) is chat.composer)
    assert alice.presenter.selected == dm_key("bob")


def test_ctrl_a_selects_all_in_the_composer_and_in_entries(
    windows: Windows, chat_server: ServerThread
) -> None:
    alice = sign_up(windows, chat_server, "alice")
    chat = alice.window.chat
    chat.composer.insert("1.0", "hello\nworld")
    chat.composer.focus_force()
    windows.wait(lambda: focused(alice) is chat.composer)
    chat.composer.event_generate("<Control-a>")
    windows.pump()
    assert chat.composer.get("sel.first", "sel.last") == "hello\nworld"
    chat.tabs.select(1)
    chat.people_query.set("somebody")
    chat.people_search.focus_force()
    windows.wait(lambda: focused(alice) is chat.people_search)
    chat.people_search.icursor(3)
    chat.people_search.event_generate("<Control-a>")
    windows.pump()
    assert chat.people_search.selection_present()
    assert (chat.people_search.index("sel.first"), chat.people_search.index("sel.last")) == (0, 8)


def test_the_newest_message_stays_in_view_when_the_window_shrinks(
    windows: Windows, chat_server: ServerThread
) -> None:
    post(chat_server, "carol", [f"early message {n}" for n in range(40)])
    alice = sign_up(windows, chat_server, "alice")
    windows.wait(lambda: "early message 39" in shown(alice))
    windows.wait(lambda: newest_in_view(alice))
    root = alice.window.root
    root.geometry("1000x540")
    windows.wait(lambda: root.winfo_height() == 540)
    windows.pump(0.3)
    assert newest_in_view(alice)
    post(chat_server, "carol", ["after the resize"])
    windows.wait(lambda: "after the resize" in shown(alice))
    windows.pump(0.2)
    assert newest_in_view(alice)
    assert not alice.window.chat.messages.jump_button.winfo_ismapped()
    root.geometry("1000x760")
    windows.wait(lambda: root.winfo_height() == 760)
    windows.pump(0.3)
    assert newest_in_view(alice)


def test_scrolled_up_new_messages_are_marked_and_sending_scrolls_down(
    windows: Windows, chat_server: ServerThread
) -> None:
    post(chat_server, "carol", [f"early message {n}" for n in range(40)])
    alice = sign_up(windows, chat_server, "alice")
    messages = alice.window.chat.messages
    windows.wait(lambda: "early message 39" in shown(alice))
    messages.text.yview_moveto(0.3)  # the reader scrolls up
    windows.wait(lambda: messages.jump_button.winfo_ismapped())
    assert messages.jump_button.cget("text") == "Jump to latest ↓"
    post(chat_server, "carol", ["while you were up there", "and another"])
    windows.wait(lambda: messages.jump_button.cget("text") == "2 new messages ↓")
    assert not newest_in_view(alice)  # nobody pulled the reader down
    text = shown(alice)
    assert text.index("New messages") < text.index("while you were up there")
    type_and_send(windows, alice, "my own reply")
    windows.wait(lambda: "my own reply" in shown(alice))
    windows.pump(0.2)
    assert newest_in_view(alice)
    windows.wait(lambda: not messages.jump_button.winfo_ismapped())


def test_the_jump_button_goes_to_the_newest(windows: Windows, chat_server: ServerThread) -> None:
    post(chat_server, "carol", [f"early message {n}" for n in range(40)])
    alice = sign_up(windows, chat_server, "alice")
    messages = alice.window.chat.messages
    windows.wait(lambda: "early message 39" in shown(alice))
    messages.text.yview_moveto(0.3)
    windows.wait(lambda: messages.jump_button.winfo_ismapped())
    messages.jump_button.invoke()
    windows.pump(0.2)
    assert newest_in_view(alice)
    windows.wait(lambda: not messages.jump_button.winfo_ismapped())
