"""Real windows against a real server: a readable timeline, replies, edits, deletes,
reactions and search, driven through the widgets as people would."""

from __future__ import annotations

import asyncio
import tkinter as tk
from collections.abc import Iterator

import pytest

from beseda.client import Client
from beseda.gui.app import App
from beseda.gui.presenter import GENERAL_KEY, dm_key

from .conftest import Link, ServerThread, Windows
from .test_gui_windows import chat_preview, fill_sign_in, shown, sign_up, type_and_send

pytestmark = [pytest.mark.gui, pytest.mark.timeout(90)]


@pytest.fixture
def link(chat_server: ServerThread) -> Iterator[Link]:
    relay = Link(chat_server.port)
    yield relay
    relay.close()


def sign_up_through(windows: Windows, address: str, user: str) -> App:
    app = windows.open(user, address)
    windows.pump()
    fill_sign_in(app, user)
    app.window.sign_in_screen.create_button.invoke()
    windows.wait(lambda: app.window.chat.winfo_ismapped())
    return app


def row_of(app: App, text: str) -> str:
    """The id of the message row showing ``text``."""
    messages = app.window.chat.messages
    for index, row_id in enumerate(messages.row_ids):
        if text in messages.row_text(index):
            return row_id
    raise LookupError(text)


def row_shows(app: App, text: str) -> str:
    """What the row of the message showing ``text`` shows, or "" when none does."""
    messages = app.window.chat.messages
    for index in range(len(messages.row_ids)):
        if text in (shown_row := messages.row_text(index)):
            return shown_row
    return ""


def click_tag(app: App, tag: str) -> None:
    """A click on the (first) text that carries ``tag``."""
    text = app.window.chat.messages.text
    ranges = text.tag_ranges(tag)
    assert ranges, f"nothing carries {tag}"
    text.see(ranges[0])
    text.update_idletasks()
    bbox = text.bbox(ranges[0])
    assert bbox is not None, f"{tag} is not on screen"
    x, y = bbox[0] + bbox[2] // 2, bbox[1] + bbox[3] // 2
    # Tag bindings follow the pointer ("current"), which a motion moves there.
    text.event_generate("<Motion>", x=x, y=y)
    text.event_generate("<Button-1>", x=x, y=y)
    text.event_generate("<ButtonRelease-1>", x=x, y=y)


def click_reaction(app: App, text: str, emoji: str) -> None:
    """A click on the reaction ``emoji`` under the message showing ``text``."""
    messages = app.window.chat.messages
    row_id = row_of(app, text)
    index = messages.chips[row_id].index(emoji)
    chips = messages.text.tag_ranges(f"react:{index}")
    mine = messages.text.tag_ranges("row:" + row_id)
    # The chip of that row: react:N tags are shared by the rows' N-th chips.
    start = next(
        c
        for c in chips[::2]
        if messages.text.compare(c, ">=", mine[0]) and messages.text.compare(c, "<", mine[1])
    )
    messages.text.tag_add("clicked", start)
    click_tag(app, "clicked")
    messages.text.tag_delete("clicked")


def menu_item(menu: tk.Menu, label: str) -> int:
    for index in range(int(menu.index("end") or 0) + 1):
        if menu.type(index) != "separator" and menu.entrycget(index, "label") == label:
            return index
    raise LookupError(label)


def choose(app: App, text: str, label: str, submenu: str | None = None) -> None:
    """Right-click the message showing ``text``, choose ``label`` (in ``submenu``)."""
    messages = app.window.chat.messages
    row_id = row_of(app, text)
    mark = messages.marks[messages.row_ids.index(row_id)]
    messages.text.see(mark)
    messages.text.update_idletasks()
    bbox = messages.text.bbox(f"{mark} lineend -1c")
    assert bbox is not None
    messages.text.event_generate("<Button-3>", x=bbox[0] + 2, y=bbox[1] + 2, rootx=0, rooty=0)
    menu = messages.menu
    assert menu is not None
    assert menu.winfo_ismapped()  # the menu is up, at the pointer
    # Put away as a click on an entry does (a posted menu holds a grab of the display).
    menu.tk.call("tk::MenuUnpost", menu)
    if submenu is not None:
        menu = menu.nametowidget(menu.entrycget(menu_item(menu, submenu), "menu"))
    menu.invoke(menu_item(menu, label))


