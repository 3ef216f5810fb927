"""The storage contract on real databases: group commit, dedup, durability, refusals.

Tests that take the ``storage`` or ``make_storage`` fixture run on SQLite (a real file) and on
PostgreSQL (a fresh database of the session's throwaway server), in turn; the first ones and
the refusals of odd paths are about SQLite's own files. The replay test runs one random
workload on each engine and on the in-memory twin the core tests use, and requires the same
answers from all.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from beseda.protocol.schema import GENERAL, Entry
from beseda.storage import NameTakenError, NewMessage, Storage, StorageError, UserRecord
from beseda.storage.migrations import MIGRATIONS
from beseda.storage.sqlite import SQLiteStorage
from storage_helpers import TS, direct, general, new_store, writes_held

from .fakes import MemoryStorage


async def test_the_database_is_created_on_first_open(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "beseda.db"
    store = SQLiteStorage(path)
    await store.open()
    try:
        assert path.is_file()
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        conn.close()
        records = await store.conversations_of(1)
        assert [(r.conversation, r.last_seq) for r in records] == [(GENERAL, 0)]
    finally:
        await store.close()


async def test_reopening_applies_no_migration_twice(tmp_path: Path) -> None:
    path = tmp_path / "beseda.db"
    for _ in range(3):
        store = SQLiteStorage(path)
        await store.open()
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        assert conn.execute("SELECT count(*) FROM conversations").fetchone() == (1,)
    conn.close()


async def test_concurrent_writes_share_commits_and_get_gap_free_seqs(storage: Storage) -> None:
    alice = await storage.create_user("alice", "alice", "h", TS)
    bob = await storage.create_user("bob", "bob", "h", TS)
    before = storage.stats  # type: ignore[attr-defined]
    # Hold the database from another connection so that every write queues up behind the
    # writer's first one: then they must share commits whatever the machine's speed.
    async with writes_held(storage):
        tasks = [  # each is queued for the writer when append_message returns
            storage.append_message(
                general(alice, f"g{i}") if i % 3 else direct(bob, alice, f"d{i}")
            )
            for i in range(300)
        ]
        await asyncio.sleep(0.05)
    results = await asyncio.gather(*tasks)

    after = storage.stats  # type: ignore[attr-defined]
    assert after["writes"] - before["writes"] == 300
    assert after["batches"] - before["batches"] <= 2
    stored = [message for message, duplicate in results if not duplicate]
    assert len(stored) == 300
    for conversation in {m.conversation for m in stored}:
        run = sorted((m for m in stored if m.conversation == conversation), key=lambda m: m.id)
        assert [m.seq for m in run] == list(range(1, len(run) + 1))
    history, more = await storage.history(GENERAL, None, 200)
    assert [m.seq for m in history] == list(range(1, 201))
    assert not more


async def test_many_writes_without_a_blocker_still_group(storage: Storage) -> None:
    alice = await storage.create_user("alice", "alice", "h", TS)
    before = storage.stats  # type: ignore[attr-defined]
    await asyncio.gather(*(storage.append_message(general(alice, f"c{i}")) for i in range(200)))
    after = storage.stats  # type: ignore[attr-defined]
    assert after["writes"] - before["writes"] == 200
    assert after["batches"] - before["batches"] < 200


async def test_a_repeated_client_id_returns_the_original(storage: Storage) -> None:
    alice = await storage.create_user("alice", "alice", "h", TS)
    bob = await storage.create_user("bob", "bob", "h", TS)
    first, duplicate = await storage.append_message(general(alice, "c1", "hello"))
    assert not duplicate
    again, duplicate = await storage.append_message(general(alice, "c1", "other", TS + 5))
    assert duplicate
    assert again == first
    # The same client id from another sender is another message.
    theirs, duplicate = await storage.append_message(general(bob, "c1", "hello"))
    assert not duplicate
    assert theirs.seq == 2
    history, _ = await storage.history(GENERAL, None, 10)
    assert [m.text for m in history] == ["hello", "hello"]


async def test_duplicates_in_one_batch_store_one_copy(storage: Storage) -> None:
    alice = await storage.create_user("alice", "alice", "h", TS)
    results = await asyncio.gather(
        *(storage.append_message(general(alice, "same")) for _ in range(5))
    )
    assert sorted(duplicate for _, duplicate in results) == [False, True, True, True, True]
    assert len({message.id for message, _ in results}) == 1
    assert len((await storage.history(GENERAL, None, 10))[0]) == 1


async def test_a_taken_name_fails_alone_in_its_batch(storage: Storage) -> None:
    results = await asyncio.gather(
        storage.create_user("Alice", "alice", "h", TS),
        storage.create_user("ALICE", "alice", "h", TS),
        storage.create_user("bob", "bob", "h", TS),
        return_exceptions=True,
    )
    assert isinstance(results[0], UserRecord)
    assert isinstance(results[1], NameTakenError)
    assert isinstance(results[2], UserRecord)
    assert [u.name for u in await storage.list_users("", None, 10)] == ["Alice", "bob"]


async def test_data_survives_close_and_reopen(make_storage: Callable[[], Storage]) -> None:
    store = make_storage()
    await store.open()
    alice = await store.create_user("Алиса", "алиса", "hash-a", TS)
    bob = await store.create_user("bob", "bob", "hash-b", TS)
    await store.add_token(b"t" * 32, alice.id, TS)
    await store.add_token(b"r" * 32, bob.id, TS)
    await store.delete_token(b"r" * 32)
    await store.set_password_hash(bob.id, "hash-b2")
    sent = [
        (await store.append_message(general(alice, f"g{i}", f"текст {i} 😀")))[0] for i in range(3)
    ]
    sent.append((await store.append_message(direct(alice, bob, "d0", "secret")))[0])
    await store.close()

    store = make_storage()
    await store.open()
    try:
        assert await store.user_by_key("алиса") == alice
        assert await store.user_by_token(b"t" * 32) == alice
        assert await store.user_by_token(b"r" * 32) is None
        bob_again = await store.user_by_key("bob")
        assert bob_again is not None
        assert bob_again.password_hash == "hash-b2"
        assert (await store.history(GENERAL, None, 10))[0] == sent[:3]
        assert (await store.history(sent[3].conversation, None, 10))[0] == sent[3:]
        following, _ = await store.append_message(general(bob, "g-next"))
        assert following.seq == 4
        assert following.id > sent[-1].id
        again, duplicate = await store.append_message(general(alice, "g0"))
        assert duplicate
        assert again == sent[0]
    finally:
        await store.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "beseda.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 3}")
    conn.close()
    store = SQLiteStorage(path)
    with pytest.raises(StorageError, match=r"newer.*Upgrade beseda"):
        await store.open()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS) + 3,)
    assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    conn.close()
    await store.close()


async def test_a_path_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("")
    store = SQLiteStorage(tmp_path / "not-a-dir" / "sub" / "beseda.db")
    with pytest.raises(StorageError, match="not-a-dir"):
        await store.open()
    await store.close()


async def test_a_directory_at_the_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "beseda.db").mkdir()
    store = SQLiteStorage(tmp_path / "beseda.db")
    with pytest.raises(StorageError, match=r"beseda\.db"):
        await store.open()
    await store.close()


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "beseda.db"
    path.write_bytes(b"this is not an SQLite database, just some text" * 100)
    store = SQLiteStorage(path)
    with pytest.raises(StorageError):
        await store.open()
    await store.close()


async def test_a_closed_store_refuses_work(storage: Storage) -> None:
    await storage.close()
    with pytest.raises(StorageError):
        await storage.user_by_key("alice")
    with pytest.raises(StorageError):
        await storage.create_user("alice", "alice", "h", TS)


async def test_a_token_for_an_unknown_user_is_refused(storage: Storage) -> None:
    with pytest.raises(StorageError):
        await storage.add_token(b"x" * 32, 99, TS)


async def test_a_message_to_an_unknown_conversation_is_refused(storage: Storage) -> None:
    alice = await storage.create_user("alice", "alice", "h", TS)
    with pytest.raises(StorageError):
        await storage.append_message(NewMessage("room", alice, None, "c", "hi", TS))
    assert (await storage.append_message(general(alice, "c")))[0].seq == 1


# -- the in-memory twin agrees with each engine -----------------------------------------------


async def replay(storage: Storage, seed: int) -> list[object]:
    """Run one random workload; return every answer the store gave."""
    rng = random.Random(seed)
    answers: list[object] = []
    names = ["alice", "Алиса", "алексей", "bob", "bobby", "Ελένη", "用户", "zed", "ZEDD", "amy"]
    users: list[UserRecord] = []
    for name in names:
        users.append(await storage.create_user(name, name.casefold(), f"h-{name}", TS))
    try:
        await storage.create_user("ALICE", "alice", "h", TS)
    except NameTakenError:
        answers.append("taken")
    ts = TS
    for step in range(300):
        ts += 1
        sender = rng.choice(users)
        client_id = f"c{rng.randrange(300)}"  # collisions make duplicates
        if rng.random() < 0.5:
            message = NewMessage(GENERAL, sender, None, client_id, f"t{step}", ts)
        else:
            recipient = rng.choice(users)
            low, high = sorted((sender.id, recipient.id))
            message = NewMessage(f"dm:{low}:{high}", sender, recipient, client_id, f"t{step}", ts)
        answers.append(await storage.append_message(message))
    for user in users:
        conversations = await storage.conversations_of(user.id)
        answers.append(conversations)
        for record in conversations:
            before = None
            while True:
                page, more = await storage.history(record.conversation, before, rng.randint(1, 9))
                answers.append((page, more))
                if not more:
                    break
                before = page[0].seq
            answers.append(await storage.history(record.conversation, rng.randint(0, 30), 5))
        cursors = {r.conversation: rng.randint(0, r.last_seq) for r in conversations}
        while True:
            batch, more = await storage.messages_after(cursors, rng.randint(1, 40))
            answers.append((batch, more))
            for message in batch:
                cursors[message.conversation] = message.seq
            if not more:
                break
    for query in ["", "al", "алиса", "b", "z", "用", "nobody"]:
        after = None
        while True:
            page = await storage.list_users(query, after, 3)
            answers.append(page)
            if len(page) < 3:
                break
            after = page[-1].key
    token = b"k" * 32
    await storage.add_token(token, users[1].id, TS)
    answers.append(await storage.user_by_token(token))
    await storage.delete_token(token)
    answers.append(await storage.user_by_token(token))
    await storage.set_password_hash(users[2].id, "new")
    answers.append(await storage.user_by_key(users[2].key))
    answers.append(await storage.user_by_key("nobody"))
    return answers


def ranked_ids(answers: list[object]) -> list[object]:
    """The answers with each entry id replaced by its rank among all of them: PostgreSQL's ids
    are unique and grow with the seq in each conversation, but may skip numbers (an identity
    value drawn by a statement that is rolled back or skips a row is not given back)."""
    ids: set[int] = set()

    def collect(value: object) -> None:
        if isinstance(value, Entry):
            ids.add(value.id)
        elif isinstance(value, (list, tuple)):
            for item in value:
                collect(item)

    collect(answers)
    rank = {id_: n for n, id_ in enumerate(sorted(ids), start=1)}

    def replace_ids(value: object) -> object:
        if isinstance(value, Entry):
            return msgspec.structs.replace(value, id=rank[value.id])
        if isinstance(value, list):
            return [replace_ids(item) for item in value]
        if isinstance(value, tuple):
            return tuple(replace_ids(item) for item in value)
        return value

    return [replace_ids(answer) for answer in answers]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_the_memory_twin_answers_like_each_engine(
    make_storage: Callable[[], Storage], engine: str, seed: int
) -> None:
    store = make_storage()
    await store.open()
    try:
        expected = await replay(store, seed)
    finally:
        await store.close()
    memory = MemoryStorage()
    await memory.open()
    answers = await replay(memory, seed)
    if engine == "postgresql":
        answers, expected = ranked_ids(answers), ranked_ids(expected)
    assert answers == expected


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "memory"])
async def test_users_by_keys_finds_each_user_once_in_one_call(tmp_path: Path, kind: str) -> None:
    store: Storage = MemoryStorage() if kind == "memory" else new_store(kind, tmp_path)
    await store.open()
    try:
        users = [await store.create_user(name, name.casefold(), "h", TS) for name in "ABC"]
        # More keys than one statement binds (the SQLite adapter asks in chunks).
        keys = [f"nobody{n}" for n in range(1100)]
        keys[0], keys[600], keys[1099], keys[5] = "a", "b", "c", "a"
        found = await store.users_by_keys(keys)
        assert sorted(found, key=lambda u: u.id) == users
        assert await store.users_by_keys([]) == []
        assert await store.users_by_keys(["A", "nobody"]) == []  # keys are canonical already
    finally:
        await store.close()


@pytest.mark.parametrize("make", ["memory", "sqlite", "postgresql"])
async def test_mentions_in_a_run_of_appends_are_listed_and_counted(
    tmp_path: Path, make: str
) -> None:
    """Messages queued together go in one statement on SQLite and PostgreSQL; their mentions
    are stored and counted as when they go one by one, on every store."""
    store: Storage = MemoryStorage() if make == "memory" else new_store(make, tmp_path)
    await store.open()
    try:
        anna = await store.create_user("anna", "anna", "h", TS)
        boris = await store.create_user("boris", "boris", "h", TS)
        made = [
            store.append_message(
                NewMessage(GENERAL, anna, None, f"m{i}", f"@boris {i}", TS, mentions=(boris,))
                if i % 2
                else NewMessage(GENERAL, anna, None, f"m{i}", f"plain {i}", TS)
            )
            for i in range(6)
        ]
        stored = [entry for entry, _ in await asyncio.gather(*made)]
        assert [e.mentions for e in stored] == [[], ["boris"], [], ["boris"], [], ["boris"]]
        page, _ = await store.history(GENERAL, None, 10)
        assert [e.mentions for e in page] == [e.mentions for e in stored]
        counts = await store.unread_counts(boris.id, [(GENERAL, 2)], 1000)
        assert counts == {GENERAL: (4, 2)}  # seqs 3-6 unread; 4 and 6 mention boris
    finally:
        await store.close()
