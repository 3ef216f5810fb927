"""How fast the web app is, measured in Chromium against a real server (figures, not a test).

    .venv/bin/python scripts/web_speed.py [--messages 10000] [--runs 5]

- first load: the bytes Chromium transferred to show the sign-in page from an empty cache
  (compressed, headers included), file by file: the app shell;
- time to interactive: navigation start to the sign-in form in place (a first visit), and to
  General's newest messages on screen (a remembered session), the median of ``--runs``;
- scrolling: ``--messages`` messages in General, all loaded by scrolling up (pages of 50),
  then scrolled through top to bottom at 400 px a frame: frame intervals (median, p95, max),
  frames over 50 ms, and the most message rows in the document at once; an idle page's frame
  interval in the same run is the reference.

The results are written to docs/performance.md's web section by hand, with the date.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, async_playwright
from web_rig import CHROMIUM, CHROMIUM_ARGS, server

from beseda.client import Client

PASSWORD = "password123"
STATIC = Path(__file__).resolve().parents[1] / "src" / "beseda" / "web" / "static"
READY = """
window.__marks = {};
new MutationObserver(() => {
  if (!window.__marks.form && document.querySelector('#username'))
    window.__marks.form = performance.now();
  if (!window.__marks.chat && document.querySelector('#timeline .message'))
    window.__marks.chat = performance.now();
}).observe(document, {subtree: true, childList: true});
"""


def encoding_of(headers: dict[str, str]) -> str:
    found = {k.lower(): v for k, v in headers.items()}.get("content-encoding")
    return found or "identity"


def shell_files(url: str) -> list[tuple[str, int, int]]:
    """Every file of the shipped app: its size, and its size as the server sends it to a
    browser that accepts gzip (the service worker fetches them all once)."""
    out = []
    for path in sorted(STATIC.iterdir()):
        request = urllib.request.Request(url + path.name, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request) as response:
            body = response.read()
        out.append((path.name, path.stat().st_size, len(body)))
    return out


async def first_load(browser: Browser, url: str) -> tuple[int, list[tuple[str, int, str]]]:
    context = await browser.new_context()
    page = await context.new_page()
    cdp = await context.new_cdp_session(page)
    urls: dict[str, tuple[str, str]] = {}
    sizes: dict[str, int] = {}
    cdp.on(
        "Network.responseReceived",
        lambda e: urls.__setitem__(
            e["requestId"],
            (e["response"]["url"], encoding_of(e["response"]["headers"])),
        ),
    )
    cdp.on(
        "Network.loadingFinished",
        lambda e: sizes.__setitem__(e["requestId"], int(e["encodedDataLength"])),
    )
    await cdp.send("Network.enable")
    await page.goto(url)
    await page.wait_for_selector("#username")
    # The service worker caches the shell in the background: wait for it to finish.
    await page.evaluate("navigator.serviceWorker.ready.then(() => true)")
    await page.wait_for_timeout(500)
    files = [
        (urls[rid][0].removeprefix(url) or "/", size, urls[rid][1])
        for rid, size in sizes.items()
        if rid in urls and not urls[rid][0].endswith("/ws")
    ]
    await context.close()
    # A file fetched twice (by the page, then by the service worker) counts once: the page's.
    seen: dict[str, tuple[str, int, str]] = {}
    for name, size, encoding in files:
        seen.setdefault(name, (name, size, encoding))
    shell = sorted(seen.values())
    return sum(size for _, size, _ in shell), shell


async def interactive(browser: Browser, url: str, runs: int) -> tuple[list[float], list[float]]:
    cold: list[float] = []
    for _ in range(runs):
        context = await browser.new_context()
        await context.add_init_script(READY)
        page = await context.new_page()
        await page.goto(url)
        await page.wait_for_selector("#username")
        cold.append(await page.evaluate("window.__marks.form"))
        await context.close()
    warm: list[float] = []
    context = await browser.new_context()
    await context.add_init_script(READY)
    page = await context.new_page()
    await page.goto(url)
    await page.fill("#username", "reader")
    await page.fill("#password", PASSWORD)
    await page.click("#sign-in")
    await page.wait_for_selector("#timeline .message")
    for _ in range(runs):
        page = await context.new_page()  # the token is in localStorage: straight to the chat
        await page.goto(url)
        await page.wait_for_selector("#timeline .message")
        warm.append(await page.evaluate("window.__marks.chat"))
        await page.close()
    await context.close()
    return cold, warm


SCROLL = """
async ({step, idleFrames}) => {
  const el = document.querySelector('#timeline');
  const frame = () => new Promise(r => requestAnimationFrame(r));
  const intervals = [], idle = [];
  let last = await frame(), rows = 0;
  for (let i = 0; i < idleFrames; i++) { const t = await frame(); idle.push(t - last); last = t; }
  el.scrollTop = 0;
  await frame(); await frame();
  last = await frame();
  while (el.scrollTop + el.clientHeight < el.scrollHeight - 1) {
    el.scrollTop += step;
    const t = await frame();
    intervals.push(t - last);
    last = t;
    rows = Math.max(rows, el.querySelectorAll('.row').length);
  }
  return {intervals, idle, rows};
}
"""


async def scrolling(page: Page, messages: int) -> dict[str, Any]:
    timeline = page.locator("#timeline")
    started = time.perf_counter()
    while await page.locator('#timeline .message[data-seq="1"]').count() == 0:
        await timeline.evaluate("el => { el.scrollTop = 0; }")
        await page.wait_for_timeout(20)
        if time.perf_counter() - started > 600:
            raise TimeoutError("the history did not load")
    loaded = time.perf_counter() - started
    result: dict[str, Any] = await page.evaluate(SCROLL, {"step": 400, "idleFrames": 600})
    result["loaded"] = loaded
    result["messages"] = messages
    return result


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def seed(port: int, messages: int) -> None:
    writer = Client("127.0.0.1", port)
    await writer.connect()
    try:
        await writer.register("writer", PASSWORD)
        for start in range(0, messages, 500):
            texts = [
                f"message {n}: " + ("a longer line of text that wraps " * (n % 7))
                for n in range(start + 1, min(messages, start + 500) + 1)
            ]
            await asyncio.gather(*(writer.post("general", text) for text in texts))
    finally:
        await writer.close()
    reader = Client("127.0.0.1", port)
    await reader.connect()
    await reader.register("reader", PASSWORD)
    await reader.close()


async def main(messages: int, runs: int) -> None:
    flags = ("--message-rate", "1000000", "--message-burst", "1000000")
    with tempfile.TemporaryDirectory() as tmp, server(Path(tmp), *flags) as running:
        await seed(running.port, messages)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            total, shell = await first_load(browser, running.url)
            files = await asyncio.to_thread(shell_files, running.url)
            cold, warm = await interactive(browser, running.url, runs)
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            page = await context.new_page()
            await page.goto(running.url)
            await page.fill("#username", "reader")
            await page.fill("#password", PASSWORD)
            await page.click("#sign-in")
            await page.wait_for_selector("#timeline .message")
            scroll = await scrolling(page, messages)
            await browser.close()
    print(f"first load (empty cache): {total / 1024:.1f} KiB transferred")
    for name, size, encoding in shell:
        print(f"  {name:32} {size / 1024:7.1f} KiB  {encoding}")
    raw, sent = sum(f[1] for f in files), sum(f[2] for f in files)
    print(f"the whole shell ({len(files)} files): {raw / 1024:.1f} KiB, {sent / 1024:.1f} KiB sent")
    for name, size, wire in files:
        print(f"  {name:32} {size / 1024:7.1f} KiB  {wire / 1024:7.1f} KiB sent")
    print(
        f"time to interactive: sign-in form {statistics.median(cold):.0f} ms, "
        f"remembered session to General's messages {statistics.median(warm):.0f} ms "
        f"(median of {runs})"
    )
    frames, idle = scroll["intervals"], scroll["idle"]
    print(
        f"{messages} messages: all pages loaded by scrolling up in {scroll['loaded']:.1f} s; "
        f"scrolled through in {len(frames)} frames of 400 px: interval median "
        f"{statistics.median(frames):.1f} ms, p95 {percentile(frames, 95):.1f} ms, max "
        f"{max(frames):.1f} ms, {sum(1 for f in frames if f > 50)} over 50 ms; the same page "
        f"idle: median {statistics.median(idle):.1f} ms, p95 {percentile(idle, 95):.1f} ms, "
        f"max {max(idle):.1f} ms, {sum(1 for f in idle if f > 50)} of {len(idle)} over "
        f"50 ms; at most {scroll['rows']} rows in the document"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    asyncio.run(main(options.messages, options.runs))
