"""Operating the server (issue 2, item 11): ``python -m beseda serve`` with flags and
environment variables, the database created on first start, graceful shutdown on SIGTERM and
SIGINT, and a clear one-line message and a non-zero exit when it cannot start."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from newcomer import PASSWORD, Newcomer

from conftest import TIMEOUT_FACTOR, free_port


class Serve:
    """One ``python -m beseda serve`` child with its stdout and stderr in files."""

    def __init__(self, tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
        self.err = tmp_path / f"serve-{time.monotonic_ns()}.err"
        out = self.err.with_suffix(".out")
        environ = {k: v for k, v in os.environ.items() if not k.startswith("BESEDA_")}
        environ["BESEDA_HTTP_PORT"] = "0"  # never the default port, which may be taken
        environ.update(env)
        with self.err.open("wb") as err, out.open("wb") as stdout:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "beseda", "serve", *args],
                stdout=stdout,
                stderr=err,
                env=environ,
            )

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def wait_listening(self) -> int:
        """Wait for the "listening" log line; returns the port it names."""
        deadline = time.monotonic() + 30 * TIMEOUT_FACTOR
        while time.monotonic() < deadline:
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.stderr)
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.stderr}")
            time.sleep(0.02)
        raise TimeoutError(self.stderr)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30 * TIMEOUT_FACTOR)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    """``serve(*args, **env)`` starts ``beseda serve``; all are killed at the end."""
    started: list[Serve] = []

    def start(*args: str, **env: str) -> Serve:
        child = Serve(tmp_path, list(args), env)
        started.append(child)
        return child

    yield start
    for child in started:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()


def stored_client_ids(db: Path) -> Counter[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT client_id FROM messages").fetchall()
    conn.close()
    return Counter(row[0] for row in rows)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_serve_with_flags_creates_the_database_and_shuts_down_gracefully(
    serve, tmp_path: Path, sig: int
) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "new" / "dir" / "chat.db"
    assert not db.parent.exists()
    port = free_port()
    child = serve("--host", "127.0.0.1", "--port", str(port), "--db", str(db))
    assert await asyncio.to_thread(child.wait_listening) == port
    assert db.exists()

    alice = await Newcomer.user(port, "alice")
    bob = await Newcomer.user(port, "bob")
    # A stream of messages, the shutdown signal arriving in the middle of it.
    ids = [alice.send("send", client_id=f"m{n}", text=f"message {n}") for n in range(300)]
    first = await alice.reply(ids[0])
    assert first["type"] == "result"
    child.proc.send_signal(sig)

    acked = {first["data"]["message"]["client_id"]}
    rest = await alice.closing(timeout=30)
    for message in rest:
        if message["type"] == "result":
            acked.add(message["data"]["message"]["client_id"])
    await alice.close()
    assert rest[-1]["type"] == "bye"
    assert rest[-1]["code"] == "server_shutdown"
    bob_saw = await bob.closing(timeout=30)
    await bob.close()
    assert bob_saw[-1]["code"] == "server_shutdown"
    assert await asyncio.to_thread(child.proc.wait, 30 * TIMEOUT_FACTOR) == 0

    # Every acknowledged message is stored, none twice.
    stored = stored_client_ids(db)
    assert acked <= set(stored)
    assert set(stored.values()) == {1}
    log = child.stderr
    assert "Traceback" not in log
    assert re.search(r"conn \d+: logged in as alice", log)
    assert "shutting down" in log

    # The next start reads the same file: the accounts and messages are still there.
    again = serve("--port", str(port), "--db", str(db))
    await asyncio.to_thread(again.wait_listening)
    conn = await Newcomer.open(port)
    await conn.call("login", username="alice", password=PASSWORD)
    page = await conn.call("history", conversation="general", limit=200)
    newest = page["messages"][-1]["seq"]
    assert newest == sum(stored.values())
    await conn.close()
    assert await asyncio.to_thread(again.stop) == 0


async def test_serve_reads_environment_variables_and_flags_win(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "from-env.db"
    port = free_port()
    env = {
        "BESEDA_HOST": "127.0.0.1",
        "BESEDA_PORT": str(port),
        "BESEDA_DB": str(db),
        "BESEDA_LOG_LEVEL": "DEBUG",
        "BESEDA_AUTH_TIMEOUT": "7.5",
        "BESEDA_MESSAGE_BURST": "42",
    }
    child = serve(**env)
    assert await asyncio.to_thread(child.wait_listening) == port
    assert db.exists()
    conn = await Newcomer.open(port)
    assert conn.hello is not None
    assert conn.hello["limits"]["auth_timeout"] == 7.5
    assert conn.hello["limits"]["message_burst"] == 42
    await conn.call("register", username="alice", password=PASSWORD)
    await conn.close()
    assert await asyncio.to_thread(child.stop) == 0
    # DEBUG shows each connection opening, with its id and address.
    assert re.search(r"DEBUG .*conn \d+: opened from 127\.0\.0\.1", child.stderr)

    # A flag overrides its variable.
    other_port = free_port()
    child = serve("--port", str(other_port), "--log-level", "info", **env)
    assert await asyncio.to_thread(child.wait_listening) == other_port
    conn = await Newcomer.open(other_port)
    await conn.call("login", username="alice", password=PASSWORD)
    await conn.close()
    assert await asyncio.to_thread(child.stop) == 0
    assert "DEBUG" not in child.stderr


async def test_a_taken_port_is_a_clear_error(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        child = serve("--port", str(port), "--db", str(tmp_path / "x.db"))
        code = await asyncio.to_thread(child.proc.wait, 30 * TIMEOUT_FACTOR)
    assert code != 0
    lines = child.stderr.strip().splitlines()
    assert "Traceback" not in child.stderr
    assert lines[-1].startswith("beseda: ")
    assert f"127.0.0.1:{port}" in lines[-1]
    assert "in use" in lines[-1]


@pytest.mark.parametrize("where", ["a-directory", "under-a-file"])
async def test_an_unusable_database_path_is_a_clear_error(
    serve, tmp_path: Path, where: str
) -> None:  # type: ignore[no-untyped-def]
    if where == "a-directory":
        db = tmp_path / "db-dir"
        db.mkdir()
    else:
        (tmp_path / "plain-file").write_text("not a directory")
        db = tmp_path / "plain-file" / "beseda.db"
    child = serve("--port", str(free_port()), "--db", str(db))
    code = await asyncio.to_thread(child.proc.wait, 30 * TIMEOUT_FACTOR)
    assert code != 0
    lines = child.stderr.strip().splitlines()
    assert "Traceback" not in child.stderr
    assert lines[-1].startswith("beseda: ")
    assert str(db) in lines[-1]


async def test_a_file_that_is_not_a_database_is_a_clear_error(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "notes.txt"
    db.write_text("these are my notes, not a database\n" * 100)
    child = serve("--port", str(free_port()), "--db", str(db))
    code = await asyncio.to_thread(child.proc.wait, 30 * TIMEOUT_FACTOR)
    assert code != 0
    assert "Traceback" not in child.stderr
    assert child.stderr.strip().splitlines()[-1].startswith("beseda: ")
    assert db.read_text().startswith("these are my notes")


def thread_names(pid: int) -> Counter[str]:
    names: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names[(task / "comm").read_text().strip()] += 1
        except OSError:
            continue  # the thread ended meanwhile
    return names


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names are Linux's")
async def test_the_server_threads_carry_names_the_operating_system_shows(
    serve, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """``top -H``, ``ps -L`` and ``perf`` tell the event loop from the writer, the readers
    and the hashing threads (docs/operations.md, "Threads")."""
    port = free_port()
    child = serve("--host", "127.0.0.1", "--port", str(port), "--db", str(tmp_path / "c.db"))
    await asyncio.to_thread(child.wait_listening)
    alice = await Newcomer.user(port, "alice")  # a password hashed: a hashing thread
    await alice.call("history", conversation="general", limit=10)  # a read: a reader thread
    names = thread_names(child.proc.pid)
    await alice.close()
    assert names["beseda-writer"] == 1
    assert names["beseda-reader"] >= 1
    assert names["beseda-argon2"] >= 1
    # The event loop keeps the process's own name: the first thread is not renamed.
    main = (Path(f"/proc/{child.proc.pid}/task/{child.proc.pid}") / "comm").read_text().strip()
    assert not main.startswith("beseda-")
    assert await asyncio.to_thread(child.stop) == 0
