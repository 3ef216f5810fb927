"""In-memory twins of the server's collaborators, for unit tests of the core.

:class:`MemoryStorage` has the semantics of :class:`beseda.storage.sqlite.SQLiteStorage`;
the core tests run against both so that the twin cannot drift from the real thing.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from beseda.protocol import codec, schema
from beseda.protocol.schema import GENERAL, Message
from beseda.storage import (
    ConversationRecord,
    ConversationState,
    LookAlikeNameError,
    MemberChange,
    MembershipRecord,
    NameTakenError,
    NewConversation,
    NewEntry,
    NewMessage,
    StorageError,
    UserRecord,
)

T = TypeVar("T")


@dataclass
class _Conversation:
    last_seq: int = 0
    last_ts: int | None = None
    members: tuple[int, int] | None = None
    """The two user ids of a direct conversation (low, high); None for other kinds."""
    kind: str = "direct"
    name: str | None = None
    key: str | None = None
    topic: str = ""
    public: bool = False
    archived: bool = False


class MemoryStorage:
    """Implements :class:`beseda.storage.Storage` in dicts and lists."""

    def __init__(self) -> None:
        self._users: dict[int, UserRecord] = {}
        self._by_key: dict[str, int] = {}
        self._skeletons: set[str] = set()
        self._tokens: dict[bytes, int] = {}
        self._conversations: dict[str, _Conversation] = {
            GENERAL: _Conversation(kind="channel", name="General", key="general", public=True)
        }
        self._members: dict[tuple[int, str], MembershipRecord] = {}
        self._mentions: set[tuple[int, str, int]] = set()
        self._numbered = 0
        self._messages: dict[str, list[Message]] = {GENERAL: []}
        self._by_client_id: dict[tuple[int, str], Message] = {}
        self._next_message_id = 1
        self.opened = self.closed = False

    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        self.closed = True

    def stored(self) -> list[Message]:
        """Every stored message, synchronously (for tests that inspect the store)."""
        return [m for messages in self._messages.values() for m in messages]

    async def _io(self) -> None:
        # The real store answers from another thread: let other tasks run meanwhile.
        if self.closed:
            raise StorageError("The database is closed.")
        await asyncio.sleep(0)

    # -- accounts ------------------------------------------------------------------------------

    async def create_user(
        self, name: str, key: str, password_hash: str, now: int, *, skeleton: str | None = None
    ) -> UserRecord:
        await self._io()
        if key in self._by_key:
            raise NameTakenError(key)
        if skeleton is not None and skeleton in self._skeletons:
            raise LookAlikeNameError(key)
        user = UserRecord(len(self._users) + 1, name, key, password_hash)
        self._users[user.id] = user
        self._by_key[key] = user.id
        if skeleton is not None:
            self._skeletons.add(skeleton)
        return user

    async def user_by_key(self, key: str) -> UserRecord | None:
        await self._io()
        user_id = self._by_key.get(key)
        return None if user_id is None else self._users[user_id]

    async def set_password_hash(self, user_id: int, password_hash: str) -> None:
        await self._io()
        if user_id in self._users:
            self._users[user_id] = dataclasses.replace(
                self._users[user_id], password_hash=password_hash
            )

    async def add_token(self, token_hash: bytes, user_id: int, now: int) -> None:
        await self._io()
        if token_hash in self._tokens or user_id not in self._users:
            raise StorageError("token rejected")
        self._tokens[token_hash] = user_id

    async def user_by_token(self, token_hash: bytes) -> UserRecord | None:
        await self._io()
        user_id = self._tokens.get(token_hash)
        return None if user_id is None else self._users[user_id]

    async def delete_token(self, token_hash: bytes) -> None:
        await self._io()
        self._tokens.pop(token_hash, None)

    async def list_users(self, query: str, after: str | None, limit: int) -> list[UserRecord]:
        await self._io()
        # SQLite compares TEXT by its UTF-8 bytes, which orders like code points.
        keys = sorted(key for key in self._by_key if key > (after or "") and query in key)
        return [self._users[self._by_key[key]] for key in keys[:limit]]

    async def users_by_keys(self, keys: list[str]) -> list[UserRecord]:
        await self._io()
        found = dict.fromkeys(key for key in keys if key in self._by_key)
        return [self._users[self._by_key[key]] for key in found]

    # -- messages ------------------------------------------------------------------------------

    def append_message(self, message: NewMessage) -> asyncio.Future[tuple[Message, bool]]:
        # Like the real store: queued now, answered later, in the order of the calls.
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Message, bool]] = loop.create_future()

        def run() -> None:
            if future.cancelled():
                return
            try:
                if self.closed:
                    raise StorageError("The database is closed.")
                future.set_result(self._append(message))
            except StorageError as exc:
                future.set_exception(exc)

        loop.call_soon(run)
        return future

    def _append(self, message: NewMessage) -> tuple[Message, bool]:
        existing = self._by_client_id.get((message.sender.id, message.client_id))
        if existing is not None:
            return existing, True
        recipient = message.recipient
        conversation = self._conversations.get(message.conversation)
        if conversation is None:
            if recipient is None:
                raise StorageError(f"no conversation {message.conversation!r}")
            low, high = sorted((message.sender.id, recipient.id))
            conversation = _Conversation(members=(low, high))
            self._conversations[message.conversation] = conversation
            self._messages[message.conversation] = []
            for user_id in (low, high):
                self._members.setdefault(
                    (user_id, message.conversation),
                    MembershipRecord(message.conversation, user_id, "member", 1, None),
                )
        conversation.last_seq += 1
        conversation.last_ts = message.ts
        stored = Message(
            id=self._next_message_id,
            conversation=message.conversation,
            seq=conversation.last_seq,
            sender=message.sender.name,
            to=recipient.name if recipient else None,
            text=message.text,
            ts=message.ts,
            client_id=message.client_id,
            mentions=[user.name for user in message.mentions],
            mention_all=message.mention_all,
        )
        for user in message.mentions:
            self._mentions.add((user.id, message.conversation, stored.seq))
        self._next_message_id += 1
        self._messages[message.conversation].append(stored)
        self._by_client_id[(message.sender.id, message.client_id)] = stored
        return stored, False

    async def messages_after(
        self, cursors: dict[str, int], limit: int
    ) -> tuple[list[Message], bool]:
        await self._io()
        collected = [
            m
            for conversation, after in cursors.items()
            for m in self._messages.get(conversation, [])
            if m.seq > after
        ]
        collected.sort(key=lambda m: m.id)
        return collected[:limit], len(collected) > limit

    async def conversations_of(self, user_id: int) -> list[ConversationRecord]:
        await self._io()
        records = []
        for name, conversation in self._conversations.items():
            if conversation.members is None:
                peer = None
            elif user_id in conversation.members:
                low, high = conversation.members
                peer = self._users[high if low == user_id else low].name
            else:
                continue
            records.append(
                ConversationRecord(name, peer, conversation.last_seq, conversation.last_ts)
            )
        records.sort(key=lambda r: r.last_ts or 0, reverse=True)
        return records

    # -- conversations (version 3) -------------------------------------------------------------

    async def load_conversations(self) -> list[ConversationState]:
        await self._io()
        return [
            ConversationState(
                id=cid,
                kind=c.kind,
                name=c.name,
                key=c.key,
                topic=c.topic,
                public=c.public,
                archived=c.archived,
                last_seq=c.last_seq,
                last_ts=c.last_ts,
            )
            for cid, c in self._conversations.items()
        ]

    async def load_members(self) -> list[MembershipRecord]:
        await self._io()
        return list(self._members.values())

    async def users_by_ids(self, user_ids: list[int]) -> list[UserRecord]:
        await self._io()
        return [self._users[i] for i in dict.fromkeys(user_ids) if i in self._users]

    def _later(self, work: Callable[[], T]) -> asyncio.Future[T]:
        # Like the real store: queued now, answered later, in the order of the calls.
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def run() -> None:
            if future.cancelled():
                return
            try:
                if self.closed:
                    raise StorageError("The database is closed.")
                future.set_result(work())
            except StorageError as exc:
                future.set_exception(exc)

        loop.call_soon(run)
        return future

    def _entry(
        self,
        conversation_id: str,
        kind: str,
        actor: UserRecord,
        ts: int,
        target: UserRecord | None = None,
        *,
        name: str | None = None,
        topic: str | None = None,
        role: str | None = None,
    ) -> Message:
        conversation = self._conversations[conversation_id]
        conversation.last_seq += 1
        conversation.last_ts = ts
        entry = Message(
            id=self._next_message_id,
            conversation=conversation_id,
            seq=conversation.last_seq,
            kind=kind,
            sender=actor.name,
            ts=ts,
            target=target.name if target is not None else None,
            name=name,
            topic=topic,
            role=role,
        )
        self._next_message_id += 1
        self._messages.setdefault(conversation_id, []).append(entry)
        return entry

    def _apply(self, conversation_id: str, seq: int, changes: Iterable[MemberChange]) -> None:
        for change in changes:
            key = (change.user_id, conversation_id)
            old = self._members.get(key)
            if change.join:
                start = 1 if change.from_start else seq
                self._members[key] = MembershipRecord(
                    conversation_id,
                    change.user_id,
                    change.role,
                    start,
                    None,
                    old.read_seq if old else 0,
                )
            elif old is not None:
                if change.leave:
                    self._members[key] = dataclasses.replace(old, until_seq=seq)
                else:
                    self._members[key] = dataclasses.replace(old, role=change.role)

    def create_conversation(
        self, new: NewConversation
    ) -> asyncio.Future[tuple[ConversationState, Message | None]]:
        def work() -> tuple[ConversationState, Message | None]:
            if new.key is not None and any(c.key == new.key for c in self._conversations.values()):
                raise NameTakenError(new.key)
            self._numbered += 1
            cid = f"c:{self._numbered}"
            self._conversations[cid] = _Conversation(
                kind=new.kind, name=new.name, key=new.key, topic=new.topic, public=new.public
            )
            entry = self._entry(
                cid, "created", new.creator, new.ts, name=new.name, topic=new.topic or None
            )
            self._apply(cid, 1, new.members)
            state = ConversationState(
                id=cid,
                kind=new.kind,
                name=new.name,
                key=new.key,
                topic=new.topic,
                public=new.public,
                last_seq=1,
                last_ts=new.ts,
            )
            return state, entry

        return self._later(work)

    def append_entry(self, new: NewEntry) -> asyncio.Future[Message]:
        def work() -> Message:
            conversation = self._conversations.get(new.conversation)
            if conversation is None:
                raise StorageError(f"no conversation {new.conversation!r}")
            if new.key is not None:
                if any(
                    c.key == new.key and c is not conversation for c in self._conversations.values()
                ):
                    raise NameTakenError(new.key)
                conversation.name, conversation.key = new.name, new.key
            if new.topic is not None:
                conversation.topic = new.topic
            if new.archived:
                conversation.archived = True
            entry = self._entry(
                new.conversation,
                new.kind,
                new.actor,
                new.ts,
                new.target,
                name=new.name,
                topic=new.topic,
                role=new.role,
            )
            self._apply(new.conversation, entry.seq, new.members)
            return entry

        return self._later(work)

    def set_members(self, conversation: str, changes: list[MemberChange]) -> asyncio.Future[None]:
        def work() -> None:
            for change in changes:
                self._members.setdefault(
                    (change.user_id, conversation),
                    MembershipRecord(conversation, change.user_id, change.role, 1, None),
                )

        return self._later(work)

    def set_read(self, user_id: int, conversation: str, seq: int) -> asyncio.Future[None]:
        def work() -> None:
            old = self._members.get((user_id, conversation))
            if old is not None and seq > old.read_seq:
                self._members[(user_id, conversation)] = dataclasses.replace(old, read_seq=seq)

        return self._later(work)

    async def history(
        self,
        conversation: str,
        before: int | None,
        limit: int,
        *,
        floor: int = 0,
        ceiling: int | None = None,
        max_bytes: int | None = None,
        reader: int | None = None,
    ) -> tuple[list[Message], bool]:
        await self._io()
        older = [
            m
            for m in self._messages.get(conversation, [])
            if (before is None or m.seq < before)
            and m.seq > floor
            and (ceiling is None or m.seq <= ceiling)
            and m.kind not in schema.CHANGE_KINDS
        ]
        page: list[Message] = []
        left = max_bytes
        for m in reversed(older):
            if len(page) == limit:
                break
            size = len(codec.encode(m))
            if left is not None and page and size > left:
                break
            if left is not None:
                left -= size
            page.append(m)
        page.reverse()
        return page, len(page) < len(older)

    async def entries_after(
        self,
        ranges: dict[str, tuple[int, int | None]],
        limit: int,
        *,
        max_bytes: int | None = None,
        reader: int | None = None,
        messages_only: bool = False,
    ) -> tuple[list[Message], bool]:
        await self._io()
        collected = sorted(
            (
                m
                for conversation, (after, until) in ranges.items()
                for m in self._messages.get(conversation, [])
                if m.seq > after
                and (until is None or m.seq <= until)
                and (not messages_only or m.kind == "message")
            ),
            key=lambda m: m.id,
        )
        page: list[Message] = []
        left = max_bytes
        for m in collected:
            if len(page) == limit:
                break
            size = len(codec.encode(m))
            if left is not None and page and size > left:
                break
            if left is not None:
                left -= size
            page.append(m)
        return page, len(page) < len(collected)

    # Replies, edits, deletes, reactions and search are tested against SQLite only (they
    # are mostly storage): the twin lacks them.
    def edit_message(self, edit: object) -> asyncio.Future[Message]:
        raise NotImplementedError

    def delete_message(self, deletion: object) -> asyncio.Future[Message]:
        raise NotImplementedError

    def set_reaction(self, change: object) -> asyncio.Future[tuple[Message | None, list[object]]]:
        raise NotImplementedError

    async def finish_erasure(self) -> None:
        pass

    async def history_after(self, *args: object, **kwargs: object) -> tuple[list[Message], bool]:
        raise NotImplementedError

    async def search(self, request: object) -> tuple[list[Message], int | None]:
        raise NotImplementedError

    async def unread_counts(
        self, user_id: int, markers: list[tuple[str, int]], cap: int
    ) -> dict[str, tuple[int, int]]:
        await self._io()
        name = self._users[user_id].name if user_id in self._users else None
        counts = {}
        for conversation, read in markers:
            others = [
                m
                for m in self._messages.get(conversation, [])
                if m.seq > read and m.kind == "message" and m.sender != name
            ]
            mentions = sum(
                1
                for m in others
                if m.mention_all or (user_id, conversation, m.seq) in self._mentions
            )
            counts[conversation] = (min(cap, len(others)), min(cap, mentions))
        return counts


@dataclass(eq=False)
class FakePeer:
    """A connection as the core sees it; keeps what it was sent and decodes it on demand."""

    conn_id: int
    address: str = "192.0.2.1"
    sent: list[bytes] = field(default_factory=list)

    closed_with: str | None = None

    def deliver(self, data: bytes) -> None:
        self.sent.append(data)

    def send_event(self, event: codec.Outgoing) -> None:
        self.deliver(event.line())

    def close(self, code: str, message: str | None = None) -> None:
        self.closed_with = code

    def received(self) -> list[schema.AnyServerMessage]:
        """Every message delivered so far, decoded; the record is cleared."""
        buffer = codec.LineBuffer()
        lines = [line for data in self.sent for line in buffer.feed(data)]
        assert buffer.pending == 0, "a delivery ended in the middle of a line"
        self.sent.clear()
        return [codec.decode_server_message(line) for line in lines]
