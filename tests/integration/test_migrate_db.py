"""``beseda migrate-db``: a SQLite server's data copied into PostgreSQL, exactly.

Exactly means: a server on the copy shows every user what the SQLite server showed them
(conversations, members, every page of history, unread counts, a sync from any cursor), old
passwords and session tokens still work, and the next entry continues each conversation's
seqs. Checked on the released 0.1 file and on a new server with channels, groups, direct
messages, mentions and read markers; then an interrupted copy that resumes, and a copy whose
target was changed behind its back, which the verification refuses.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from newcomer import Newcomer

from beseda.server.accounts import PasswordHasher
from beseda.server.app import Server
from beseda.storage.transfer import copy_database
from conftest import TIMEOUT_FACTOR, test_settings
from pg_server import PostgresServer
from pg_server import available as postgres_available
from storage_helpers import query

pytestmark = pytest.mark.skipif(not postgres_available(), reason="PostgreSQL is not installed")

OLD = Path(__file__).parent.parent / "data" / "release-0.1.db"
OLD_PASSWORD = "a long password"
PASSWORD = "password123"


async def logged_in(port: int, name: str, password: str) -> Newcomer:
    conn = await Newcomer.open(port)
    await conn.call("login", username=name, password=password, protocol=4)
    return conn


async def view(port: int, name: str, password: str) -> dict[str, Any]:
    """Everything ``name`` can see: their conversations with counts, each one's members and
    every page of its history (small pages, so the paging itself is compared), and syncs
    from nothing and from a midway cursor."""
    conn = await logged_in(port, name, password)
    try:
        seen: dict[str, Any] = {}
        listed = (await conn.call("conversations"))["conversations"]
        seen["conversations"] = listed
        for item in listed:
            conversation = item["conversation"]
            seen[f"members {conversation}"] = await conn.call("members", conversation=conversation)
            pages = []
            before = None
            while True:
                page = await conn.call("history", conversation=conversation, before=before, limit=3)
                pages.append(page)
                if not page["more"] or not page["entries"]:
                    break
                before = page["entries"][0]["seq"]
            seen[f"history {conversation}"] = pages
        seen["sync"] = await conn.call("sync", cursors={})
        halfway = {item["conversation"]: item["last_seq"] // 2 for item in listed}
        seen["sync halfway"] = await conn.call("sync", cursors=halfway)
        seen["users"] = await conn.call("users", query="")
        for query in ("team", "група", "psst 3", "secret"):
            seen[f"search {query}"] = await conn.call("search", query=query, limit=5)
        return seen
    finally:
        await conn.close()


def migrate_db(source: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "beseda", "migrate-db", "--from", f"sqlite:{source}", "--to", url],
        capture_output=True,
        text=True,
        timeout=120 * TIMEOUT_FACTOR,
        check=False,
    )


@pytest.fixture
def serve(tmp_path: Path, hasher: PasswordHasher) -> Callable[[Path | str], Awaitable[Server]]:
    """``await serve(db)`` → a started server on that database (stopped by the caller)."""

    async def start(db: Path | str) -> Server:
        server = Server(replace(test_settings(tmp_path), db=db), hasher=hasher)
        await server.start()
        return server

    return start


def assert_same(got: dict[str, Any], expected: dict[str, Any]) -> None:
    """Each user's view part by part, so a failure names the part."""
    assert got.keys() == expected.keys()
    for name, parts in expected.items():
        assert got[name].keys() == parts.keys(), name
        for part, value in parts.items():
            assert got[name][part] == value, (name, part)


async def views_of(server: Server, users: dict[str, str]) -> dict[str, Any]:
    return {name: await view(server.port, name, password) for name, password in users.items()}


async def test_the_released_file_is_copied_exactly(
    tmp_path: Path, postgres_url: str, serve: Callable[[Path | str], Awaitable[Server]]
) -> None:
    source = tmp_path / "old.db"
    shutil.copy(OLD, source)
    tokens = query(source, "SELECT hash, user_id FROM tokens ORDER BY hash")
    result = migrate_db(source, postgres_url)
    assert result.returncode == 0, result.stderr
    assert "verified: every table holds the same rows on both sides" in result.stdout
    assert result.stdout.count(" ok\n") == 7

    users = {name: OLD_PASSWORD for name in ("anna", "boris", "vera")}
    sqlite = await serve(source)
    try:
        expected = await views_of(sqlite, users)
    finally:
        await sqlite.stop()
    postgres = await serve(postgres_url)
    try:
        assert_same(await views_of(postgres, users), expected)
        # The old session tokens are copied too (the views' logins added their own).
        copied = query(postgres_url, "SELECT hash, user_id FROM tokens ORDER BY hash")
        assert len(tokens) == 3
        assert set(tokens) <= set(copied)
        anna = await logged_in(postgres.port, "anna", OLD_PASSWORD)
        sent = await anna.call("send", client_id="after-the-move", text="hello from postgres")
        assert sent["message"]["seq"] == 7  # General had 6
        assert sent["message"]["id"] == 10  # the copied ids were 1..9
        await anna.close()
    finally:
        await postgres.stop()


