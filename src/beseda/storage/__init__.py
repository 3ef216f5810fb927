"""Storage: the interface the core uses, its records and errors.

Adapters (``sqlite.py`` now, PostgreSQL later) implement :class:`Storage`; the core never sees
SQL or a driver's exceptions. Each adapter maps its driver's errors to :class:`StorageError`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from ..protocol.errors import BesedaError
from ..protocol.schema import Message


class StorageError(BesedaError):
    """The store failed (disk full, file gone, locked …): nothing was written."""


class NameTakenError(StorageError):
    """A user with this canonical name exists."""


class LookAlikeNameError(NameTakenError):
    """A user with another name of the same confusable skeleton exists."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    name: str
    """As registered (NFKC), shown to others."""
    key: str
    """Canonical form (NFKC + case fold): unique, used for look-up."""
    password_hash: str


@dataclass(frozen=True, slots=True)
class NewMessage:
    conversation: str
    sender: UserRecord
    recipient: UserRecord | None
    client_id: str
    text: str
    ts: int


@dataclass(frozen=True, slots=True)
class ConversationRecord:
    conversation: str
    peer: str | None
    last_seq: int
    last_ts: int | None


class Storage(Protocol):
    """What the chat core needs from a database. All methods are coroutines that never block
    the event loop; writes are durable when they return."""

    async def open(self) -> None: ...

    async def close(self) -> None:
        """Finish pending writes, then release the database."""

    # Accounts ---------------------------------------------------------------------------------
    async def create_user(
        self, name: str, key: str, password_hash: str, now: int, *, skeleton: str | None = None
    ) -> UserRecord:
        """Raises :class:`NameTakenError` when ``key`` exists, :class:`LookAlikeNameError`
        when ``skeleton`` does (``accounts.name_skeleton``; None: not checked)."""

    async def user_by_key(self, key: str) -> UserRecord | None: ...

    async def set_password_hash(self, user_id: int, password_hash: str) -> None: ...

    async def add_token(self, token_hash: bytes, user_id: int, now: int) -> None: ...

    async def user_by_token(self, token_hash: bytes) -> UserRecord | None: ...

    async def delete_token(self, token_hash: bytes) -> None: ...

    async def list_users(self, query: str, after: str | None, limit: int) -> list[UserRecord]:
        """Users whose key contains ``query``, ordered by key, starting after ``after``."""

    async def users_by_keys(self, keys: list[str]) -> list[UserRecord]:
        """The users with these canonical keys, in one look-up; keys nobody has are left out
        (in no particular order, each user once)."""

    # Messages ---------------------------------------------------------------------------------
    def append_message(self, message: NewMessage) -> asyncio.Future[tuple[Message, bool]]:
        """Store a message with the next sequence number of its conversation.

        Not a coroutine: the append is queued when this is called, and appends commit (and
        their futures resolve) in the order of the calls. A connection can therefore queue a
        run of messages without waiting for each commit, and the core still publishes them in
        commit order. The future gives ``(stored, duplicate)``: when the sender already stored
        this ``client_id``, the original message and ``True``, and nothing is written.
        """

    async def history(
        self, conversation: str, before: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        """Up to ``limit`` messages with ``seq < before``, oldest first, and whether older
        ones exist."""

    async def messages_after(
        self, cursors: dict[str, int], limit: int
    ) -> tuple[list[Message], bool]:
        """Messages with ``seq`` above each conversation's cursor, at most ``limit`` in all.

        Within each conversation they are a contiguous run starting right after its cursor;
        across conversations they are ordered by id. The flag tells whether more remain.
        """

    async def conversations_of(self, user_id: int) -> list[ConversationRecord]:
        """The general room and every direct conversation of the user."""
