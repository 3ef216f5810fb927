"""Prove 5: a stateful property test. Users send, DM, read history, sync, list the directory,
log out and in, create private channels and groups, invite, remove and post in them, over real
connections; nobody ever receives or reads a direct message that is not theirs, nor an entry of
a channel or group they may not read by the rules of ``beseda.server.conversations`` (a member
at the entry's place; a channel's member also its history before they came, up to a removal),
every stored sender is the authenticated user, and a token is dead after logout.

The state machine is synchronous (hypothesis drives it); the server and the clients run on an
event loop of their own in a background thread, and each step waits for its coroutine there.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from beseda.client import Client, EntryReceived, MessageReceived
from beseda.protocol import errors, schema
from beseda.protocol.errors import ProtocolError
from beseda.server.accounts import PasswordHasher
from beseda.server.app import Server
from beseda.server.chat import dm_conversation, dm_members
from conftest import FAST_HASHER_ARGS, PASSWORD, register_all, report, sizes, test_settings
from storage_helpers import query

T = TypeVar("T")
USERS = ["ann", "bob", "cat", "dan"]
UNLIMITED = (1e6, 1e6)


class LoopThread:
    """An asyncio loop on a daemon thread; ``run`` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def error_code(coro: Coroutine[Any, Any, object]) -> str | None:
    try:
        await coro
    except ProtocolError as exc:
        return exc.code
    return None


async def outcome(coro: Coroutine[Any, Any, T]) -> tuple[T | None, str | None]:
    """The result, or the error code of a refused request."""
    try:
        return await coro, None
    except ProtocolError as exc:
        return None, exc.code


async def drain(client: Client) -> list[schema.Entry]:
    await client.ping()  # events sent before the reply have arrived
    out = []
    while (event := client.next_event_nowait()) is not None:
        if isinstance(event, MessageReceived):
            out.append(event.message)
        elif isinstance(event, EntryReceived):
            out.append(event.entry)
    return out


@dataclass
class Room:
    """The model of one channel or group: who is in it, and who was at each entry."""

    kind: str
    owner: str
    members: set[str]
    at: dict[int, frozenset[str]] = field(default_factory=dict)
    """seq → the users the entry reaches (members before and after a change)."""
    until: dict[str, int] = field(default_factory=dict)
    """user → the seq of their last removal."""
    ever: set[str] = field(default_factory=set)

    def allowed(self, user: str, seq: int) -> bool:
        if user in self.at[seq]:
            return True
        if self.kind == "channel":  # a channel's member reads its history from the start
            if user in self.members:
                return True
            return user in self.until and seq <= self.until[user]
        return False


