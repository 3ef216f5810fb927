"""The writer's contract on every engine: batches in which some writes fail, runs of appends
with copies and retries, counter rows, exactly once; then one random workload through SQLite
and PostgreSQL, which must answer alike.

Each test takes the ``storage`` fixture, so it runs on SQLite (a real file) and on PostgreSQL
(a fresh database), in turn. How each engine's writer does it (SQLite's seqs in memory and
its re-runs, PostgreSQL's savepoints) is tested in test_sqlite_writer.py and
test_postgres_storage.py.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from beseda.protocol.schema import GENERAL, Message
from beseda.storage import NameTakenError, NewMessage, Storage, StorageError, UserRecord
from beseda.storage.postgres import PostgresStorage
from beseda.storage.sqlite import SQLiteStorage
from storage_helpers import TS, direct, general, new_store, query, writes_held

T = TypeVar("T")


def database(storage: Storage) -> Path | str:
    """Where ``storage`` keeps its data: a SQLite file or a PostgreSQL URL."""
    if isinstance(storage, SQLiteStorage):
        return storage.path
    assert isinstance(storage, PostgresStorage)
    return storage.url


async def in_few_batches(
    storage: Storage, make_calls: Callable[[], list[Awaitable[T]]]
) -> list[Any]:
    """Make the calls while the database is held elsewhere, so that they share at most two
    batches; returns results and exceptions in order."""
    before = storage.stats["batches"]  # type: ignore[attr-defined]
    async with writes_held(storage):
        tasks = [asyncio.ensure_future(call) for call in make_calls()]
        await asyncio.sleep(0)  # every task has now queued its write
        await asyncio.sleep(0)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert storage.stats["batches"] - before <= 2  # type: ignore[attr-defined]
    return results


def stored_seqs(storage: Storage, conversation: str) -> list[int]:
    rows = query(
        database(storage),
        f"SELECT seq FROM messages WHERE conversation = '{conversation}' ORDER BY seq",
    )
    return [int(seq) for (seq,) in rows]


def counter(storage: Storage, conversation: str) -> tuple[int, int | None]:
    rows = query(
        database(storage),
        f"SELECT last_seq, last_ts FROM conversations WHERE id = '{conversation}'",
    )
    return rows[0][0], rows[0][1]


def assert_gap_free(messages: list[Message], storage: Storage) -> None:
    """The acknowledged seqs are 1..n per conversation and are what the database holds."""
    for conversation in {m.conversation for m in messages}:
        run = sorted((m for m in messages if m.conversation == conversation), key=lambda m: m.id)
        assert [m.seq for m in run] == list(range(1, len(run) + 1))
        assert stored_seqs(storage, conversation) == [m.seq for m in run]


async def assert_stored_as_acknowledged(storage: Storage, acked: list[Message]) -> None:
    """Every acknowledged message is stored exactly as acknowledged (id included), and the
    database holds no other message of those conversations."""
    for conversation in {m.conversation for m in acked}:
        stored, _ = await storage.history(conversation, None, 10_000)
        mine = sorted(
            {m.id: m for m in acked if m.conversation == conversation}.values(), key=lambda m: m.id
        )
        assert stored == mine


# -- a failing write fails alone ---------------------------------------------------------------


async def test_a_taken_name_fails_alone_among_messages(storage: Storage) -> None:
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
    assert_gap_free(messages, storage)
    await assert_stored_as_acknowledged(storage, messages)
    assert [u.key for u in await storage.list_users("", None, 10)] == ["alice", "bob", "carol"]


async def test_a_message_to_an_unknown_room_fails_alone(storage: Storage) -> None:
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
    assert "no conversation 'room'" in str(results[1])
    assert [m.seq for m, _ in (results[0], results[2])] == [1, 2]


async def test_a_failure_inside_a_run_fails_alone(storage: Storage) -> None:
    """A message into an unknown room, from an unknown sender and with a value no column
    holds, each in the middle of a run: each fails alone, the rest keep gap-free seqs."""
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
    acked = [m for m, _ in (results[i] for i in (0, 1, 3, 5, 7, 8))]
    assert [m.seq for m in acked if m.conversation == GENERAL] == [1, 2, 3, 4]
    assert [m.seq for m in acked if m.conversation != GENERAL] == [1, 2]
    assert_gap_free(acked, storage)
    await assert_stored_as_acknowledged(storage, acked)
    assert counter(storage, GENERAL)[0] == 4
    assert await storage.user_by_key("ghost") is None


async def test_runs_interleaved_with_other_writes(storage: Storage) -> None:
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
    assert_gap_free(acked, storage)
    await assert_stored_as_acknowledged(storage, acked)
    for round_ in range(4):
        assert await storage.user_by_token(f"t{round_}".encode()) == alice


# -- exactly once, counters --------------------------------------------------------------------


async def test_a_retried_client_id_returns_the_original_across_batches(storage: Storage) -> None:
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
    assert stored_seqs(storage, GENERAL) == [1, 2, 3, 4, 5]


async def test_the_counter_row_follows_each_batch(storage: Storage) -> None:
    """last_seq and last_ts are the last message's, per conversation, after each batch."""
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
    assert_gap_free([m for m, _ in results], storage)
    dm = results[1][0].conversation
    assert counter(storage, GENERAL) == (12, TS + 11)
    assert counter(storage, dm) == (12, TS + 111)
    records = {r.conversation: r for r in await storage.conversations_of(carol.id)}
    assert (records[dm].last_seq, records[dm].last_ts, records[dm].peer) == (12, TS + 111, "bob")


