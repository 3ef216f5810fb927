"""Hardening items 6, 8 and 9 over real sockets and a real SQLite file: look-alike names,
honest logins under the abuse limits, and the skeleton migration of an existing database."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from newcomer import PASSWORD, Newcomer

from beseda.server import accounts
from beseda.server.accounts import PasswordHasher
from beseda.server.app import Server
from beseda.storage import sqlite as sqlite_storage
from beseda.storage.migrations import MIGRATIONS
from conftest import FAST_HASHER_ARGS, test_settings, wait_for
from hashing import gated

# -- 6: look-alike names ----------------------------------------------------------------------

LOOK_ALIKES = {
    "Latin alpha": "\u0251dmin",  # ɑdmin
    "small capital A": "\u1d00dmin",  # ᴀdmin
    "Devanagari digit": "admin\u0966",  # admin०
    "rn for m": "adrnin",
    "upper case rn for m": "ADRNIN",
}


async def register(port: int, name: str, local: str = "127.0.0.1") -> dict[str, object]:
    conn = await Newcomer.open(port)
    try:
        return await conn.request("register", username=name, password=PASSWORD)
    finally:
        await conn.close()


async def test_look_alikes_of_existing_names_are_refused(server: Server) -> None:
    assert (await register(server.port, "admin"))["type"] == "result"
    assert (await register(server.port, "google"))["type"] == "result"
    codes = {}
    for label, name in {**LOOK_ALIKES, "Bengali zeros": "g\u09e6\u09e6gle"}.items():
        reply = await register(server.port, name)
        assert reply["type"] == "error", (label, reply)
        codes[label] = reply["code"]
        # The message names the refused name only, never the one it resembles.
        assert "admin" not in str(reply["message"]).replace(name, "")
        assert "google" not in str(reply["message"]).replace(name, "")
    assert codes == {
        "Latin alpha": "invalid_username",  # ɑ is outside Unicode's identifier profile
        "small capital A": "invalid_username",
        "Devanagari digit": "invalid_username",
        "rn for m": "name_taken",  # a valid name, but its skeleton is admin's
        "upper case rn for m": "name_taken",
        "Bengali zeros": "invalid_username",
    }
    # A name wholly in another script that looks like an existing one is taken too.
    assert (await register(server.port, "ace"))["type"] == "result"
    reply = await register(server.port, "\u0430\u0441\u0435")  # асе in Cyrillic
    assert reply["code"] == "name_taken"
    assert reply["message"] == "The name 'асе' looks too much like a name that is taken."
    # The exact name (any case) still gets the plain message.
    assert (await register(server.port, "ADMIN"))["message"] == "The name 'ADMIN' is taken."
    # And an unrelated name is fine.
    assert (await register(server.port, "admiral"))["type"] == "result"


async def test_two_look_alikes_registered_at_once_cannot_both_win(server: Server) -> None:
    replies = await asyncio.gather(*(register(server.port, n) for n in ["adrnin", "admin"] * 5))
    assert sum(r["type"] == "result" for r in replies) == 1
    assert {r.get("code") for r in replies if r["type"] == "error"} == {"name_taken"}


# -- 8: honest users and the abuse limits ------------------------------------------------------


async def open_from(port: int, address: str) -> Newcomer:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, local_addr=(address, 0), limit=2**22
    )
    conn = Newcomer(reader, writer)
    conn.hello = await conn.read()
    return conn


async def test_fifty_token_logins_at_once_from_one_address_all_succeed(server: Server) -> None:
    """An office behind one NAT address, or clients reconnecting after a restart: the
    per-address limit (burst 30, test_settings keeps the default) counts failures only."""
    owner = await Newcomer.open(server.port)
    token = (await owner.call("register", username="alice", password=PASSWORD))["token"]
    await owner.close()
    conns = [await Newcomer.open(server.port) for _ in range(50)]
    ids = [conn.send("login", token=token) for conn in conns]
    replies = await asyncio.gather(*(c.reply(i) for c, i in zip(conns, ids, strict=True)))
    assert [r.get("data", r)["user"] for r in replies] == ["alice"] * 50  # type: ignore[index]
    for conn in conns:
        await conn.close()
    # Right passwords cost the address nothing either.
    for _ in range(40):
        conn = await Newcomer.open(server.port)
        assert (await conn.call("login", username="alice", password=PASSWORD))["user"] == "alice"
        await conn.close()


async def test_a_real_user_logs_in_during_a_flood_of_unknown_names(tmp_path: Path) -> None:
    """One hash at a time, 8 waiting, 2 of them kept for accounts that exist. The flood of
    password logins for made-up names, from 60 addresses, is held at the gate so the queue
    stays full: the unknown names get 7 places and the rest are refused with rate_limited,
    and the real user's login still gets a place, and succeeds."""
    hasher = PasswordHasher(**FAST_HASHER_ARGS, workers=1, queue=8, reserved=2)  # type: ignore[arg-type]
    try:
        async with Server(test_settings(tmp_path), hasher=hasher) as server:
            await (await Newcomer.user(server.port, "alice")).close()
            wrapper = gated(hasher)
            wrapper.gate.clear()
            flood = [await open_from(server.port, f"127.0.1.{i}") for i in range(1, 61)]
            sent = [c.send("login", username=f"nobody{i}", password="guess") for i, c in
                    enumerate(flood)]  # fmt: skip
            await wait_for(lambda: hasher.pending == 7)
            user = await open_from(server.port, "127.0.2.1")
            login = user.send("login", username="alice", password=PASSWORD)
            await wait_for(lambda: hasher.pending == 8)
            wrapper.gate.set()
            assert (await user.reply(login))["data"]["user"] == "alice"
            codes = [(await c.reply(i))["code"] for c, i in zip(flood, sent, strict=True)]
            assert codes.count("bad_credentials") == 7
            assert codes.count("rate_limited") == 53
            for conn in [*flood, user]:
                await conn.close()
    finally:
        hasher.close()


# -- the migration of an existing database -----------------------------------------------------


def test_the_skeleton_migration_backfills_and_keeps_the_oldest_look_alike(
    tmp_path: Path,
) -> None:
    db = tmp_path / "old.db"
    conn = sqlite_storage.connect(db)
    # A database at the schema before the skeleton migration, with two look-alikes.
    conn.execute("BEGIN")
    for statement in MIGRATIONS[0]:
        assert isinstance(statement, str)
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("COMMIT")
    for name in ["admin", "adrnin", "bob"]:
        conn.execute(
            "INSERT INTO users (name, key, password_hash, created_at) VALUES (?, ?, 'h', 0)",
            (name, accounts.canonical_name(name)),
        )
    assert sqlite_storage.migrate(conn) == len(MIGRATIONS)
    rows = dict(conn.execute("SELECT name, skeleton FROM users"))
    assert rows == {
        "admin": accounts.name_skeleton("admin"),
        "adrnin": None,  # registered later: keeps its account, not the skeleton
        "bob": accounts.name_skeleton("bob"),
    }
    # The database itself now refuses a look-alike.
    with pytest.raises(sqlite3.IntegrityError, match="skeleton"):
        conn.execute(
            "INSERT INTO users (name, key, password_hash, created_at, skeleton) "
            "VALUES ('ɑdmin', 'ɑdmin', 'h', 0, ?)",
            (accounts.name_skeleton("ɑdmin"),),
        )
    conn.close()
