"""Replies, edits, deletes, reactions and search (protocol 4) in the web app: two people in
Chromium against a real server, a third who was away and comes back, and search opening a
hit far back in the history."""

from __future__ import annotations

import pytest
from playwright.async_api import Locator, Page, expect

from beseda.client import Client
from beseda.server.app import Server

from .conftest import Browser, SignUp, create_account, message, send

pytestmark = pytest.mark.timeout(120)


def row(page: Page, text: str) -> Locator:
    """The message row (not only its text) holding this text."""
    return page.locator(".message:not(.outgoing)", has=page.locator(".text", has_text=text))


async def menu(page: Page, text: str, *, right_click: bool = False) -> None:
    """Open a message's menu: its hover button, or a right click."""
    target = row(page, text)
    if right_click:
        await target.click(button="right")
    else:
        await target.hover()
        await target.locator(".more").click()
    await expect(page.locator("#actions-dialog")).to_be_visible()


async def sign_in(page: Page, name: str, password: str = "password123") -> None:
    await page.fill("#username", name)
    await page.fill("#password", password)
    await page.click("#sign-in")
    await page.wait_for_selector("#me")


async def test_two_people_reply_edit_react_and_delete_and_a_third_sees_the_end_state(
    sign_up: SignUp, browser: Browser, web_url: str
) -> None:
    cara = await sign_up("cara")
    await cara.context.close()  # away while the others talk
    anna = await sign_up("anna")
    boris = await sign_up("boris")
    await send(anna, "Встреча завтра в 10, кто придёт?")
    await expect(message(boris, "Встреча завтра в 10")).to_be_visible()

    # Boris replies: a quote above the composer, Escape cancels it, then he replies for real.
    await menu(boris, "Встреча завтра")
    await boris.click("#action-reply")
    context = boris.locator("#composer-context")
    await expect(context).to_contain_text("Reply to anna")
    await boris.press("#composer", "Escape")
    await expect(context).to_be_hidden()
    await menu(boris, "Встреча завтра", right_click=True)
    await boris.click("#action-reply")
    await send(boris, "I will")
    await expect(context).to_be_hidden()
    reply = row(anna, "I will")
    await expect(reply.locator(".quote")).to_contain_text("Встреча завтра в 10")

    # Anna edits with Up in the empty composer; both see the new text, the mark, the quote.
    await anna.click("#composer")
    await anna.press("#composer", "ArrowUp")
    await expect(anna.locator("#composer")).to_have_value("Встреча завтра в 10, кто придёт?")
    await expect(anna.locator("#composer-context")).to_contain_text("Editing message")
    await send(anna, "Встреча завтра в 11, кто придёт?")
    for page in (anna, boris):
        await expect(message(page, "Встреча завтра в 11")).to_be_visible()
        await expect(row(page, "Встреча завтра в 11").locator(".edited")).to_have_text("(edited)")
        await expect(row(page, "I will").locator(".quote")).to_contain_text("в 11")
    await expect(message(boris, "в 10")).to_have_count(0)

    # Reactions: Boris picks 👍; Anna adds hers by clicking the count; her own is highlighted.
    await menu(boris, "Встреча завтра")
    await boris.locator('#actions-dialog .reaction[data-emoji="👍"]').click()
    chip = row(anna, "Встреча завтра").locator('.reactions .reaction[data-emoji="👍"]')
    await expect(chip).to_have_text("👍 1")
    await expect(chip).not_to_have_class("reaction mine")
    await chip.click()
    await expect(chip).to_have_text("👍 2")
    await expect(chip).to_have_class("reaction mine")
    boris_chip = row(boris, "Встреча завтра").locator('.reaction[data-emoji="👍"]')
    await expect(boris_chip).to_have_text("👍 2")
    # Boris adds 🎉 and takes it back: a toggle.
    await menu(boris, "Встреча завтра")
    await boris.locator('#actions-dialog .reaction[data-emoji="🎉"]').click()
    party = row(anna, "Встреча завтра").locator('.reaction[data-emoji="🎉"]')
    await expect(party).to_have_text("🎉 1")
    await row(boris, "Встреча завтра").locator('.reaction[data-emoji="🎉"]').click()
    await expect(party).to_have_count(0)

    # Someone else's message in General: Boris may not edit or delete it (the server's rule).
    await menu(boris, "Встреча завтра")
    await expect(boris.locator("#action-reply")).to_be_visible()
    await expect(boris.locator("#action-edit")).to_have_count(0)
    await expect(boris.locator("#action-delete")).to_have_count(0)
    await boris.keyboard.press("Escape")

    # A delete asks first; Cancel keeps the message; the quote of a reply says it is gone.
    await send(anna, "Draft plan, ignore")
    await expect(message(boris, "Draft plan")).to_be_visible()
    await menu(boris, "Draft plan")
    await boris.click("#action-reply")
    await send(boris, "Which draft?")
    await expect(row(anna, "Which draft?").locator(".quote")).to_contain_text("Draft plan")
    await menu(anna, "Draft plan")
    await anna.click("#action-delete")
    await expect(anna.locator("#delete-dialog")).to_contain_text("Delete this message?")
    await anna.click("#cancel-delete")
    await expect(message(anna, "Draft plan")).to_be_visible()
    await menu(anna, "Draft plan")
    await anna.click("#action-delete")
    await anna.click("#confirm-delete")
    for page in (anna, boris):
        await expect(message(page, "Draft plan")).to_have_count(0)
        await expect(row(page, "Which draft?").locator(".quote")).to_contain_text("deleted message")

    # Cara comes back: the final state, not the way there.
    cara = await browser.page(web_url)
    await sign_in(cara, "cara")
    await expect(message(cara, "Встреча завтра в 11")).to_be_visible()
    await expect(row(cara, "Встреча завтра в 11").locator(".edited")).to_be_visible()
    cara_chip = row(cara, "Встреча завтра").locator(".reaction")
    await expect(cara_chip).to_have_count(1)
    await expect(cara_chip).to_have_text("👍 2")
    await expect(cara_chip).to_have_class("reaction")
    await expect(row(cara, "I will").locator(".quote")).to_contain_text("в 11")
    await expect(row(cara, "Which draft?").locator(".quote")).to_contain_text("deleted message")
    await expect(message(cara, "Draft plan")).to_have_count(0)
    await expect(message(cara, "в 10")).to_have_count(0)
    assert browser.errors == []


