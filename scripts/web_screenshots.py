"""Take docs/web-*.png: the web app in Chromium against a real server with a sample team.

    .venv/bin/python scripts/web_screenshots.py [--out docs]

Writes web.png (desktop, light), web-dark.png (the dark theme), web-phone.png and
web-phone-chat.png (phone width: the list, then a conversation) and web-ru.png (Russian).
Needs Debian's chromium package.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from playwright.async_api import Browser, Page, async_playwright
from web_rig import CHROMIUM, CHROMIUM_ARGS, server

from beseda.client import Client

PASSWORD = "password123"
TEAM = ["anna", "boris", "elena", "carol", "dmitry"]
GENERAL = [
    ("boris", "Morning all! The build is green again 😀"),
    ("elena", "Привет! Кто-нибудь уже смотрел новый релиз?"),
    (
        "carol",
        "Yes — the reconnect is much smoother now. I restarted the server twice and nothing "
        "got lost or shown twice.",
    ),
    ("anna", "That was the cursor work. Every entry has a seq; the app resumes after it."),
    ("dmitry", "Отлично, значит можно обновлять сервер днём ☕"),
    ("dmitry", "Release notes: https://example.org/beseda/releases"),
    ("boris", "Lunch at 12:30?"),
]


async def seed(port: int) -> dict[str, Client]:
    clients: dict[str, Client] = {}
    for name in TEAM:
        client = Client("127.0.0.1", port)
        await client.connect()
        await client.register(name, PASSWORD)
        clients[name] = client
    seqs = []
    for name, text in GENERAL:
        seqs.append((await clients[name].post("general", text)).seq)
    # Protocol 4 at work: reactions, an edit, a reply quoting its original.
    await clients["anna"].react("general", seqs[2], "👍")
    await clients["boris"].react("general", seqs[2], "👍")
    await clients["elena"].react("general", seqs[2], "🎉")
    await clients["dmitry"].edit(
        "general", seqs[4], "Отлично, значит можно обновлять сервер днём ☕ 🚀"
    )
    await clients["anna"].post("general", "Sure, see you there.", reply_to=seqs[-1])
    design = await clients["anna"].create_channel(
        "design", topic="Logos, colours and the new icon", members=["boris", "elena", "carol"]
    )
    await clients["elena"].post(design.conversation, "I pushed three versions of the icon.")
    await clients["anna"].post(design.conversation, "The second one reads best at 16 px.")
    await clients["anna"].create_channel("ops", topic="Deploys and incidents", members=["dmitry"])
    await clients["carol"].dm("anna", "Do you have a minute after lunch?")
    await clients["anna"].dm("carol", "Yes, 13:30 works.")
    await clients["boris"].create_group(["anna", "dmitry"])
    return clients


async def unread(clients: dict[str, Client]) -> None:
    """What arrives while Anna looks at General: badges, a mention, a DM."""
    design = next(c for c in await clients["elena"].conversations() if c.name == "design")
    await clients["elena"].post(design.conversation, "@anna which blue did we pick?")
    await clients["boris"].post(design.conversation, "I liked the darker one.")
    await clients["dmitry"].dm("anna", "The deploy is done, all green.")


async def signed_in(browser: Browser, url: str, **options: object) -> Page:
    context = await browser.new_context(**options)  # type: ignore[arg-type]
    page = await context.new_page()
    await page.goto(url)
    await page.fill("#username", "anna")
    await page.fill("#password", PASSWORD)
    await page.click("#sign-in")
    await page.wait_for_selector("#me")
    await page.wait_for_selector(".conv")
    return page


async def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp, server(Path(tmp)) as running:
        clients = await seed(running.port)
        try:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
                )
                desktop = {"viewport": {"width": 1200, "height": 720}, "locale": "en-GB"}
                light = await signed_in(browser, running.url, color_scheme="light", **desktop)
                dark = await signed_in(browser, running.url, color_scheme="dark", **desktop)
                russian = await signed_in(
                    browser,
                    running.url,
                    color_scheme="light",
                    viewport={"width": 1200, "height": 720},
                    locale="ru-RU",
                )
                phone = await signed_in(
                    browser,
                    running.url,
                    color_scheme="light",
                    viewport={"width": 390, "height": 780},
                    locale="en-GB",
                    device_scale_factor=2,
                    is_mobile=True,
                    has_touch=True,
                )
                for page in (light, dark, russian):
                    await page.wait_for_selector(".message")
                await unread(clients)
                for page in (light, dark, russian, phone):
                    await page.wait_for_selector(".badge.mention")
                    await page.wait_for_timeout(300)
                await light.screenshot(path=str(out / "web.png"))
                await dark.screenshot(path=str(out / "web-dark.png"))
                await russian.screenshot(path=str(out / "web-ru.png"))
                await phone.screenshot(path=str(out / "web-phone.png"))
                await phone.locator(".conv", has_text="design").click()
                await phone.wait_for_selector(".message.mentioned")
                await phone.wait_for_timeout(300)
                await phone.screenshot(path=str(out / "web-phone-chat.png"))
                await browser.close()
        finally:
            for client in clients.values():
                await client.close()
    for name in ("web.png", "web-dark.png", "web-ru.png", "web-phone.png", "web-phone-chat.png"):
        print(out / name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    target = parser.parse_args().out
    target.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(target))
