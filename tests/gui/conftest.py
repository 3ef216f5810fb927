"""Real windows: an Xvfb display of the tests' own, a real server on a thread, real clients.

Tests marked ``gui`` use ``display``: the ``DISPLAY`` already set, else an ``Xvfb`` this
session starts on a free display number; without either they are skipped.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import tkinter as tk
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from beseda.gui import i18n
from beseda.gui.app import App
from beseda.gui.preferences import Preferences
from beseda.gui.xvfb import start_xvfb
from beseda.server.accounts import PasswordHasher
from beseda.server.app import Server
from conftest import FAST_HASHER_ARGS, TIMEOUT_FACTOR, test_settings

from .fakes import Clock, FakeBackend, FakeView

# -- presenter tests on fakes -------------------------------------------------------------------


@pytest.fixture
def english() -> Iterator[None]:
    """The presenter speaks English (and the catalogue is English again afterwards)."""
    i18n.install("en")
    yield
    i18n.install("en")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def view() -> FakeView:
    return FakeView()


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


# -- real windows ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def display() -> Iterator[str]:
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    started = start_xvfb(range(71, 171), timeout=10 * TIMEOUT_FACTOR)
    if started is None:
        pytest.skip("no DISPLAY, and no Xvfb that starts")
    proc, os.environ["DISPLAY"] = started
    try:
        yield os.environ["DISPLAY"]
    finally:
        del os.environ["DISPLAY"]
        proc.terminate()
        proc.wait(10)


class ServerThread:
    """A real server on a loop of its own thread; restartable on the same port and file."""

    def __init__(self, tmp_path: Path) -> None:
        self.settings = test_settings(tmp_path)
        self.hasher = PasswordHasher(**FAST_HASHER_ARGS)  # type: ignore[arg-type]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: Server | None = None
        self.port = 0

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def start(self) -> None:
        async def start() -> Server:
            server = Server(replace(self.settings, port=self.port), hasher=self.hasher)
            await server.start()
            return server

        self.server = self._run(start())
        self.port = self.server.port

    def stop(self) -> None:
        if self.server is not None:
            self._run(self.server.stop())
            self.server = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.hasher.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def chat_server(tmp_path: Path) -> Iterator[ServerThread]:
    server = ServerThread(tmp_path)
    server.start()
    yield server
    server.close()


class Windows:
    """Client windows of one test, pumped together."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.apps: list[App] = []

    def open(self, name: str, server: str) -> App:
        root = tk.Tk()
        app = App(
            root,
            server=server,
            preferences=Preferences(self.tmp_path / f"config-{name}"),
            client_options={"min_backoff": 0.1, "max_backoff": 0.5, "connect_timeout": 2.0},
        )
        self.apps.append(app)
        app.start()
        return app

    def pump(self, seconds: float = 0.05) -> None:
        deadline = time.monotonic() + seconds
        while True:
            for app in self.apps:
                if not app.closed:
                    app.root.update()
            if time.monotonic() >= deadline:
                return
            time.sleep(0.005)

    def wait(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("the window did not get there in time")
            self.pump(0.02)

    def close(self) -> None:
        for app in self.apps:
            app.close()


@pytest.fixture
def windows(display: str, tmp_path: Path) -> Iterator[Windows]:
    i18n.install("en")
    opened = Windows(tmp_path)
    yield opened
    opened.close()


class Link:
    """A TCP relay from a client to a server that a test cuts (the client's network goes
    away: its connections drop, new ones are refused) and restores, on the same port."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = 0
        self._listener: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.restore()

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, upstream}
        await asyncio.gather(self._pipe(reader, upstream), self._pipe(upstream_reader, writer))
        self._writers -= {writer, upstream}

    def restore(self) -> None:
        async def listen() -> asyncio.Server:
            return await asyncio.start_server(self._relay, "127.0.0.1", self.port)

        self._listener = self._run(listen())
        self.port = self._listener.sockets[0].getsockname()[1]

    def cut(self) -> None:
        async def cut() -> None:
            listener, self._listener = self._listener, None
            if listener is not None:
                listener.close()
            for writer in list(self._writers):
                writer.close()
            if listener is not None:
                await listener.wait_closed()

        self._run(cut())

    def close(self) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
