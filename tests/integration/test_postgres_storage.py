"""PostgreSQL's own behaviour: migrations, the UTF-8 check, several writers on one database,
commit-ordered sequence numbers, a server that is unreachable or lost and comes back.

Every test here runs on a real throwaway PostgreSQL (``tests/pg_server.py``); the ones that
stop the server start one of their own, so the session's stays up for the other tests.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from beseda.client import Client
from beseda.protocol import errors
from beseda.protocol.errors import ProtocolError
from beseda.protocol.schema import GENERAL
from beseda.server.accounts import PasswordHasher
from beseda.server.app import Server, StartupError
from beseda.storage import StorageError
from beseda.storage.pg_migrations import MIGRATIONS
from beseda.storage.postgres import PostgresStorage
from conftest import FAST_HASHER_ARGS, TIMEOUT_FACTOR, free_port, test_settings
from pg_server import URL_VARIABLE, PostgresServer
from pg_server import available as postgres_available
from storage_helpers import TS, direct, general

pytestmark = pytest.mark.skipif(not postgres_available(), reason="PostgreSQL is not installed")


async def fetch(url: str, sql: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await conn.fetch(sql)]
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of this module's own, which its tests stop and start."""
    if os.environ.get(URL_VARIABLE):
        pytest.skip("stopping PostgreSQL needs a server the tests started themselves")
    server = PostgresServer.start_new()
    yield server
    server.destroy()


# -- opening -----------------------------------------------------------------------------------


async def test_a_new_database_gets_the_schema_once(postgres_url: str) -> None:
    for _ in range(3):
        store = PostgresStorage(postgres_url)
        await store.open()
        await store.close()
    assert await fetch(postgres_url, "SELECT version FROM beseda_schema") == [(len(MIGRATIONS),)]
    assert await fetch(postgres_url, "SELECT id, last_seq FROM conversations") == [(GENERAL, 0)]


