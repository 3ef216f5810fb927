"""SQLite's search index is filled after the commit, in runs (storage/search_index.py): every
message reaches the index exactly once, a search finds what was sent a moment ago, edits and
deletes keep it exact on both sides of the watermark, and an upgraded or switched-off
database is indexed later without doubles. Real SQLite files throughout."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from pathlib import Path

import pytest

from beseda.client import Client
from beseda.protocol import schema
from beseda.server.app import Server
from beseda.server.search import parse_query
from beseda.storage import NewMessage, SearchRequest
from beseda.storage import search_index as index
from beseda.storage.migrations import MIGRATIONS
from beseda.storage.sqlite import SQLiteStorage, connect, migrate
from conftest import TIMEOUT_FACTOR

pytestmark = pytest.mark.sqlite_only  # SQLite's index tables and watermark


def _counts(db: Path) -> tuple[int, int, int]:
    """(index documents, watermark, last message id) of the file."""
    with sqlite3.connect(db) as conn:
        (documents,) = conn.execute("SELECT count(*) FROM search_docsize").fetchone()
        (mark,) = conn.execute("SELECT indexed FROM search_progress").fetchone()
        (top,) = conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()
    return documents, mark, top


async def _until_indexed(storage: SQLiteStorage) -> None:
    deadline = time.monotonic() + 10 * TIMEOUT_FACTOR
    while storage.stats["unindexed"]:
        assert time.monotonic() < deadline, storage.stats
        await asyncio.sleep(0.05)


def _request(reader: int, words: str) -> SearchRequest:
    return SearchRequest(
        match=parse_query(words).fts(),
        readable={schema.GENERAL: (0, 2**62)},
        reader=reader,
        limit=100,
    )


async def _post(storage: SQLiteStorage, user: object, texts: list[str], tag: str) -> None:
    await asyncio.gather(
        *(
            storage.append_message(
                NewMessage(schema.GENERAL, user, None, f"{tag}{n}", text, 1)  # type: ignore[arg-type]
            )
            for n, text in enumerate(texts)
        )
    )


async def test_every_message_is_indexed_once_after_its_commit(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "b.db")
    await storage.open()
    try:
        alice = await storage.create_user("alice", "alice", "h", 1)
        # More than a batch's threshold: runs inside batches, then one alone when quiet.
        count = index.INDEX_AFTER + 300
        await _post(storage, alice, [f"встреча номер {n}" for n in range(count)], "c")
        assert storage.stats["unindexed"] > 0 or storage.stats["index_runs"] > 0
        await _until_indexed(storage)
        assert storage.stats["index_runs"] >= 2
    finally:
        await storage.close()
    documents, mark, top = _counts(tmp_path / "b.db")
    assert (documents, mark) == (count, top)


async def test_a_search_finds_what_was_sent_a_moment_ago(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index, "INDEX_IDLE", 600.0)  # the writer never indexes by itself here
    storage = SQLiteStorage(tmp_path / "b.db")
    await storage.open()
    try:
        alice = await storage.create_user("alice", "alice", "h", 1)
        await _post(storage, alice, ["только что отправлено"], "c")
        assert storage.stats["unindexed"] == 1  # not yet indexed: the search must do it
        hits, _ = await storage.search(_request(alice.id, "отправлено"))
        assert [hit.text for hit in hits] == ["только что отправлено"]
        assert storage.stats["unindexed"] == 0
    finally:
        await storage.close()


async def test_edits_and_deletes_keep_the_index_exact_before_and_after_indexing(
    server: Server, connect: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index, "INDEX_IDLE", 600.0)  # indexed only when a search catches up
    alice: Client = await connect("alice")  # type: ignore[operator]
    storage = server.storage
    assert isinstance(storage, SQLiteStorage)
    # Not yet indexed: the edit and the delete have nothing to change in the index.
    early = await alice.post(schema.GENERAL, "alpha original")
    gone = await alice.post(schema.GENERAL, "beta original")
    assert storage.stats["unindexed"] > 0
    await alice.edit(schema.GENERAL, early.seq, "alpha changed")
    await alice.delete(schema.GENERAL, gone.seq)
    assert (await alice.search("original")).results == []
    assert [hit.seq for hit in (await alice.search("changed")).results] == [early.seq]
    # Indexed now (the search caught up): the edit and the delete change the index.
    await alice.edit(schema.GENERAL, early.seq, "alpha final")
    assert (await alice.search("changed")).results == []
    assert [hit.seq for hit in (await alice.search("final")).results] == [early.seq]
    await alice.delete(schema.GENERAL, early.seq)
    assert (await alice.search("alpha")).results == []
    await asyncio.wait_for(storage.finish_erasure(), 30 * TIMEOUT_FACTOR)
    with sqlite3.connect(storage.path) as conn:
        conn.execute("INSERT INTO search (search) VALUES ('integrity-check')")
        (documents,) = conn.execute("SELECT count(*) FROM search_docsize").fetchone()
        (live,) = conn.execute("SELECT count(*) FROM messages WHERE kind = 'message'").fetchone()
    assert documents == live


async def test_messages_stored_with_the_index_off_are_indexed_at_a_later_start(
    tmp_path: Path,
) -> None:
    db = tmp_path / "b.db"
    storage = SQLiteStorage(db, search_index=False)
    await storage.open()
    try:
        alice = await storage.create_user("alice", "alice", "h", 1)
        await _post(storage, alice, [f"встреча {n}" for n in range(50)], "c")
        await asyncio.sleep(2 * index.INDEX_IDLE)  # the writer is idle: it indexes nothing
    finally:
        await storage.close()
    assert _counts(db)[:2] == (0, 0)
    storage = SQLiteStorage(db)
    await storage.open()
    try:
        assert storage.stats["unindexed"] > 0
        await _until_indexed(storage)  # without a search: the idle writer's backfill
        hits, _ = await storage.search(_request(alice.id, "встречи"))
        assert len(hits) == 50
    finally:
        await storage.close()
    documents, mark, top = _counts(db)
    assert (documents, mark) == (50, top)


def _schema(db: Path, version: int) -> sqlite3.Connection:
    """A file at schema ``version``, as that release left it."""
    conn = connect(db)
    for number, steps in enumerate(MIGRATIONS[:version], start=1):
        conn.execute("BEGIN")
        for step in steps:
            step(conn) if callable(step) else conn.execute(step)
        conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    conn.execute(
        "INSERT INTO users (id, name, key, password_hash, created_at, folded) "
        "VALUES (1, 'anna', 'anna', 'x', 0, 'anna')"
    )
    return conn


async def _reindexed(db: Path, conn: sqlite3.Connection, messages: int) -> None:
    """Upgrade to the current schema: the old index is gone, and the writer builds the new
    one in the background, each message once; searches with a sender's mark then work."""
    assert migrate(conn) == len(MIGRATIONS)
    conn.close()
    assert _counts(db) == (0, 0, messages)
    storage = SQLiteStorage(db)
    await storage.open()
    try:
        assert storage.stats["unindexed"] == messages
        await _until_indexed(storage)  # without a search: the idle writer's backfill
        assert _counts(db) == (messages, messages, messages)
        request = _request(1, "сообщение")
        hits, _ = await storage.search(request)
        assert sorted(hit.seq for hit in hits) == list(range(1, messages + 1))
        # The marks: of the one readable conversation (above), of a sender (here).
        hits, _ = await storage.search(dataclasses.replace(request, senders=(1,)))
        assert len(hits) == messages
        hits, _ = await storage.search(dataclasses.replace(request, senders=(2,)))
        assert hits == []
        with sqlite3.connect(db) as check:
            check.execute("INSERT INTO search (search) VALUES ('integrity-check')")
    finally:
        await storage.close()
    assert _counts(db) == (messages, messages, messages)


