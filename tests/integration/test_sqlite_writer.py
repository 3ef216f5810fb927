"""The SQLite writer on real files: one transaction per batch, sequence numbers in memory.

A batch runs without a savepoint per write. A write that fails must fail alone, and nothing of
it may stay behind; a failed commit fails the batch and leaves no gap. The writer keeps the
last seq of each conversation in memory, so these tests also write the same file from a
second store and from a raw connection, and check that no seq is duplicated, skipped or
acknowledged wrongly.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from beseda.protocol.schema import GENERAL, Message
from beseda.storage import NameTakenError, NewMessage, StorageError, UserRecord
from beseda.storage import sqlite as sqlite_module
from beseda.storage.sqlite import (
    _CAREFUL_AFTER,
    MAX_BATCH,
    MAX_GATHER,
    SQLiteStorage,
    connect,
    gather_wait,
)
from storage_helpers import TS, direct, general, write_lock

T = TypeVar("T")


@pytest.fixture
def storage(sqlite_storage: SQLiteStorage) -> SQLiteStorage:
    """These tests are about SQLite's writer: its store alone (the contract's tests on every
    engine are in test_storage_writer.py)."""
    return sqlite_storage


async def in_few_batches(
    storage: SQLiteStorage, make_calls: Callable[[], list[Awaitable[T]]]
) -> list[Any]:
    """Make the calls while the write lock is held elsewhere, so that they share at most two
    batches (the writer takes the first one alone before it blocks on the lock); returns
    results and exceptions in order. (``append_message`` queues its write when called.)"""
    before = storage.stats["batches"]
    with write_lock(storage.path):
        tasks = [asyncio.ensure_future(call) for call in make_calls()]
        await asyncio.sleep(0)  # every task has now queued its write
        await asyncio.sleep(0)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert storage.stats["batches"] - before <= 2
    return results


def stored_seqs(path: Path, conversation: str) -> list[int]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT seq FROM messages WHERE conversation = ? ORDER BY seq", (conversation,)
        ).fetchall()
    finally:
        conn.close()
    return [seq for (seq,) in rows]


def counter(path: Path, conversation: str) -> tuple[int, int | None]:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute(
            "SELECT last_seq, last_ts FROM conversations WHERE id = ?", (conversation,)
        ).fetchone()
    finally:
        conn.close()
    assert row is not None
    return row[0], row[1]


def assert_gap_free(messages: list[Message], path: Path) -> None:
    """The acknowledged seqs are 1..n per conversation and are what the file holds."""
    for conversation in {m.conversation for m in messages}:
        run = sorted((m for m in messages if m.conversation == conversation), key=lambda m: m.id)
        assert [m.seq for m in run] == list(range(1, len(run) + 1))
        assert stored_seqs(path, conversation) == [m.seq for m in run]


# -- a failing write fails alone ---------------------------------------------------------------


async def test_a_taken_name_fails_alone_among_messages(storage: SQLiteStorage) -> None:
    alice = await storage.create_user("alice", "alice", "h", TS)
    bob = await storage.create_user("bob", "bob", "h", TS)

    def calls() -> list[Awaitable[Any]]:
        made: list[Awaitable[Any]] = [
            storage.append_message(general(alice, f"a{i}")) for i in range(10)
        ]
        made.append(storage.create_user("ALICE", "alice", "h", TS))
        made += [storage.append_message(direct(bob, alice, f"b{i}")) for i in range(10)]
        made.append(storage.create_user("carol", "carol", "h", TS))
        return made

    results = await in_few_batches(storage, calls)

    assert isinstance(results[10], NameTakenError)
    assert isinstance(results[-1], UserRecord)
    messages = [message for message, duplicate in results[:10] + results[11:-1]]
    assert_gap_free(messages, storage.path)
    assert [u.key for u in await storage.list_users("", None, 10)] == ["alice", "bob", "carol"]
    assert storage.stats["writes"] == 2 + len(results)
    # The failed INSERT undid itself, so the batch went on without being run again.
    assert storage._writer is not None
    assert storage._writer.reruns == 0


async def test_a_write_that_fails_after_writing_leaves_nothing_behind(
    storage: SQLiteStorage,
) -> None:
    """A write that changed a row and then raised is undone, not half committed; the batch is
    run again without it, and its neighbours keep their seqs."""
    alice = await storage.create_user("alice", "alice", "h", TS)

    def broken(tx: Any) -> None:
        tx.conn.execute(
            "INSERT INTO users (name, key, password_hash, created_at) VALUES ('x', 'x', 'h', 0)"
        )
        raise RuntimeError("a bug after a write")

    def calls() -> list[Awaitable[Any]]:
        made: list[Awaitable[Any]] = [
            storage.append_message(general(alice, f"a{i}")) for i in range(5)
        ]
        made.append(storage._submit(broken))
        made += [storage.append_message(general(alice, f"b{i}")) for i in range(5)]
        return made

    results = await in_few_batches(storage, calls)

    assert isinstance(results[5], StorageError)
    assert "a bug after a write" in str(results[5])
    assert await storage.user_by_key("x") is None
    assert_gap_free([m for m, _ in results[:5] + results[6:]], storage.path)
    assert (await storage.conversations_of(alice.id))[0].last_seq == 10
    assert storage._writer is not None
    assert storage._writer.reruns == 1


async def test_many_failing_writes_in_one_batch(storage: SQLiteStorage) -> None:
    """Past a few re-runs the rest of the batch falls back to a savepoint per write; the
    outcome is the same."""
    alice = await storage.create_user("alice", "alice", "h", TS)

    def broken(tx: Any) -> None:
        tx.conn.execute("UPDATE users SET password_hash = 'changed' WHERE id = ?", (alice.id,))
        raise RuntimeError("a bug after a write")

    def calls() -> list[Awaitable[Any]]:
        made: list[Awaitable[Any]] = []
        for i in range(20):
            made.append(storage.append_message(general(alice, f"a{i}")))
            made.append(storage._submit(broken))
        return made

    results = await in_few_batches(storage, calls)

    assert all(isinstance(r, StorageError) for r in results[1::2])
    assert_gap_free([m for m, _ in results[0::2]], storage.path)
    user = await storage.user_by_key("alice")
    assert user is not None
    assert user.password_hash == "h"
    assert storage._writer is not None
    assert storage._writer.reruns == _CAREFUL_AFTER


async def test_a_message_to_an_unknown_room_fails_alone(storage: SQLiteStorage) -> None:
    alice = await storage.create_user("alice", "alice", "h", TS)
    results = await in_few_batches(
        storage,
        lambda: [
            storage.append_message(general(alice, "a")),
            storage.append_message(NewMessage("room", alice, None, "r", "hi", TS)),
            storage.append_message(general(alice, "b")),
        ],
    )
    assert isinstance(results[1], StorageError)
    assert [m.seq for m, _ in (results[0], results[2])] == [1, 2]


# -- failed writes and commits leave no gap ----------------------------------------------------


async def test_seqs_stay_gap_free_after_a_failed_write(storage: SQLiteStorage) -> None:
    alice = await storage.create_user("alice", "alice", "h", TS)
    bob = await storage.create_user("bob", "bob", "h", TS)

    def broken(tx: Any) -> None:
        tx.conn.execute(
            "INSERT INTO tokens (hash, user_id, created_at) VALUES (?, ?, 0)", (b"t", alice.id)
        )
        raise RuntimeError("a bug after a write")

    first = await in_few_batches(
        storage,
        lambda: [
            storage.append_message(direct(alice, bob, "d1")),
            storage.append_message(direct(alice, bob, "d2")),
            storage._submit(broken),
            storage.append_message(direct(bob, alice, "d3")),
        ],
    )
    assert isinstance(first[2], StorageError)
    later = [(await storage.append_message(direct(bob, alice, f"e{i}")))[0] for i in range(3)]
    everything = [m for m, _ in first[:2] + first[3:]] + later
    assert_gap_free(everything, storage.path)
    assert counter(storage.path, everything[0].conversation) == (6, TS)
    assert await storage.user_by_token(b"t") is None


async def test_seqs_stay_gap_free_after_a_failed_commit(storage: SQLiteStorage) -> None:
    """A batch whose COMMIT fails (here a deferred foreign key, checked at COMMIT) fails every
    write in it; the seqs it had taken are not used, so the next messages leave no gap."""
    alice = await storage.create_user("alice", "alice", "h", TS)
    bob = await storage.create_user("bob", "bob", "h", TS)
    before = [(await storage.append_message(direct(alice, bob, f"a{i}")))[0] for i in range(2)]

    def poison(tx: Any) -> None:
        tx.conn.execute("PRAGMA defer_foreign_keys = ON")
        tx.conn.execute(
            "INSERT INTO tokens (hash, user_id, created_at) VALUES (?, 999, 0)", (b"t",)
        )

    failed = await in_few_batches(
        storage,
        lambda: [
            storage.append_message(general(bob, "warm-up")),  # may take the first batch alone
            storage.append_message(direct(alice, bob, "b1")),
            storage.append_message(general(alice, "b2")),
            storage._submit(poison),
            storage.append_message(direct(bob, alice, "b3")),
        ],
    )
    assert all(isinstance(r, StorageError) for r in failed[1:])
    assert "could not commit" in str(failed[3])
    after = [(await storage.append_message(direct(bob, alice, f"c{i}")))[0] for i in range(3)]
    assert [m.seq for m in before + after] == [1, 2, 3, 4, 5]
    assert_gap_free(before + after, storage.path)
    assert counter(storage.path, before[0].conversation)[0] == 5
    stored_general = stored_seqs(storage.path, GENERAL)
    assert stored_general == list(range(1, len(stored_general) + 1))
    following, _ = await storage.append_message(general(alice, "next"))
    assert following.seq == len(stored_general) + 1


async def test_a_locked_database_fails_the_batch_and_leaves_no_gap(tmp_path: Path) -> None:
    store = SQLiteStorage(tmp_path / "beseda.db", busy_timeout=0.2)
    await store.open()
    try:
        alice = await store.create_user("alice", "alice", "h", TS)
        first, _ = await store.append_message(general(alice, "a"))
        blocker = sqlite3.connect(store.path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(StorageError):
                await store.append_message(general(alice, "b"))
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        second, _ = await store.append_message(general(alice, "c"))
        assert (first.seq, second.seq) == (1, 2)
    finally:
        await store.close()


# -- someone else writes the same file ---------------------------------------------------------


async def test_a_second_store_on_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "beseda.db"
    ours, theirs = SQLiteStorage(path), SQLiteStorage(path)
    await ours.open()
    await theirs.open()
    try:
        alice = await ours.create_user("alice", "alice", "h", TS)
        bob = await ours.create_user("bob", "bob", "h", TS)
        acked: list[Message] = []
        for round_ in range(4):
            for number, store in enumerate((ours, theirs, ours)):
                for sender, recipient in ((alice, bob), (bob, alice)):
                    message, duplicate = await store.append_message(
                        direct(sender, recipient, f"{round_}-{number}-{sender.id}", ts=TS + round_)
                    )
                    assert not duplicate
                    acked.append(message)
                acked.append((await store.append_message(general(alice, f"g{len(acked)}")))[0])
        # Both at once, so each store's batches interleave with the other's.
        results = await asyncio.gather(
            *(
                store.append_message(direct(alice, bob, f"both-{i}-{n}"))
                for i, store in enumerate((ours, theirs))
                for n in range(30)
            )
        )
        acked += [message for message, _ in results]
        assert_gap_free(acked, path)
        dm = acked[0].conversation
        assert counter(path, dm)[0] == len(stored_seqs(path, dm))
        for store in (ours, theirs):
            history, _ = await store.history(dm, None, 500)
            assert [m.seq for m in history] == stored_seqs(path, dm)
            records = {r.conversation: r.last_seq for r in await store.conversations_of(alice.id)}
            assert records[dm] == len(stored_seqs(path, dm))
            assert records[GENERAL] == len(stored_seqs(path, GENERAL))
    finally:
        await ours.close()
        await theirs.close()


async def test_a_raw_connection_inserting_behind_the_writers_back(storage: SQLiteStorage) -> None:
    """Another program inserts messages without touching the counter row: the writer goes on
    after them rather than colliding or reusing a seq. (It opens the file with beseda's
    ``connect``: the search index's triggers need the functions it registers.)"""
    alice = await storage.create_user("alice", "alice", "h", TS)
    bob = await storage.create_user("bob", "bob", "h", TS)
    first, _ = await storage.append_message(direct(alice, bob, "d1"))
    await storage.append_message(general(alice, "g1"))

    raw = connect(storage.path)
    try:
        raw.executemany(
            "INSERT INTO messages (conversation, seq, sender_id, recipient_id, client_id, text, ts)"
            " VALUES (?, ?, ?, ?, ?, 'raw', ?)",
            [(first.conversation, seq, bob.id, alice.id, f"raw{seq}", TS) for seq in (2, 3)],
        )
    finally:
        raw.close()

    following, _ = await storage.append_message(direct(alice, bob, "d4"))
    assert following.seq == 4
    assert stored_seqs(storage.path, first.conversation) == [1, 2, 3, 4]
    assert counter(storage.path, first.conversation)[0] == 4
    assert (await storage.append_message(general(alice, "g2")))[0].seq == 2


async def test_a_stale_seq_in_memory_is_caught_by_the_unique_constraint(
    storage: SQLiteStorage, caplog: pytest.LogCaptureFixture
) -> None:
    """The last line of defence: if the writer's memory is behind the file anyway, the
    UNIQUE (conversation, seq) constraint fires, and the writer takes the seq from the file
    instead of failing the write or acknowledging a wrong seq."""
    alice = await storage.create_user("alice", "alice", "h", TS)
    for i in range(5):
        await storage.append_message(general(alice, f"g{i}"))
    assert storage._writer is not None
    storage._writer._seqs[GENERAL] = 1  # as if someone had written seqs 2..5 unseen

    results = await in_few_batches(
        storage, lambda: [storage.append_message(general(alice, f"h{i}")) for i in range(3)]
    )
    assert [m.seq for m, _ in results] == [6, 7, 8]
    assert stored_seqs(storage.path, GENERAL) == list(range(1, 9))
    assert counter(storage.path, GENERAL)[0] == 8
    assert "written by another process" in caplog.text


# -- exactly once, counters --------------------------------------------------------------------


async def test_a_retried_client_id_returns_the_original_across_batches(
    storage: SQLiteStorage,
) -> None:
    alice = await storage.create_user("alice", "alice", "h", TS)
    bob = await storage.create_user("bob", "bob", "h", TS)
    original, _ = await storage.append_message(general(alice, "c1", "first"))
    for i in range(3):
        await storage.append_message(general(bob, f"b{i}"))
    results = await in_few_batches(
        storage,
        lambda: [
            storage.append_message(general(alice, "c1", "first", TS + 9)),
            storage.append_message(general(bob, "b3")),
            # The same client id aimed at a new direct conversation is still the original,
            # and does not create that conversation.
            storage.append_message(direct(alice, bob, "c1")),
            storage.append_message(general(alice, "c1", "first", TS + 9)),
        ],
    )
    assert [duplicate for _, duplicate in results] == [True, False, True, True]
    assert all(message == original for message, _ in results[0::2])
    assert results[1][0].seq == 5
    assert [r.conversation for r in await storage.conversations_of(alice.id)] == [GENERAL]
    assert stored_seqs(storage.path, GENERAL) == [1, 2, 3, 4, 5]


async def test_the_counter_row_follows_each_batch(storage: SQLiteStorage) -> None:
    """last_seq and last_ts are written once per conversation per batch: the last message's."""
    alice = await storage.create_user("alice", "alice", "h", TS)
    bob = await storage.create_user("bob", "bob", "h", TS)
    carol = await storage.create_user("carol", "carol", "h", TS)

    def calls() -> list[Awaitable[Any]]:
        made: list[Awaitable[Any]] = []
        for i in range(12):
            made.append(storage.append_message(general(alice, f"g{i}", ts=TS + i)))
            made.append(storage.append_message(direct(bob, carol, f"d{i}", ts=TS + 100 + i)))
        return made

    results = await in_few_batches(storage, calls)
    assert_gap_free([m for m, _ in results], storage.path)
    dm = results[1][0].conversation
    assert counter(storage.path, GENERAL) == (12, TS + 11)
    assert counter(storage.path, dm) == (12, TS + 111)
    records = {r.conversation: r for r in await storage.conversations_of(carol.id)}
    assert (records[dm].last_seq, records[dm].last_ts, records[dm].peer) == (12, TS + 111, "bob")


async def test_reopening_reloads_seqs_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "beseda.db"
    store = SQLiteStorage(path)
    await store.open()
    alice = await store.create_user("alice", "alice", "h", TS)
    bob = await store.create_user("bob", "bob", "h", TS)
    for i in range(3):
        await store.append_message(direct(alice, bob, f"d{i}"))
    await store.close()
    store = SQLiteStorage(path)
    await store.open()
    try:
        message, _ = await store.append_message(direct(bob, alice, "again"))
        assert message.seq == 4
    finally:
        await store.close()


# -- a run of appends goes in one INSERT -------------------------------------------------------


def together(storage: SQLiteStorage) -> int:
    """Messages the writer has inserted in runs (one ``executemany``) rather than one by one."""
    assert storage._writer is not None
    return storage._writer.together


async def assert_stored_as_acknowledged(storage: SQLiteStorage, acked: list[Message]) -> None:
    """Every acknowledged message is in the file exactly as acknowledged (id included), and the
    file holds no other message of those conversations."""
    for conversation in {m.conversation for m in acked}:
        stored, _ = await storage.history(conversation, None, 10_000)
        mine = sorted(
            {m.id: m for m in acked if m.conversation == conversation}.values(), key=lambda m: m.id
        )
        assert stored == mine


async def test_a_run_of_appends_is_inserted_together(storage: SQLiteStorage) -> None:
    alice = await storage.create_user("alice", "alice", "h", TS)
    bob = await storage.create_user("bob", "bob", "h", TS)
    results = await in_few_batches(
        storage,
        lambda: [
            storage.append_message(general(alice, "warm-up")),  # may take the first batch alone
            *(storage.append_message(general(alice, f"g{i}", ts=TS + i)) for i in range(10)),
            *(storage.append_message(direct(bob, alice, f"d{i}", ts=TS + i)) for i in range(10)),
        ],
    )
    acked = [m for m, duplicate in results if not duplicate]
    assert len(acked) == 21
    assert together(storage) >= 20
    assert_gap_free(acked, storage.path)
    await assert_stored_as_acknowledged(storage, acked)
    assert counter(storage.path, GENERAL) == (11, TS + 9)
    dm = acked[-1].conversation
    # The direct conversation was new: the run created its row, with its peers.
    assert counter(storage.path, dm) == (10, TS + 9)
    records = {r.conversation: r for r in await storage.conversations_of(alice.id)}
    assert records[dm].peer == "bob"
    assert [m.id for m in acked] == sorted(m.id for m in acked)


async def test_copies_inside_one_run_answer_with_the_first(storage: SQLiteStorage) -> None:
    alice = await storage.create_user("alice", "alice", "h", TS)
    bob = await storage.create_user("bob", "bob", "h", TS)
    results = await in_few_batches(
        storage,
        lambda: [
            storage.append_message(general(bob, "warm-up")),
            storage.append_message(general(alice, "c1", "first")),
            storage.append_message(general(alice, "c2")),
            storage.append_message(general(alice, "c1", "retried", TS + 5)),
            storage.append_message(direct(alice, bob, "c1")),  # the same id, elsewhere
            storage.append_message(general(alice, "c3")),
            storage.append_message(general(alice, "c1", "again")),
        ],
    )
    assert [d for _, d in results] == [False, False, False, True, True, False, True]
    first = results[1][0]
    assert first.text == "first"
    assert all(m == first for m, _ in results[3:5] + results[6:])
    acked = [m for m, d in results if not d]
    assert [m.seq for m in acked] == [1, 2, 3, 4]
    assert_gap_free(acked, storage.path)
    await assert_stored_as_acknowledged(storage, acked)
    # The copy aimed at a new direct conversation did not create it.
    assert [r.conversation for r in await storage.conversations_of(alice.id)] == [GENERAL]
    assert together(storage) >= 4
    assert storage._writer is not None
    assert storage._writer.reruns == 0


async def test_copies_of_earlier_batches_inside_a_run(storage: SQLiteStorage) -> None:
    """A run that holds a retry of a message stored earlier goes one by one: the retry
    answers with the original and the seqs after it close up."""
    alice = await storage.create_user("alice", "alice", "h", TS)
    bob = await storage.create_user("bob", "bob", "h", TS)
    original, _ = await storage.append_message(general(alice, "old", "stored before"))
    dm_original, _ = await storage.append_message(direct(alice, bob, "dm-old"))
    results = await in_few_batches(
        storage,
        lambda: [
            storage.append_message(general(bob, "warm-up")),
            storage.append_message(general(alice, "n1")),
            storage.append_message(direct(bob, alice, "n2")),
            storage.append_message(general(alice, "old", "stored before", TS + 7)),
            storage.append_message(general(alice, "n3")),
            storage.append_message(direct(alice, bob, "dm-old")),
            storage.append_message(direct(bob, alice, "n4")),
        ],
    )
    assert [d for _, d in results] == [False, False, False, True, False, True, False]
    assert results[3][0] == original
    assert results[5][0] == dm_original
    acked = [original, dm_original] + [m for m, d in results if not d]
    assert [m.seq for m in acked if m.conversation == GENERAL] == [1, 2, 3, 4]
    assert [m.seq for m in acked if m.conversation != GENERAL] == [1, 2, 3]
    assert_gap_free(acked, storage.path)
    await assert_stored_as_acknowledged(storage, acked)
    assert counter(storage.path, GENERAL)[0] == 4
    assert counter(storage.path, dm_original.conversation)[0] == 3
    # Nothing the abandoned attempt inserted stayed behind, and later ids follow on.
    following, _ = await storage.append_message(general(alice, "n5"))
    assert following.seq == 5
    assert following.id == max(m.id for m in acked) + 1


async def test_a_new_conversation_survives_its_run_going_one_by_one(
    storage: SQLiteStorage,
) -> None:
    alice = await storage.create_user("alice", "alice", "h", TS)
    carol = await storage.create_user("carol", "carol", "h", TS)
    original, _ = await storage.append_message(general(alice, "old"))
    results = await in_few_batches(
        storage,
        lambda: [
            storage.append_message(general(carol, "warm-up")),
            storage.append_message(direct(alice, carol, "d1")),
            storage.append_message(general(alice, "old")),
            storage.append_message(direct(carol, alice, "d2")),
        ],
    )
    assert [d for _, d in results] == [False, False, True, False]
    dm = results[1][0].conversation
    assert counter(storage.path, dm)[0] == 2
    records = {r.conversation: r for r in await storage.conversations_of(carol.id)}
    assert records[dm].peer == "alice"
    assert results[2][0] == original
    assert_gap_free([original] + [m for m, d in results if not d], storage.path)


async def test_a_failure_inside_a_run_fails_alone(storage: SQLiteStorage) -> None:
    """A message into an unknown room, from an unknown sender (a foreign key) and with a value
    SQLite cannot hold, each in the middle of a run: each fails alone, the rest keep
    gap-free seqs."""
    alice = await storage.create_user("alice", "alice", "h", TS)
    bob = await storage.create_user("bob", "bob", "h", TS)
    ghost = UserRecord(999, "ghost", "ghost", "h")

    def calls() -> list[Awaitable[Any]]:
        return [
            storage.append_message(general(bob, "warm-up")),
            storage.append_message(general(alice, "a1")),
            storage.append_message(NewMessage("room", alice, None, "r", "hi", TS)),
            storage.append_message(direct(alice, bob, "a2")),
            storage.append_message(general(ghost, "g")),
            storage.append_message(general(alice, "a3")),
            storage.append_message(general(alice, "big", ts=2**70)),
            storage.append_message(direct(bob, alice, "a4")),
            storage.append_message(general(alice, "a5")),
        ]

    results = await in_few_batches(storage, calls)
    for index in (2, 4, 6):
        assert isinstance(results[index], StorageError), results[index]
    assert "no conversation 'room'" in str(results[2])
    acked = [m for m, _ in (results[i] for i in (0, 1, 3, 5, 7, 8))]
    assert [m.seq for m in acked if m.conversation == GENERAL] == [1, 2, 3, 4]
    assert [m.seq for m in acked if m.conversation != GENERAL] == [1, 2]
    assert_gap_free(acked, storage.path)
    await assert_stored_as_acknowledged(storage, acked)
    assert counter(storage.path, GENERAL)[0] == 4
    assert await storage.user_by_key("ghost") is None


async def test_runs_interleaved_with_other_writes(storage: SQLiteStorage) -> None:
    alice = await storage.create_user("alice", "alice", "h", TS)
    bob = await storage.create_user("bob", "bob", "h", TS)

    def calls() -> list[Awaitable[Any]]:
        made: list[Awaitable[Any]] = [storage.append_message(general(bob, "warm-up"))]
        for round_ in range(4):
            made += [storage.append_message(general(alice, f"{round_}-{i}")) for i in range(3)]
            made.append(storage.create_user(f"user{round_}", f"user{round_}", "h", TS))
            made.append(storage.create_user("Alice", "alice", "h", TS))  # taken
            made += [storage.append_message(direct(bob, alice, f"{round_}-d{i}")) for i in range(2)]
            made.append(storage.add_token(f"t{round_}".encode(), alice.id, TS))
        return made

    results = await in_few_batches(storage, calls)
    acked = [r[0] for r in results if isinstance(r, tuple)]
    assert len(acked) == 1 + 4 * 5
    assert sum(isinstance(r, NameTakenError) for r in results) == 4
    assert sum(isinstance(r, UserRecord) for r in results) == 4
    assert_gap_free(acked, storage.path)
    await assert_stored_as_acknowledged(storage, acked)
    assert together(storage) >= 4 * 5
    for round_ in range(4):
        assert await storage.user_by_token(f"t{round_}".encode()) == alice
    assert storage._writer is not None
    assert storage._writer.reruns == 0


async def test_a_full_batch_of_appends(storage: SQLiteStorage) -> None:
    """More appends than one batch takes (and than any build's limit of bound variables):
    every one is stored once, in order, with the ids and seqs acknowledged."""
    alice = await storage.create_user("alice", "alice", "h", TS)
    bob = await storage.create_user("bob", "bob", "h", TS)
    before = storage.stats["batches"]
    with write_lock(storage.path):
        calls = [
            storage.append_message(
                general(alice, f"g{i}") if i % 3 else direct(alice, bob, f"d{i}")
            )
            for i in range(1200)
        ]
        await asyncio.sleep(0)
    results = await asyncio.gather(*calls)
    assert storage.stats["batches"] - before <= 4
    acked = [m for m, d in results]
    assert not any(d for _, d in results)
    assert_gap_free(acked, storage.path)
    await assert_stored_as_acknowledged(storage, acked)
    assert together(storage) >= 1000


async def random_batches(storage: SQLiteStorage, seed: int) -> list[object]:
    """Random batches of appends (retries, copies, unknown rooms and senders, odd values) mixed
    with other writes; every answer, then everything the file holds."""
    rng = random.Random(seed)
    users = [await storage.create_user(f"u{n}", f"u{n}", "h", TS) for n in range(5)]
    ghost = UserRecord(999, "ghost", "ghost", "h")
    answers: list[object] = []
    earlier: list[str] = []
    for round_ in range(16):

        def calls(round_: int = round_, earlier: list[str] = earlier) -> list[Awaitable[Any]]:
            made: list[Awaitable[Any]] = []
            this_round: list[str] = []
            # Half the batches have nothing that sends a run one message at a time.
            rare = 0.0 if rng.random() < 0.5 else 1.0
            for step in range(rng.randint(1, 40)):
                sender = rng.choice(users) if rng.random() < 1 - 0.03 * rare else ghost
                pick = rng.random()
                if pick < 0.05 * rare and earlier:
                    client_id = rng.choice(earlier)  # a retry of an earlier batch's
                elif pick < 0.15 and this_round:
                    client_id = rng.choice(this_round)  # a copy inside the batch
                else:
                    client_id = f"c{round_}-{step}"
                this_round.append(client_id)
                text, ts = f"t{round_}-{step}", TS + step
                roll = rng.random()
                if roll < 0.02:
                    made.append(storage.create_user(f"n{round_}-{step}", "u1", "h", TS))
                elif roll < 0.05:
                    made.append(
                        storage.create_user(f"n{round_}-{step}", f"n{round_}-{step}", "h", TS)
                    )
                elif roll < 0.07:
                    made.append(
                        storage.append_message(
                            NewMessage("room", sender, None, client_id, text, ts)
                        )
                    )
                elif roll < 0.07 + 0.01 * rare:
                    # A value SQLite cannot hold fails before the duplicate check one at a
                    # time, but a copy inside a run answers with its first: a fresh id here.
                    odd = general(sender, f"odd{round_}-{step}", text, 2**64)
                    made.append(storage.append_message(odd))
                elif roll < 0.5:
                    made.append(storage.append_message(general(sender, client_id, text, ts)))
                else:
                    recipient = rng.choice(users)
                    made.append(storage.append_message(direct(sender, recipient, client_id, ts=ts)))
            return made

        results = await in_few_batches(storage, calls)
        earlier += [r[0].client_id for r in results if isinstance(r, tuple)]
        answers += [
            (type(r).__name__, str(r)) if isinstance(r, BaseException) else r for r in results
        ]
    conn = sqlite3.connect(storage.path)
    try:
        answers.append(conn.execute("SELECT * FROM messages ORDER BY id").fetchall())
        answers.append(conn.execute("SELECT * FROM conversations ORDER BY id").fetchall())
        answers.append(conn.execute("SELECT * FROM users ORDER BY id").fetchall())
    finally:
        conn.close()
    return answers


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_runs_answer_like_one_message_at_a_time(tmp_path: Path, seed: int) -> None:
    """The same random batches through a writer that inserts runs together and through one
    that goes one message at a time: the same answers (ids included) and the same file."""
    outcomes = []
    for together_ in (True, False):
        store = SQLiteStorage(tmp_path / f"{together_}.db")
        await store.open()
        try:
            assert store._writer is not None
            if not together_:
                store._writer._together = lambda *args: False  # type: ignore[method-assign]
            outcomes.append(await random_batches(store, seed))
            assert (store._writer.together > 0) is together_
        finally:
            await store.close()
    assert outcomes[0] == outcomes[1]
    assert any(isinstance(a, tuple) and a[1] is True for a in outcomes[0])  # some duplicates


# -- gathering writes that arrive one at a time ------------------------------------------------


def test_the_writer_waits_only_when_the_wait_is_expected_to_double_the_commit() -> None:
    steady = 1 / MAX_GATHER  # one more write expected within the wait
    assert gather_wait(0.0, 1) == 0.0  # idle: commit at once
    assert gather_wait(200.0, 1) == 0.0  # paced, a write every 5 ms: nothing to wait for
    assert gather_wait(steady, 1) == MAX_GATHER
    assert gather_wait(4 * steady, 4) == MAX_GATHER
    assert gather_wait(4 * steady, 5) == 0.0  # would not double what is queued
    assert gather_wait(1e9, MAX_BATCH) == 0.0  # a full batch never waits


async def test_writes_arriving_during_the_wait_share_its_commit(
    storage: SQLiteStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await storage.create_user("alice", "alice", "h", TS)
    bob = await storage.create_user("bob", "bob", "h", TS)
    monkeypatch.setattr(sqlite_module, "MAX_GATHER", 0.5)
    monkeypatch.setattr(sqlite_module, "_RATE_WINDOW", 3600.0)  # the rate set below holds
    writer = storage._writer
    assert writer is not None
    writer.rate = 100.0  # as if writes had been arriving: 50 expected within the wait
    before = dict(storage.stats)
    first = storage.append_message(direct(alice, bob, "a"))
    await asyncio.sleep(0.05)  # the writer holds the first write while it waits
    assert not first.done()  # nothing is acknowledged before its commit
    second = storage.append_message(direct(bob, alice, "b"))
    third = storage.append_message(general(alice, "c"))
    results = [m for m, _ in await asyncio.gather(first, second, third)]
    assert storage.stats["batches"] - before["batches"] == 1
    assert storage.stats["gathered"] - before["gathered"] == 1
    assert [m.seq for m in results] == [1, 2, 1]
    assert [m.id for m in results] == sorted(m.id for m in results)
    assert_gap_free(results, storage.path)
    await assert_stored_as_acknowledged(storage, results)


def _waits_until_they_stop() -> int:
    """How many waits that gather nothing the writer makes before it stops waiting."""
    gain, waits = 1.0, 0
    while gain >= sqlite_module.GATHER_FLOOR:
        waits += 1
        gain += sqlite_module._GATHER_WEIGHT * (0 - gain)
    return waits


async def test_a_lone_client_waiting_for_each_acknowledgement_stops_paying_the_wait(
    storage: SQLiteStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its next write comes only after the commit, so a wait never gathers anything: once
    the last waits gathered nothing the writer commits at once, until another writer shows
    up (checked again after ``GATHER_PROBE``)."""
    alice = await storage.create_user("alice", "alice", "h", TS)
    bob = await storage.create_user("bob", "bob", "h", TS)
    monkeypatch.setattr(sqlite_module, "MAX_GATHER", 0.02)
    monkeypatch.setattr(sqlite_module, "_RATE_WINDOW", 3600.0)  # the rate set below holds
    monkeypatch.setattr(sqlite_module, "GATHER_PROBE", 0.3)
    writer = storage._writer
    assert writer is not None
    writer.rate = 1000.0  # 20 writes expected within each wait: the rate alone says wait
    before = dict(storage.stats)
    for n in range(20):  # one at a time, each after the previous one's acknowledgement
        await storage.append_message(direct(alice, bob, f"m{n}"))
    assert storage.stats["gathered"] - before["gathered"] == _waits_until_they_stop()
    assert storage.stats["batches"] - before["batches"] == 20

    # Once GATHER_PROBE has passed it waits again, and a write that arrives during that wait
    # (another client) shares its commit and makes the writer wait again from then on.
    await asyncio.sleep(0.35)
    probed = dict(storage.stats)
    first = storage.append_message(direct(alice, bob, "probe"))
    await asyncio.sleep(0.005)
    second = storage.append_message(direct(bob, alice, "another client"))
    await asyncio.gather(first, second)
    assert storage.stats["gathered"] - probed["gathered"] == 1
    assert storage.stats["batches"] - probed["batches"] == 1
    assert writer.gain >= sqlite_module.GATHER_FLOOR
    await storage.append_message(direct(alice, bob, "waits again"))
    assert storage.stats["gathered"] - probed["gathered"] == 2


async def test_closing_during_a_wait_commits_what_was_gathered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "beseda.db"
    storage = SQLiteStorage(path)
    await storage.open()
    alice = await storage.create_user("alice", "alice", "h", TS)
    monkeypatch.setattr(sqlite_module, "MAX_GATHER", 0.2)
    monkeypatch.setattr(sqlite_module, "_RATE_WINDOW", 3600.0)
    assert storage._writer is not None
    storage._writer.rate = 1000.0
    pending = storage.append_message(general(alice, "last words"))
    await asyncio.sleep(0.01)
    await storage.close()
    message, _ = await pending
    assert stored_seqs(path, GENERAL) == [message.seq]


async def test_a_write_after_a_pause_does_not_wait(storage: SQLiteStorage) -> None:
    """The rate of a burst long past is stale: the next write is committed at once."""
    alice = await storage.create_user("alice", "alice", "h", TS)
    assert storage._writer is not None
    storage._writer.rate = 1e6  # as if a burst had just been written
    await asyncio.sleep(0.1)  # longer than the rate's window
    before = dict(storage.stats)
    await storage.append_message(general(alice, "after the burst"))
    assert storage.stats["batches"] - before["batches"] == 1
    assert storage.stats["gathered"] == before["gathered"]