async def test_a_run_of_appends_creates_a_new_direct_conversation(storage: Storage) -> None:
    alice = await storage.create_user("alice", "alice", "h", TS)
    bob = await storage.create_user("bob", "bob", "h", TS)
    results = await in_few_batches(
        storage,
        lambda: [
            storage.append_message(general(alice, "warm-up")),
            *(storage.append_message(general(alice, f"g{i}", ts=TS + i)) for i in range(10)),
            *(storage.append_message(direct(bob, alice, f"d{i}", ts=TS + i)) for i in range(10)),
        ],
    )
    acked = [m for m, duplicate in results if not duplicate]
    assert len(acked) == 21
    assert_gap_free(acked, storage)
    await assert_stored_as_acknowledged(storage, acked)
    assert counter(storage, GENERAL) == (11, TS + 9)
    dm = acked[-1].conversation
    assert counter(storage, dm) == (10, TS + 9)
    records = {r.conversation: r for r in await storage.conversations_of(alice.id)}
    assert records[dm].peer == "bob"
    assert [m.id for m in acked] == sorted(m.id for m in acked)


async def test_copies_inside_one_run_answer_with_the_first(storage: Storage) -> None:
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
    assert_gap_free(acked, storage)
    await assert_stored_as_acknowledged(storage, acked)
    assert [r.conversation for r in await storage.conversations_of(alice.id)] == [GENERAL]


async def test_copies_of_earlier_batches_inside_a_run(storage: Storage) -> None:
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
    assert_gap_free(acked, storage)
    await assert_stored_as_acknowledged(storage, acked)
    assert counter(storage, GENERAL)[0] == 4
    assert counter(storage, dm_original.conversation)[0] == 3
    following, _ = await storage.append_message(general(alice, "n5"))
    assert following.seq == 5
    assert following.id > max(m.id for m in acked)


async def test_a_full_batch_of_appends(storage: Storage) -> None:
    """More appends than one batch takes: every one is stored once, in order, with the ids
    and seqs acknowledged."""
    alice = await storage.create_user("alice", "alice", "h", TS)
    bob = await storage.create_user("bob", "bob", "h", TS)
    before = storage.stats["batches"]  # type: ignore[attr-defined]
    async with writes_held(storage):
        calls = [
            storage.append_message(
                general(alice, f"g{i}") if i % 3 else direct(alice, bob, f"d{i}")
            )
            for i in range(1200)
        ]
        await asyncio.sleep(0)
    results = await asyncio.gather(*calls)
    assert storage.stats["batches"] - before <= 4  # type: ignore[attr-defined]
    acked = [m for m, d in results]
    assert not any(d for _, d in results)
    assert_gap_free(acked, storage)
    await assert_stored_as_acknowledged(storage, acked)


# -- one workload, both engines ----------------------------------------------------------------


async def random_batches(storage: Storage, seed: int) -> list[object]:
    """Random batches of appends (retries, copies, unknown rooms and senders, odd values) mixed
    with other writes; every answer (without ids, which an engine may skip), then every
    conversation's history."""
    rng = random.Random(seed)
    users = [await storage.create_user(f"u{n}", f"u{n}", "h", TS) for n in range(5)]
    ghost = UserRecord(999, "ghost", "ghost", "h")
    answers: list[object] = []
    earlier: list[str] = []
    for round_ in range(12):

        def calls(round_: int = round_, earlier: list[str] = earlier) -> list[Awaitable[Any]]:
            made: list[Awaitable[Any]] = []
            this_round: list[str] = []
            for step in range(rng.randint(1, 40)):
                sender = rng.choice(users) if rng.random() < 0.97 else ghost
                pick = rng.random()
                if pick < 0.05 and earlier:
                    client_id = rng.choice(earlier)
                elif pick < 0.15 and this_round:
                    client_id = rng.choice(this_round)
                else:
                    client_id = f"c{round_}-{step}"
                this_round.append(client_id)
                text, ts = f"t{round_}-{step}", TS + step
                roll = rng.random()
                if roll < 0.03:
                    made.append(storage.create_user(f"n{round_}-{step}", "u1", "h", TS))
                elif roll < 0.06:
                    name = f"n{round_}-{step}"
                    made.append(storage.create_user(name, name, "h", TS))
                elif roll < 0.08:
                    made.append(
                        storage.append_message(
                            NewMessage("room", sender, None, client_id, text, ts)
                        )
                    )
                elif roll < 0.09:
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
        for r in results:
            if isinstance(r, BaseException):
                answers.append(type(r).__name__)
            elif isinstance(r, UserRecord):
                answers.append((r.name, r.key))
            else:
                m, duplicate = r
                answers.append((m.conversation, m.seq, m.sender, m.text, m.client_id, duplicate))
    for state in sorted(await storage.load_conversations(), key=lambda state: state.id):
        page, _ = await storage.history(state.id, None, 10_000)
        answers.append(
            (state.id, state.last_seq, [(m.seq, m.sender, m.text, m.client_id) for m in page])
        )
    return answers


@pytest.mark.parametrize("seed", [1, 2])
async def test_sqlite_and_postgresql_answer_alike(tmp_path: Path, seed: int) -> None:
    outcomes = []
    for kind in ("sqlite", "postgresql"):
        store = new_store(kind, tmp_path)
        await store.open()
        try:
            outcomes.append(await random_batches(store, seed))
        finally:
            await store.close()
    assert outcomes[0] == outcomes[1]
    assert any(isinstance(a, tuple) and a[-1] is True for a in outcomes[0])  # some duplicates
    assert "StorageError" in outcomes[0]