async def test_nodes_opening_at_once_migrate_once(postgres_url: str) -> None:
    stores = [PostgresStorage(postgres_url) for _ in range(4)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        users = await asyncio.gather(
            *(store.create_user(f"u{n}", f"u{n}", "h", TS) for n, store in enumerate(stores))
        )
        assert sorted(user.key for user in users) == ["u0", "u1", "u2", "u3"]
    finally:
        for store in stores:
            await store.close()
    assert await fetch(postgres_url, "SELECT version FROM beseda_schema") == [(len(MIGRATIONS),)]


async def test_a_newer_schema_is_refused(postgres_url: str) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute("CREATE TABLE beseda_schema (version integer NOT NULL)")
        await conn.execute("INSERT INTO beseda_schema VALUES ($1)", len(MIGRATIONS) + 3)
    finally:
        await conn.close()
    store = PostgresStorage(postgres_url)
    with pytest.raises(StorageError, match=r"newer.*Upgrade beseda"):
        await store.open()
    await store.close()
    assert await fetch(postgres_url, "SELECT to_regclass('users') IS NULL") == [(True,)]


async def test_a_database_that_is_not_utf8_is_refused_with_the_fix(
    postgres: PostgresServer,
) -> None:
    name = f"beseda_ascii_{os.getpid()}"
    ascii_url = postgres.url(name)
    postgres.sql(
        f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'SQL_ASCII' "
        "LC_COLLATE 'C' LC_CTYPE 'C'"
    )
    try:
        store = PostgresStorage(ascii_url)
        with pytest.raises(StorageError) as raised:
            await store.open()
        await store.close()
        message = str(raised.value)
        assert "SQL_ASCII" in message
        assert "ENCODING 'UTF8'" in message
        assert "LC_CTYPE 'C.UTF-8'" in message
        # Nothing was created in the refused database.
        assert await fetch(ascii_url, "SELECT to_regclass('users') IS NULL") == [(True,)]
    finally:
        postgres.drop_database(ascii_url)


async def test_unreachable_postgresql_fails_the_start_clearly() -> None:
    url = f"postgresql://beseda@127.0.0.1:{free_port()}/beseda"
    store = PostgresStorage(url, connect_timeout=2)
    with pytest.raises(StorageError, match=r"Cannot reach PostgreSQL at 127\.0\.0\.1:\d+/beseda"):
        await store.open()
    await store.close()


def test_serve_exits_non_zero_when_postgresql_is_unreachable(tmp_path: Path) -> None:
    url = f"postgresql://beseda:secret@127.0.0.1:{free_port()}/beseda"
    result = subprocess.run(
        [sys.executable, "-m", "beseda", "serve", "--port", "0", "--db", url],
        capture_output=True,
        text=True,
        timeout=60 * TIMEOUT_FACTOR,
        check=False,
    )
    assert result.returncode == 2
    assert "Cannot reach PostgreSQL at 127.0.0.1" in result.stderr
    assert "secret" not in result.stderr  # the password is never printed
    assert "Traceback" not in result.stderr


# -- several writers on one database -----------------------------------------------------------


async def test_two_nodes_writing_one_conversation_get_gap_free_commit_ordered_seqs(
    postgres_url: str,
) -> None:
    """Two stores (two nodes) append to the same conversations at once, while a reader
    follows by cursor as a node catching up does. The counter rows make the seqs gap-free and
    visible in commit order: a reader that never goes back past its cursor still sees every
    entry exactly once (with a SEQUENCE it would skip those committed late)."""
    nodes = [PostgresStorage(postgres_url) for _ in range(2)]
    for node in nodes:
        await node.open()
    reader = PostgresStorage(postgres_url)
    await reader.open()
    try:
        alice = await nodes[0].create_user("alice", "alice", "h", TS)
        bob = await nodes[1].create_user("bob", "bob", "h", TS)
        dm = direct(alice, bob, "x").conversation
        seen: dict[str, list[int]] = {GENERAL: [], dm: []}
        done = asyncio.Event()

        async def follow() -> None:
            cursors = {GENERAL: 0, dm: 0}
            while True:
                finished = done.is_set()
                page, _ = await reader.entries_after(
                    {c: (after, None) for c, after in cursors.items()}, 1000
                )
                for entry in page:
                    seen[entry.conversation].append(entry.seq)
                    cursors[entry.conversation] = entry.seq
                if finished and not page:
                    return
                await asyncio.sleep(0)

        async def write(node: PostgresStorage, name: str) -> list[tuple[str, int]]:
            acked = []
            sender, peer = (alice, bob) if name == "a" else (bob, alice)
            for round_ in range(15):
                results = await asyncio.gather(
                    *(
                        node.append_message(
                            general(sender, f"{name}{round_}-{i}")
                            if i % 2
                            else direct(sender, peer, f"{name}{round_}-d{i}")
                        )
                        for i in range(10)
                    )
                )
                acked += [(m.conversation, m.seq) for m, _ in results]
            return acked

        following = asyncio.create_task(follow())
        acked_a, acked_b = await asyncio.gather(write(nodes[0], "a"), write(nodes[1], "b"))
        done.set()
        await asyncio.wait_for(following, 30 * TIMEOUT_FACTOR)
        for conversation in (GENERAL, dm):
            acked = sorted(seq for c, seq in acked_a + acked_b if c == conversation)
            assert acked == list(range(1, 151))
            assert seen[conversation] == acked  # in order, none skipped, none twice
        rows = await fetch(postgres_url, "SELECT id, last_seq FROM conversations ORDER BY id")
        assert dict(rows) == {GENERAL: 150, dm: 150}  # type: ignore[comparison-overlap]
    finally:
        for store in (*nodes, reader):
            await store.close()


async def test_the_same_client_id_from_two_nodes_is_stored_once(postgres_url: str) -> None:
    """A client that retries on another node (its first node died unacknowledged) sends the
    same client id twice, maybe at the same moment: one message, answered to both."""
    nodes = [PostgresStorage(postgres_url) for _ in range(2)]
    for node in nodes:
        await node.open()
    try:
        alice = await nodes[0].create_user("alice", "alice", "h", TS)
        for round_ in range(20):
            results = await asyncio.gather(
                *(node.append_message(general(alice, f"c{round_}")) for node in nodes)
            )
            (first, one), (second, other) = results
            assert first == second
            assert sorted((one, other)) == [False, True]
        history, _ = await nodes[0].history(GENERAL, None, 100)
        assert [m.seq for m in history] == list(range(1, 21))
    finally:
        for node in nodes:
            await node.close()


async def test_names_are_unique_across_nodes(postgres_url: str) -> None:
    nodes = [PostgresStorage(postgres_url) for _ in range(3)]
    for node in nodes:
        await node.open()
    try:
        outcomes = await asyncio.gather(
            *(node.create_user("Dora", "dora", "h", TS, skeleton="dora") for node in nodes),
            return_exceptions=True,
        )
        assert sum(not isinstance(o, BaseException) for o in outcomes) == 1
        assert all(isinstance(o, (StorageError)) for o in outcomes if isinstance(o, Exception))
    finally:
        for node in nodes:
            await node.close()


# -- a lost PostgreSQL -------------------------------------------------------------------------


async def test_a_lost_postgresql_gives_storage_unavailable_and_recovers_by_itself(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    url = own_postgres.create_database()
    hasher = PasswordHasher(**FAST_HASHER_ARGS)  # type: ignore[arg-type]
    server = Server(replace(test_settings(tmp_path), db=url), hasher=hasher)
    await server.start()
    client = Client("127.0.0.1", server.port, reconnect=False)
    try:
        await client.connect()
        await client.register("alice", "password123")
        before = [await client.send(f"before {i}", client_id=f"b{i}") for i in range(3)]

        await asyncio.to_thread(own_postgres.stop, "fast")
        with pytest.raises(ProtocolError) as refused:
            await client.send("while down", client_id="down")
        assert refused.value.code == errors.STORAGE_UNAVAILABLE
        with pytest.raises(ProtocolError) as unread:
            await client.history(GENERAL)
        assert unread.value.code == errors.STORAGE_UNAVAILABLE

        await asyncio.to_thread(own_postgres.start_on_same_port)
        # No restart of beseda: the next write connects again. The retried message (same
        # client id) is stored once, after the ones before the outage.
        retried = await client.send("while down", client_id="down")
        after = await client.send("after", client_id="a0")
        assert [m.seq for m in (*before, retried, after)] == [1, 2, 3, 4, 5]
        history = await client.history(GENERAL)
        assert [m.text for m in history.entries] == [
            "before 0",
            "before 1",
            "before 2",
            "while down",
            "after",
        ]
    finally:
        await client.close()
        await server.stop()
        hasher.close()
        if not own_postgres.running():
            own_postgres.start_on_same_port()


async def test_a_server_that_cannot_reach_postgresql_does_not_start(tmp_path: Path) -> None:
    url = f"postgresql://beseda@127.0.0.1:{free_port()}/beseda"
    server = Server(replace(test_settings(tmp_path), db=url))
    with pytest.raises(StartupError, match="Cannot reach PostgreSQL"):
        await server.start()
    await server.stop()
