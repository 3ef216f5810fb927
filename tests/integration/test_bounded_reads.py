"""Replies built in bounded memory, reads fair across users, every list in pages, and a
logout that ends the token everywhere: over real sockets and a real SQLite file."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from newcomer import PASSWORD, Newcomer

from beseda.server.accounts import PasswordHasher
from beseda.server.app import Server, open_storage
from conftest import FAST_HASHER_ARGS, test_settings


async def user(port: int, name: str) -> Newcomer:
    conn = await Newcomer.open(port)
    reply = await conn.request("register", username=name, password=PASSWORD, protocol=3)
    assert reply["type"] == "result", reply
    return conn


async def test_a_sync_over_much_stored_text_holds_about_one_reply_in_memory(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(max_reply_bytes=100_000)
    await server.start()
    await (await user(server.port, "bob")).close()
    senders = [await user(server.port, f"s{i}") for i in range(8)]
    text = "long " * 1600  # 8,000 characters
    for number, sender in enumerate(senders):
        ids = [
            sender.send("dm", to="bob", client_id=f"{number}-{i}", text=text) for i in range(100)
        ]
        for request_id in ids:
            assert (await sender.reply(request_id))["type"] == "result"
    # 6.4 MB of text behind bob's cursors (he was away); one reply may carry 100 kB of it.
    bob = await Newcomer.open(server.port)
    await bob.call("login", username="bob", password=PASSWORD, protocol=3)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        page = await bob.call("sync")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert page["more"] is True
    assert 1 <= len(page["entries"]) <= 100_000 // 8_000
    # The server read no more than the reply (and the client decoded it): well under 1 MB,
    # where reading a page per conversation would hold the 6.4 MB.
    print(f"\n[bounded sync] peak {peak} bytes, {len(page['entries'])} entries")
    assert peak < 1_500_000, peak
    for conn in [bob, *senders]:
        await conn.close()


class SlowReads:
    """A store whose reads take 20 ms each and share two "reader threads", as a heavy read
    does on the real pool; it counts the reads in flight."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._threads = asyncio.Semaphore(2)
        self.in_flight = 0
        self.most = 0
        self.done = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def entries_after(self, *args: Any, **kwargs: Any) -> Any:
        async with self._threads:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            try:
                await asyncio.sleep(0.02)
                return await self._inner.entries_after(*args, **kwargs)
            finally:
                self.in_flight -= 1
                self.done += 1

    async def history(self, *args: Any, **kwargs: Any) -> Any:
        async with self._threads:
            await asyncio.sleep(0.02)
            return await self._inner.history(*args, **kwargs)


async def test_one_users_many_syncs_do_not_hold_up_another_users_history(
    tmp_path: Path,
) -> None:
    settings = test_settings(tmp_path)
    store = SlowReads(open_storage(settings))
    hasher = PasswordHasher(**FAST_HASHER_ARGS)  # type: ignore[arg-type]
    try:
        async with Server(settings, hasher=hasher, storage=store) as server:
            greedy = await user(server.port, "greedy")
            await greedy.call("post", conversation="general", client_id="g", text="hi")
            others = [await Newcomer.user(server.port, "greedy") for _ in range(15)]
            conns = [greedy, *others]
            patient = await user(server.port, "patient")
            # 16 connections of one user, each with 4 syncs pipelined: 64 slow reads.
            pending = [(c, c.send("sync")) for c in conns for _ in range(4)]
            await asyncio.sleep(0.05)
            page = await patient.call("history", conversation="general")
            done_by_then = store.done
            assert [e["text"] for e in page["entries"]] == ["hi"]
            for c, request_id in pending:
                assert (await c.reply(request_id))["type"] == "result"
            # The greedy user had one read at the database at a time, so the other user's
            # read went to the free thread: it was answered while nearly all of the 64 waited
            # (without the per-user bound it waits behind the 16 begun before it).
            assert store.most == 1
            assert store.done == 64
            print(f"\n[fair reads] {done_by_then} of 64 reads done when the other was answered")
            assert done_by_then <= 6, done_by_then
            for conn in [*conns, patient]:
                await conn.close()
    finally:
        hasher.close()


async def test_logging_out_ends_every_connection_of_that_token(server: Server) -> None:
    first = await user(server.port, "alice")
    registered = await Newcomer.open(server.port)
    data = await registered.call("login", username="alice", password=PASSWORD, protocol=3)
    twin = await Newcomer.open(server.port)
    await twin.call("login", token=data["token"], protocol=3)
    other_token = await Newcomer.open(server.port)
    await other_token.call("login", username="alice", password=PASSWORD)
    await registered.call("logout")
    bye = await twin.event("bye")
    assert bye["code"] == "session_ended"
    assert await twin.read() is None  # closed
    # The token is dead; the user's other tokens (other devices) are not.
    again = await Newcomer.open(server.port)
    refused = await again.request("login", token=data["token"])
    assert refused["code"] == "bad_credentials"
    assert (await other_token.call("ping")) == {}
    assert (await first.call("ping")) == {}
    for conn in (first, registered, twin, other_token, again):
        await conn.close()


async def test_the_conversation_list_comes_in_bounded_pages(server: Server) -> None:
    alice = await user(server.port, "alice")
    peers = [await user(server.port, f"p{i}") for i in range(30)]
    for number, peer in enumerate(peers):
        await peer.call("dm", to="alice", client_id=f"d{number}", text="hi")
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        page = await alice.call(
            "conversations", limit=8, **({} if after is None else {"after": after})
        )
        assert len(page["conversations"]) <= 8
        seen += [c["conversation"] for c in page["conversations"]]
        pages += 1
        after = page.get("next")
        if after is None:
            break
    assert pages == 4
    assert len(seen) == len(set(seen)) == 31  # 30 direct conversations and General
    for conn in [alice, *peers]:
        await conn.close()