CUTTABLE_LINK = """(() => {
  const Native = window.WebSocket;
  const sockets = [];
  let cut = false;
  function Cuttable(url, protocols) {
    // While cut, every new connection goes to a closed port: refused, as with no network.
    const socket = new Native(cut ? url.replace(/\\/\\/[^/]+/, "//127.0.0.1:9") : url, protocols);
    sockets.push(socket);
    return socket;
  }
  Cuttable.prototype = Native.prototype;
  for (const name of ["CONNECTING", "OPEN", "CLOSING", "CLOSED"]) Cuttable[name] = Native[name];
  window.WebSocket = Cuttable;
  window.cutLink = () => { cut = true; for (const socket of sockets) socket.close(); };
  window.restoreLink = () => { cut = false; };
})();"""
"""The page's WebSocket, made cuttable by the test: ``cutLink()`` drops the connection and
refuses new ones until ``restoreLink()`` (Chromium's offline mode leaves WebSockets open)."""


async def test_changes_made_while_the_link_is_cut_arrive_by_sync_after_it_reconnects(
    sign_up: SignUp, browser: Browser, server: Server, web_url: str
) -> None:
    anna = await sign_up("anna")
    context = await browser.chromium.new_context(locale="en-GB")
    await context.add_init_script(CUTTABLE_LINK)
    boris = await context.new_page()
    boris.on("pageerror", lambda error: browser.errors.append(str(error)))
    await boris.goto(web_url)
    await create_account(boris, "boris")
    await send(anna, "Original words")
    await send(anna, "Doomed words")
    await send(anna, "Answered words")
    await expect(message(boris, "Answered words")).to_be_visible()
    await menu(boris, "Answered words")
    await boris.click("#action-reply")
    await send(boris, "My answer")
    await expect(message(anna, "My answer")).to_be_visible()
    await boris.evaluate("cutLink()")
    await expect(boris.locator("#status")).to_contain_text("Reconnecting")
    # Meanwhile Anna edits, reacts, deletes (from the client library, protocol 4).
    writer = Client("127.0.0.1", server.port)
    await writer.connect()
    try:
        await writer.login("anna", "password123")
        await writer.edit("general", 1, "Corrected words")
        await writer.react("general", 1, "👍")
        await writer.delete("general", 2)
        await writer.edit("general", 3, "Answered, edited")
    finally:
        await writer.close()
    # Nothing of it reached Boris yet.
    await expect(message(boris, "Original words")).to_be_visible()
    await expect(boris.locator("#status")).to_contain_text("Reconnecting")
    await boris.evaluate("restoreLink()")
    await expect(boris.locator("#status")).to_have_text("", timeout=30_000)
    # The changes came through the cursors (sync), each once; the quote followed its edit.
    await expect(message(boris, "Corrected words")).to_be_visible()
    await expect(row(boris, "Corrected words").locator(".reaction")).to_have_text("👍 1")
    await expect(message(boris, "Doomed words")).to_have_count(0)
    await expect(row(boris, "My answer").locator(".quote")).to_contain_text("Answered, edited")
    await expect(message(anna, "Doomed words")).to_have_count(0)
    await context.close()
    assert browser.errors == []


