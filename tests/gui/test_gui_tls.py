"""The desktop client over TLS against real servers with self-signed certificates (no display):
the first sign-in pins the certificate, a server with another certificate is refused."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from beseda.gui import events, i18n
from beseda.gui.network import Network
from beseda.gui.preferences import Preferences
from beseda.gui.presenter import CHAT, SIGN_IN, TRUSTING, Presenter
from beseda.server.accounts import PasswordHasher
from beseda.server.app import Server
from conftest import FAST_HASHER_ARGS, TIMEOUT_FACTOR, free_port, test_settings

from .conftest import Windows
from .fakes import FakeView


class TLSServers:
    """Self-signed TLS servers on a loop of their own thread."""

    def __init__(self) -> None:
        self.hasher = PasswordHasher(**FAST_HASHER_ARGS)  # type: ignore[arg-type]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def start(self, directory: Path, port: int) -> Server:
        async def start() -> Server:
            settings = replace(test_settings(directory), tls_auto=True, port=port)
            server = Server(settings, hasher=self.hasher)
            await server.start()
            return server

        server: Server = self._run(start())
        return server

    def stop(self, server: Server) -> None:
        self._run(server.stop())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.hasher.close()


@pytest.fixture
def servers() -> Iterator[TLSServers]:
    made = TLSServers()
    yield made
    made.close()


def pump_until(
    presenter: Presenter,
    inbox: queue.SimpleQueue[tuple[int, events.Event]],
    stage: str,
    timeout: float = 10.0,
) -> None:
    deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
    while presenter.stage != stage:
        if time.monotonic() > deadline:
            raise TimeoutError(f"stage {presenter.stage}, not {stage}")
        try:
            session, event = inbox.get(timeout=0.05)
        except queue.Empty:
            continue
        presenter.handle(session, event)


def test_first_use_pins_and_another_certificate_is_refused(
    servers: TLSServers, tmp_path: Path
) -> None:
    i18n.install("en")
    port = free_port()
    address = f"127.0.0.1:{port}"
    server = servers.start(tmp_path / "first", port)
    fingerprint = server.fingerprint
    assert fingerprint is not None
    inbox: queue.SimpleQueue[tuple[int, events.Event]] = queue.SimpleQueue()
    network = Network(lambda s, e: inbox.put((s, e)), client_options={"connect_timeout": 5.0})
    prefs = Preferences(tmp_path / "config")
    view = FakeView()
    presenter = Presenter(view, network, prefs, server=address)
    try:
        presenter.sign_in(address, "alice", "password123", remember=False, create=True, tls=True)
        pump_until(presenter, inbox, TRUSTING)
        assert view.form is not None
        assert view.form.trust is not None
        assert view.form.trust.fingerprint == fingerprint
        assert prefs.trusted_servers.get(address) is None
        presenter.trust()
        pump_until(presenter, inbox, CHAT)
        assert prefs.trusted_servers.get(address) == fingerprint

        # The same port, a server with a certificate of its own: refused, not connected.
        presenter.sign_out()
        servers.stop(server)
        impostor = servers.start(tmp_path / "second", port)
        assert impostor.fingerprint not in (None, fingerprint)
        presenter.sign_in(address, "alice", "password123", remember=False, create=False, tls=True)
        pump_until(presenter, inbox, SIGN_IN)
        assert view.form is not None
        assert "has changed" in view.form.error
        assert fingerprint in view.form.error
        assert str(impostor.fingerprint) in view.form.error
        assert view.screen == "sign_in"
        assert prefs.trusted_servers.get(address) == fingerprint
        servers.stop(impostor)
    finally:
        network.close()


@pytest.mark.gui
@pytest.mark.timeout(60)
def test_the_window_shows_the_fingerprint_and_trusts_it(
    servers: TLSServers, windows: Windows
) -> None:
    port = free_port()
    server = servers.start(windows.tmp_path / "server", port)
    try:
        app = windows.open("alice", f"127.0.0.1:{port}")
        windows.pump()
        screen = app.window.sign_in_screen
        screen.username.set("alice")
        screen.password.set("password123")
        screen.tls_check.invoke()
        screen.create_button.invoke()
        windows.wait(lambda: screen.trust_frame.winfo_ismapped())
        assert str(server.fingerprint) in str(screen.trust_text.cget("text"))
        assert screen.create_button.instate(["disabled"])
        screen.trust_button.invoke()
        windows.wait(lambda: app.window.chat.winfo_ismapped())
        assert not screen.trust_frame.winfo_ismapped()
    finally:
        servers.stop(server)