@pytest.mark.parametrize("shape", sizes((30, 30), (300, 50), fast_timeout=150, soak_timeout=3600))
def test_nobody_reads_what_is_not_theirs(shape: tuple[int, int], tmp_path: Path) -> None:
    examples, steps = shape
    runner = LoopThread()
    hasher = PasswordHasher(**FAST_HASHER_ARGS)
    settings_ = test_settings(
        tmp_path,
        login_failures_per_account=UNLIMITED,
        login_failures_per_address=UNLIMITED,
        channels_per_hour=1e6,
        invitations_per_minute=1e6,
    )
    server = Server(settings_, hasher=hasher)
    runner.run(server.start())
    stats: Counter[str] = Counter()
    sent_by: dict[str, str] = {}
    try:
        runner.run(register_all(server.port, USERS))
        ids = dict(query(settings_.db, "SELECT name, id FROM users"))

        rooms: dict[str, Room] = {}

        def visible(user: str, message: schema.Message) -> bool:
            room = rooms.get(message.conversation)
            if message.conversation.startswith("c:"):
                return room is not None and room.allowed(user, message.seq)
            if message.conversation == schema.GENERAL:
                return message.to is None
            members = dm_members(message.conversation)
            return (
                members is not None
                and ids[user] in members
                and user in (message.sender, message.to)
            )

        class Chatters(RuleBasedStateMachine):
            def __init__(self) -> None:
                super().__init__()
                self.clients: dict[str, Client] = {}
                self.online: dict[str, bool] = {}
                self.stale: list[str] = []
                self.rooms: list[str] = []
                self.counter = 0
                for user in USERS:
                    self.clients[user] = runner.run(self._connect(user))
                    self.online[user] = True

            async def _connect(self, user: str) -> Client:
                client = Client("127.0.0.1", server.port, reconnect=False)
                await client.connect()
                await client.login(user, PASSWORD)
                return client

            def _client_id(self, user: str) -> str:
                self.counter += 1
                client_id = f"{user}-{len(sent_by)}-{self.counter}"
                sent_by[client_id] = user
                return client_id

            def _check(self, user: str, messages: list[schema.Message]) -> None:
                for message in messages:
                    assert visible(user, message), (user, message)

            @rule(user=st.sampled_from(USERS), text=st.text(min_size=1, max_size=20))
            def send(self, user: str, text: str) -> None:
                stats["send"] += 1
                client = self.clients[user]
                client_id = self._client_id(user)
                if not self.online[user]:
                    code = runner.run(error_code(client.send(text + "!", client_id=client_id)))
                    assert code == errors.NOT_AUTHENTICATED
                    return
                if "\x00" in text:  # refused on every engine: no store keeps U+0000
                    code = runner.run(error_code(client.send(text, client_id=client_id)))
                    assert code == errors.BAD_REQUEST
                    return
                message = runner.run(client.send(text + "!", client_id=client_id))
                assert message.sender == user

            @rule(user=st.sampled_from(USERS), to=st.sampled_from(USERS))
            def dm(self, user: str, to: str) -> None:
                stats["dm"] += 1
                client = self.clients[user]
                client_id = self._client_id(user)
                if not self.online[user]:
                    code = runner.run(error_code(client.dm(to, "secret", client_id=client_id)))
                    assert code == errors.NOT_AUTHENTICATED
                    return
                message = runner.run(client.dm(to.upper(), f"secret for {to}", client_id=client_id))
                assert (message.sender, message.to) == (user, to)
                assert message.conversation == dm_conversation(ids[user], ids[to])

            @rule(user=st.sampled_from(USERS), peer=st.sampled_from(USERS))
            def history_with(self, user: str, peer: str) -> None:
                stats["history"] += 1
                if not self.online[user]:
                    return
                page = runner.run(self.clients[user].history(peer=peer, limit=200))
                self._check(user, page.messages)

            @rule(user=st.sampled_from(USERS), a=st.sampled_from(USERS), b=st.sampled_from(USERS))
            def history_by_id(self, user: str, a: str, b: str) -> None:
                stats["history by id"] += 1
                if not self.online[user]:
                    return
                conversation = dm_conversation(ids[a], ids[b])
                client = self.clients[user]
                if user in (a, b):
                    page = runner.run(client.history(conversation, limit=200))
                    self._check(user, page.messages)
                else:
                    stats["history of others refused"] += 1
                    code = runner.run(error_code(client.history(conversation)))
                    assert code == errors.UNKNOWN_CONVERSATION

            @rule(
                user=st.sampled_from(USERS),
                pairs=st.lists(st.tuples(st.sampled_from(USERS), st.sampled_from(USERS))),
                start=st.integers(min_value=0, max_value=5),
            )
            def sync(self, user: str, pairs: list[tuple[str, str]], start: int) -> None:
                stats["sync"] += 1
                if not self.online[user]:
                    return
                # Cursors may name anybody's conversations: they are ignored, not served.
                cursors = {dm_conversation(ids[a], ids[b]): start for a, b in pairs}
                cursors.update({conversation: start for conversation in rooms})
                request = schema.Sync(id=0, cursors=cursors)
                result = runner.run(self.clients[user]._call(request, schema.EntriesResult))
                self._check(user, result.entries)

            def _room(self, data: st.DataObject) -> str | None:
                # Drawn from this run's rooms only (the model of earlier runs stays, for the
                # checks: the server keeps their entries).
                return data.draw(st.sampled_from(self.rooms)) if self.rooms else None

            @rule(
                user=st.sampled_from(USERS),
                others=st.sets(st.sampled_from(USERS), max_size=3),
                group=st.booleans(),
            )
            def create(self, user: str, others: set[str], group: bool) -> None:
                if not self.online[user]:
                    return
                people = sorted(others - {user})
                client = self.clients[user]
                if group and len(people) < 2:
                    stats["group too small refused"] += 1
                    code = runner.run(error_code(client.create_group(people)))
                    assert code == errors.GROUP_SIZE
                    return
                stats["create group" if group else "create private channel"] += 1
                self.counter += 1
                if group:
                    info = runner.run(client.create_group(people))
                else:
                    name = f"room{len(rooms)}"
                    info = runner.run(client.create_channel(name, public=False, members=people))
                members = {user, *people}
                room = Room(info.kind, user, members, ever=set(members))
                room.at[1] = frozenset(members)
                rooms[info.conversation] = room
                self.rooms.append(info.conversation)

            @rule(user=st.sampled_from(USERS), other=st.sampled_from(USERS), data=st.data())
            def invite(self, user: str, other: str, data: st.DataObject) -> None:
                target = other
                conversation = self._room(data)
                if conversation is None or not self.online[user]:
                    return
                room = rooms[conversation]
                permitted = user in room.members and (room.kind == "group" or room.owner == user)
                client = self.clients[user]
                added, code = runner.run(outcome(client.invite(conversation, [target])))
                if added is None:
                    stats["invite refused"] += 1
                    assert not permitted, (user, target, conversation, code)
                    assert code in (
                        errors.UNKNOWN_CONVERSATION,
                        errors.NOT_A_MEMBER,
                        errors.NOT_ALLOWED,
                    )
                    return
                assert permitted
                stats["invite"] += 1
                if target in room.members or target == user:
                    assert added == []
                    return
                (entry,) = added
                assert (entry.kind, entry.target, entry.sender) == ("added", target, user)
                room.members.add(target)
                room.ever.add(target)
                room.at[entry.seq] = frozenset(room.members)

            @rule(user=st.sampled_from(USERS), other=st.sampled_from(USERS), data=st.data())
            def remove(self, user: str, other: str, data: st.DataObject) -> None:
                target = other
                conversation = self._room(data)
                if conversation is None or not self.online[user]:
                    return
                room = rooms[conversation]
                permitted = (
                    room.kind == "channel"
                    and room.owner == user
                    and target in room.members
                    and target != user
                )
                entry, code = runner.run(outcome(self.clients[user].remove(conversation, target)))
                if entry is None:
                    stats["remove refused"] += 1
                    assert not permitted, (user, target, conversation, code)
                    return
                assert permitted
                stats["remove"] += 1
                assert (entry.kind, entry.target) == ("removed", target)
                room.at[entry.seq] = frozenset(room.members)
                room.members.discard(target)
                room.until[target] = entry.seq

            @rule(user=st.sampled_from(USERS), data=st.data())
            def post(self, user: str, data: st.DataObject) -> None:
                conversation = self._room(data)
                if conversation is None or not self.online[user]:
                    return
                room = rooms[conversation]
                client_id = self._client_id(user)
                entry, code = runner.run(
                    outcome(
                        self.clients[user].post(
                            conversation, f"secret to {conversation}", client_id
                        )
                    )
                )
                if entry is None:
                    stats["post refused"] += 1
                    assert user not in room.members, (user, conversation, code)
                    return
                assert user in room.members
                stats["post"] += 1
                assert entry.sender == user
                room.at[entry.seq] = frozenset(room.members)

            @rule(user=st.sampled_from(USERS), data=st.data())
            def read_room(self, user: str, data: st.DataObject) -> None:
                conversation = self._room(data)
                if conversation is None or not self.online[user]:
                    return
                room = rooms[conversation]
                client = self.clients[user]
                if user not in room.ever:
                    stats["room of others refused"] += 1
                    code = runner.run(error_code(client.history(conversation)))
                    assert code == errors.UNKNOWN_CONVERSATION
                    code = runner.run(error_code(client.conversation(conversation)))
                    assert code == errors.UNKNOWN_CONVERSATION
                    return
                stats["room read"] += 1
                page = runner.run(client.history(conversation, limit=200))
                self._check(user, page.entries)

            @rule(
                user=st.sampled_from(USERS),
                other=st.sampled_from(USERS),
                query=st.sampled_from(["secret", "from:{other}", "secret from:{other}", "for"]),
                best=st.booleans(),
            )
            def search(self, user: str, other: str, query: str, best: bool) -> None:
                """Search finds only what the searcher may read, on every page."""
                if not self.online[user]:
                    return
                stats["search"] += 1
                client = self.clients[user]
                cursor = None
                for _ in range(5):
                    page = runner.run(
                        client.search(
                            query.format(other=other),
                            order="best" if best else "newest",
                            cursor=cursor,
                            limit=50,
                        )
                    )
                    for hit in page.results:
                        stats["search hits"] += 1
                        room = rooms.get(hit.conversation)
                        if hit.conversation.startswith("c:"):
                            assert room is not None, (user, hit)
                            assert room.allowed(user, hit.seq), (user, hit)
                        elif hit.conversation != schema.GENERAL:
                            members = dm_members(hit.conversation)
                            assert members is not None, (user, hit)
                            assert ids[user] in members, (user, hit)
                    cursor = page.next
                    if cursor is None:
                        break

            @rule(user=st.sampled_from(USERS), query=st.sampled_from(["", "a", "b", "zz"]))
            def directory(self, user: str, query: str) -> None:
                stats["directory"] += 1
                if not self.online[user]:
                    return
                result = runner.run(self.clients[user].users(query))
                assert {entry.name for entry in result.users} <= set(USERS)

            @rule(user=st.sampled_from(USERS))
            def logout(self, user: str) -> None:
                stats["logout"] += 1
                client = self.clients[user]
                if not self.online[user]:
                    return
                token = client.token
                assert token is not None
                runner.run(client.logout())
                self.stale.append(token)
                self.online[user] = False

            @rule(user=st.sampled_from(USERS))
            def login(self, user: str) -> None:
                stats["login"] += 1
                if self.online[user]:
                    return
                assert runner.run(self.clients[user].login(user, PASSWORD)).user == user
                self.online[user] = True

            @rule(data=st.data())
            def stale_token(self, data: st.DataObject) -> None:
                if not self.stale:
                    return
                stats["stale token tried"] += 1
                token = data.draw(st.sampled_from(self.stale))

                async def attempt() -> str | None:
                    client = Client("127.0.0.1", server.port, reconnect=False)
                    await client.connect()
                    try:
                        return await error_code(client.login(token=token))
                    finally:
                        await client.close()

                assert runner.run(attempt()) == errors.BAD_CREDENTIALS

            @invariant()
            def nothing_foreign_received(self) -> None:
                for user, client in self.clients.items():
                    if self.online[user]:
                        received = runner.run(drain(client))
                        stats["events checked"] += len(received)
                        self._check(user, received)

            def teardown(self) -> None:
                for client in self.clients.values():
                    runner.run(client.close())

        run_state_machine_as_test(
            Chatters,
            settings=settings(
                max_examples=examples,
                stateful_step_count=steps,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        runner.run(server.stop())
        runner.close()
        hasher.close()

    # Every stored message's sender is the user whose connection sent it.
    stored = dict(
        query(
            settings_.db,
            "SELECT m.client_id, u.name FROM messages m JOIN users u ON u.id = m.sender_id",
        )
    )
    assert stored
    for client_id, sender in stored.items():
        if client_id.startswith("~"):
            continue  # the server's own id of a change (created, added, removed)
        assert sent_by[client_id] == sender
    report("authorisation", {"examples": examples, "steps each": steps, **stats})
    report("authorisation", {"messages stored": len(stored)})