def test_a_timeline_people_read_comfortably(windows: Windows, chat_server: ServerThread) -> None:
    alice = sign_up(windows, chat_server, "alice")
    bob = sign_up(windows, chat_server, "bob")
    type_and_send(windows, bob, "The notes are at https://example.org/notes?id=7.")
    type_and_send(windows, bob, "Read them before Friday")
    windows.wait(lambda: "Read them before Friday" in shown(alice))
    # One header (avatar, name, time) over Bob's two messages, under the day's line.
    timeline = shown(alice)
    assert timeline.startswith("Today\n")
    assert timeline.count("bob  ") == 1
    assert " B \tbob  " in timeline
    # The address is a link; a click opens it in the browser (the sentence's dot left out).
    opened: list[str] = []
    alice.window.open_url = opened.append
    text = alice.window.chat.messages.text
    assert text.get(*text.tag_ranges("link")[:2]) == "https://example.org/notes?id=7"
    click_tag(alice, "link")
    assert opened == ["https://example.org/notes?id=7"]
    # The composer's emoji picker puts the chosen one in at the cursor.
    chat = alice.window.chat
    chat.composer.focus_force()
    chat.composer.insert("1.0", "Will do ")
    chat.emoji_button.invoke()
    picker = chat.emoji_picker
    assert picker is not None
    windows.pump()
    picker.cells["👍"].event_generate("<Button-1>")
    windows.pump()
    assert not picker.winfo_exists()
    assert chat.composer.get("1.0", "end-1c") == "Will do 👍"
    windows.wait(lambda: alice.window.root.focus_get() is chat.composer)  # back to writing
    chat.composer.event_generate("<Return>")
    # Bob's list shows General's last message, who wrote it and when.
    tree = bob.window.chat.chat_list
    windows.wait(lambda: chat_preview(tree, GENERAL_KEY) == "alice: Will do 👍")
    assert len(str(tree.set(GENERAL_KEY, "meta")).split("\n")[0]) == 5  # HH:MM


