"""A database made by the release before conversations opens with everything intact.

``tests/data/release-0.1.db`` was made by that release (schema version 1) through its own
server and client library: anna, boris and vera; six messages in General (the sixth by boris),
two between anna and boris, one from vera to anna. It is copied, never opened in place.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from newcomer import Newcomer

from beseda.server.app import Server
from beseda.storage.migrations import MIGRATIONS

pytestmark = pytest.mark.sqlite_only  # an old server's SQLite file, upgraded in place

OLD = Path(__file__).parent.parent / "data" / "release-0.1.db"
PASSWORD = "a long password"


async def login(port: int, name: str, **fields: object) -> Newcomer:
    conn = await Newcomer.open(port)
    await conn.call("login", username=name, password=PASSWORD, **fields)
    return conn


def old_messages() -> list[tuple[int, str, int, str]]:
    with sqlite3.connect(f"file:{OLD}?mode=ro", uri=True) as conn:
        return conn.execute(
            "SELECT id, conversation, seq, text FROM messages ORDER BY id"
        ).fetchall()


async def test_every_message_keeps_its_id_conversation_and_seq(
    tmp_path: Path, make_server: Callable[..., Server]
) -> None:
    before = old_messages()
    assert len(before) == 9
    shutil.copy(OLD, tmp_path / "beseda.db")
    server = make_server()
    await server.start()
    anna = await login(server.port, "anna", protocol=3)
    general = await anna.call("history", conversation="general")
    direct = await anna.call("history", conversation="dm:1:2")
    from_vera = await anna.call("history", conversation="dm:1:3")
    entries = general["entries"] + direct["entries"] + from_vera["entries"]
    after = sorted((e["id"], e["conversation"], e["seq"], e["text"]) for e in entries)
    assert after == before
    assert all("kind" not in e for e in entries)  # every one of them is a message
    await anna.close()
    await server.stop()
    with sqlite3.connect(tmp_path / "beseda.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)


async def test_an_old_clients_cursors_still_mean_what_they_meant(
    tmp_path: Path, make_server: Callable[..., Server]
) -> None:
    shutil.copy(OLD, tmp_path / "beseda.db")
    server = make_server()
    await server.start()
    # A version-2 client that had seen General up to 3 and its DM with boris up to 1.
    anna = await login(server.port, "anna")
    synced = await anna.call("sync", cursors={"general": 3, "dm:1:2": 1})
    assert [(m["conversation"], m["seq"]) for m in synced["messages"]] == [
        ("general", 4),
        ("general", 5),
        ("general", 6),
        ("dm:1:2", 2),
        ("dm:1:3", 1),
    ]
    assert synced["more"] is False
    assert [m["text"] for m in synced["messages"]][-2:] == ["secret 2", "hi anna"]
    await anna.close()


async def test_old_conversations_are_general_and_direct_ones_with_their_members(
    tmp_path: Path, make_server: Callable[..., Server]
) -> None:
    shutil.copy(OLD, tmp_path / "beseda.db")
    server = make_server()
    await server.start()
    anna = await login(server.port, "anna", protocol=3)
    listed = (await anna.call("conversations"))["conversations"]
    kinds = {c["conversation"]: (c["kind"], c.get("peer"), c["last_seq"]) for c in listed}
    assert kinds == {
        "general": ("channel", None, 6),
        "dm:1:2": ("direct", "boris", 2),
        "dm:1:3": ("direct", "vera", 1),
    }
    # Nothing was read in the old release: every message of the others is unread.
    unread = {c["conversation"]: c.get("unread", 0) for c in listed}
    assert unread == {"general": 1, "dm:1:2": 1, "dm:1:3": 1}
    members = await anna.call("members", conversation="general")
    assert [m["name"] for m in members["members"]] == ["anna", "boris", "vera"]
    # The migrated database takes new conversations and messages, and a restart keeps them.
    made = await anna.call("create_channel", name="news", members=["vera"])
    channel = made["conversation"]["conversation"]
    await anna.call("post", conversation=channel, client_id="n1", text="first")
    await anna.call("post", conversation="dm:1:2", client_id="d9", text="still here")
    await anna.close()
    await server.stop()
    again = make_server()
    await again.start()
    vera = await login(again.port, "vera", protocol=3)
    synced = await vera.call("sync", cursors={"general": 6, "dm:1:3": 1})
    assert [(e["conversation"], e["seq"], e.get("kind", "message")) for e in synced["entries"]] == [
        (channel, 1, "created"),
        (channel, 2, "message"),
    ]
    await vera.close()


async def test_the_upgrade_indexes_every_old_message_for_search(
    tmp_path: Path, make_server: Callable[..., Server]
) -> None:
    shutil.copy(OLD, tmp_path / "beseda.db")
    server = make_server()
    await server.start()
    anna = await login(server.port, "anna", protocol=4)
    found = await anna.call("search", query="ПРИВЕТ")
    assert [(h["conversation"], h["snippet"]) for h in found["results"]] == [
        ("general", "привет всем")
    ]
    secrets = await anna.call("search", query="secret")
    assert sorted(h["seq"] for h in secrets["results"]) == [1, 2]
    await anna.close()
    vera = await login(server.port, "vera", protocol=4)
    # vera is not in anna and boris's conversation: their secrets are not hers to find.
    assert (await vera.call("search", query="secret"))["results"] == []
    assert [h["snippet"] for h in (await vera.call("search", query="anna"))["results"]] == [
        "hi anna"
    ]
    await vera.close()
    await server.stop()
