"""History (issue 2, item 6): newest-first pages by cursor, a bounded page size, and pages that
stay consistent while others keep writing."""

from __future__ import annotations

import asyncio

import pytest
from newcomer import Newcomer

from beseda.client import Client
from beseda.server.app import Server


async def all_pages(client: Client, limit: int, **where: str) -> list[list[int]]:
    """Every page of a conversation, newest page first, as lists of seqs."""
    pages = []
    before = None
    while True:
        page = await client.history(before=before, limit=limit, **where)
        pages.append([m.seq for m in page.messages])
        if not page.more:
            return pages
        before = page.messages[0].seq


async def test_pages_go_back_in_time_by_cursor(server: Server, connect) -> None:  # type: ignore[no-untyped-def]
    alice = await connect("alice")
    for n in range(1, 26):
        await alice.send(f"message {n}")
    pages = await all_pages(alice, 10, conversation="general")
    assert pages == [list(range(16, 26)), list(range(6, 16)), list(range(1, 6))]

    raw = await Newcomer.open(server.port)
    await raw.call("login", username="alice", password="password123")
    newest = await raw.call("history", conversation="general", limit=3)
    assert [m["text"] for m in newest["messages"]] == [f"message {n}" for n in (23, 24, 25)]
    assert newest["more"] is True
    older = await raw.call("history", conversation="general", before=23, limit=3)
    assert [m["seq"] for m in older["messages"]] == [20, 21, 22]
    first = await raw.call("history", conversation="general", before=2)
    assert [m["seq"] for m in first["messages"]] == [1]
    assert first["more"] is False
    assert (await raw.call("history", conversation="general", before=1))["messages"] == []
    default = await raw.call("history", conversation="general")
    assert len(default["messages"]) == 25  # the default page (50) holds them all
    await raw.close()


async def test_dm_history_pages_by_peer(server: Server, connect) -> None:  # type: ignore[no-untyped-def]
    alice = await connect("alice")
    bob = await connect("bob")
    for n in range(7):
        await (alice if n % 2 else bob).dm("bob" if n % 2 else "alice", f"dm {n}")
    pages = await all_pages(alice, 3, peer="Bob")
    assert pages == [[5, 6, 7], [2, 3, 4], [1]]
    assert await all_pages(bob, 3, peer="alice") == pages


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"limit": 201}, "bad_request"),
        ({"limit": 0}, "bad_request"),
        ({"limit": -5}, "bad_request"),
        ({"before": -1}, "bad_request"),
        ({"limit": 10, "peer": "alice"}, "bad_request"),  # both conversation and peer
        ({"conversation": None}, "bad_request"),  # neither
    ],
    ids=["limit-201", "limit-0", "limit-negative", "before-negative", "both", "neither"],
)
async def test_page_size_and_cursor_are_bounded(
    server: Server, fields: dict[str, object], code: str
) -> None:
    raw = await Newcomer.user(server.port, "alice")
    await raw.call("send", client_id="one", text="one")
    reply = await raw.request("history", **{"conversation": "general", **fields})
    assert reply["type"] == "error"
    assert reply["code"] == code
    # The connection stays usable; the largest allowed page works.
    page = await raw.call("history", conversation="general", limit=200)
    assert [m["text"] for m in page["messages"]] == ["one"]
    await raw.close()


async def test_paging_is_stable_while_others_write(server: Server, connect) -> None:  # type: ignore[no-untyped-def]
    reader = await connect("reader")
    writer = await connect("writer")
    for n in range(1, 121):
        await writer.send(f"old {n}")
    top = await reader.history(limit=7)
    assert [m.seq for m in top.messages] == list(range(114, 121))

    async def keep_writing() -> None:
        for n in range(60):
            await writer.send(f"new {n}")

    async def page_back() -> list[int]:
        seqs: list[int] = []
        before = top.messages[0].seq
        while True:
            page = await reader.history(before=before, limit=7)
            seqs[:0] = [m.seq for m in page.messages]
            assert [m.text for m in page.messages] == [f"old {m.seq}" for m in page.messages]
            if not page.more:
                return seqs
            before = page.messages[0].seq
            await asyncio.sleep(0)  # let the writer in between pages

    seqs, _ = await asyncio.gather(page_back(), keep_writing())
    # Every older message exactly once, in order: new writes never shift a page.
    assert seqs == list(range(1, 114))
    newest = await reader.history(limit=200)
    assert [m.seq for m in newest.messages] == list(range(1, 181))