def test_two_reply_edit_react_and_delete_and_a_third_offline_sees_the_end_state(
    windows: Windows, chat_server: ServerThread, link: Link
) -> None:
    anna = sign_up(windows, chat_server, "anna")
    boris = sign_up(windows, chat_server, "boris")
    vera = sign_up_through(windows, link.address, "vera")
    type_and_send(windows, boris, "Shall we ship on Friday?")
    windows.wait(lambda: "Shall we ship on Friday?" in shown(vera))
    windows.wait(lambda: "Shall we ship on Friday?" in shown(anna))

    # Vera's network goes away.
    link.cut()
    windows.wait(lambda: vera.window.chat.status_label.cget("text").startswith("Reconnecting"))

    # Anna answers Boris's message from its menu: the quote shows above her composer.
    choose(anna, "Shall we ship on Friday?", "Reply")
    chat = anna.window.chat
    windows.wait(lambda: chat.context_bar.winfo_ismapped())
    assert chat.context_title.cget("text") == "↩ Reply to boris"
    assert chat.context_text.cget("text") == "Shall we ship on Friday?"
    type_and_send(windows, anna, "Yes, Friday")
    assert not chat.context_bar.winfo_ismapped()
    windows.wait(lambda: "┃ boris: Shall we ship on Friday?\nYes, Friday" in shown(boris))

    # Boris edits his question: Up in the empty composer brings it back.
    composer = boris.window.chat.composer
    composer.focus_force()
    windows.pump()
    composer.event_generate("<Up>")
    windows.pump()
    assert composer.get("1.0", "end-1c") == "Shall we ship on Friday?"
    assert boris.window.chat.context_title.cget("text") == "✎ Edit message"
    composer.delete("1.0", "end")
    type_and_send(windows, boris, "Shall we ship on Friday the 12th?")
    windows.wait(lambda: "edited" in row_shows(anna, "Friday the 12th?"))
    # The reply's quote follows the edit.
    windows.wait(lambda: "┃ boris: Shall we ship on Friday the 12th?" in shown(anna))
    assert "Shall we ship on Friday?" not in shown(anna)

    # Both react with 👍: Anna from the menu, Boris with a click on her reaction.
    choose(anna, "Friday the 12th?", "👍", submenu="React")
    windows.wait(lambda: " 👍 1 " in row_shows(boris, "Friday the 12th?"))
    click_reaction(boris, "Friday the 12th?", "👍")
    windows.wait(lambda: " 👍 2 " in row_shows(anna, "Friday the 12th?"))
    windows.wait(lambda: " 👍 2 " in row_shows(boris, "Friday the 12th?"))
    boris_text = boris.window.chat.messages.text
    assert boris_text.tag_ranges("reaction_mine")  # his own, highlighted
    assert "👍" in boris_text.get(*boris_text.tag_ranges("reaction_mine")[:2])
    # Boris adds 🎉 and takes it back with a click.
    choose(boris, "Friday the 12th?", "🎉", submenu="React")
    windows.wait(lambda: " 🎉 1 " in row_shows(anna, "Friday the 12th?"))
    # His own window shows it from the reply or the live entry, whichever comes first: the
    # chip he clicks must be there (it was not yet, once, on a busy machine).
    windows.wait(lambda: " 🎉 1 " in row_shows(boris, "Friday the 12th?"))
    click_reaction(boris, "Friday the 12th?", "🎉")
    windows.wait(lambda: "🎉" not in row_shows(anna, "Friday the 12th?"))

    # Anna posts into the wrong chat and deletes it, after saying yes.
    type_and_send(windows, anna, "my password is hunter2")
    windows.wait(lambda: "hunter2" in shown(boris))
    choose(anna, "hunter2", "Delete…")
    dialog = anna.window.confirm_dialog
    assert dialog is not None
    assert dialog.label.cget("text") == "Delete this message? It is deleted for everyone."
    dialog.confirm_button.invoke()
    windows.wait(lambda: "hunter2" not in shown(boris))
    windows.wait(lambda: "hunter2" not in shown(anna))
    assert not dialog.winfo_exists()
    # Boris may not delete Anna's message in General, nor edit it.
    messages = boris.window.chat.messages
    menu = messages.menu_for(row_of(boris, "Yes, Friday"))
    assert menu is not None
    labels = [menu.entrycget(i, "label") for i in range(int(menu.index("end") or 0) + 1)]
    assert labels == ["Reply", "React", "Copy text"]

    # Vera comes back: her window catches up with how things ended.
    link.restore()
    windows.wait(lambda: vera.window.chat.status_label.cget("text") == "")
    windows.wait(lambda: "Yes, Friday" in shown(vera))
    windows.wait(lambda: " 👍 2 " in row_shows(vera, "Friday the 12th?"))
    timeline = shown(vera)
    assert "edited" in row_shows(vera, "Friday the 12th?")
    assert "Shall we ship on Friday?" not in timeline
    assert "┃ boris: Shall we ship on Friday the 12th?" in timeline
    assert "🎉" not in timeline
    assert "hunter2" not in timeline


