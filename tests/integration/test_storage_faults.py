"""Failures of the machine: a locked, vanished, full or read-only database.

In every case the server answers ``storage_unavailable``, acknowledges nothing it did not
store, stays up, and recovers by itself once the cause is fixed. The full-disk case runs
the server in its own mount namespace on a tiny tmpfs (it needs root and ``unshare``; it is
skipped where those are missing).
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from beseda.client import Client
from beseda.protocol import errors
from beseda.protocol.errors import ProtocolError
from beseda.server.accounts import PasswordHasher
from beseda.server.app import Server
from conftest import TIMEOUT_FACTOR, free_port, test_settings

pytestmark = pytest.mark.sqlite_only  # the faults of a SQLite file (PostgreSQL's: test_postgres_*)


async def send_fails_unavailable(client: Client, text: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        await client.send(text)
    assert info.value.code == errors.STORAGE_UNAVAILABLE
    return info.value


async def texts_in_history(client: Client) -> list[str]:
    page = await client.history("general", limit=200)
    return [m.text for m in page.messages]


async def test_locked_database(tmp_path: Path, hasher: PasswordHasher) -> None:
    settings = replace(test_settings(tmp_path), db_busy_timeout=0.3)
    async with Server(settings, hasher=hasher) as server:
        client = Client("127.0.0.1", server.port)
        await client.connect()
        await client.register("alice", "password123")
        await client.send("before the lock")

        other = sqlite3.connect(settings.db, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            error = await send_fails_unavailable(client, "while locked")
            print("locked:", error.message)
            # Reading still works, and the server stays up.
            assert await texts_in_history(client) == ["before the lock"]
        finally:
            other.execute("ROLLBACK")
            other.close()
        await client.send("after the lock")
        assert await texts_in_history(client) == ["before the lock", "after the lock"]
        await client.close()


async def test_vanished_database_refuses_writes_until_restored(
    tmp_path: Path, hasher: PasswordHasher, caplog: pytest.LogCaptureFixture
) -> None:
    settings = test_settings(tmp_path)
    backup = tmp_path / "backup.db"
    async with Server(settings, hasher=hasher) as server:
        client = Client("127.0.0.1", server.port)
        await client.connect()
        await client.register("alice", "password123")
        await client.send("in the backup")
        source = sqlite3.connect(settings.db)
        with sqlite3.connect(backup) as target:
            source.backup(target)
        source.close()

        for suffix in ("", "-wal", "-shm"):
            os.unlink(f"{settings.db}{suffix}")
        await send_fails_unavailable(client, "into the void")
        # The operator learns why; the client only that it may retry later.
        assert "has vanished; restore it from a backup" in caplog.text
        await client.ping()  # still serving

        shutil.copy(backup, settings.db)
        await client.send("after the restore")
        await client.close()
    # Everything acknowledged is in the file; the refused message is not.
    db = sqlite3.connect(settings.db)
    texts = [row[0] for row in db.execute("SELECT text FROM messages ORDER BY id")]
    db.close()
    assert texts == ["in the backup", "after the restore"]


# -- a server on a tiny file system of its own -------------------------------------------------


def _can_make_namespaces() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"):
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10, check=False)
    return probe.returncode == 0


needs_namespaces = pytest.mark.skipif(
    not _can_make_namespaces(), reason="needs root and mount namespaces (unshare -m)"
)


class IsolatedServer:
    """``beseda serve`` in its own mount namespace, its database on a small tmpfs."""

    def __init__(self, tmp_path: Path, size: str = "4m") -> None:
        self.mount = tmp_path / "volume"
        self.mount.mkdir()
        self.port = free_port()
        self.log = tmp_path / "server.log"
        script = (
            f"mount -t tmpfs -o size={size} tmpfs {self.mount} && exec {sys.executable} "
            f"-m beseda serve --port {self.port} --db {self.mount}/beseda.db "
            "--message-rate 100000 --message-burst 100000"
        )
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 15 * TIMEOUT_FACTOR
        while not re.search(rf"listening on 127\.0\.0\.1:{self.port}\b", self.log.read_text()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {self.log.read_text()}")
            time.sleep(0.05)

    def inside(self, *command: str) -> subprocess.CompletedProcess[bytes]:
        """Run a command in the server's mount namespace."""
        return subprocess.run(
            ["nsenter", "-t", str(self.proc.pid), "-m", *command],
            capture_output=True,
            timeout=30,
            check=False,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


@needs_namespaces
@pytest.mark.timeout(120)
async def test_full_disk(tmp_path: Path) -> None:
    server = IsolatedServer(tmp_path)
    try:
        client = Client("127.0.0.1", server.port)
        await client.connect()
        await client.register("alice", "password123")
        # Leave about 1.5 MB free, then write until the database cannot grow.
        server.inside("dd", "if=/dev/zero", f"of={server.mount}/filler", "bs=64k", "count=40")
        big = "x" * 16_000
        acknowledged: list[str] = []
        failure: ProtocolError | None = None
        for number in range(400):
            try:
                await client.send(f"{number} {big}")
            except ProtocolError as exc:
                failure = exc
                break
            acknowledged.append(f"{number} {big}")
        assert failure is not None, "the disk never filled"
        assert failure.code == errors.STORAGE_UNAVAILABLE
        print(f"full disk after {len(acknowledged)} messages: {failure.message}")
        await client.ping()

        server.inside("rm", f"{server.mount}/filler")
        await client.send("space again")
        stored: list[str] = []
        before = None
        while True:
            page = await client.history("general", before=before, limit=200)
            stored[:0] = [m.text for m in page.messages]
            if not page.more:
                break
            before = page.messages[0].seq
        assert stored == [*acknowledged, "space again"]
        await client.close()
    finally:
        server.stop()