async def test_search_finds_word_forms_and_parts_and_opens_the_hit_in_context(
    sign_up: SignUp, browser: Browser, server: Server
) -> None:
    boris = await sign_up("boris")
    writer = Client("127.0.0.1", server.port)
    await writer.connect()
    try:
        await writer.register("anna", "password123")
        await writer.post("general", "Перенесём встречу на пятницу 🎉")
        # Enough after it that it is not on the first page of history.
        for n in range(80):
            await writer.post("general", f"filler {n}")
        await writer.post("general", "Still on for Friday?", reply_to=1)
    finally:
        await writer.close()
    await expect(message(boris, "filler 79")).to_be_visible()
    await expect(message(boris, "Перенесём")).to_have_count(0)
    await boris.keyboard.press("Control+f")
    await expect(boris.locator("#search-dialog")).to_be_visible()
    await boris.fill("#search-query", "встреча")
    hit = boris.locator("#search-results .hit")
    await expect(hit).to_have_count(1)
    await expect(hit.locator("mark")).to_have_text("встречу")
    # A part of a word.
    await boris.fill("#search-query", "еренес")
    await expect(hit.locator("mark")).to_have_text("Перенесём")
    await boris.fill("#search-query", "nothing-like-this")
    await expect(boris.locator("#search-status")).to_have_text("Nothing found.")
    await boris.fill("#search-query", "встреча")
    await expect(hit.locator("mark")).to_have_text("встречу")
    await hit.click()
    await expect(boris.locator("#search-dialog")).to_have_count(0)
    target = row(boris, "Перенесём встречу")
    await expect(target).to_be_in_viewport()
    await expect(target).to_have_class("message flash row")
    # The messages around it are loaded, and the newest ones are still there below.
    await expect(message(boris, "filler 0")).to_have_count(1)
    # (the newest, far below, are not drawn: only rows near the viewport are.)
    await expect(message(boris, "Still on for Friday?")).to_have_count(0)
    await boris.click("#jump")
    await expect(message(boris, "Still on for Friday?")).to_be_visible()
    # A quote's click opens its original the same way, loading it when it is not.
    cara = await sign_up("cara")
    await expect(message(cara, "Перенесём")).to_have_count(0)
    await row(cara, "Still on for Friday?").locator(".quote").click()
    await expect(row(cara, "Перенесём встречу")).to_be_in_viewport()
    assert browser.errors == []


async def test_the_new_strings_speak_russian(sign_up: SignUp, browser: Browser) -> None:
    anna = await sign_up("anna", locale="ru-RU")
    await send(anna, "Привет")
    await menu(anna, "Привет")
    await expect(anna.locator("#action-reply")).to_have_text("Ответить")
    await expect(anna.locator("#action-edit")).to_have_text("Изменить")
    await expect(anna.locator("#action-delete")).to_have_text("Удалить")
    await anna.click("#action-delete")
    await expect(anna.locator("#delete-dialog h2")).to_have_text("Удалить это сообщение?")
    await anna.click("#cancel-delete")
    await expect(anna.locator("#search")).to_have_attribute("aria-label", "Поиск сообщений")
    await anna.click("#search")
    await expect(anna.locator("#search-query")).to_have_attribute("placeholder", "Поиск сообщений")
    assert browser.errors == []


async def test_the_timeline_groups_a_senders_messages_and_links_only_web_addresses(
    sign_up: SignUp, browser: Browser
) -> None:
    anna = await sign_up("anna")
    boris = await sign_up("boris")
    await send(anna, "See https://example.org/plan, please")
    await send(anna, "javascript:alert(1) is no link")
    await send(boris, "Looking")
    await expect(message(anna, "Looking")).to_be_visible()
    # A date line; Anna's two messages under one header (one avatar), Boris's with his own.
    await expect(anna.locator(".day")).to_have_text("Today")
    first = row(anna, "See https://")
    await expect(first.locator(".avatar")).to_have_text("AN")
    second = row(anna, "javascript:")
    await expect(second).to_have_class("message own grouped row")
    await expect(second.locator(".avatar")).to_have_count(0)
    await expect(row(anna, "Looking").locator(".avatar")).to_have_text("BO")
    # The address is a link (without its trailing comma), opening apart from the app.
    link = first.locator("a")
    await expect(link).to_have_text("https://example.org/plan")
    await expect(link).to_have_attribute("href", "https://example.org/plan")
    await expect(link).to_have_attribute("rel", "noopener noreferrer")
    await expect(second.locator("a")).to_have_count(0)
    assert browser.errors == []