async def test_a_database_that_schema_4_indexed_is_indexed_anew_once(tmp_path: Path) -> None:
    """A database of the release whose triggers indexed each message in its INSERT (old
    marks, a case folding tokenizer): schema 6 drops that index and builds the new one."""
    db = tmp_path / "v4.db"
    conn = _schema(db, 4)
    # That release's trigger: each message indexed in its own INSERT.
    conn.execute(
        "CREATE TRIGGER search_insert AFTER INSERT ON messages WHEN new.kind = 'message' "
        "BEGIN INSERT INTO search (rowid, body) "
        "VALUES (new.id, beseda_search_body(new.text, new.sender_id, new.conversation)); END"
    )
    conn.executemany(
        "INSERT INTO messages (conversation, seq, sender_id, client_id, text, ts) "
        "VALUES ('general', ?, 1, ?, ?, 0)",
        [(n, f"c{n}", f"старое сообщение {n}") for n in range(1, 31)],
    )
    (indexed_then,) = conn.execute("SELECT count(*) FROM search_docsize").fetchone()
    assert indexed_then == 30  # the old insert trigger did it
    await _reindexed(db, conn, 30)


async def test_a_database_of_schema_5_is_indexed_anew_once(tmp_path: Path) -> None:
    db = tmp_path / "v5.db"
    conn = _schema(db, 5)
    conn.executemany(
        "INSERT INTO messages (conversation, seq, sender_id, client_id, text, ts) "
        "VALUES ('general', ?, 1, ?, ?, 0)",
        [(n, f"c{n}", f"Старое сообщение {n}") for n in range(1, 41)],
    )
    # Schema 5's writer indexed them, with its own (longer) marks.
    old_mark = "\x02\x011\x03\x04" + "".join("\x01" + c for c in "general") + "\x05"
    conn.executemany(
        "INSERT INTO search (rowid, body) VALUES (?, ?)",
        [(n, f" старое сообщение {n} {old_mark}") for n in range(1, 41)],
    )
    conn.execute("UPDATE search_progress SET indexed = 40")
    await _reindexed(db, conn, 40)
