"""Fixtures of the browser tests: Debian's Chromium driven by Playwright, against real servers.

Playwright's own browser download does not work everywhere (and is not needed): the tests
launch the system's Chromium (``/usr/bin/chromium``, Debian's ``chromium`` package, which
``.ci/run`` installs). They skip, saying why, only when no Chromium can be found.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

from beseda.server.app import Server

if TYPE_CHECKING:
    from playwright.async_api import Browser as PlaywrightBrowser
    from playwright.async_api import Locator, Page

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
"""Headless in a container: no sandbox (no user namespaces), nothing fetched from outside."""


def chromium_path() -> str | None:
    """The system's Chromium, or None."""
    for candidate in (
        os.environ.get("BESEDA_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def _need_browser() -> str:
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium: install Debian's chromium package (apt-get install chromium)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright package is missing: pip install -e '.[dev]'")
    return path


class Browser:
    """One headless Chromium; ``await browser.page(url, ...)`` opens a page in a new context
    (its own storage: another person, or the same person on another device)."""

    def __init__(self, chromium: PlaywrightBrowser) -> None:
        self.chromium = chromium
        self.errors: list[str] = []
        """Script errors of every page: a test ends by checking there were none."""

    async def page(
        self,
        url: str,
        *,
        locale: str = "en-GB",
        color_scheme: Literal["light", "dark"] = "light",
        width: int = 1280,
        height: int = 800,
    ) -> Page:
        context = await self.chromium.new_context(
            locale=locale,
            color_scheme=color_scheme,
            viewport={"width": width, "height": height},
        )
        page = await context.new_page()
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        await page.goto(url)
        return page


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Chromium, launched for the test. Playwright gives every launch a fresh temporary
    profile (user data directory) and removes it afterwards."""
    path = _need_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=path, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield Browser(chromium)
        finally:
            await chromium.close()


@pytest.fixture
def web_url(server: Server) -> str:
    """The in-process server's web app."""
    assert server.http_port is not None
    return f"http://127.0.0.1:{server.http_port}/"


SignUp = Callable[..., Awaitable["Page"]]


@pytest.fixture
def sign_up(browser: Browser, web_url: str) -> SignUp:
    """``await sign_up("anna")`` → a page of a new browser context, signed up as anna."""

    async def make(name: str, *, url: str | None = None, **page_options: Any) -> Page:
        page = await browser.page(url or web_url, **page_options)
        await create_account(page, name)
        return page

    return make


async def create_account(page: Page, name: str, password: str = "password123") -> None:
    await page.fill("#username", name)
    await page.fill("#password", password)
    await page.click("#create-account")
    await page.wait_for_selector("#me")


async def send(page: Page, text: str) -> None:
    """Type into the composer and press Enter."""
    await page.fill("#composer", text)
    await page.press("#composer", "Enter")


def message(page: Page, text: str) -> Locator:
    """The acknowledged message (✓ for one's own) with this text in the open conversation."""
    return page.locator(".message:not(.outgoing) .text", has_text=text)
