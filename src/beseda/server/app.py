"""The composition root: settings → storage → bus → core → transports, and their lifecycle.

Nothing else in the server constructs collaborators; everything is handed in from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import ssl
from pathlib import Path

from .. import tls
from ..bus import Bus, BusError
from ..bus.local import LocalBus
from ..storage import Storage
from ..storage.sqlite import SQLiteStorage
from .accounts import PasswordHasher
from .chat import Chat
from .config import Settings, is_postgres_url
from .connection import Capacity
from .delivery import DeliveryHub
from .limits import Limiters
from .replication import Replica
from .transports.tcp import TcpListener
from .transports.websocket import HttpListener
from .web import StaticFiles, shipped_root

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_storage(settings: Settings) -> Storage:
    """The store ``settings.db`` names: PostgreSQL for a ``postgresql://`` URL, otherwise the
    embedded SQLite file. Not yet opened (``Server.start`` opens it). ``--search-index off``
    keeps SQLite from indexing (PostgreSQL's trigram index is the database's own and stays;
    ``search`` is refused on both)."""
    if is_postgres_url(settings.db):
        from ..storage.postgres import PostgresStorage

        return PostgresStorage(str(settings.db), connect_timeout=settings.db_busy_timeout)
    return SQLiteStorage(
        settings.db, busy_timeout=settings.db_busy_timeout, search_index=settings.search_index
    )


def redact_url(url: str) -> str:
    """A URL for a log line: without its user and password."""
    scheme, separator, rest = url.partition("://")
    if separator and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://…@{rest.split('@', 1)[1]}"
    return url


def open_bus(settings: Settings) -> Bus:
    """The bus ``settings`` name: Redis for several nodes, else this process alone."""
    name = settings.node_name
    if not name or len(name) > 64 or not name.isprintable() or " " in name:
        raise StartupError(
            f"--node-name must be 1 to 64 printable characters without spaces, not {name!r}"
        )
    if settings.bus is None:
        return LocalBus(name)
    if not settings.bus.startswith(("redis://", "rediss://", "unix://")):
        raise StartupError(f"--bus must be a redis:// URL, not {settings.bus!r}")
    from ..bus.redis import RedisBus

    return RedisBus(settings.bus, settings.node_name, node_expiry=settings.limits.node_expiry)


def open_limiters(settings: Settings, bus: Bus) -> Limiters:
    """Rate limiters shared by every node on a Redis bus, else in this process's memory."""
    from ..bus.redis import RedisBus

    if isinstance(bus, RedisBus):
        return Limiters.from_buckets(settings.limits, bus.rate_limit)
    return Limiters.in_memory(settings.limits)


def describe_db(db: Path | str) -> str:
    """The database for a log line: a URL without its password, or the file."""
    if is_postgres_url(db):
        from ..storage.postgres import redact

        return redact(str(db))
    return str(db)


class StartupError(Exception):
    """The server could not start (port taken, database unusable); the message says why."""


