"""The composer's emoji picker and the conversation list's last-message previews in the web
app: two people in Chromium against a real server."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Locator, Page, expect

from .conftest import Browser, SignUp, message

pytestmark = pytest.mark.timeout(90)

CLOCK = re.compile(r"^\d{1,2}:\d{2}")
"""Today's messages show the time of day."""


def conv(page: Page, title: str) -> Locator:
    """The conversation list's row of this title (its preview may name others)."""
    return page.locator(".conv", has=page.locator(".name", has_text=title))


async def test_the_emoji_picker_inserts_at_the_caret_and_the_emoji_is_posted(
    sign_up: SignUp, browser: Browser
) -> None:
    anna = await sign_up("anna")
    boris = await sign_up("boris")
    await anna.fill("#composer", "Great !")
    await anna.eval_on_selector("#composer", "c => c.setSelectionRange(6, 6)")
    grid = anna.locator("#emoji-grid")
    await expect(grid).to_be_hidden()
    button = anna.get_by_role("button", name="Insert emoji")
    await button.click()
    await expect(grid).to_be_visible()
    await expect(grid.locator("button")).to_have_count(40)
    # Escape closes it and gives the focus back to its button.
    await anna.keyboard.press("Escape")
    await expect(grid).to_be_hidden()
    await expect(button).to_be_focused()
    # The keyboard: Enter opens it on the first emoji, → moves to the next, Enter chooses.
    await anna.keyboard.press("Enter")
    await expect(grid.locator("button").first).to_be_focused()
    await anna.keyboard.press("ArrowRight")
    await anna.keyboard.press("Enter")
    await expect(grid).to_be_hidden()
    await expect(anna.locator("#composer")).to_have_value("Great 😃!")
    await expect(anna.locator("#composer")).to_be_focused()
    await anna.keyboard.press("Enter")
    await expect(message(boris, "Great 😃!")).to_be_visible()
    assert browser.errors == []


async def test_the_list_shows_each_conversations_last_message_and_follows_new_ones(
    sign_up: SignUp, browser: Browser
) -> None:
    anna = await sign_up("anna")
    boris = await sign_up("boris")
    await boris.locator(".person", has_text="anna").click()
    await expect(boris.locator("#title")).to_have_text("anna")
    await boris.fill("#composer", "Just   between\nus")
    await boris.press("#composer", "Enter")
    dm = conv(anna, "boris")
    await expect(dm.locator(".conv-last")).to_have_text("Just between us")
    await expect(dm.locator(".conv-time")).to_have_text(CLOCK)
    # After a reload Anna's app knows only the list: it fetches the last message (limit 1).
    await anna.reload()
    await expect(dm.locator(".conv-last")).to_have_text("Just between us")
    await expect(dm.locator(".conv-time")).to_have_text(CLOCK)
    # A message in another conversation changes that row while Anna reads General.
    await conv(boris, "General").click()
    await boris.fill("#composer", "Lunch at one?")
    await boris.press("#composer", "Enter")
    general = conv(anna, "General")
    await expect(general.locator(".conv-last")).to_have_text("boris: Lunch at one?")
    await expect(dm.locator(".conv-last")).to_have_text("Just between us")
    # Boris sees his own as his.
    await expect(conv(boris, "anna").locator(".conv-last")).to_have_text("You: Just between us")
    assert browser.errors == []
