"""A throwaway PostgreSQL for the tests: ``initdb`` + ``pg_ctl`` in a temporary directory.

The server listens on 127.0.0.1 on a free port and on a unix socket in its own directory; it
trusts local connections (role ``beseda``) and is deleted when stopped. When
``BESEDA_TEST_POSTGRES_URL`` names a server (a superuser's URL), that one is used instead and
nothing is started.

Usage (the fixtures in ``tests/conftest.py`` do this)::

    with PostgresServer.start_new() as pg:     # one per session
        url = pg.create_database()             # a fresh database per test (template0)
        ...
        pg.restart()                           # a lost and recovered PostgreSQL

Not in ``conftest.py``: pytest imports every ``conftest.py`` under one module name, so other
test packages import this module by name (``from pg_server import PostgresServer``).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

URL_VARIABLE = "BESEDA_TEST_POSTGRES_URL"
"""A PostgreSQL superuser URL to use instead of starting a server."""

_ROLE = "beseda"


def postgres_bin() -> Path | None:
    """The directory of Debian's PostgreSQL programs (the newest version), or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parent.parent.name),
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def available() -> bool:
    """Whether the tests can have a PostgreSQL (a URL given, or the programs installed)."""
    return bool(os.environ.get(URL_VARIABLE)) or postgres_bin() is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A PostgreSQL server the tests may create databases on, stop and start again."""

    def __init__(self, admin_url: str, *, directory: Path | None = None) -> None:
        self.admin_url = admin_url
        """A superuser's URL of the ``postgres`` database."""
        self.directory = directory
        """Data and socket directory of a server started here (None: given by URL)."""
        self._bin = postgres_bin()
        self._user: str | None = None
        self._counter = itertools.count(1)
        self._owned: list[str] = []

    # -- starting --------------------------------------------------------------------------------

    @classmethod
    def start_new(cls, *, fsync: bool = False) -> PostgresServer:
        """The server named by ``BESEDA_TEST_POSTGRES_URL``, or a new one in a temporary
        directory. ``fsync=False`` (tests) trades durability against a power cut for speed;
        a clean stop or a killed client loses nothing either way."""
        given = os.environ.get(URL_VARIABLE)
        if given:
            return cls(given)
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise RuntimeError(
                "PostgreSQL is not installed (no initdb); apt-get install postgresql"
            )
        directory = Path(tempfile.mkdtemp(prefix="beseda-pg-"))
        server = cls("", directory=directory)
        try:
            server._init(fsync=fsync)
            server.start()
        except BaseException:
            server.destroy()
            raise
        return server

    def _init(self, *, fsync: bool) -> None:
        assert self.directory is not None
        self._user = _unprivileged_user()
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            _ROLE,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )
        settings = [
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.directory}'",
            "max_connections = 200",
            "shared_buffers = 32MB",
            f"fsync = {'on' if fsync else 'off'}",
            f"synchronous_commit = {'on' if fsync else 'off'}",
            f"full_page_writes = {'on' if fsync else 'off'}",
        ]
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n".join(settings) + "\n")

    @property
    def data(self) -> Path:
        assert self.directory is not None
        return self.directory / "data"

    def _run(self, program: str, *args: str) -> None:
        assert self._bin is not None
        command = [str(self._bin / program), *args]
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed: {result.stdout}{result.stderr}")

    def start(self) -> None:
        """Start the server (again, after :meth:`stop`), on a new free port."""
        if self.directory is None:
            raise RuntimeError("a PostgreSQL given by URL is not started or stopped here")
        for attempt in itertools.count():
            port = _free_port()
            try:
                self._run(
                    "pg_ctl",
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.directory / "server.log"),
                    "-o",
                    f"-p {port}",
                    "-w",
                    "-t",
                    "60",
                    "start",
                )
            except RuntimeError:
                if attempt >= 3:  # the port was taken between choosing and binding, thrice
                    raise
                continue
            break
        self.port = port
        self.admin_url = f"postgresql://{_ROLE}@127.0.0.1:{port}/postgres"

    def start_on_same_port(self) -> None:
        """Start the stopped server on the port it had, so clients' URLs stay valid."""
        assert self.directory is not None
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.directory / "server.log"),
            "-o",
            f"-p {self.port}",
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (disconnect clients, clean) or ``immediate`` (a crash)."""
        if self.directory is None:
            raise RuntimeError("a PostgreSQL given by URL is not started or stopped here")
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        """Stop and start again on the same port (a lost, then recovered, PostgreSQL)."""
        self.stop(mode)
        self.start_on_same_port()

    def running(self) -> bool:
        return self.directory is None or (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        """Drop the databases made here; stop and delete a server started here."""
        if self.directory is None:
            for name in self._owned:
                with contextlib.suppress(RuntimeError):
                    self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        if self.running():
            with contextlib.suppress(RuntimeError):
                self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.destroy()

    # -- databases -------------------------------------------------------------------------------

    def url(self, database: str) -> str:
        """The URL of ``database`` on this server."""
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path=f"/{database}"))

    def sql(self, statement: str) -> str:
        """Run one statement as the superuser with ``psql``; its output (tuples only)."""
        psql = shutil.which("psql") or (str(self._bin / "psql") if self._bin else "psql")
        result = subprocess.run(
            [psql, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", self.admin_url],
            input=statement,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr}")
        return result.stdout.strip()

    def create_database(self, *, options: str = "") -> str:
        """A new empty UTF-8 database; its URL. ``options`` are more CREATE DATABASE ones."""
        name = f"beseda_test_{os.getpid()}_{next(self._counter)}"
        self.sql(
            f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8' "
            f"LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8' {options}"
        )
        self._owned.append(name)
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self._owned:
            self._owned.remove(name)


def _unprivileged_user() -> str | None:
    """Who runs the server: initdb refuses root, so root hands it to ``postgres`` (made by
    Debian's package) or ``nobody``; anyone else runs it as themselves (None)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL")


@contextlib.contextmanager
def postgres_server(*, fsync: bool = False) -> Iterator[PostgresServer]:
    """A started server for the length of the block (a given one when the URL is set)."""
    server = PostgresServer.start_new(fsync=fsync)
    try:
        yield server
    finally:
        server.destroy()


def wait_until_accepting(server: PostgresServer, timeout: float = 30.0) -> None:
    """Block until the server answers a query (after a start by another party)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            server.sql("SELECT 1")
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# -- one server for the whole test session -----------------------------------------------------

_shared: PostgresServer | None = None
_databases: dict[str, str] = {}


def shared_server() -> PostgresServer:
    """The session's server, started on first use (here, not in a conftest, so that every
    conftest module that imports this one shares it); stopped by :func:`stop_shared_server`."""
    global _shared
    if _shared is None:
        _shared = PostgresServer.start_new()
    return _shared


def database_for(key: str) -> str:
    """A fresh database of the shared server for ``key`` (a test's temporary directory): the
    same URL each time it is asked for the same key, so a test that builds its settings twice
    (a restart) finds its data."""
    url = _databases.get(key)
    if url is None:
        url = _databases[key] = shared_server().create_database()
    return url


def stop_shared_server() -> None:
    global _shared
    server, _shared = _shared, None
    _databases.clear()
    if server is not None:
        server.destroy()
