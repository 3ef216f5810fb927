"""Storage: the interface the core uses, its records and errors.

Adapters (``sqlite.py`` now, PostgreSQL later) implement :class:`Storage`; the core never sees
SQL or a driver's exceptions. Each adapter maps its driver's errors to :class:`StorageError`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from ..protocol.errors import BesedaError
from ..protocol.schema import Entry, Message, Reaction


class StorageError(BesedaError):
    """The store failed (disk full, file gone, locked …): nothing was written."""


class NameTakenError(StorageError):
    """A user with this canonical name exists."""


class LookAlikeNameError(NameTakenError):
    """A user with another name of the same confusable skeleton exists."""


class NoSuchMessageError(StorageError):
    """No message has that seq in that conversation (or it was deleted): nothing written."""


class NotAuthorError(StorageError):
    """The change needs the message's author, and the actor is someone else."""


class TooManyReactionsError(StorageError):
    """The message has the most distinct emoji allowed; a new one was refused."""


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
    """The other party of a direct message (its name is kept as the entry's ``to``)."""
    client_id: str
    text: str
    ts: int
    mentions: tuple[UserRecord, ...] = ()
    """Members the message mentions by name (counted for them, listed on the entry)."""
    mention_all: bool = False
    reply_to: int | None = None
    """The seq of the message of the same conversation it answers: it must be a message
    (not deleted), else :class:`NoSuchMessageError`."""


@dataclass(frozen=True, slots=True)
class ConversationState:
    """A conversation's own data: what the core keeps in memory for each one."""

    id: str
    kind: str
    """``channel``, ``group`` or ``direct``."""
    name: str | None = None
    key: str | None = None
    """A channel's name in canonical form: unique among channels."""
    topic: str = ""
    public: bool = False
    archived: bool = False
    last_seq: int = 0
    last_ts: int | None = None


@dataclass(frozen=True, slots=True)
class MembershipRecord:
    """One user's membership of one conversation, current or past."""

    conversation: str
    user_id: int
    role: str
    from_seq: int
    """The first entry the member may read."""
    until_seq: int | None
    """The entry that ended the membership (they left or were removed), or None."""
    read_seq: int = 0


@dataclass(frozen=True, slots=True)
class MemberChange:
    """A change of one membership, written with the entry that records it.

    ``join`` makes the user a member (again) with ``role``, reading from the first entry
    (``from_start``) or from this entry on; ``leave`` ends the membership at this entry;
    otherwise only the role changes.
    """

    user_id: int
    role: str = "member"
    join: bool = False
    from_start: bool = True
    leave: bool = False


@dataclass(frozen=True, slots=True)
class NewEntry:
    """A change of a conversation, stored as its next entry (anything but a message)."""

    conversation: str
    kind: str
    actor: UserRecord
    ts: int
    target: UserRecord | None = None
    name: str | None = None
    key: str | None = None
    topic: str | None = None
    role: str | None = None
    archived: bool = False
    """Set the conversation archived (``archived`` entries)."""
    members: tuple[MemberChange, ...] = ()


@dataclass(frozen=True, slots=True)
class NewConversation:
    """A conversation to create. A channel or group gets an id from the store and a
    ``created`` entry (seq 1); a direct conversation has its id and no entry."""

    kind: str
    creator: UserRecord
    ts: int
    id: str | None = None
    name: str | None = None
    key: str | None = None
    topic: str = ""
    public: bool = False
    members: tuple[MemberChange, ...] = ()


@dataclass(frozen=True, slots=True)
class MessageEdit:
    """New text for the message at ``seq``, by its author ``editor``."""

    conversation: str
    seq: int
    editor: UserRecord
    text: str
    ts: int


@dataclass(frozen=True, slots=True)
class MessageDeletion:
    """Delete the message at ``seq``; ``author_only``: only if ``actor`` wrote it (the core
    clears it for a channel's owners and admins)."""

    conversation: str
    seq: int
    actor: UserRecord
    ts: int
    author_only: bool = True


