"""Directory and presence (issue 2, item 8): every registered user with an online flag,
server-side search (case-insensitive, Unicode-aware), pages, and presence events only when a
user's first connection opens and last connection closes (to the connections watching the
user: tests/integration/test_watch.py)."""

from __future__ import annotations

from typing import Any

import pytest
from newcomer import PASSWORD, Newcomer

from beseda.server.app import Server
from conftest import wait_for


async def register(port: int, *names: str) -> None:
    for name in names:
        conn = await Newcomer.open(port)
        await conn.call("register", username=name, password=PASSWORD)
        await conn.close()


async def directory(conn: Newcomer, **fields: Any) -> dict[str, bool]:
    data = await conn.call("users", **fields)
    assert data.get("next") is None
    return {u["name"]: u["online"] for u in data["users"]}


async def test_lists_every_user_with_online_state(server: Server) -> None:
    await register(server.port, "carol", "dave")
    alice = await Newcomer.user(server.port, "alice")
    bob = await Newcomer.user(server.port, "bob")
    await alice.call("watch", users=["bob"])
    assert await directory(alice) == {
        "alice": True,
        "bob": True,
        "carol": False,
        "dave": False,
    }
    await bob.close()
    await alice.event("presence", user="bob", online=False)
    assert (await directory(alice))["bob"] is False
    await alice.close()


@pytest.mark.parametrize(
    ("query", "found"),
    [
        ("иван", ["Иван", "ИВАННА", "иванов"]),
        ("ИВАН", ["Иван", "ИВАННА", "иванов"]),
        ("ИвАнОв", ["иванов"]),
        ("ivan", ["Ivan"]),
        ("ＩＶＡＮ", ["Ivan"]),  # full-width letters are the same name
        ("пётр", ["Пётр"]),
        ("ПЁТР", ["Пётр"]),
        ("STRASSE", ["Straße"]),  # case folding, not just lower-casing
        ("ß", ["Straße"]),
        ("  иван  ", ["Иван", "ИВАННА", "иванов"]),
        ("nobody", []),
        ("", ["alice", "Ivan", "Straße", "Иван", "ИВАННА", "иванов", "Пётр"]),
    ],
)
async def test_search_is_case_insensitive_and_unicode_aware(
    server: Server, query: str, found: list[str]
) -> None:
    await register(server.port, "Иван", "иванов", "ИВАННА", "Ivan", "Пётр", "Straße")
    alice = await Newcomer.user(server.port, "alice")
    data = await alice.call("users", query=query)
    assert [u["name"] for u in data["users"]] == found
    await alice.close()


async def test_pages_follow_next_and_after(server: Server) -> None:
    names = [f"user{n}" for n in range(7)]
    await register(server.port, *names, "other")
    conn = await Newcomer.user(server.port, "alice")

    seen: list[str] = []
    pages = 0
    after = None
    while True:
        fields: dict[str, Any] = {"query": "USER", "limit": 3}
        if after is not None:
            fields["after"] = after
        data = await conn.call("users", **fields)
        pages += 1
        seen += [u["name"] for u in data["users"]]
        after = data.get("next")
        if after is None:
            break
    assert pages == 3
    assert seen == names

    everyone = await conn.call("users", limit=200)
    assert len(everyone["users"]) == 9
    assert "next" not in everyone or everyone["next"] is None
    reply = await conn.request("users", limit=201)
    assert reply["code"] == "bad_request"
    await conn.close()


async def test_directory_needs_a_login(server: Server) -> None:
    conn = await Newcomer.open(server.port)
    assert (await conn.request("users"))["code"] == "not_authenticated"
    await conn.close()


async def test_presence_only_on_first_open_and_last_close(server: Server) -> None:
    await register(server.port, "alice")
    await wait_for(lambda: server.hub.sessions == 0)
    observer = await Newcomer.user(server.port, "observer")
    marker = await Newcomer.user(server.port, "marker")
    watched = await observer.call("watch", users=["alice", "marker"])
    assert watched == {
        "users": [{"name": "alice", "online": False}, {"name": "marker", "online": True}]
    }

    async def alice_presence_since_last_check() -> list[bool]:
        """Alice's presence events before the marker's next message (sent now)."""
        text = f"mark {len(marks)}"
        marks.append(text)
        await marker.call("send", client_id=text, text=text)
        changes = []
        while True:
            message = await observer.read()
            assert message is not None
            if message["type"] == "message" and message["message"]["text"] == text:
                return changes
            if message["type"] == "presence" and message["user"] == "alice":
                changes.append(message["online"])

    marks: list[str] = []
    assert [e for e in observer.events if e.get("user") == "alice"] == []
    first = await Newcomer.open(server.port)
    await first.call("login", username="alice", password=PASSWORD)
    assert await alice_presence_since_last_check() == [True]
    second = await Newcomer.open(server.port)
    await second.call("login", username="alice", password=PASSWORD)
    assert await alice_presence_since_last_check() == []
    sessions = server.hub.sessions

    await first.close()
    await wait_for(lambda: server.hub.sessions == sessions - 1)
    assert await alice_presence_since_last_check() == []
    assert (await directory(observer, query="alice"))["alice"] is True

    # Logging out counts as closing.
    await second.call("logout")
    assert await alice_presence_since_last_check() == [False]
    assert (await directory(observer, query="alice"))["alice"] is False
    await second.call("login", username="alice", password=PASSWORD)
    assert await alice_presence_since_last_check() == [True]
    await second.close()
    await wait_for(lambda: server.hub.sessions == sessions - 2)
    assert await alice_presence_since_last_check() == [False]
    for conn in (observer, marker):
        await conn.close()