class Server:
    """A running beseda server. ``async with Server(settings) as server:`` starts and stops it."""

    def __init__(
        self,
        settings: Settings,
        *,
        hasher: PasswordHasher | None = None,
        storage: Storage | None = None,
        bus: Bus | None = None,
        limiters: Limiters | None = None,
    ) -> None:
        """Everything is built here from ``settings``; a test or another adapter hands in
        its own ``storage``, ``bus``, ``hasher`` or ``limiters`` instead, and nothing else
        changes."""
        self.settings = settings
        self.storage: Storage = storage or open_storage(settings)
        self.bus: Bus = bus or open_bus(settings)
        self.hub = DeliveryHub(self.bus.node)
        self.hasher = hasher or PasswordHasher(
            workers=settings.limits.hash_workers or None,
            queue=settings.limits.hash_queue,
            max_wait=settings.limits.hash_max_wait,
        )
        self._own_hasher = hasher is None
        self.chat = Chat(
            storage=self.storage,
            bus=self.bus,
            hub=self.hub,
            hasher=self.hasher,
            limits=settings.limits,
            limiters=limiters or open_limiters(settings, self.bus),
            search_index=settings.search_index,
        )
        self.replica: Replica | None = None
        """Between a shared bus and delivery: entries in order, exactly once, gaps read from
        the database (``replication.py``); None on a bus of this process alone."""
        if self.bus.shared:
            self.replica = Replica(
                node=self.bus.node,
                storage=self.storage,
                index=self.chat.index,
                deliver=self.hub.on_event,
            )
            self.bus.subscribe(self.replica.on_event)
            self.bus.on_resume(self.replica.resumed)
        else:
            self.bus.subscribe(self.hub.on_event)
        # Shared by every transport: the caps on connections and the input budget.
        self.capacity = Capacity(settings.limits)
        self.tcp = TcpListener(self.chat, settings.limits, self.capacity)
        self.http: HttpListener | None = None
        """The web app and the WebSocket transport (None with ``--http-port off``)."""
        if settings.http_port is not None:
            self.http = HttpListener(
                self.chat,
                settings.limits,
                self.capacity,
                self.tcp.hello,
                StaticFiles.load(settings.web_root or shipped_root()),
                allowed_origins=settings.allowed_origins,
            )
        self.fingerprint: str | None = None
        """SHA-256 fingerprint of the TLS certificate, when TLS is on."""

    @property
    def port(self) -> int:
        return self.tcp.port

    @property
    def http_port(self) -> int | None:
        """The HTTP port (web app, ``/health``, WebSocket ``/ws``), None when it is off."""
        return None if self.http is None else self.http.port

    async def start(self) -> None:
        try:
            await self.storage.open()
            await self.chat.open()
        except Exception as exc:
            await self.storage.close()
            raise StartupError(str(exc)) from exc
        if self.replica is not None:
            self.replica.start()
        try:
            await self.bus.open()
        except BusError as exc:
            await self.storage.close()
            raise StartupError(str(exc)) from exc
        try:
            context = self._tls_context()
        except Exception:
            await self.storage.close()
            await self.bus.close()
            raise
        try:
            await self.tcp.start(self.settings.host, self.settings.port, context)
        except OSError as exc:
            await self.storage.close()
            await self.bus.close()
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise StartupError(
                f"Cannot listen on {self.settings.host}:{self.settings.port}: {reason}"
            ) from exc
        if self.http is not None:
            assert self.settings.http_port is not None
            try:
                await self.http.start(
                    self.settings.host,
                    self.settings.http_port,
                    context,
                    hsts=self.settings.tls_cert is not None,
                )
            except OSError as exc:
                await self.tcp.stop(0)
                await self.storage.close()
                reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
                raise StartupError(
                    f"Cannot listen on {self.settings.host}:{self.settings.http_port} "
                    f"(--http-port): {reason}"
                ) from exc
            if self.http.files.get("/") is None:
                log.warning(
                    "no index.html in %s: the web app is not served (only /ws and /health)",
                    self.settings.web_root or shipped_root(),
                )
            log.info(
                "web app on %s://%s:%d/ (WebSocket /ws)",
                "https" if context else "http",
                self.settings.host,
                self.http.port,
            )
        log.info(
            "beseda listening on %s:%d, database %s, node %s%s",
            self.settings.host,
            self.port,
            describe_db(self.settings.db),
            self.bus.node,
            f", bus {redact_url(self.settings.bus)}" if self.settings.bus else "",
        )

    def _tls_context(self) -> ssl.SSLContext | None:
        settings = self.settings
        if not settings.tls:
            if not settings.allow_plaintext and not is_loopback(settings.host):
                raise StartupError(
                    f"Refusing to listen on {settings.host} without TLS: pass --tls-cert and "
                    "--tls-key, or --tls auto, or --allow-plaintext if the network is trusted."
                )
            return None
        try:
            if settings.tls_auto and settings.tls_cert is None:
                cert, key = tls.ensure_self_signed(settings.data_dir, settings.host)
            else:
                assert settings.tls_cert is not None
                cert, key = settings.tls_cert, settings.tls_key or settings.tls_cert
            context = tls.server_context(cert, key)
            self.fingerprint = tls.file_fingerprint(cert)
        except (tls.TLSError, OSError, ValueError) as exc:
            raise StartupError(str(exc)) from exc
        log.info("TLS on; certificate %s, fingerprint %s", cert, self.fingerprint)
        return context

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests and commits, tell clients, close."""
        log.info("shutting down")
        await asyncio.gather(
            self.tcp.stop(self.settings.shutdown_grace),
            *([self.http.stop(self.settings.shutdown_grace)] if self.http else []),
        )
        counts = dict(getattr(self.storage, "stats", {}))  # the writer's, gone once closed
        # The store first (its last commits publish), then the bus (which sends what is
        # queued), then the replica that reads from the store on the bus's behalf.
        await self.storage.close()
        await self.bus.close()
        if self.replica is not None:
            await self.replica.close()
        if self._own_hasher:
            self.hasher.close()
        log.info(
            "stopped: %d writes in %d commits, %d deliveries",
            counts.get("writes", 0),
            counts.get("batches", 0),
            self.hub.delivered,
        )

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
