"""Shared fixtures: real servers on loopback sockets with real SQLite files or PostgreSQL.

``server`` runs in the test's own event loop (fast, inspectable); ``server_process`` runs
``python -m beseda serve`` as a child process, for tests that kill or restart it.

The engine of the servers these fixtures start is SQLite, or PostgreSQL with
``--db-engine=postgresql`` (or ``BESEDA_TEST_DB=postgresql``): each test then gets a fresh
database on one throwaway PostgreSQL of the session (``tests/pg_server.py``; or the server
``BESEDA_TEST_POSTGRES_URL`` names). Tests of SQLite's own behaviour are marked
``sqlite_only`` and skipped then. The storage contract tests run on both engines whatever the
option (the ``storage`` and ``make_storage`` fixtures are parametrised by engine).
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
from beseda.storage import Storage
from beseda.storage.postgres import PostgresStorage
from beseda.storage.sqlite import SQLiteStorage
from pg_server import PostgresServer, database_for, shared_server, stop_shared_server
from pg_server import available as postgres_available

# Fixtures of the services tests start themselves (Redis; see the module).
pytest_plugins = ["redis_service"]

TIMEOUT_FACTOR = float(os.environ.get("BESEDA_TEST_TIMEOUT_FACTOR", "1"))
"""Scale every waiting time in the tests on slow machines."""

# Cheap argon2 parameters for tests that are not about password hashing. Tests of the
# production parameters build their own PasswordHasher().
FAST_HASHER_ARGS = {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}


ENGINES = ("sqlite", "postgresql")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--db-engine",
        choices=ENGINES,
        default=os.environ.get("BESEDA_TEST_DB", "sqlite"),
        help="the database engine of the test servers (BESEDA_TEST_DB; default sqlite)",
    )


def server_engine() -> str:
    """The engine the server fixtures use this session (``--db-engine``, kept in
    ``BESEDA_TEST_DB`` so that every copy of this module and every child process agree)."""
    return os.environ.get("BESEDA_TEST_DB", "sqlite")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only: tests SQLite's own files or behaviour (skipped on PostgreSQL)"
    )
    os.environ["BESEDA_TEST_DB"] = config.getoption("--db-engine")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if server_engine() != "postgresql":
        return
    skip = pytest.mark.skip(reason="about SQLite's own behaviour (the run is on PostgreSQL)")
    for item in items:
        if item.get_closest_marker("sqlite_only") is not None:
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    stop_shared_server()


def test_db(tmp_path: Path) -> Path | str:
    """The database of a test's servers: a file in ``tmp_path``, or a fresh PostgreSQL
    database (the same one each time for the same ``tmp_path``)."""
    if server_engine() == "postgresql":
        return database_for(str(tmp_path))
    return tmp_path / "beseda.db"


test_db.__test__ = False  # type: ignore[attr-defined]


def test_settings(tmp_path: Path, **limits: object) -> Settings:
    """Settings for an in-process test server: port 0, a fresh database (see ``test_db``)."""
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
        db=test_db(tmp_path),
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
    """``beseda serve`` as a child process on a fixed port and database (file or URL)."""

    def __init__(
        self, db: Path | str, port: int, extra: list[str], log: Path | None = None
    ) -> None:
        self.db = db
        self.port = port
        self.http_port = free_port()
        """The web app's and WebSocket's port, the same across restarts."""
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        if log is None:
            assert isinstance(db, Path), "a server on PostgreSQL needs the path of its log"
            log = db.with_suffix(".log")
        self.log = log

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
        proc = ServerProcess(test_db(tmp_path), free_port(), list(extra), tmp_path / "beseda.log")
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


@pytest.fixture(scope="session")
def postgres() -> PostgresServer:
    """The session's throwaway PostgreSQL (started on first use), or the one
    ``BESEDA_TEST_POSTGRES_URL`` names; the test is skipped when PostgreSQL is not installed."""
    if not postgres_available():
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    return shared_server()


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    """A fresh, empty UTF-8 database on the session's PostgreSQL."""
    return postgres.create_database()


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Each engine in turn: a test that takes it runs on SQLite and on PostgreSQL."""
    if request.param == "postgresql" and not postgres_available():
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    return str(request.param)


@pytest.fixture
def make_storage(engine: str, tmp_path: Path) -> Callable[..., Storage]:
    """``make_storage()`` → a new (unopened) store of ``engine``, on the test's one database:
    a second call opens the same data again."""
    target: Path | str = (
        database_for(str(tmp_path)) if engine == "postgresql" else tmp_path / "beseda.db"
    )

    def make(**options: object) -> Storage:
        if isinstance(target, str):
            return PostgresStorage(target, **options)  # type: ignore[arg-type]
        return SQLiteStorage(target, **options)  # type: ignore[arg-type]

    return make


@pytest.fixture
async def storage(make_storage: Callable[..., Storage]) -> AsyncIterator[Storage]:
    """A real store, SQLite on a fresh file and PostgreSQL on a fresh database, in turn."""
    store = make_storage()
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def sqlite_storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    """A real SQLite store on a fresh file (tests of SQLite's own behaviour)."""
    store = SQLiteStorage(tmp_path / "beseda.db")
    await store.open()
    yield store
    await store.close()
