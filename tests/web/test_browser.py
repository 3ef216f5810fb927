"""The web app in a real Chromium against a real server: what two people see, in the browser
and beside a client-library user; across a server restart; in Russian, at phone width and in
the dark theme."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from playwright.async_api import Page, expect

from beseda.client import Client, MessageReceived
from beseda.server.app import Server
from conftest import ServerProcess

from .conftest import Browser, SignUp, create_account, message, send

pytestmark = pytest.mark.timeout(90)


async def open_conversation(page: Page, title: str) -> None:
    await page.locator(".conv", has_text=title).first.click()
    await expect(page.locator("#title")).to_have_text(title)


async def test_two_people_sign_up_and_talk_in_general_both_ways(
    sign_up: SignUp, browser: Browser
) -> None:
    anna = await sign_up("anna")
    boris = await sign_up("boris")
    await expect(anna.locator("#title")).to_have_text("General")
    await send(anna, "Hello from Anna")
    await expect(message(boris, "Hello from Anna")).to_be_visible()
    await expect(message(anna, "Hello from Anna")).to_be_visible()
    await send(boris, "Hi Anna,\nBoris here")
    await expect(message(anna, "Boris here")).to_be_visible()
    # Shift+Enter made a new line inside the one message.
    text = await message(anna, "Boris here").inner_text()
    assert text == "Hi Anna,\nBoris here"
    assert await boris.title() == "boris — beseda"
    assert browser.errors == []


async def test_a_direct_message_shows_an_unread_badge_until_it_is_read(
    sign_up: SignUp, browser: Browser
) -> None:
    boris = await sign_up("boris")
    anna = await sign_up("anna")
    await anna.locator(".person", has_text="boris").click()
    await expect(anna.locator("#title")).to_have_text("boris")
    await send(anna, "Just between us")
    await expect(message(anna, "Just between us")).to_be_visible()
    # Boris, reading General, sees the conversation appear with one unread message.
    row = boris.locator(".conv", has_text="anna")
    await expect(row.locator(".badge")).to_have_text("1")
    await expect(boris).to_have_title("(1) boris — beseda")
    await row.click()
    await expect(message(boris, "Just between us")).to_be_visible()
    await expect(row.locator(".badge")).to_have_count(0)
    await expect(boris).to_have_title("boris — beseda")
    # The read marker is the server's: Boris's other device has no badge either.
    await send(boris, "Sure")
    await expect(message(anna, "Sure")).to_be_visible()
    assert browser.errors == []


async def test_a_channel_is_created_joined_and_a_mention_counts(
    sign_up: SignUp, browser: Browser
) -> None:
    anna = await sign_up("anna")
    boris = await sign_up("boris")
    await anna.click("#new-channel")
    await anna.fill("#channel-name", "design")
    await anna.fill("#channel-topic", "Logos and colours")
    await anna.click("#create-channel")
    await expect(anna.locator("#title")).to_have_text("# design")
    await expect(anna.locator("#subtitle")).to_have_text("Logos and colours")
    await boris.click("#browse-channels")
    join = boris.locator('#channel-list button[data-conversation="c:1"]')
    await expect(join).to_have_text("Join")
    await join.click()
    await expect(boris.locator("#title")).to_have_text("# design")
    await expect(boris.locator(".event", has_text="boris joined")).to_be_visible()
    await send(boris, "Hello designers")
    await expect(message(anna, "Hello designers")).to_be_visible()
    # Boris goes back to General; Anna mentions him in the channel.
    await open_conversation(boris, "General")
    await send(anna, "@boris which blue?")
    row = boris.locator(".conv", has_text="# design")
    await expect(row.locator(".badge.mention")).to_have_text("@1")
    await row.click()
    await expect(boris.locator(".message.mentioned .text", has_text="which blue?")).to_be_visible()
    # Members: both, with their roles.
    await anna.click("#members")
    await expect(anna.locator("#member-list li")).to_have_count(2)
    await expect(anna.locator("#member-list")).to_contain_text("owner")
    assert browser.errors == []


async def test_a_browser_user_and_a_client_library_user_talk(
    sign_up: SignUp, server: Server, browser: Browser
) -> None:
    vera = Client("127.0.0.1", server.port)
    await vera.connect()
    try:
        await vera.register("vera", "password123")
        anna = await sign_up("anna")
        await vera.post("general", "Hello from the library")
        await expect(message(anna, "Hello from the library")).to_be_visible()
        await send(anna, "Hello from the browser")
        got = await wait_for_message(vera, "Hello from the browser")
        assert got.sender == "anna"
        # A direct message from the library arrives in its own conversation.
        await vera.dm("anna", "psst")
        row = anna.locator(".conv", has_text="vera")
        await expect(row.locator(".badge")).to_have_text("1")
    finally:
        await vera.close()
    assert browser.errors == []


async def wait_for_message(client: Client, text: str, timeout: float = 10.0) -> object:
    async def find() -> object:
        while True:
            event = await client.next_event()
            if isinstance(event, MessageReceived) and event.message.text == text:
                return event.message

    return await asyncio.wait_for(find(), timeout)


async def test_messages_typed_while_the_server_restarts_each_arrive_once(
    browser: Browser, server_process: Callable[..., ServerProcess]
) -> None:
    process = server_process()
    url = f"http://127.0.0.1:{process.http_port}/"
    anna = await browser.page(url)
    await create_account(anna, "anna")
    await send(anna, "before")
    await expect(message(anna, "before")).to_be_visible()
    process.kill()
    await expect(anna.locator("#status")).to_contain_text("Reconnecting")
    texts = [f"offline {n}" for n in range(1, 4)]
    for text in texts:
        await send(anna, text)
    await expect(anna.locator(".message.outgoing")).to_have_count(3)
    await expect(anna.locator("#status")).to_contain_text("3 messages wait to be sent.")
    await asyncio.to_thread(process.start)
    for text in texts:
        await expect(message(anna, text)).to_be_visible(timeout=30_000)
    await expect(anna.locator(".message.outgoing")).to_have_count(0)
    await expect(anna.locator("#status")).to_have_text("")
    # The server has each exactly once, in the order typed.
    reader = Client("127.0.0.1", process.port)
    await reader.connect()
    try:
        await reader.register("reader", "password123")
        page = await reader.history("general")
        stored = [entry.text for entry in page.entries if entry.kind == "message"]
    finally:
        await reader.close()
    assert stored == ["before", *texts]
    assert browser.errors == []


async def test_a_remembered_session_survives_a_reload(sign_up: SignUp, browser: Browser) -> None:
    anna = await sign_up("anna")
    await send(anna, "still here")
    await anna.reload()
    await expect(message(anna, "still here")).to_be_visible()
    await expect(anna.locator("#me")).to_have_text("anna")
    # Signing out forgets it.
    await anna.click("#sign-out")
    await expect(anna.locator("#sign-in")).to_be_visible()
    await anna.reload()
    await expect(anna.locator("#sign-in")).to_be_visible()
    assert browser.errors == []


async def test_older_history_loads_on_scroll_and_keeps_the_reader_in_place(
    sign_up: SignUp, server: Server, browser: Browser
) -> None:
    writer = Client("127.0.0.1", server.port)
    await writer.connect()
    try:
        await writer.register("writer", "password123")
        for n in range(1, 161):
            await writer.post("general", f"message {n}")
    finally:
        await writer.close()
    anna = await sign_up("anna")
    await expect(message(anna, "message 160")).to_be_visible()
    timeline = anna.locator("#timeline")
    # The first page is the newest 50 (seqs 111 to 160). Scrolled near its top, 111 is drawn;
    # a little further up the page before it is fetched.
    top = await timeline.evaluate(
        """async el => {
             el.scrollTop = 500;
             await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
             el.scrollTop = 300;
             return el.querySelector('[data-seq="111"]').getBoundingClientRect().top;
           }"""
    )
    await expect(anna.locator('.message[data-seq="110"]')).to_be_attached()
    await anna.wait_for_timeout(300)  # measuring, re-laying out: nothing may move
    box = await anna.locator('.message[data-seq="111"]').bounding_box()
    assert box is not None
    assert abs(box["y"] - top) < 2, (box, top)
    # The page that arrived went in above: the reader is not at its top.
    assert await timeline.evaluate("el => el.scrollTop") > 1000
    # Only the rows near the viewport are in the document.
    assert await anna.locator("#timeline .row").count() < 60
    assert browser.errors == []


async def test_the_interface_speaks_russian_when_the_browser_does(
    browser: Browser, web_url: str
) -> None:
    page = await browser.page(web_url, locale="ru-RU")
    await expect(page.locator("#sign-in")).to_have_text("Войти")
    await create_account(page, "Вера")
    await expect(page.locator("#title")).to_have_text("Общий")
    await expect(page.locator("#composer")).to_have_attribute("placeholder", "Напишите сообщение…")
    await expect(page.locator("html")).to_have_attribute("lang", "ru")
    assert browser.errors == []


async def test_at_phone_width_the_list_and_the_conversation_take_turns(
    sign_up: SignUp, browser: Browser
) -> None:
    page = await sign_up("anna", width=390, height=844)
    conversation = page.locator("main.conversation")
    sidebar = page.locator("aside.sidebar")
    await expect(conversation).to_be_hidden()
    await expect(sidebar).to_be_visible()
    await open_conversation(page, "General")
    await expect(sidebar).to_be_hidden()
    await expect(conversation).to_be_visible()
    box = await conversation.bounding_box()
    assert box is not None
    assert box["width"] == 390
    await page.click("#back")
    await expect(sidebar).to_be_visible()
    assert browser.errors == []


async def test_the_dark_theme_follows_the_system_setting(sign_up: SignUp, browser: Browser) -> None:
    dark = await sign_up("anna", color_scheme="dark")
    light = await sign_up("boris", color_scheme="light")

    async def background(page: Page) -> list[int]:
        colour = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        return [int(part) for part in colour.removeprefix("rgb(").rstrip(")").split(",")]

    assert sum(await background(dark)) < 100
    assert sum(await background(light)) > 600
    assert browser.errors == []
