"""Shared fixtures: real servers on loopback sockets with real SQLite files.

``server`` runs in the test's own event loop (fast, inspectable); ``server_process`` runs
``python -m beseda serve`` as a child process, for tests that kill or restart it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO

import pytest

from beseda.client import Client
from beseda.server.accounts import PasswordHasher
from beseda.server.app import Server
from beseda.server.config import Limits, Settings
from beseda.storage.sqlite import SQLiteStorage

TIMEOUT_FACTOR = float(os.environ.get("BESEDA_TEST_TIMEOUT_FACTOR", "1"))
"""Scale every waiting time in the tests on slow machines."""

# Cheap argon2 parameters for tests that are not about password hashing. Tests of the
# production parameters build their own PasswordHasher().
FAST_HASHER_ARGS = {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}


def test_settings(tmp_path: Path, **limits: object) -> Settings:
    """Settings for an in-process test server: port 0, a fresh database file."""
    base = Limits(
        message_rate=10_000.0,
        message_burst=10_000,
        max_connections_per_address=1000,
        max_connections_per_user=1000,
        registrations_per_address=(1000.0, 10_000),
    )
    return Settings(
        host="127.0.0.1",
        port=0,
        db=tmp_path / "beseda.db",
        limits=replace(base, **limits),  # type: ignore[arg-type]
        shutdown_grace=2.0,
        http_port=0,
    )


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.fixture
def hasher() -> Iterator[PasswordHasher]:
    h = PasswordHasher(**FAST_HASHER_ARGS)
    yield h
    h.close()


@pytest.fixture
async def make_server(
    tmp_path: Path, hasher: PasswordHasher
) -> AsyncIterator[Callable[..., Server]]:
    """Build (not start) servers; each is stopped at the end of the test if still running."""
    servers: list[Server] = []

    def make(**limits: object) -> Server:
        server = Server(test_settings(tmp_path, **limits), hasher=hasher)
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()  # a no-op for servers already stopped


@pytest.fixture
async def server(make_server: Callable[..., Server]) -> AsyncIterator[Server]:
    """A started in-process server with generous rate limits."""
    srv = make_server()
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def connect(server: Server) -> AsyncIterator[Callable[..., object]]:
    """``await connect("alice")`` → a Client registered (or logged in) as alice."""
    clients: list[Client] = []

    async def make(
        name: str | None = None, password: str = "password123", **kwargs: object
    ) -> Client:
        client = Client("127.0.0.1", server.port, **kwargs)  # type: ignore[arg-type]
        await client.connect()
        clients.append(client)
        if name is not None:
            try:
                await client.register(name, password)
            except Exception:
                await client.login(name, password)
        return client

    yield make
    for client in clients:
        await client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``beseda serve`` as a child process on a fixed port and database file."""

    def __init__(self, db: Path, port: int, extra: list[str]) -> None:
        self.db = db
        self.port = port
        self.http_port = free_port()
        """The web app's and WebSocket's port, the same across restarts."""
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = db.with_suffix(".log")

    def start(self) -> None:
        # Only what this start writes counts: after a restart the old "listening" line is
        # still in the log.
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.proc = self._spawn(log)
        pattern = re.compile(rf"listening on 127\.0\.0\.1:{self.port}\b")
        deadline = time.monotonic() + 30 * TIMEOUT_FACTOR
        while time.monotonic() < deadline:
            output = self.log.read_bytes()[offset:].decode(errors="replace")
            if pattern.search(output):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {output}")
            time.sleep(0.05)
        raise TimeoutError("server did not start")

    def _spawn(self, log: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "beseda",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--http-port",
                str(self.http_port),
                "--db",
                str(self.db),
                # Tests register many users from one address; a test of this limit overrides
                # it (the last occurrence of a flag wins).
                "--registrations-per-minute",
                "100000",
                *self.extra,
            ],
            stdout=log,
            stderr=log,
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return int(self.proc.pid)

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections stay open but nothing is answered."""
        os.kill(self.pid, signal.SIGSTOP)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20 * TIMEOUT_FACTOR)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """``server_process(*flags)`` starts a child server; all are killed at the end."""
    procs: list[ServerProcess] = []

    def start(*extra: str) -> ServerProcess:
        proc = ServerProcess(tmp_path / "beseda.db", free_port(), list(extra))
        proc.start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until true (scaled by BESEDA_TEST_TIMEOUT_FACTOR)."""
    deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    """A real SQLite store on a fresh file, open for the test."""
    store = SQLiteStorage(tmp_path / "beseda.db")
    await store.open()
    yield store
    await store.close()
