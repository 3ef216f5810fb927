"""The README's bot, as written there, run twice against a live server: the second start logs
in (it does not fail with ``name_taken``), answers what is new and nothing old."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from beseda.client import Client, MessageReceived
from beseda.protocol import schema
from beseda.server.app import Server
from conftest import TIMEOUT_FACTOR

pytestmark = pytest.mark.timeout(90)

README = Path(__file__).parents[2] / "README.md"
BOT = "echo-bot"
ADDRESS = 'Client("127.0.0.1", 7878)'


def readme_bot(port: int) -> str:
    """The code block after "A bot in a few lines", pointed at ``port``."""
    text = README.read_text(encoding="utf-8")
    found = re.search(r"A bot in a few lines.*?```python\n(.*?)```", text, re.DOTALL)
    assert found, "the README has no bot example"
    code = found.group(1)
    assert ADDRESS in code, "the example no longer connects as the test expects"
    return code.replace(ADDRESS, f'Client("127.0.0.1", {port})')


@pytest.fixture
async def start_bot(server: Server) -> AsyncIterator[Callable[[], object]]:
    """``await start_bot()`` → the README's bot as a child process; all end with the test."""
    procs: list[asyncio.subprocess.Process] = []

    async def start() -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            readme_bot(server.port),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def bot_online(watcher: Client, proc: asyncio.subprocess.Process, online: bool) -> None:
    """Wait until the directory shows the bot ``online`` (failing if the bot died)."""
    deadline = asyncio.get_running_loop().time() + 20 * TIMEOUT_FACTOR
    while True:
        if online and proc.returncode is not None:
            assert proc.stderr is not None
            error = (await proc.stderr.read()).decode(errors="replace")
            pytest.fail(f"the bot exited with {proc.returncode}:\n{error}")
        found = [u for u in (await watcher.users(BOT)).users if u.name == BOT]
        if found and found[0].online == online:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{BOT} online is not {online}"
        await asyncio.sleep(0.05)


async def replies(client: Client, last: str, linger: float = 0.3) -> list[schema.Message]:
    """The bot's messages until one says ``last``, and any that follow within ``linger``."""
    seen: list[schema.Message] = []
    timeout = 10 * TIMEOUT_FACTOR
    while True:
        try:
            event = await client.next_event(timeout)
        except TimeoutError:
            if any(m.text == last for m in seen):
                return seen  # nothing more came after it
            raise
        if isinstance(event, MessageReceived) and event.message.sender == BOT:
            seen.append(event.message)
            if event.message.text == last:
                timeout = linger


async def test_the_readme_bot_starts_twice_and_answers_only_whats_new(
    connect: Callable[..., object], start_bot: Callable[[], object]
) -> None:
    alice = await connect("alice")  # type: ignore[operator]
    assert isinstance(alice, Client)

    first = await start_bot()  # type: ignore[operator]
    assert isinstance(first, asyncio.subprocess.Process)
    await bot_online(alice, first, True)  # registered: there was no account
    await alice.send("hello, bot")
    answered = await replies(alice, "alice said: hello, bot")
    assert [m.text for m in answered] == ["alice said: hello, bot"]
    first.terminate()
    await first.wait()
    await bot_online(alice, first, False)

    second = await start_bot()  # type: ignore[operator]
    assert isinstance(second, asyncio.subprocess.Process)
    await bot_online(alice, second, True)  # logged in: the name is its own
    await alice.send("hello again")
    answered = await replies(alice, "alice said: hello again")
    # Only the new message: the restart did not answer "hello, bot" a second time.
    assert [m.text for m in answered] == ["alice said: hello again"]
    assert answered[0].to is None  # in General

    await alice.dm(BOT, "just between us")
    answered = await replies(alice, "alice said: just between us")
    assert [(m.text, m.to) for m in answered] == [("alice said: just between us", "alice")]
    assert second.returncode is None