async def make_a_team(port: int) -> dict[str, str]:
    """A server's worth of data: users, a public channel with a topic and a rename, a
    private one, a group, direct messages, mentions, read markers, a member who left."""
    names = ["anna", "boris", "vera", "gleb", "Дарья"]
    conns = {name: await Newcomer.user(port, name, PASSWORD) for name in names}
    for conn in conns.values():
        await conn.close()
    conns = {name: await logged_in(port, name, PASSWORD) for name in names}
    anna, boris, vera = conns["anna"], conns["boris"], conns["vera"]
    team = (await anna.call("create_channel", name="team", topic="plans", members=["boris"]))[
        "conversation"
    ]["conversation"]
    secret = (await anna.call("create_channel", name="secret", public=False, members=["vera"]))[
        "conversation"
    ]["conversation"]
    grouped = await boris.call("create_group", members=["vera", "gleb", "Дарья"])
    group = grouped["conversation"]["conversation"]
    await vera.call("join", conversation=team)
    posted = []
    for i in range(7):
        sent = await anna.call(
            "post", conversation=team, client_id=f"t{i}", text=f"team {i} @boris"
        )
        posted.append(sent["entry"]["seq"])
        await boris.call("post", conversation=group, client_id=f"g{i}", text=f"группа {i} 😀")
        await vera.call("dm", to="anna", client_id=f"d{i}", text=f"psst {i}")
        await conns["gleb"].call("send", client_id=f"s{i}", text=f"general {i} @channel")
    await anna.call("post", conversation=secret, client_id="x", text="only us")
    await boris.call("post", conversation=team, client_id="r", text="a reply", reply_to=posted[0])
    await anna.call("edit", conversation=team, seq=posted[1], text="team 1, edited")
    await anna.call("delete", conversation=team, seq=posted[2])
    await boris.call("react", conversation=team, seq=posted[3], emoji="👍")
    await vera.call("react", conversation=team, seq=posted[3], emoji="🎉")
    await anna.call("rename", conversation=team, name="team-2")
    await anna.call("set_topic", conversation=team, topic="new plans")
    await vera.call("leave", conversation=team)
    await boris.call("read", conversation=team, seq=5)
    await vera.call("read", conversation="general", seq=3)
    for conn in conns.values():
        await conn.close()
    return {name: PASSWORD for name in names}


async def test_a_server_with_conversations_is_copied_exactly(
    tmp_path: Path, postgres_url: str, serve: Callable[[Path | str], Awaitable[Server]]
) -> None:
    source = tmp_path / "team.db"
    sqlite = await serve(source)
    try:
        users = await make_a_team(sqlite.port)
        expected = await views_of(sqlite, users)
    finally:
        await sqlite.stop()
    result = migrate_db(source, postgres_url)
    assert result.returncode == 0, result.stdout + result.stderr
    postgres = await serve(postgres_url)
    try:
        assert_same(await views_of(postgres, users), expected)
        # Each conversation goes on from its last seq; a new channel takes the next number.
        boris = await logged_in(postgres.port, "boris", PASSWORD)
        listed = {
            c["conversation"]: c for c in (await boris.call("conversations"))["conversations"]
        }
        team = next(c for c in listed.values() if c.get("name") == "team-2")
        posted = await boris.call(
            "post", conversation=team["conversation"], client_id="n", text="on"
        )
        assert posted["entry"]["seq"] == team["last_seq"] + 1
        created = await boris.call("create_channel", name="fresh")
        assert created["conversation"]["conversation"] == "c:4"
        await boris.close()
    finally:
        await postgres.stop()


async def test_an_interrupted_copy_resumes_and_a_changed_target_is_refused(
    tmp_path: Path, postgres_url: str, serve: Callable[[Path | str], Awaitable[Server]]
) -> None:
    source = tmp_path / "team.db"
    sqlite = await serve(source)
    try:
        await make_a_team(sqlite.port)
    finally:
        await sqlite.stop()

    class Interrupted(Exception):
        pass

    def stop_after_two_chunks(line: str) -> None:
        if line.startswith("messages: 10 rows"):
            raise Interrupted  # as a power cut after the second chunk's commit

    with pytest.raises(Interrupted):
        await copy_database(source, postgres_url, chunk=5, say=stop_after_two_chunks)
    assert query(postgres_url, "SELECT count(*) FROM messages")[0][0] == 10

    said: list[str] = []
    reports = await copy_database(source, postgres_url, chunk=5, say=said.append)
    assert "messages: resuming after id 10" in said
    assert all(report.equal for report in reports), reports
    total = query(source, "SELECT count(*) FROM messages")[0][0]
    assert query(postgres_url, "SELECT count(*) FROM messages")[0][0] == total
    ids = [row[0] for row in query(postgres_url, "SELECT id FROM messages ORDER BY id")]
    assert ids == sorted(set(ids))

    # A change the copy does not make (an entry's text edited in the target) is found.
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute("UPDATE messages SET text = 'tampered' WHERE id = 3")
    finally:
        await conn.close()
    result = migrate_db(source, postgres_url)
    assert result.returncode == 1
    assert "messages" in result.stdout
    assert "DIFFERENT" in result.stdout


def test_migrate_db_refuses_what_it_cannot_copy(tmp_path: Path, postgres: PostgresServer) -> None:
    missing = migrate_db(tmp_path / "nothing.db", postgres.create_database())
    assert missing.returncode == 2
    assert "No SQLite database" in missing.stderr
    not_a_url = subprocess.run(
        [sys.executable, "-m", "beseda", "migrate-db", "--from", "x.db", "--to", "y.db"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert not_a_url.returncode == 2
    assert "postgresql://" in not_a_url.stderr
