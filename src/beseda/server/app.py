"""The composition root: settings → storage → bus → core → transports, and their lifecycle.

Nothing else in the server constructs collaborators; everything is handed in from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from ..bus.local import LocalBus
from ..storage.sqlite import SQLiteStorage
from .accounts import PasswordHasher
from .chat import Chat
from .config import Settings
from .delivery import DeliveryHub
from .transports.tcp import TcpListener

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The server could not start (port taken, database unusable); the message says why."""


class Server:
    """A running beseda server. ``async with Server(settings) as server:`` starts and stops it."""

    def __init__(self, settings: Settings, *, hasher: PasswordHasher | None = None) -> None:
        self.settings = settings
        self.storage = SQLiteStorage(settings.db)
        self.bus = LocalBus()
        self.hub = DeliveryHub()
        self.hasher = hasher or PasswordHasher()
        self._own_hasher = hasher is None
        self.chat = Chat(
            storage=self.storage,
            bus=self.bus,
            hub=self.hub,
            hasher=self.hasher,
            limits=settings.limits,
        )
        self.bus.subscribe(self.hub.on_event)
        self.tcp = TcpListener(self.chat, settings.limits)

    @property
    def port(self) -> int:
        return self.tcp.port

    async def start(self) -> None:
        try:
            await self.storage.open()
        except Exception as exc:
            raise StartupError(str(exc)) from exc
        try:
            await self.tcp.start(self.settings.host, self.settings.port)
        except OSError as exc:
            await self.storage.close()
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise StartupError(
                f"Cannot listen on {self.settings.host}:{self.settings.port}: {reason}"
            ) from exc
        log.info(
            "beseda listening on %s:%d, database %s",
            self.settings.host,
            self.port,
            self.settings.db,
        )

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests and commits, tell clients, close."""
        log.info("shutting down")
        await self.tcp.stop(self.settings.shutdown_grace)
        await self.storage.close()
        await self.bus.close()
        if self._own_hasher:
            self.hasher.close()
        log.info("stopped")

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(settings: Settings) -> None:
    """Run a server until SIGINT or SIGTERM."""
    server = Server(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()