def test_search_finds_a_message_and_opens_it_in_context(
    windows: Windows, chat_server: ServerThread
) -> None:
    async def talk() -> None:
        client = Client("127.0.0.1", chat_server.port)
        await client.connect()
        await client.register("boris", "password123")
        await client.send("Назначим встречу на пятницу")
        for n in range(120):
            await client.send(f"filler {n}")
        await client.close()

    asyncio.run(talk())
    anna = sign_up(windows, chat_server, "anna")
    windows.wait(lambda: "filler 119" in shown(anna))
    assert "встречу" not in shown(anna)  # not loaded: far above
    anna.window.root.focus_force()
    windows.pump()
    anna.window.root.event_generate("<Control-f>")
    windows.pump()
    search = anna.window.search_window
    assert search is not None
    search.query.set("встреча")
    search.entry.event_generate("<Return>")
    windows.wait(lambda: search.count == 1)
    text = search.results
    match = text.get(*text.tag_ranges("match")[:2])
    assert match.casefold() == "встречу"
    assert "General  ·  boris  ·  " in text.get("1.0", "end")
    search.choose(0)
    windows.wait(lambda: "Назначим встречу на пятницу" in shown(anna))
    messages = anna.window.chat.messages
    windows.wait(lambda: bool(messages.text.tag_ranges("highlight")))
    start = messages.text.tag_ranges("highlight")[0]
    windows.wait(lambda: messages.text.bbox(start) is not None)  # in view
    assert "filler 119" not in shown(anna)  # the page around it, not the newest
    assert anna.window.chat.messages.jump_button.winfo_ismapped()
    anna.window.chat.messages.jump_button.invoke()
    windows.wait(lambda: "filler 119" in shown(anna))


def test_a_quote_opens_what_it_answers_and_replies_stay_in_their_direct_chat(
    windows: Windows, chat_server: ServerThread
) -> None:
    async def talk() -> None:
        async with Client("127.0.0.1", chat_server.port) as other:
            await other.register("anna", "password123")
        client = Client("127.0.0.1", chat_server.port)
        await client.connect()
        await client.register("boris", "password123")
        question = await client.send("Where is the release checklist?")
        for n in range(120):
            await client.send(f"filler {n}")
        await client.post("general", "In the wiki, first page", reply_to=question.seq)
        await client.dm("anna", "psst, a secret")
        await client.close()

    asyncio.run(talk())
    anna = windows.open("anna", chat_server.address)
    windows.pump()
    fill_sign_in(anna, "anna")
    anna.window.sign_in_screen.sign_in_button.invoke()
    windows.wait(lambda: "In the wiki, first page" in shown(anna))
    assert "┃ boris: Where is the release checklist?" in shown(anna)
    assert "\nWhere is the release checklist?" not in shown(anna)  # far above: not loaded
    click_tag(anna, "quote")
    windows.wait(lambda: "\nWhere is the release checklist?" in shown(anna))
    messages = anna.window.chat.messages
    highlighted = messages.text.tag_ranges("highlight")
    assert "Where is the release checklist?" in messages.text.get(*highlighted[:2]) + (
        messages.text.get(highlighted[-2], highlighted[-1])
    )

    # A reply in a direct conversation stays in it.
    tree = anna.window.chat.chat_list
    windows.wait(lambda: tree.exists(dm_key("boris")))
    tree.focus_force()
    tree.selection_set(dm_key("boris"))
    windows.wait(lambda: "psst, a secret" in shown(anna))
    choose(anna, "psst, a secret", "Reply")
    type_and_send(windows, anna, "my lips are sealed")
    windows.wait(lambda: "✓" in row_shows(anna, "my lips are sealed"))
    assert "┃ boris: psst, a secret\nmy lips are sealed\n" in shown(anna)
    assert not tree.exists(dm_key("anna"))
    # Edited from its menu.
    choose(anna, "my lips are sealed", "Edit")
    composer = anna.window.chat.composer
    assert composer.get("1.0", "end-1c") == "my lips are sealed"
    composer.insert("end", ", promise")
    composer.focus_force()
    windows.pump()
    composer.event_generate("<Return>")
    windows.wait(lambda: "edited" in row_shows(anna, "my lips are sealed, promise"))
    # General's list entry still shows its last message, not the page opened at the quote.
    assert chat_preview(tree, GENERAL_KEY) == "boris: In the wiki, first page"
