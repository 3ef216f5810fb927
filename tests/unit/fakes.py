"""In-memory twins of the server's collaborators, for unit tests of the core.

:class:`MemoryStorage` has the semantics of :class:`beseda.storage.sqlite.SQLiteStorage`;
the core tests run against both so that the twin cannot drift from the real thing.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field

from beseda.protocol import codec, schema
from beseda.protocol.schema import GENERAL, Message
from beseda.storage import (
    ConversationRecord,
    LookAlikeNameError,
    NameTakenError,
    NewMessage,
    StorageError,
    UserRecord,
)


@dataclass
class _Conversation:
    last_seq: int = 0
    last_ts: int | None = None
    members: tuple[int, int] | None = None
    """The two user ids of a direct conversation (low, high); None for the general room."""


class MemoryStorage:
    """Implements :class:`beseda.storage.Storage` in dicts and lists."""

    def __init__(self) -> None:
        self._users: dict[int, UserRecord] = {}
        self._by_key: dict[str, int] = {}
        self._skeletons: set[str] = set()
        self._tokens: dict[bytes, int] = {}
        self._conversations: dict[str, _Conversation] = {GENERAL: _Conversation()}
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
        )
        self._next_message_id += 1
        self._messages[message.conversation].append(stored)
        self._by_client_id[(message.sender.id, message.client_id)] = stored
        return stored, False

    async def history(
        self, conversation: str, before: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        await self._io()
        older = [
            m for m in self._messages.get(conversation, []) if before is None or m.seq < before
        ]
        page = older[-limit:]
        return page, len(older) > limit

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


@dataclass(eq=False)
class FakePeer:
    """A connection as the core sees it; keeps what it was sent and decodes it on demand."""

    conn_id: int
    address: str = "192.0.2.1"
    sent: list[bytes] = field(default_factory=list)

    def deliver(self, data: bytes) -> None:
        self.sent.append(data)

    def received(self) -> list[schema.AnyServerMessage]:
        """Every message delivered so far, decoded; the record is cleared."""
        buffer = codec.LineBuffer()
        lines = [line for data in self.sent for line in buffer.feed(data)]
        assert buffer.pending == 0, "a delivery ended in the middle of a line"
        self.sent.clear()
        return [codec.decode_server_message(line) for line in lines]
