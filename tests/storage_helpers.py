"""Helpers of the storage tests (unit and integration): messages to append, a held lock,
stores of each kind.

Not in ``conftest.py``: pytest imports every ``conftest.py`` under that one module name, so a
test that imports from it may get another directory's.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import pg_server
from beseda.protocol.schema import GENERAL
from beseda.server.chat import dm_conversation
from beseda.storage import NewMessage, Storage, UserRecord
from beseda.storage.postgres import PostgresStorage
from beseda.storage.sqlite import SQLiteStorage

TS = 1_700_000_000_000
"""A fixed timestamp (ms)."""


def general(sender: UserRecord, client_id: str, text: str = "hi", ts: int = TS) -> NewMessage:
    return NewMessage(GENERAL, sender, None, client_id, text, ts)


def direct(
    sender: UserRecord, recipient: UserRecord, client_id: str, text: str = "hi", ts: int = TS
) -> NewMessage:
    return NewMessage(
        dm_conversation(sender.id, recipient.id), sender, recipient, client_id, text, ts
    )


@contextmanager
def write_lock(path: Path) -> Iterator[None]:
    """Hold the database's write lock from another connection: the server's writer then
    waits at its next commit, and every write queued meanwhile joins the batch after it."""
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        blocker.execute("COMMIT")
        blocker.close()


@asynccontextmanager
async def writes_held(storage: Storage) -> AsyncIterator[None]:
    """Make the store's writer wait at its next write, on either engine, until the block
    ends: every write queued meanwhile joins the batch after it. SQLite: the database's write
    lock, held from another connection. PostgreSQL: a lock on the conversations table that
    every counter-row UPDATE waits for."""
    if isinstance(storage, SQLiteStorage):
        with write_lock(storage.path):
            yield
        return
    assert isinstance(storage, PostgresStorage)
    conn = await asyncpg.connect(storage.url)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE conversations, users IN SHARE ROW EXCLUSIVE MODE")
            yield
    finally:
        await conn.close()


def new_store(kind: str, tmp_path: Path) -> Storage:
    """An unopened store of ``kind``: SQLite on a fresh file, or PostgreSQL on a fresh
    database (the test is skipped when PostgreSQL is not installed)."""
    if kind == "sqlite":
        return SQLiteStorage(tmp_path / f"{kind}.db")
    if not pg_server.available():
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    return PostgresStorage(pg_server.shared_server().create_database())


def query(db: Path | str, sql: str) -> list[tuple[Any, ...]]:
    """The rows of one query on a test server's database: a SQLite file or a PostgreSQL URL
    (run on a thread of its own, so that async tests may call it too)."""
    if isinstance(db, Path):
        conn = sqlite3.connect(db)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    async def fetch() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(db)
        try:
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, fetch()).result()


def integrity(db: Path | str) -> str:
    """``"ok"`` when the database is sound: SQLite's ``PRAGMA integrity_check``; on PostgreSQL
    (which checks its own pages) the counter rows, which must equal each conversation's
    highest stored seq."""
    if isinstance(db, Path):
        return str(query(db, "PRAGMA integrity_check")[0][0])
    wrong = query(
        db,
        "SELECT c.id, c.last_seq, max(m.seq) FROM conversations c "
        "LEFT JOIN messages m ON m.conversation = c.id GROUP BY c.id, c.last_seq "
        "HAVING c.last_seq <> coalesce(max(m.seq), 0)",
    )
    return "ok" if not wrong else f"counter rows differ from the stored seqs: {wrong}"
