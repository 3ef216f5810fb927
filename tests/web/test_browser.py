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
    # By its name: a row's last-message preview may name someone else's conversation.
    await page.locator(".conv", has=page.locator(".name", has_text=title)).first.click()
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
             return el.querySelector('[data-seq="111"]').getBoundingClientRect().bottom;
           }"""
    )
    await expect(anna.locator('.message[data-seq="110"]')).to_be_attached()
    await anna.wait_for_timeout(300)  # measuring, re-laying out: nothing may move
    # (Its bottom: 111 loses its header once the page before it, by the same sender, is in:
    # the rows grouped under one header. What is below stays where the reader saw it.)
    box = await anna.locator('.message[data-seq="111"]').bounding_box()
    assert box is not None
    assert abs(box["y"] + box["height"] - top) < 2, (box, top)
    # The page that arrived went in above: the reader is not at its top.
    assert await timeline.evaluate("el => el.scrollTop") > 1000
    # Only the rows near the viewport are in the document (600 px of overscan either side;
    # grouped rows are short, so that is more rows than it was with a header on each).
    drawn = await anna.locator("#timeline .row").count()
    assert drawn < 80, drawn
    far = await timeline.evaluate(
        """el => { const view = el.getBoundingClientRect();
             return [...el.querySelectorAll('.row')].filter(row => {
               const box = row.getBoundingClientRect();
               return box.bottom < view.top - 700 || box.top > view.bottom + 700; }).length; }"""
    )
    assert far == 0
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


async def test_the_keyboard_enter_sends_shift_enter_breaks_the_line_ctrl_k_switches(
    sign_up: SignUp, browser: Browser
) -> None:
    boris = await sign_up("boris")
    anna = await sign_up("anna")
    composer = anna.locator("#composer")
    await composer.click()
    await anna.keyboard.type("first line")
    await anna.keyboard.press("Shift+Enter")
    await anna.keyboard.type("second line")
    await expect(composer).to_have_value("first line\nsecond line")
    await anna.keyboard.press("Enter")
    await expect(composer).to_have_value("")
    assert await message(boris, "second line").inner_text() == "first line\nsecond line"
    # Ctrl+K: a person found by the server opens the direct conversation with them.
    await anna.keyboard.press("Control+k")
    await expect(anna.locator("#switcher-input")).to_be_focused()
    await anna.keyboard.type("bor")
    await expect(anna.locator("#switcher-list li", has_text="boris")).to_be_visible()
    await anna.keyboard.press("Enter")
    await expect(anna.locator("#title")).to_have_text("boris")
    # Escape closes the switcher without going anywhere.
    await anna.keyboard.press("Control+k")
    await expect(anna.locator("#switcher-input")).to_be_visible()
    await anna.keyboard.press("Escape")
    await expect(anna.locator("#switcher-dialog")).to_have_count(0)
    await expect(anna.locator("#title")).to_have_text("boris")
    assert browser.errors == []


async def test_the_installed_app_opens_offline_from_its_service_worker(
    browser: Browser, web_url: str
) -> None:
    page = await browser.page(web_url)
    await expect(page.locator("#sign-in")).to_be_visible()
    manifest = await page.evaluate(
        "fetch(document.querySelector('link[rel=manifest]').href).then(r => r.json())"
    )
    assert manifest["display"] == "standalone"
    assert {icon["sizes"] for icon in manifest["icons"]} >= {"192x192", "512x512"}
    cached = await page.evaluate(
        """async () => { await navigator.serviceWorker.ready;
             const keys = await caches.keys();
             const cache = await caches.open(keys[0]);
             return (await cache.keys()).map(r => new URL(r.url).pathname); }"""
    )
    assert "/" in cached
    assert any(path.startswith("/app.") and path.endswith(".js") for path in cached)
    assert not any(path in ("/ws", "/health") for path in cached)
    # With the network gone the shell still opens (and says it cannot reach the server).
    await page.context.set_offline(True)
    await page.reload()
    await expect(page.locator("#sign-in")).to_be_visible()
    await page.context.set_offline(False)
    assert browser.errors == []


async def test_a_mention_or_a_direct_message_notifies_while_the_tab_is_hidden(
    sign_up: SignUp, browser: Browser
) -> None:
    boris = await sign_up("boris")
    anna = await browser.page(boris.url)
    await anna.context.grant_permissions(["notifications"])
    # Record notifications instead of showing them, and let the page believe it is hidden.
    await anna.add_init_script(
        """window.__shown = [];
           window.Notification = class { static permission = "granted";
             constructor(title, options) { window.__shown.push([title, options.body]); } };
           Object.defineProperty(document, "visibilityState", { get: () => "hidden" });"""
    )
    await anna.reload()
    await create_account(anna, "anna")
    await send(boris, "nothing for anna here")
    await send(boris, "@anna look at this")
    await boris.fill("#people-search", "ann")  # the directory as the server has it now
    await boris.locator(".person", has_text="anna").click()
    await send(boris, "and a private word")
    await expect(anna.locator(".conv .name", has_text="boris")).to_be_visible()
    shown = await anna.evaluate("window.__shown")
    assert shown == [
        ["boris mentioned you", "@anna look at this"],
        ["boris wrote to you", "and a private word"],
    ]
    assert browser.errors == []


async def test_an_owner_renames_sets_the_topic_and_removes_a_member(
    sign_up: SignUp, browser: Browser
) -> None:
    anna = await sign_up("anna")
    boris = await sign_up("boris")
    await anna.click("#new-channel")
    await anna.fill("#channel-name", "ops")
    await anna.click("#create-channel")
    await expect(anna.locator("#title")).to_have_text("# ops")
    await anna.click("#members")
    await anna.fill("#invite-names", "boris")
    await anna.click("#invite")
    await expect(anna.locator("#member-list li")).to_have_count(2)
    await anna.keyboard.press("Escape")
    await expect(boris.locator(".conv", has_text="# ops")).to_be_visible()
    await anna.click("#settings")
    await anna.fill("#settings-name", "operations")
    await anna.fill("#settings-topic", "Deploys and incidents")
    await anna.locator("#settings-dialog button[type=submit]").click()
    await expect(anna.locator("#title")).to_have_text("# operations")
    await open_conversation(boris, "# operations")
    await expect(boris.locator("#subtitle")).to_have_text("Deploys and incidents")
    await expect(boris.locator(".event", has_text="anna added boris")).to_be_visible()
    # Removed, Boris reads what he could and can post no more.
    await anna.click("#members")
    await anna.locator("#member-list li", has_text="boris").locator("button.danger").click()
    await expect(anna.locator("#member-list li")).to_have_count(1)
    await expect(boris.locator(".event", has_text="anna removed boris")).to_be_visible()
    await expect(boris.locator("#composer")).to_be_disabled()
    assert browser.errors == []
