"""The chat core driven directly: no sockets, fake connections, in-memory and SQLite storage.

Every test runs twice, once on :class:`MemoryStorage` and once on a real SQLite file, so the
in-memory twin cannot drift from the real store.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest

from beseda.bus.local import LocalBus
from beseda.protocol import errors, schema
from beseda.protocol.errors import ProtocolError
from beseda.protocol.schema import GENERAL
from beseda.server.accounts import PasswordHasher
from beseda.server.chat import Chat, Session
from beseda.server.config import Limits
from beseda.server.delivery import DeliveryHub
from beseda.storage import Storage
from beseda.storage.sqlite import SQLiteStorage

from .fakes import FakePeer, MemoryStorage

T = TypeVar("T", bound=msgspec.Struct)

PASSWORD = "password123"
GENEROUS = Limits(
    message_rate=10_000.0,
    message_burst=10_000,
    registrations_per_address=(1000.0, 10_000),
)


@dataclass
class Store:
    storage: Storage
    committed: Callable[[int], bool]
    """Whether a message id is durably stored, asked synchronously (as a reader would)."""


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        memory = MemoryStorage()
        await memory.open()
        yield Store(memory, lambda message_id: any(m.id == message_id for m in memory.stored()))
        await memory.close()
        return
    path = tmp_path / "chat.db"
    sqlite = SQLiteStorage(path)
    await sqlite.open()

    def committed(message_id: int) -> bool:
        # A separate connection sees only what is committed.
        with sqlite3.connect(path) as conn:
            row = conn.execute("SELECT 1 FROM messages WHERE id = ?", (message_id,)).fetchone()
        conn.close()
        return row is not None

    yield Store(sqlite, committed)
    await sqlite.close()


class World:
    """A chat core with a bus, a delivery hub, fake connections and injected clocks."""

    def __init__(self, store: Store, hasher: PasswordHasher, limits: Limits) -> None:
        self.store = store
        self.bus = LocalBus()
        self.hub = DeliveryHub()
        self.bus.subscribe(self.hub.on_event)
        self.now = 0.0
        self._ms = itertools.count(1_700_000_000_000)
        self._conn_ids = itertools.count(1)
        self._request_ids = itertools.count(1)
        self.chat = Chat(
            storage=store.storage,
            bus=self.bus,
            hub=self.hub,
            hasher=hasher,
            limits=limits,
            clock=lambda: next(self._ms),
            monotonic=lambda: self.now,
            sleep=self._sleep,
        )
        self.slept: list[float] = []
        self.clock_follows_sleep = True
        self.delivered_uncommitted: list[int] = []

    async def _sleep(self, seconds: float) -> None:
        # The core holds messages over the rate by sleeping: advance the fake clock instead.
        self.slept.append(seconds)
        if self.clock_follows_sleep:
            self.now += seconds

    def connect(self, address: str = "192.0.2.1") -> Session:
        peer = FakePeer(next(self._conn_ids), address)
        original = peer.deliver

        def deliver(data: bytes) -> None:
            for line in data.splitlines():
                message = msgspec.json.decode(line)
                if message["type"] == "message" and not self.store.committed(
                    message["message"]["id"]
                ):
                    self.delivered_uncommitted.append(message["message"]["id"])
            original(data)

        peer.deliver = deliver  # type: ignore[method-assign]
        return Session(peer)

    async def call(self, session: Session, kind: type[T], **fields: Any) -> Any:
        return await self.chat.handle(session, kind(id=next(self._request_ids), **fields))

    async def fails(self, session: Session, kind: type[T], **fields: Any) -> ProtocolError:
        with pytest.raises(ProtocolError) as caught:
            await self.call(session, kind, **fields)
        return caught.value

    async def user(self, name: str, *, address: str = "192.0.2.1") -> Session:
        """A new connection registered as ``name`` (or logged in, when it exists)."""
        session = self.connect(address)
        if await self.store.storage.user_by_key(name.casefold()) is None:
            await self.call(session, schema.Register, username=name, password=PASSWORD)
        else:
            await self.call(session, schema.Login, username=name, password=PASSWORD)
        return session

    async def send(self, session: Session, text: str, client_id: str | None = None) -> Any:
        client_id = client_id or f"c{next(self._request_ids)}"
        return (await self.call(session, schema.Send, client_id=client_id, text=text)).message

    async def dm(self, session: Session, to: str, text: str, client_id: str | None = None) -> Any:
        client_id = client_id or f"c{next(self._request_ids)}"
        result = await self.call(
            session, schema.DirectMessage, to=to, client_id=client_id, text=text
        )
        return result.message


def received(session: Session) -> list[schema.AnyServerMessage]:
    peer = session.peer
    assert isinstance(peer, FakePeer)
    return peer.received()


def texts(session: Session) -> list[str]:
    return [m.message.text for m in received(session) if isinstance(m, schema.MessageEvent)]


@pytest.fixture
def make_world(store: Store, hasher: PasswordHasher) -> Callable[..., World]:
    def make(**limits: Any) -> World:
        return World(store, hasher, replace(GENEROUS, **limits))

    return make


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    return make_world()


# -- accounts ---------------------------------------------------------------------------------


async def test_register_logs_the_connection_in(world: World) -> None:
    session = world.connect()
    result = await world.call(session, schema.Register, username="Alice", password=PASSWORD)
    assert isinstance(result, schema.AuthResult)
    assert result.user == "Alice"
    assert len(result.token) >= 22
    assert session.user is not None
    assert session.user.name == "Alice"
    assert isinstance(await world.call(session, schema.Ping), schema.Empty)


async def test_login_with_password_and_with_token(world: World) -> None:
    first = await world.user("alice")
    second = world.connect()
    result = await world.call(second, schema.Login, username="ALICE", password=PASSWORD)
    assert result.user == "alice"
    third = world.connect()
    by_token = await world.call(third, schema.Login, token=result.token)
    assert by_token.user == "alice"
    assert by_token.token == result.token
    assert first.user == second.user == third.user


async def test_logout_revokes_the_token(world: World) -> None:
    session = world.connect()
    token = (await world.call(session, schema.Register, username="alice", password=PASSWORD)).token
    assert isinstance(await world.call(session, schema.Logout), schema.Empty)
    assert session.user is None
    error = await world.fails(world.connect(), schema.Login, token=token)
    assert error.code == errors.BAD_CREDENTIALS
    # The connection may log in again.
    await world.call(session, schema.Login, username="alice", password=PASSWORD)
    assert session.user is not None


async def test_logout_revokes_only_its_own_token(world: World) -> None:
    first, second = world.connect(), world.connect()
    await world.call(first, schema.Register, username="alice", password=PASSWORD)
    token = (await world.call(second, schema.Login, username="alice", password=PASSWORD)).token
    await world.call(first, schema.Logout)
    assert (await world.call(world.connect(), schema.Login, token=token)).user == "alice"


async def test_a_second_login_on_one_connection_is_refused(world: World) -> None:
    session = await world.user("alice")
    await world.user("bob")
    for kind, fields in [
        (schema.Login, {"username": "bob", "password": PASSWORD}),
        (schema.Login, {"username": "alice", "password": PASSWORD}),
        (schema.Register, {"username": "carol", "password": PASSWORD}),
    ]:
        error = await world.fails(session, kind, **fields)
        assert error.code == errors.ALREADY_AUTHENTICATED
    assert session.user is not None
    assert session.user.name == "alice"
    assert world.hub.sessions == 2  # no ghost session
    assert await world.store.storage.user_by_key("carol") is None


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        (schema.Logout, {}),
        (schema.Send, {"client_id": "c", "text": "hi"}),
        (schema.DirectMessage, {"to": "bob", "client_id": "c", "text": "hi"}),
        (schema.History, {"conversation": GENERAL}),
        (schema.Sync, {}),
        (schema.Users, {}),
        (schema.Conversations, {}),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
async def test_requests_need_a_login(
    world: World, kind: type[msgspec.Struct], fields: dict[str, Any]
) -> None:
    await world.user("bob")
    session = world.connect()
    error = await world.fails(session, kind, **fields)
    assert error.code == errors.NOT_AUTHENTICATED
    history, _ = await world.store.storage.history(GENERAL, None, 10)
    assert history == []


async def test_anonymous_ping_is_answered(world: World) -> None:
    assert isinstance(await world.call(world.connect(), schema.Ping), schema.Empty)


async def test_unknown_user_and_wrong_password_get_the_same_error(world: World) -> None:
    await world.user("alice")
    unknown = await world.fails(world.connect(), schema.Login, username="zed", password=PASSWORD)
    wrong = await world.fails(world.connect(), schema.Login, username="alice", password="nope1234")
    assert (unknown.code, unknown.message) == (wrong.code, wrong.message)
    assert unknown.code == errors.BAD_CREDENTIALS


async def test_a_taken_name_in_any_case_or_width_is_refused(world: World) -> None:
    await world.user("Admin")
    for name in ["admin", "ADMIN", "ＡＤＭＩＮ"]:
        error = await world.fails(
            world.connect(), schema.Register, username=name, password=PASSWORD
        )
        assert error.code == errors.NAME_TAKEN


async def test_invalid_names_and_passwords_are_refused(world: World) -> None:
    session = world.connect()
    error = await world.fails(session, schema.Register, username="a\u202eb", password=PASSWORD)
    assert error.code == errors.INVALID_USERNAME
    error = await world.fails(session, schema.Register, username="alice", password="short")
    assert error.code == errors.INVALID_PASSWORD
    assert session.user is None
    assert await world.store.storage.user_by_key("alice") is None


async def test_login_needs_a_password_or_a_token(world: World) -> None:
    error = await world.fails(world.connect(), schema.Login, username="alice")
    assert error.code == errors.BAD_REQUEST


async def test_failed_logins_are_throttled_per_account(make_world: Callable[..., World]) -> None:
    world = make_world(login_failures_per_account=(1 / 60, 3))
    await world.user("alice")
    for address in ["10.0.0.1", "10.0.0.2", "10.0.0.3"]:
        error = await world.fails(
            world.connect(address), schema.Login, username="alice", password="wrong123"
        )
        assert error.code == errors.BAD_CREDENTIALS
    # Now even the right password waits, from any address.
    error = await world.fails(
        world.connect("10.0.0.4"), schema.Login, username="alice", password=PASSWORD
    )
    assert error.code == errors.RATE_LIMITED
    assert error.retry_after == pytest.approx(60.0)
    # Another account is not affected; an unknown name is throttled the same way.
    await world.user("bob")
    for _ in range(3):
        await world.fails(world.connect(), schema.Login, username="ghost", password="wrong123")
    error = await world.fails(world.connect(), schema.Login, username="ghost", password="x" * 8)
    assert error.code == errors.RATE_LIMITED
    world.now += 60.0
    await world.call(world.connect(), schema.Login, username="alice", password=PASSWORD)


async def test_failed_logins_are_throttled_per_address(make_world: Callable[..., World]) -> None:
    world = make_world(login_failures_per_address=(1 / 60, 3))
    for name in ["a1", "a2", "a3"]:
        await world.fails(world.connect("10.0.0.9"), schema.Login, username=name, password="p" * 8)
    error = await world.fails(
        world.connect("10.0.0.9"), schema.Login, username="a4", password="p" * 8
    )
    assert error.code == errors.RATE_LIMITED
    error = await world.fails(world.connect("10.0.0.9"), schema.Login, token="made-up")
    assert error.code == errors.RATE_LIMITED
    await world.user("alice", address="10.0.0.8")


async def test_successful_logins_are_never_throttled(make_world: Callable[..., World]) -> None:
    world = make_world(
        login_failures_per_account=(1 / 60, 2), login_failures_per_address=(1 / 60, 2)
    )
    await world.user("alice")
    token = ""
    for _ in range(10):
        result = await world.call(
            world.connect(), schema.Login, username="alice", password=PASSWORD
        )
        token = result.token
    for _ in range(10):
        await world.call(world.connect(), schema.Login, token=token)


async def test_registrations_are_limited_per_address(make_world: Callable[..., World]) -> None:
    world = make_world(registrations_per_address=(1 / 60, 2))
    await world.user("u1", address="10.0.0.1")
    await world.user("u2", address="10.0.0.1")
    error = await world.fails(
        world.connect("10.0.0.1"), schema.Register, username="u3", password=PASSWORD
    )
    assert error.code == errors.RATE_LIMITED
    assert error.retry_after is not None
    await world.user("u3", address="10.0.0.2")


async def test_an_old_hash_is_upgraded_at_login(store: Store, hasher: PasswordHasher) -> None:
    await World(store, hasher, GENEROUS).user("alice")
    stronger = PasswordHasher(time_cost=2, memory_cost=1024)
    try:
        world = World(store, stronger, GENEROUS)
        user = await store.storage.user_by_key("alice")
        assert user is not None
        assert stronger.needs_rehash(user.password_hash)
        await world.call(world.connect(), schema.Login, username="alice", password=PASSWORD)
        user = await store.storage.user_by_key("alice")
        assert user is not None
        assert not stronger.needs_rehash(user.password_hash)
        assert await stronger.verify(user.password_hash, PASSWORD)
    finally:
        stronger.close()


# -- the general room -------------------------------------------------------------------------


async def test_a_general_message_is_stored_then_delivered_to_everyone_else(world: World) -> None:
    alice = await world.user("alice")
    alice_phone = await world.user("alice")
    bob = await world.user("bob")
    anonymous = world.connect()
    for session in [alice, alice_phone, bob]:
        received(session)

    result = await world.call(alice, schema.Send, client_id="m1", text="hi: all\nпривет 😀")
    stored = result.message
    assert not result.duplicate
    assert (stored.conversation, stored.seq, stored.sender, stored.to) == (
        GENERAL,
        1,
        "alice",
        None,
    )
    assert stored.text == "hi: all\nпривет 😀"
    assert stored.client_id == "m1"
    assert stored.ts >= 1_700_000_000_000

    assert received(alice) == []  # the sending connection gets the acknowledgement only
    assert received(alice_phone) == [schema.MessageEvent(message=stored)]
    assert received(bob) == [schema.MessageEvent(message=stored)]
    assert received(anonymous) == []
    assert world.delivered_uncommitted == []
    assert (await world.store.storage.history(GENERAL, None, 10))[0] == [stored]


async def test_general_sequence_numbers_are_gap_free(world: World) -> None:
    alice, bob = await world.user("alice"), await world.user("bob")
    seqs = [(await world.send(alice if i % 2 else bob, f"m{i}")).seq for i in range(10)]
    assert seqs == list(range(1, 11))


async def test_a_retry_returns_the_original_and_delivers_nothing(world: World) -> None:
    alice = await world.user("alice")
    bob = await world.user("bob")
    first = await world.call(alice, schema.Send, client_id="same", text="once")
    received(bob)
    retry = await world.call(alice, schema.Send, client_id="same", text="once")
    assert retry.duplicate
    assert retry.message == first.message
    assert received(bob) == []
    history, _ = await world.store.storage.history(GENERAL, None, 10)
    assert [m.text for m in history] == ["once"]


async def test_a_retry_from_another_connection_is_still_a_duplicate(world: World) -> None:
    alice, alice_again = await world.user("alice"), await world.user("alice")
    first = await world.call(alice, schema.Send, client_id="same", text="once")
    retry = await world.call(alice_again, schema.Send, client_id="same", text="once")
    assert retry.duplicate
    assert retry.message == first.message


async def test_client_ids_belong_to_their_sender(world: World) -> None:
    alice, bob = await world.user("alice"), await world.user("bob")
    mine = await world.call(alice, schema.Send, client_id="same", text="hello")
    theirs = await world.call(bob, schema.Send, client_id="same", text="hello")
    assert not theirs.duplicate
    assert theirs.message.id != mine.message.id


async def test_a_reused_client_id_with_other_content_is_refused(world: World) -> None:
    alice = await world.user("alice")
    await world.user("bob")
    await world.call(alice, schema.Send, client_id="same", text="first")
    error = await world.fails(alice, schema.Send, client_id="same", text="second")
    assert error.code == errors.CLIENT_ID_REUSED
    error = await world.fails(alice, schema.DirectMessage, to="bob", client_id="same", text="first")
    assert error.code == errors.CLIENT_ID_REUSED
    history, _ = await world.store.storage.history(GENERAL, None, 10)
    assert [m.text for m in history] == ["first"]
    assert alice.user is not None
    records = await world.store.storage.conversations_of(alice.user.id)
    assert [r.conversation for r in records] == [GENERAL]


@pytest.mark.parametrize("text", ["", " ", "\n\t  \r\n"])
async def test_an_empty_message_is_refused(world: World, text: str) -> None:
    alice = await world.user("alice")
    error = await world.fails(alice, schema.Send, client_id="c", text=text)
    assert error.code == errors.EMPTY_MESSAGE
    assert (await world.store.storage.history(GENERAL, None, 10))[0] == []


async def test_message_length_is_bounded_in_characters(world: World) -> None:
    alice = await world.user("alice")
    longest = "я" * schema.MAX_TEXT_CHARS  # two bytes each: the bound counts characters
    assert (await world.send(alice, longest)).text == longest
    error = await world.fails(alice, schema.Send, client_id="c", text=longest + "!")
    assert error.code == errors.MESSAGE_TOO_LONG
    error = await world.fails(
        alice, schema.DirectMessage, to="alice", client_id="d", text=longest + "!"
    )
    assert error.code == errors.MESSAGE_TOO_LONG
    assert len((await world.store.storage.history(GENERAL, None, 10))[0]) == 1


async def test_messages_over_the_rate_are_held_in_order_then_refused(
    make_world: Callable[..., World],
) -> None:
    world = make_world(message_rate=2.0, message_burst=3, message_max_delay=1.0)
    world.clock_follows_sleep = False  # as if the held messages all came at one instant
    alice, bob = await world.user("alice"), await world.user("bob")
    for i in range(3):  # the burst
        await world.send(alice, f"m{i}")
    assert world.slept == []
    # Over the rate, messages are held at the rate (2/s), in order, not refused ...
    await world.send(alice, "m3")
    await world.send(alice, "m4")
    assert world.slept == [pytest.approx(0.5), pytest.approx(1.0)]
    # ... until the backlog would pass message_max_delay.
    error = await world.fails(alice, schema.Send, client_id="late", text="too fast")
    assert error.code == errors.RATE_LIMITED
    assert error.retry_after == pytest.approx(0.5)
    await world.send(bob, "bob is not limited")
    assert world.slept == [pytest.approx(0.5), pytest.approx(1.0)]
    history, _ = await world.store.storage.history(GENERAL, None, 10)
    assert [m.text for m in history] == ["m0", "m1", "m2", "m3", "m4", "bob is not limited"]


async def test_messages_are_rate_limited_per_user(make_world: Callable[..., World]) -> None:
    world = make_world(message_rate=2.0, message_burst=3, message_max_delay=0.0)
    alice, alice_phone = await world.user("alice"), await world.user("alice")
    bob = await world.user("bob")
    for i in range(3):
        await world.send(alice if i % 2 else alice_phone, f"m{i}")
    error = await world.fails(alice, schema.Send, client_id="late", text="too fast")
    assert error.code == errors.RATE_LIMITED
    assert error.retry_after == pytest.approx(0.5)
    error = await world.fails(alice_phone, schema.DirectMessage, to="bob", client_id="x", text="y")
    assert error.code == errors.RATE_LIMITED
    await world.send(bob, "bob is not limited")
    world.now += 0.5
    await world.call(alice, schema.Send, client_id="late", text="too fast")
    history, _ = await world.store.storage.history(GENERAL, None, 10)
    assert [m.text for m in history] == ["m0", "m1", "m2", "bob is not limited", "too fast"]


# -- direct messages --------------------------------------------------------------------------


async def test_a_dm_to_an_unknown_user_is_refused_and_not_stored(world: World) -> None:
    alice = await world.user("alice")
    error = await world.fails(alice, schema.DirectMessage, to="nobody", client_id="c", text="hi")
    assert error.code == errors.UNKNOWN_USER
    assert alice.user is not None
    records = await world.store.storage.conversations_of(alice.user.id)
    assert [r.conversation for r in records] == [GENERAL]
    assert (await world.store.storage.messages_after({GENERAL: 0}, 10))[0] == []
    # The client id was not consumed.
    await world.user("nobody")
    assert (await world.dm(alice, "nobody", "hi", client_id="c")).seq == 1


async def test_a_dm_reaches_every_connection_of_both_parties_and_nobody_else(
    world: World,
) -> None:
    alice, alice_phone = await world.user("alice"), await world.user("alice")
    bob, bob_phone = await world.user("bob"), await world.user("bob")
    carol = await world.user("carol")
    for session in [alice, alice_phone, bob, bob_phone, carol]:
        received(session)

    stored = await world.dm(alice, "BOB", "secret")
    assert alice.user is not None
    assert bob.user is not None
    low, high = sorted((alice.user.id, bob.user.id))
    assert stored.conversation == f"dm:{low}:{high}"
    assert (stored.sender, stored.to, stored.seq) == ("alice", "bob", 1)

    event = [schema.MessageEvent(message=stored)]
    assert received(alice) == []
    assert received(alice_phone) == event
    assert received(bob) == event
    assert received(bob_phone) == event
    assert received(carol) == []
    assert world.delivered_uncommitted == []

    reply = await world.dm(bob_phone, "alice", "reply")
    assert (reply.conversation, reply.seq, reply.to) == (stored.conversation, 2, "alice")
    assert texts(alice) == ["reply"]
    assert texts(carol) == []


async def test_an_offline_recipient_gets_dms_on_sync(world: World) -> None:
    alice = await world.user("alice")
    await world.chat.disconnect(await world.user("bob"))
    await world.dm(alice, "bob", "while you were out")
    bob = await world.user("bob")
    assert texts(bob) == []  # not pushed on login: fetched by sync
    result = await world.call(bob, schema.Sync)
    assert [m.text for m in result.messages] == ["while you were out"]


async def test_nobody_else_can_read_a_dm(world: World) -> None:
    alice = await world.user("alice")
    await world.user("bob")
    carol = await world.user("carol")
    stored = await world.dm(alice, "bob", "secret")

    error = await world.fails(carol, schema.History, conversation=stored.conversation)
    assert error.code == errors.UNKNOWN_CONVERSATION
    for bogus in ["dm:1", "dm:a:b", "dm:99:100", "room", ""]:
        error = await world.fails(carol, schema.History, conversation=bogus)
        assert error.code == errors.UNKNOWN_CONVERSATION
    # Carol's own conversation with bob is a different one, and empty.
    own = await world.call(carol, schema.History, peer="bob")
    assert own.conversation != stored.conversation
    assert own.messages == []
    synced = await world.call(carol, schema.Sync, cursors={stored.conversation: 0})
    assert synced.messages == []
    listed = await world.call(carol, schema.Conversations)
    assert [c.conversation for c in listed.conversations] == [GENERAL]


async def test_history_needs_exactly_one_of_conversation_or_peer(world: World) -> None:
    alice = await world.user("alice")
    error = await world.fails(alice, schema.History)
    assert error.code == errors.BAD_REQUEST
    error = await world.fails(alice, schema.History, conversation=GENERAL, peer="alice")
    assert error.code == errors.BAD_REQUEST


async def test_history_of_a_peer_who_does_not_exist(world: World) -> None:
    alice = await world.user("alice")
    error = await world.fails(alice, schema.History, peer="nobody")
    assert error.code == errors.UNKNOWN_USER


# -- history and sync -------------------------------------------------------------------------


async def test_history_pages_go_back_newest_first(world: World) -> None:
    alice = await world.user("alice")
    for i in range(1, 8):
        await world.send(alice, f"m{i}")
    pages = []
    before = None
    while True:
        page = await world.call(alice, schema.History, conversation=GENERAL, before=before, limit=3)
        pages.append(([m.seq for m in page.messages], page.more))
        if not page.more:
            break
        before = page.messages[0].seq
    assert pages == [([5, 6, 7], True), ([2, 3, 4], True), ([1], False)]


async def test_history_by_peer_and_by_conversation_agree(world: World) -> None:
    alice, bob = await world.user("alice"), await world.user("bob")
    for i in range(3):
        await world.dm(alice if i % 2 else bob, "bob" if i % 2 else "alice", f"d{i}")
    by_peer = await world.call(alice, schema.History, peer="Bob")
    by_id = await world.call(bob, schema.History, conversation=by_peer.conversation)
    assert by_peer == by_id
    assert [m.text for m in by_id.messages] == ["d0", "d1", "d2"]
    assert not by_id.more


async def test_history_pages_are_stable_under_new_writes(world: World) -> None:
    alice = await world.user("alice")
    for i in range(1, 6):
        await world.send(alice, f"m{i}")
    first = await world.call(alice, schema.History, conversation=GENERAL, limit=2)
    for i in range(6, 9):
        await world.send(alice, f"m{i}")
    second = await world.call(
        alice, schema.History, conversation=GENERAL, before=first.messages[0].seq, limit=2
    )
    assert [m.text for m in second.messages] == ["m2", "m3"]


def advance(cursors: dict[str, int], messages: list[schema.Message]) -> None:
    for message in messages:
        assert message.seq == cursors.get(message.conversation, 0) + 1, "a gap or a repeat"
        cursors[message.conversation] = message.seq


async def test_sync_pages_return_everything_once_in_order(world: World) -> None:
    alice, bob = await world.user("alice"), await world.user("bob")
    carol = await world.user("carol")
    sent: list[schema.Message] = []
    for i in range(6):
        sent.append(await world.send(alice, f"g{i}"))
        sent.append(await world.dm(bob, "alice", f"b{i}"))
        if i % 2:
            sent.append(await world.dm(carol, "alice", f"c{i}"))
    cursors: dict[str, int] = {}
    got: list[schema.Message] = []
    pages = 0
    while True:
        page = await world.call(alice, schema.Sync, cursors=dict(cursors), limit=4)
        pages += 1
        assert len(page.messages) <= 4
        advance(cursors, page.messages)
        got.extend(page.messages)
        if not page.more:
            break
    assert pages == 4
    assert sorted(got, key=lambda m: m.id) == sent
    assert (await world.call(alice, schema.Sync, cursors=cursors)).messages == []

    # Bob sees the general room and his own DM, nothing of carol's.
    for_bob = await world.call(bob, schema.Sync)
    assert {m.conversation for m in for_bob.messages} == {GENERAL, sent[1].conversation}
    assert not for_bob.more


async def test_sync_resumes_after_a_partial_cursor(world: World) -> None:
    alice = await world.user("alice")
    for i in range(1, 6):
        await world.send(alice, f"m{i}")
    page = await world.call(alice, schema.Sync, cursors={GENERAL: 3})
    assert [m.seq for m in page.messages] == [4, 5]
    assert not page.more
    ahead = await world.call(alice, schema.Sync, cursors={GENERAL: 99, "dm:7:8": 0})
    assert ahead.messages == []


async def test_sync_on_an_empty_server(world: World) -> None:
    alice = await world.user("alice")
    result = await world.call(alice, schema.Sync)
    assert result == schema.SyncResult(messages=[], more=False)


async def test_conversations_list_the_peer_and_position(world: World) -> None:
    alice, bob = await world.user("alice"), await world.user("bob")
    await world.send(alice, "g")
    await world.dm(alice, "bob", "d1")
    last = await world.dm(bob, "alice", "d2")
    listed = await world.call(alice, schema.Conversations)
    entries = {c.conversation: c for c in listed.conversations}
    assert entries[GENERAL].peer is None
    assert entries[GENERAL].last_seq == 1
    assert entries[last.conversation].peer == "bob"
    assert entries[last.conversation].last_seq == 2
    assert entries[last.conversation].last_ts == last.ts
    assert listed.conversations[0].conversation == last.conversation  # most recent first
    from_bob = await world.call(bob, schema.Conversations)
    assert {c.peer for c in from_bob.conversations} == {None, "alice"}


# -- directory and presence -------------------------------------------------------------------


async def test_directory_search_is_case_insensitive_and_unicode_aware(world: World) -> None:
    me = await world.user("me")
    for name in ["Алиса", "алексей", "Bob", "bobby", "ZED", "Straße"]:
        await world.chat.disconnect(await world.user(name))

    async def search(query: str) -> list[str]:
        result = await world.call(me, schema.Users, query=query)
        return [u.name for u in result.users]

    assert await search("АЛ") == ["алексей", "Алиса"]
    assert await search("ал") == ["алексей", "Алиса"]
    assert await search("ＢＯＢ") == ["Bob", "bobby"]
    assert await search("  bob  ") == ["Bob", "bobby"]
    assert await search("STRASSE") == ["Straße"]
    assert await search("zed") == ["ZED"]
    assert await search("nobody") == []
    assert len(await search("")) == 7


async def test_directory_pages_with_a_cursor(world: World) -> None:
    me = await world.user("me")
    names = [f"user{i:02d}" for i in range(7)]
    for name in names:
        await world.chat.disconnect(await world.user(name))
    seen: list[str] = []
    after = None
    while True:
        page = await world.call(me, schema.Users, query="USER", after=after, limit=3)
        assert len(page.users) <= 3
        seen.extend(u.name for u in page.users)
        if page.next is None:
            break
        after = page.next
    assert seen == names
    exact = await world.call(me, schema.Users, query="user", limit=7)
    assert exact.next is None


async def test_directory_shows_who_is_online(world: World) -> None:
    me = await world.user("me")
    bob = await world.user("bob")
    bob_phone = await world.user("bob")
    await world.chat.disconnect(await world.user("carol"))

    async def online() -> dict[str, bool]:
        result = await world.call(me, schema.Users)
        return {u.name: u.online for u in result.users}

    assert await online() == {"bob": True, "carol": False, "me": True}
    await world.chat.disconnect(bob)
    assert (await online())["bob"] is True
    await world.call(bob_phone, schema.Logout)
    assert (await online())["bob"] is False


async def test_presence_on_first_connection_and_last_disconnection_only(world: World) -> None:
    await world.chat.disconnect(await world.user("alice"))
    watcher = await world.user("watcher")
    await world.call(watcher, schema.Watch, users=["alice"])
    received(watcher)
    online = schema.PresenceEvent(user="alice", online=True)
    offline = schema.PresenceEvent(user="alice", online=False)

    first = await world.user("alice")
    assert received(watcher) == [online]
    second = await world.user("alice")
    assert received(watcher) == []
    await world.chat.disconnect(first)
    assert received(watcher) == []
    await world.call(second, schema.Logout)
    assert received(watcher) == [offline]
    assert received(first) == []  # nobody watches anybody there
    assert received(second) == []

    third = world.connect()
    await world.call(third, schema.Login, username="alice", password=PASSWORD)
    assert received(watcher) == [online]
    await world.chat.disconnect(third)
    await world.chat.disconnect(third)  # a second disconnect changes nothing
    assert received(watcher) == [offline]
    assert world.hub.sessions == 1


async def test_watch_reports_states_and_unknown_names_in_one_lookup(world: World) -> None:
    await world.chat.disconnect(await world.user("Zoë"))
    await world.user("Bob")
    me = await world.user("me")
    result = await world.call(
        me, schema.Watch, users=["BOB", "nobody", "ＺＯË", "bob", "Nobody", "me"]
    )
    assert result == schema.WatchResult(
        users=[
            schema.UserEntry(name="Bob", online=True),
            schema.UserEntry(name="Zoë", online=False),
            schema.UserEntry(name="me", online=True),
        ],
        unknown=["nobody"],
    )
    assert len(world.hub.watched(me)) == 3


async def test_watch_replaces_the_set_and_ends_with_the_session(world: World) -> None:
    for name in ("alice", "bob"):
        await world.chat.disconnect(await world.user(name))
    me = await world.user("me")
    await world.call(me, schema.Watch, users=["alice"])
    await world.call(me, schema.Watch, users=["bob"])
    received(me)
    await world.chat.disconnect(await world.user("alice"))
    assert received(me) == []
    await world.chat.disconnect(await world.user("bob"))
    assert received(me) == [
        schema.PresenceEvent(user="bob", online=True),
        schema.PresenceEvent(user="bob", online=False),
    ]
    await world.call(me, schema.Watch, users=[])
    await world.chat.disconnect(await world.user("bob"))
    assert received(me) == []
    assert world.hub.watchers == 0

    await world.call(me, schema.Watch, users=["alice", "bob"])
    assert world.hub.watchers == 2
    await world.call(me, schema.Logout)
    assert world.hub.watchers == 0
    await world.chat.disconnect(await world.user("alice"))
    assert received(me) == []
    assert (await world.fails(me, schema.Watch, users=["alice"])).code == errors.NOT_AUTHENTICATED


async def test_disconnecting_an_anonymous_connection_is_harmless(world: World) -> None:
    watcher = await world.user("watcher")
    received(watcher)
    await world.chat.disconnect(world.connect())
    assert received(watcher) == []


async def test_a_closed_connection_receives_nothing_more(world: World) -> None:
    alice, bob = await world.user("alice"), await world.user("bob")
    await world.chat.disconnect(bob)
    received(bob)
    await world.send(alice, "after bob left")
    await world.dm(alice, "bob", "dm after bob left")
    assert received(bob) == []


# -- reply size -------------------------------------------------------------------------------


async def test_history_replies_stop_at_the_reply_limit(make_world: Callable[..., World]) -> None:
    # The reply limit holds three of these messages but not four.
    world = make_world(max_reply_bytes=10_000)
    alice = await world.user("alice")
    for i in range(10):
        await world.send(alice, f"{i}" + "x" * 3000)
    seqs: list[list[int]] = []
    before = None
    while True:
        page = await world.call(alice, schema.History, conversation=GENERAL, before=before)
        seqs.append([m.seq for m in page.messages])
        if not page.more:
            break
        before = page.messages[0].seq
    assert seqs == [[8, 9, 10], [5, 6, 7], [2, 3, 4], [1]]


async def test_sync_replies_stop_at_the_reply_limit(make_world: Callable[..., World]) -> None:
    world = make_world(max_reply_bytes=10_000)
    alice, bob = await world.user("alice"), await world.user("bob")
    sent = [await world.send(alice, f"g{i}" + "x" * 3000) for i in range(5)]
    sent += [await world.dm(alice, "bob", f"d{i}" + "y" * 3000) for i in range(5)]
    cursors: dict[str, int] = {}
    got: list[schema.Message] = []
    while True:
        page = await world.call(bob, schema.Sync, cursors=dict(cursors))
        assert 1 <= len(page.messages) <= 3
        advance(cursors, page.messages)
        got.extend(page.messages)
        if not page.more:
            break
    assert got == sent


async def test_a_message_larger_than_the_budget_still_comes_through(
    make_world: Callable[..., World],
) -> None:
    world = make_world(max_reply_bytes=2_000)
    alice = await world.user("alice")
    sent = [await world.send(alice, "z" * schema.MAX_TEXT_CHARS) for _ in range(3)]
    page = await world.call(alice, schema.History, conversation=GENERAL)
    assert (page.messages, page.more) == (sent[-1:], True)
    synced = await world.call(alice, schema.Sync, cursors={GENERAL: 1})
    assert (synced.messages, synced.more) == (sent[1:2], True)


async def test_any_text_is_stored_as_sent(world: World) -> None:
    alice = await world.user("alice")
    # U+0000 itself is refused (test_messages.py): no store keeps it; its escape is text.
    weird = ["\u202e\u200b", "😀" * 100, "line\r\nline", '{"type":"ping"}\n', "\\u0000"]
    sent = [await world.send(alice, text) for text in weird]
    history, _ = await world.store.storage.history(GENERAL, None, 10)
    assert [m.text for m in history] == weird
    assert history == sent


@pytest.mark.parametrize("huge", [2**62, 2**63, 2**64, 10**30])
async def test_huge_cursors_mean_the_newest(world: World, huge: int) -> None:
    alice = await world.user("alice")
    sent = [await world.send(alice, f"m{i}") for i in range(3)]
    page = await world.call(alice, schema.History, conversation=GENERAL, before=huge)
    assert (page.messages, page.more) == (sent, False)
    synced = await world.call(alice, schema.Sync, cursors={GENERAL: huge})
    assert synced.messages == []
    assert (await world.store.storage.messages_after({GENERAL: huge}, 10)) == ([], False)