@dataclass(frozen=True, slots=True)
class ReactionChange:
    """Add (``add``) or remove ``user``'s ``emoji`` on the message at ``seq``."""

    conversation: str
    seq: int
    user: UserRecord
    emoji: str
    add: bool
    ts: int
    max_distinct: int
    """Most distinct emoji the message may carry (a new one past it is refused)."""


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """One page of a search, with everything the core decided: what matches, where."""

    match: str | None
    """An FTS5 expression over the trigram index of folded words (``server/search.py``), or
    None to take every message that passes the filters. (The SQLite engine adds the index's
    sender and conversation marks for ``senders`` and a single readable conversation.)"""
    readable: dict[str, tuple[int, int]]
    """Conversation → ``(after, ceiling)``: only messages with ``after < seq <= ceiling``
    of these conversations may be returned."""
    reader: int
    """The searcher's user id (for the ``me`` of reactions)."""
    senders: tuple[int, ...] = ()
    """Only messages of these users (none: anyone's)."""
    before: int | None = None
    """Only messages stored before this time (ms)."""
    after: int | None = None
    """Only messages stored at or after this time (ms)."""
    best: bool = False
    """Most relevant first (FTS5's bm25) instead of newest first."""
    cursor: int | None = None
    """Newest first: only messages with an id below it; best first: skip this many."""
    limit: int = 20


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
        """Users whose key without diacritics (``server.search.fold``) contains ``query``
        (folded by the caller), ordered by key, starting after ``after``."""

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

    async def messages_after(
        self, cursors: dict[str, int], limit: int
    ) -> tuple[list[Message], bool]:
        """Messages with ``seq`` above each conversation's cursor, at most ``limit`` in all.

        Within each conversation they are a contiguous run starting right after its cursor;
        across conversations they are ordered by id. The flag tells whether more remain.
        """

    async def conversations_of(self, user_id: int) -> list[ConversationRecord]:
        """The general room and every direct conversation of the user."""

    # Conversations (version 3) ---------------------------------------------------------------
    async def load_conversations(self) -> list[ConversationState]:
        """Every conversation, for the core's in-memory index (read once at start)."""

    async def load_members(self) -> list[MembershipRecord]:
        """Every membership, current and past, for the core's in-memory index."""

    async def users_by_ids(self, user_ids: list[int]) -> list[UserRecord]:
        """The users with these ids (in no particular order; ids nobody has are left out)."""

    def create_conversation(
        self, conversation: NewConversation
    ) -> asyncio.Future[tuple[ConversationState, Entry | None]]:
        """Queue the creation of a conversation with its first members; like every write,
        in call order. Resolves to the stored conversation and its ``created`` entry (None
        for a direct conversation, whose creation is idempotent: an existing one is
        returned). Raises :class:`NameTakenError` when a channel has the ``key``."""

    def append_entry(self, entry: NewEntry) -> asyncio.Future[Entry]:
        """Queue an entry with the conversation's next seq, and the conversation and
        membership changes it records, in one transaction. Raises :class:`NameTakenError`
        when a rename takes a channel's ``key``."""

    def set_members(self, conversation: str, changes: list[MemberChange]) -> asyncio.Future[None]:
        """Queue membership changes that no entry records (General, on registration)."""

    def set_read(self, user_id: int, conversation: str, seq: int) -> asyncio.Future[None]:
        """Queue moving a read marker forward (it never moves back)."""

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
    ) -> tuple[list[Entry], bool]:
        """Up to ``limit`` entries with ``floor < seq < before`` (and ``seq <= ceiling``),
        oldest first, and whether older readable ones exist. With ``max_bytes``, reading
        stops (newest kept) once the entries' encoded size would pass it. The change kinds
        (``schema.CHANGE_KINDS``) and deleted messages are left out: each message reads in
        its current state (with its reactions as ``reader`` sees them)."""

    async def entries_after(
        self,
        ranges: dict[str, tuple[int, int | None]],
        limit: int,
        *,
        max_bytes: int | None = None,
        reader: int | None = None,
        messages_only: bool = False,
    ) -> tuple[list[Entry], bool]:
        """Entries with ``after < seq <= until`` (no bound for None) of each conversation, at
        most ``limit`` in all and within ``max_bytes``; contiguous from each ``after``,
        ordered by id. The flag tells whether more remain. Every kind (a message in its
        current state), or with ``messages_only`` the messages alone (version-2 clients)."""

    async def unread_counts(
        self, user_id: int, markers: list[tuple[str, int]], cap: int
    ) -> dict[str, tuple[int, int]]:
        """For each (conversation, read_seq): messages of others after the marker and those
        of them that mention the user, each counted up to ``cap``."""

    # Replies, edits, deletes, reactions, search (version 4) ----------------------------------
    #
    # How entries read: a ``message`` entry carries its current text, ``edited`` (time of the
    # last edit), ``reply_to`` with ``reply`` (the answered message now: sender, the first
    # ``schema.REPLY_PREVIEW_CHARS`` of its text, or ``deleted``) and, where a ``reader`` is
    # given, ``reactions`` aggregated per emoji in the order they were first added. A deleted
    # message's own place in the stream reads as a ``deleted`` entry whose ``ref`` is its own
    # seq (no text, its author as sender), so cursors and seqs stay gap-free.

    def edit_message(self, edit: MessageEdit) -> asyncio.Future[Entry]:
        """Queue an edit: the message's text becomes ``edit.text`` (and so does the text of
        every earlier ``edited`` entry of it: no older version is kept), and an ``edited``
        entry (``ref`` = the seq, ``text``) is appended; the search index follows. Raises
        :class:`NoSuchMessageError` (no such message, or deleted) or
        :class:`NotAuthorError` (the editor did not write it)."""

    def delete_message(self, deletion: MessageDeletion) -> asyncio.Future[Entry]:
        """Queue a delete: the message's text, its edits' texts, its mentions, reactions and
        search index entry are erased (not hidden), and a ``deleted`` entry (``ref`` = the
        seq) is appended and returned. Deleting a deleted message returns its first
        ``deleted`` entry and writes nothing. Raises :class:`NoSuchMessageError` or
        :class:`NotAuthorError`. The text may stay in free space of the files until
        :meth:`finish_erasure` returns."""

    async def finish_erasure(self) -> None:
        """Wait until the text of every message deleted so far is gone from the database's
        files too, not only from its tables (SQLite: the search index merged, the WAL
        checkpointed and truncated). Returns at once when nothing is pending."""

    def set_reaction(
        self, change: ReactionChange
    ) -> asyncio.Future[tuple[Entry | None, list[Reaction]]]:
        """Queue adding or removing a reaction. Resolves to the ``reacted`` / ``unreacted``
        entry (``ref``, ``emoji``, ``count`` = people with that emoji now), or None when
        nothing changed, and the message's reactions now as ``change.user`` sees them.
        Raises :class:`NoSuchMessageError`, or :class:`TooManyReactionsError` for a new emoji
        past ``change.max_distinct``."""

    async def history_after(
        self,
        conversation: str,
        after: int,
        limit: int,
        *,
        ceiling: int | None = None,
        reader: int | None = None,
        max_bytes: int | None = None,
    ) -> tuple[list[Entry], bool]:
        """Up to ``limit`` entries with ``after < seq`` (and ``seq <= ceiling``), oldest
        first, and whether newer readable ones exist; like :meth:`history`, without the
        change kinds and deleted messages. (:meth:`history` takes ``reader`` too.)"""

    async def search(self, request: SearchRequest) -> tuple[list[Entry], int | None]:
        """One page of messages matching ``request`` (current state, with reactions as the
        reader sees them), newest first or best first, and the cursor of the next page (None
        on the last)."""
