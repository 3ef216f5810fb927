"""PostgreSQL storage (asyncpg): a writer task with group commit, counter rows, a read pool.

Sequence numbers. Each conversation's row holds its ``last_seq`` (the counter row). A write
takes numbers by ``UPDATE conversations SET last_seq = last_seq + n … RETURNING last_seq`` in
the transaction that inserts the entries, so the row stays locked until that commit: numbers
are gap-free (a rolled-back transaction gives them back) and become visible in commit order,
also with several nodes writing one database. A ``SEQUENCE`` would give neither.

Group commit. Every write is queued to one writer task per process, which takes everything
queued (up to ``MAX_BATCH``), runs it in one transaction on its own connection, commits once
and only then resolves the callers' futures, in call order. Under load many writes share one
commit (and its WAL flush); without load a write costs one. Consecutive message appends of a
batch are inserted together: one statement bumps all their counter rows (locked in id order,
so two nodes cannot deadlock on them), one inserts all the rows from arrays.

A write that fails (a name taken) aborts PostgreSQL's transaction, so the writer rolls back
and runs the batch again without it; after a few such re-runs every write of the batch gets a
savepoint. A lost connection fails the batch with :class:`StorageError` (``storage_unavailable``
for the clients); the next batch connects again, so the server recovers by itself. A commit
whose answer was lost may have happened: a client's retry with the same ``client_id`` is then
answered with the stored message (exactly once), as after any lost acknowledgement.

Reads run on a small pool of connections; a read that meets a dead connection is tried once
more on a fresh one (reads are idempotent).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import msgspec
from asyncpg import Connection

from ..protocol.schema import (
    CHANGE_KINDS,
    GENERAL,
    REPLY_PREVIEW_CHARS,
    Entry,
    Message,
    Quote,
    Reaction,
)
from ..server.search import fold, search_body
from . import (
    ConversationRecord,
    ConversationState,
    LookAlikeNameError,
    MemberChange,
    MembershipRecord,
    MessageDeletion,
    MessageEdit,
    NameTakenError,
    NewConversation,
    NewEntry,
    NewMessage,
    NoSuchMessageError,
    NotAuthorError,
    ReactionChange,
    SearchRequest,
    StorageError,
    TooManyReactionsError,
    UserRecord,
)
from .entries import (
    NO_DATA,
    SEQ_CEILING,
    Budget,
    EntryData,
    clamp,
    data_encoder,
    decode_data,
    encode_data,
    message_data,
    stored_message,
)
from .pg_migrations import MIGRATION_LOCK, MIGRATIONS

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BATCH = 512
"""Most writes committed in one transaction."""

COMMAND_TIMEOUT = 30.0
"""Seconds one statement may take before the connection is given up (a PostgreSQL that went
silent, not one that refused): the batch fails with ``storage_unavailable`` and the next one
connects again, instead of every write waiting for ever."""

_CAREFUL_AFTER = 3
"""Re-runs of one batch after which every remaining write gets its own savepoint."""

_CONVERSATION_LOCK = 0x62657366
"""Advisory lock held while a channel or group takes the next ``c:N`` id (nodes may race)."""

Write = Callable[[Connection], Awaitable[Any]]

_MESSAGE_COLUMNS = """
    m.id, m.conversation, m.seq, s.name, r.name, m.text, m.ts, m.client_id,
    m.kind, t.name, m.data, m.mention_all, m.ref
    FROM messages m
    JOIN users s ON s.id = m.sender_id
    LEFT JOIN users r ON r.id = m.recipient_id
    LEFT JOIN users t ON t.id = m.target_id
"""

# -- errors ------------------------------------------------------------------------------------

_CONNECTION_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # the server shuts down, or is starting
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
)
_RETRYABLE = (asyncpg.exceptions.TransactionRollbackError,)  # deadlock, serialization failure


def _lost(exc: BaseException, conn: Connection | None = None) -> bool:
    """Whether ``exc`` says the database is out of reach (not that one write was wrong).
    asyncpg's InterfaceError means either (a closed connection, or a value it cannot send):
    the connection tells which."""
    if isinstance(exc, _CONNECTION_ERRORS):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        return conn is None or conn.is_closed()
    return False


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def _where(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "the local socket"
    return f"{host}:{parts.port or 5432}/{parts.path.lstrip('/') or '(default database)'}"


def _unavailable(exc: BaseException) -> StorageError:
    return StorageError(f"PostgreSQL is unavailable: {exc.__class__.__name__}: {exc}")


# -- rows --------------------------------------------------------------------------------------


def _entry(row: Any) -> Entry:
    data = decode_data(row[10])
    kind = row[8]
    if kind == "message":
        return Entry(
            id=row[0],
            conversation=row[1],
            seq=row[2],
            sender=row[3],
            to=row[4],
            text=row[5],
            ts=row[6],
            client_id=row[7],
            mentions=data.mentions,
            mention_all=bool(row[11]),
            reply_to=data.reply_to,
            edited=data.edited,
        )
    if kind in CHANGE_KINDS:
        return Entry(
            id=row[0],
            conversation=row[1],
            seq=row[2],
            kind=kind,
            sender=row[3],
            to=row[4],
            text=row[5],
            ts=row[6],
            ref=row[12],
            emoji=data.emoji,
            count=data.count,
        )
    return Entry(
        id=row[0],
        conversation=row[1],
        seq=row[2],
        kind=row[8],
        sender=row[3],
        ts=row[6],
        target=row[9],
        name=data.name,
        topic=data.topic,
        role=data.role,
    )


def _user(row: Any) -> UserRecord | None:
    return UserRecord(row[0], row[1], row[2], row[3]) if row is not None else None


# -- the writer --------------------------------------------------------------------------------


class _Append:
    """The write of one message, recognised by the writer, which inserts the consecutive
    appends of a batch together (``_appends``)."""

    __slots__ = ("message",)

    def __init__(self, message: NewMessage) -> None:
        self.message = message


class _StoredBefore(Exception):
    """A run of appends held a client id stored in an earlier batch, which the INSERT skipped
    (its seq already taken): run the batch again, looking such messages up first."""


class _Rerun(Exception):
    """The batch's transaction is aborted: roll back and run it again (without the writes
    that failed so far)."""


_DUPLICATES = f"""
    SELECT m.* FROM unnest($1::bigint[], $2::text[]) AS k (sender_id, client_id)
    CROSS JOIN LATERAL (
        SELECT {_MESSAGE_COLUMNS}
        WHERE m.sender_id = k.sender_id AND m.client_id = k.client_id
    ) m
"""
"""The stored messages among these (sender id, client id) pairs: one look-up in the unique
index per pair, whatever the table's size."""

_BUMP = """
    WITH locked AS (
        SELECT id FROM conversations WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE
    )
    UPDATE conversations c SET last_seq = c.last_seq + v.n, last_ts = v.ts
    FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS v (id, n, ts)
    WHERE c.id = ANY($1::text[]) AND c.id = v.id AND (SELECT count(*) FROM locked) >= 0
    RETURNING c.id, c.last_seq
"""
"""Take ``n`` numbers from each conversation's counter row; returns each row's new last seq.
The rows are locked first, in id order (the count is an init plan, run before the UPDATE
scans), so that two writers bumping the same rows never deadlock."""

_CREATE_DIRECTS = """
    INSERT INTO conversations (id, last_seq, user_a, user_b, kind)
    SELECT id, 0, low, high, 'direct' FROM unnest($1::text[], $2::bigint[], $3::bigint[])
        AS v (id, low, high)
    ON CONFLICT (id) DO NOTHING
"""
_CREATE_DIRECT_MEMBERS = """
    INSERT INTO members (user_id, conversation, role, from_seq)
    SELECT user_id, conversation, 'member', 1
    FROM unnest($1::bigint[], $2::text[]) AS v (user_id, conversation)
    ON CONFLICT DO NOTHING
"""

_INSERT_MESSAGES = """
    INSERT INTO messages
        (conversation, seq, sender_id, recipient_id, client_id, text, ts, data, mention_all,
         body)
    SELECT conversation, seq, sender_id, recipient_id, client_id, text, ts, data, mention_all,
           body
    FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::text[],
                $7::bigint[], $8::text[], $9::boolean[], $10::text[])
        WITH ORDINALITY AS v (conversation, seq, sender_id, recipient_id, client_id, text, ts,
                              data, mention_all, body, position)
    WHERE NOT EXISTS (
        SELECT 1 FROM messages o WHERE o.sender_id = v.sender_id AND o.client_id = v.client_id
    )
    ORDER BY position
    ON CONFLICT (sender_id, client_id) DO NOTHING
    RETURNING id, conversation, seq
"""
"""The rows of a run of appends, ids drawn in run order (so ids grow with seq). A client id
stored before is filtered out before its row draws an id (so a retry wastes no id; the
``ON CONFLICT`` is for another node storing it at the same moment)."""

_INSERT_MENTIONS = """
    INSERT INTO mentions (user_id, conversation, seq)
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[])
    ON CONFLICT DO NOTHING
"""


async def _appends(
    conn: Connection,
    run: list[tuple[int, NewMessage]],
    results: list[Any],
    failed: dict[int, BaseException],
    *,
    look_up: bool = False,
) -> None:
    """Store the messages of consecutive appends (``run``: batch index, message) together.

    A (sender, client id) stored before is answered with the stored message, a later copy in
    the run with the first; a message into a conversation that does not exist fails alone.
    A direct conversation's row is created with its first message.

    Retries of messages stored in an earlier batch are rare (a client that lost an
    acknowledgement), so they are looked up first only with ``look_up``; without it, the
    INSERT skipping one raises :class:`_StoredBefore`, and the writer runs the batch again
    with ``look_up``.
    """
    firsts: dict[tuple[int, str], int] = {}
    copies: list[tuple[int, int]] = []
    fresh: list[tuple[int, NewMessage]] = []
    for index, message in run:
        key = (message.sender.id, message.client_id)
        if key in firsts:
            copies.append((index, firsts[key]))
        else:
            firsts[key] = index
            fresh.append((index, message))
    rows = (
        await conn.fetch(
            _DUPLICATES,
            [message.sender.id for _, message in fresh],
            [message.client_id for _, message in fresh],
        )
        if look_up
        else []
    )
    if rows:
        stored = {(row[3], row[7]): _entry(row) for row in rows}
        # The stored row names its sender by name; the look-up is by (id, client id).
        by_key = {(m.sender.id, m.client_id): (m.sender.name, m.client_id) for _, m in fresh}
        remaining = []
        for index, message in fresh:
            found = stored.get(by_key[(message.sender.id, message.client_id)])
            if found is not None:
                results[index] = (found, True)
            else:
                remaining.append((index, message))
        fresh = remaining
    if fresh:
        await _insert_fresh(conn, fresh, results, failed)
    for index, first in copies:
        if first in failed:
            failed[index] = failed[first]
        else:
            results[index] = (results[first][0], True)


async def _bump(conn: Connection, counts: dict[str, tuple[int, int]]) -> dict[str, int]:
    if not counts:
        return {}
    rows = await conn.fetch(
        _BUMP,
        list(counts),
        [n for n, _ in counts.values()],
        [ts for _, ts in counts.values()],
    )
    return {row[0]: row[1] for row in rows}


async def _insert_fresh(
    conn: Connection,
    fresh: list[tuple[int, NewMessage]],
    results: list[Any],
    failed: dict[int, BaseException],
) -> None:
    counts: dict[str, tuple[int, int]] = {}
    for _, message in fresh:
        n, _ts = counts.get(message.conversation, (0, 0))
        counts[message.conversation] = (n + 1, message.ts)
    last = await _bump(conn, counts)
    missing = [c for c in counts if c not in last]
    if missing:
        directs: dict[str, tuple[int, int]] = {}
        for _, message in fresh:
            if message.conversation in last or message.recipient is None:
                continue
            low, high = sorted((message.sender.id, message.recipient.id))
            directs[message.conversation] = (low, high)
        if directs:
            # New direct conversations: their rows are created with their first messages.
            ids = list(directs)
            await conn.execute(
                _CREATE_DIRECTS,
                ids,
                [p[0] for p in directs.values()],
                [p[1] for p in directs.values()],
            )
            await conn.execute(
                _CREATE_DIRECT_MEMBERS,
                [user for pair in directs.values() for user in pair],
                [conversation for conversation in ids for _ in range(2)],
            )
            last.update(await _bump(conn, {c: counts[c] for c in ids}))
        kept = []
        for index, message in fresh:
            if message.conversation in last:
                kept.append((index, message))
            else:
                failed[index] = StorageError(f"no conversation {message.conversation!r}")
        fresh = kept
        if not fresh:
            return
    next_seq = {c: last[c] - n + 1 for c, (n, _) in counts.items() if c in last}
    columns: list[list[Any]] = [[] for _ in range(10)]
    seqs = []
    for _, message in fresh:
        seq = next_seq[message.conversation]
        next_seq[message.conversation] = seq + 1
        seqs.append(seq)
        recipient = message.recipient
        for column, value in zip(
            columns,
            (
                message.conversation,
                seq,
                message.sender.id,
                recipient.id if recipient is not None else None,
                message.client_id,
                message.text,
                message.ts,
                message_data(message),
                message.mention_all,
                search_body(message.text),
            ),
            strict=True,
        ):
            column.append(value)
    inserted = await conn.fetch(_INSERT_MESSAGES, *columns)
    if len(inserted) != len(fresh):
        raise _StoredBefore  # the seqs after the skipped message are taken: start again
    new_ids = {(row[1], row[2]): row[0] for row in inserted}
    mentions: list[list[Any]] = [[], [], []]
    for (index, message), seq in zip(fresh, seqs, strict=True):
        results[index] = (stored_message(message, new_ids[(message.conversation, seq)], seq), False)
        for user in message.mentions:
            mentions[0].append(user.id)
            mentions[1].append(message.conversation)
            mentions[2].append(seq)
    if mentions[0]:
        await conn.execute(_INSERT_MENTIONS, *mentions)


_Item = tuple[Write | _Append, "asyncio.Future[Any]"]


class _Writer:
    """The single writer task of this process: queued writes in batches, one commit each."""

    def __init__(self, connect: Callable[[], Awaitable[Connection]]) -> None:
        self._connect = connect
        self._conn: Connection | None = None
        self._queue: collections.deque[_Item] = collections.deque()
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.writes = 0
        self.reruns = 0
        self.together = 0

    def start(self, conn: Connection) -> None:
        self._conn = conn
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="beseda-pg-writer")

    def submit(self, work: Write | _Append) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._stopping:
            future.set_exception(StorageError("The database is closed."))
            return future
        self._queue.append((work, future))
        self._wake.set()
        return future

    async def stop(self) -> None:
        """Finish what is queued, then close the connection."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        conn, self._conn = self._conn, None
        if conn is not None:
            await _close(conn)

    async def _serve(self) -> None:
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
            try:
                outcomes = await self._commit(batch)
            except Exception as exc:  # a bug here must not stop every later write
                log.exception("a batch of %d writes failed", len(batch))
                error = StorageError(f"write failed: {exc!r}")
                outcomes = [(future, None, error) for _, future in batch]
            _resolve(outcomes)

    async def _connection(self) -> Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = None
            self._conn = await self._connect()
            log.warning("PostgreSQL writer connected again")
        return self._conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def _commit(self, batch: list[_Item]) -> list[tuple[asyncio.Future[Any], Any, Any]]:
        failed: dict[int, BaseException] = {}
        reruns = 0
        look_up = False
        while True:
            results: list[Any] = [None] * len(batch)
            try:
                conn = await self._connection()
            except (*_CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
                log.error("refusing %d writes: PostgreSQL is out of reach: %s", len(batch), exc)
                error = _unavailable(exc)
                return [(future, None, error) for _, future in batch]
            try:
                async with conn.transaction():
                    await self._run(
                        conn,
                        batch,
                        results,
                        failed,
                        careful=reruns >= _CAREFUL_AFTER,
                        look_up=look_up,
                    )
            except _StoredBefore:
                look_up = True
                self.reruns += 1
                continue
            except _Rerun:
                if len(failed) == len(batch):
                    break  # every write failed: nothing left to commit
                reruns += 1
                self.reruns += 1
                continue
            except _RETRYABLE as exc:
                # Another node's transaction and ours waited on each other: ours was chosen.
                log.warning(
                    "batch of %d writes rolled back (%s); running it again", len(batch), exc
                )
                reruns += 1
                self.reruns += 1
                continue
            except Exception as exc:
                if not _lost(exc, conn):
                    if not isinstance(exc, asyncpg.PostgresError):
                        raise
                    log.error("commit of %d writes failed: %s", len(batch), exc)
                    error = StorageError(f"The database could not commit: {exc}")
                    return [(future, None, error) for _, future in batch]
                log.error("commit of %d writes failed: %s", len(batch), exc)
                await self._drop()
                error = _unavailable(exc)
                return [(future, None, error) for _, future in batch]
            break
        self.batches += 1
        self.writes += len(batch)
        return [
            (future, None, failed[index]) if index in failed else (future, results[index], None)
            for index, (_, future) in enumerate(batch)
        ]

    async def _run(
        self,
        conn: Connection,
        batch: list[_Item],
        results: list[Any],
        failed: dict[int, BaseException],
        *,
        careful: bool,
        look_up: bool,
    ) -> None:
        """Run the writes not yet failed; raises :class:`_Rerun` when one failed and so
        aborted the transaction (``careful``: each write in a savepoint, failing alone)."""
        size = len(batch)
        index = 0
        while index < size:
            work = batch[index][0]
            if isinstance(work, _Append):
                end = index + 1
                while end < size and isinstance(batch[end][0], _Append):
                    end += 1
                run = [(i, _message_of(batch[i][0])) for i in range(index, end) if i not in failed]
                if careful:
                    for one in run:
                        try:
                            async with conn.transaction():  # a savepoint
                                await _appends(conn, [one], results, failed, look_up=True)
                        except Exception as exc:
                            _reraise_if_lost(exc, conn)
                            failed[one[0]] = _map_error(exc)
                elif run:
                    try:
                        await _appends(conn, run, results, failed, look_up=look_up)
                    except _StoredBefore:
                        raise
                    except Exception as exc:
                        _reraise_if_lost(exc, conn)
                        # Another node stored one of these client ids meanwhile (or a bug):
                        # run again; after a few tries each message in its own savepoint.
                        log.warning("a run of %d appends failed (%s); again", len(run), exc)
                        raise _Rerun from exc
                    if len(run) > 1:
                        self.together += len(run)
                index = end
                continue
            if index not in failed:
                assert not isinstance(work, _Append)
                try:
                    if careful:
                        async with conn.transaction():  # a savepoint
                            results[index] = await work(conn)
                    else:
                        results[index] = await work(conn)
                except Exception as exc:
                    _reraise_if_lost(exc, conn)
                    failed[index] = _map_error(exc)
                    if not careful:
                        raise _Rerun from exc
            index += 1


def _message_of(work: Write | _Append) -> NewMessage:
    assert isinstance(work, _Append)
    return work.message


def _reraise_if_lost(exc: BaseException, conn: Connection) -> None:
    """Errors that fail (or re-run) the whole batch go up; a write's own error does not."""
    if _lost(exc, conn) or isinstance(exc, _RETRYABLE):
        raise exc


def _map_error(exc: BaseException) -> BaseException:
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, asyncpg.PostgresError):
        return StorageError(f"The database refused a write: {exc}")
    log.error("a write failed", exc_info=exc)
    return StorageError(f"write failed: {exc!r}")


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _resolve(outcomes: Iterable[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    # Resolved in commit order, so the callers resume (and deliver) in commit order.
    for future, result, error in outcomes:
        if error is None:
            _set_result(future, result)
        else:
            _set_exception(future, error)


async def _close(conn: Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), timeout=5)
    except Exception:
        conn.terminate()


# -- opening -----------------------------------------------------------------------------------

_UTF8_CTYPE = re.compile(r"utf-?8", re.IGNORECASE)

DATABASE_OPTIONS = (
    "CREATE DATABASE beseda TEMPLATE template0 ENCODING 'UTF8' "
    "LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8'"
)
"""What to tell an operator whose database is not UTF-8 (docs/operations.md says it too)."""


async def check_database(conn: Connection) -> None:
    """Refuse a database whose encoding is not UTF8 or whose ctype is not a UTF-8 locale:
    text of every script must be stored as it is, and classified (full-text search, case)
    as letters, not bytes."""
    row = await conn.fetchrow(
        "SELECT current_database(), pg_encoding_to_char(encoding), datctype "
        "FROM pg_database WHERE datname = current_database()"
    )
    assert row is not None
    name, encoding, ctype = row
    if encoding != "UTF8" or not _UTF8_CTYPE.search(ctype or ""):
        raise StorageError(
            f"The PostgreSQL database {name!r} has encoding {encoding} and ctype {ctype!r}; "
            f"beseda needs encoding UTF8 with a UTF-8 ctype. Create it with: "
            f"{DATABASE_OPTIONS} (or initdb --encoding=UTF8 --locale=C.UTF-8)."
        )


async def migrate(conn: Connection) -> int:
    """Apply pending migrations in order, under an advisory lock; returns the version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS beseda_schema (version integer NOT NULL)")
        version = await conn.fetchval("SELECT version FROM beseda_schema")
        if version is None:
            await conn.execute("INSERT INTO beseda_schema (version) VALUES (0)")
            version = 0
    if version > len(MIGRATIONS):
        raise StorageError(
            f"The database has schema version {version}, newer than this beseda knows "
            f"({len(MIGRATIONS)}). Upgrade beseda."
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            if await conn.fetchval("SELECT version FROM beseda_schema") >= number:
                continue  # another node applied it meanwhile
            log.info("applying PostgreSQL migration %d", number)
            for statement in script:
                await conn.execute(statement)
            await conn.execute("UPDATE beseda_schema SET version = $1", number)
    return len(MIGRATIONS)


def _clamped(seq: int) -> int:
    return min(seq, SEQ_CEILING)


class PostgresStorage:
    """The store for several nodes (implements :class:`beseda.storage.Storage`)."""

    def __init__(self, url: str, *, readers: int = 4, connect_timeout: float = 5.0) -> None:
        self.url = url
        self._readers = readers
        self._timeout = connect_timeout
        self._writer: _Writer | None = None
        self._pool: asyncpg.Pool | None = None

    def __repr__(self) -> str:
        return f"PostgresStorage({redact(self.url)!r})"

    async def _connect(self) -> Connection:
        conn: Connection = await asyncpg.connect(
            self.url, timeout=self._timeout, command_timeout=COMMAND_TIMEOUT
        )
        return conn

    async def open(self) -> None:
        try:
            conn = await self._connect()
        except (*_CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            raise StorageError(
                f"Cannot reach PostgreSQL at {_where(self.url)}: {exc.__class__.__name__}: {exc}"
            ) from exc
        try:
            await check_database(conn)
            await migrate(conn)
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self._readers,
                timeout=self._timeout,
                command_timeout=COMMAND_TIMEOUT,
            )
        except BaseException as exc:
            await _close(conn)
            if isinstance(exc, StorageError):
                raise
            if isinstance(exc, (*_CONNECTION_ERRORS, asyncpg.PostgresError)):
                raise StorageError(f"Cannot open PostgreSQL at {_where(self.url)}: {exc}") from exc
            raise
        self._writer = _Writer(self._connect)
        self._writer.start(conn)

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.stop()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except Exception:
                pool.terminate()

    @property
    def stats(self) -> dict[str, int]:
        """Counts of committed batches and writes (group-commit efficiency)."""
        if self._writer is None:
            return {"batches": 0, "writes": 0}
        return {"batches": self._writer.batches, "writes": self._writer.writes}

    # -- plumbing ------------------------------------------------------------------------------

    def _submit(self, work: Write | _Append) -> asyncio.Future[Any]:
        """Queue ``work`` for the writer now; its future resolves after the commit."""
        if self._writer is None:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.set_exception(StorageError("The database is closed."))
            return future
        return self._writer.submit(work)

    async def _write(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        result: T = await self._submit(work)
        return result

    async def _read(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        for attempt in (1, 2):
            pool = self._pool
            if pool is None:
                raise StorageError("The database is closed.")
            try:
                async with pool.acquire(timeout=self._timeout) as conn:
                    return await work(conn)
            except Exception as exc:
                if not _lost(exc):
                    if isinstance(exc, asyncpg.PostgresError):
                        raise StorageError(f"The database could not be read: {exc}") from exc
                    raise
                if attempt == 2:
                    raise _unavailable(exc) from exc
                # A connection the pool kept may have died with a restarted server: once more.
        raise AssertionError("unreachable")

    # -- accounts ------------------------------------------------------------------------------

    async def create_user(
        self, name: str, key: str, password_hash: str, now: int, *, skeleton: str | None = None
    ) -> UserRecord:
        async def work(conn: Connection) -> UserRecord:
            try:
                user_id = await conn.fetchval(
                    "INSERT INTO users (name, key, password_hash, created_at, skeleton, folded) "
                    "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                    name,
                    key,
                    password_hash,
                    now,
                    skeleton,
                    fold(key),
                )
            except asyncpg.UniqueViolationError as exc:
                # The same key is "taken"; only another key of the same skeleton is a
                # look-alike.
                if exc.constraint_name == "users_skeleton_key":
                    raise LookAlikeNameError(key) from None
                raise NameTakenError(key) from None
            return UserRecord(user_id, name, key, password_hash)

        return await self._write(work)

    async def user_by_key(self, key: str) -> UserRecord | None:
        async def work(conn: Connection) -> UserRecord | None:
            return _user(
                await conn.fetchrow(
                    "SELECT id, name, key, password_hash FROM users WHERE key = $1", key
                )
            )

        return await self._read(work)

    async def set_password_hash(self, user_id: int, password_hash: str) -> None:
        async def work(conn: Connection) -> None:
            await conn.execute(
                "UPDATE users SET password_hash = $1 WHERE id = $2", password_hash, user_id
            )

        await self._write(work)

    async def add_token(self, token_hash: bytes, user_id: int, now: int) -> None:
        async def work(conn: Connection) -> None:
            await conn.execute(
                "INSERT INTO tokens (hash, user_id, created_at) VALUES ($1, $2, $3)",
                token_hash,
                user_id,
                now,
            )

        await self._write(work)

    async def user_by_token(self, token_hash: bytes) -> UserRecord | None:
        async def work(conn: Connection) -> UserRecord | None:
            return _user(
                await conn.fetchrow(
                    "SELECT u.id, u.name, u.key, u.password_hash FROM tokens t "
                    "JOIN users u ON u.id = t.user_id WHERE t.hash = $1",
                    token_hash,
                )
            )

        return await self._read(work)

    async def delete_token(self, token_hash: bytes) -> None:
        async def work(conn: Connection) -> None:
            await conn.execute("DELETE FROM tokens WHERE hash = $1", token_hash)

        await self._write(work)

    async def list_users(self, query: str, after: str | None, limit: int) -> list[UserRecord]:
        async def work(conn: Connection) -> list[UserRecord]:
            rows = await conn.fetch(
                "SELECT id, name, key, password_hash FROM users "
                'WHERE key COLLATE "C" > $1 AND strpos(folded, $2) > 0 '
                'ORDER BY key COLLATE "C" LIMIT $3',
                after or "",
                query,
                limit,
            )
            return [UserRecord(*row) for row in rows]

        return await self._read(work)

    async def users_by_keys(self, keys: list[str]) -> list[UserRecord]:
        async def work(conn: Connection) -> list[UserRecord]:
            rows = await conn.fetch(
                "SELECT id, name, key, password_hash FROM users WHERE key = ANY($1::text[])",
                list(dict.fromkeys(keys)),
            )
            return [UserRecord(*row) for row in rows]

        return await self._read(work) if keys else []

    async def users_by_ids(self, user_ids: list[int]) -> list[UserRecord]:
        async def work(conn: Connection) -> list[UserRecord]:
            rows = await conn.fetch(
                "SELECT id, name, key, password_hash FROM users WHERE id = ANY($1::bigint[])",
                list(dict.fromkeys(user_ids)),
            )
            return [UserRecord(*row) for row in rows]

        return await self._read(work) if user_ids else []

    # -- messages ------------------------------------------------------------------------------

    def append_message(self, message: NewMessage) -> asyncio.Future[tuple[Message, bool]]:
        if message.reply_to is not None:
            # A reply checks and quotes what it answers: one at a time, not in a run.
            return self._submit(lambda conn: _append_reply(conn, message))
        return self._submit(_Append(message))

    async def messages_after(
        self, cursors: dict[str, int], limit: int
    ) -> tuple[list[Message], bool]:
        async def work(conn: Connection) -> tuple[list[Message], bool]:
            rows = await conn.fetch(
                f"""
                SELECT m.* FROM unnest($1::text[], $2::bigint[]) AS c (id, after)
                CROSS JOIN LATERAL (
                    SELECT {_MESSAGE_COLUMNS}
                    WHERE m.conversation = c.id AND m.seq > c.after ORDER BY m.seq LIMIT $3
                ) m ORDER BY m.id LIMIT $3
                """,
                list(cursors),
                [_clamped(after) for after in cursors.values()],
                limit + 1,
            )
            collected = [_entry(row) for row in rows]
            return collected[:limit], len(collected) > limit

        return await self._read(work) if cursors else ([], False)

    async def conversations_of(self, user_id: int) -> list[ConversationRecord]:
        async def work(conn: Connection) -> list[ConversationRecord]:
            rows = await conn.fetch(
                "SELECT c.id, CASE WHEN c.user_a = $1 THEN b.name ELSE a.name END, "
                "c.last_seq, c.last_ts FROM conversations c "
                "LEFT JOIN users a ON a.id = c.user_a LEFT JOIN users b ON b.id = c.user_b "
                "WHERE c.id = $2 OR c.user_a = $1 OR c.user_b = $1 "
                "ORDER BY coalesce(c.last_ts, 0) DESC",
                user_id,
                GENERAL,
            )
            return [
                ConversationRecord(
                    conversation=row[0],
                    peer=None if row[0] == GENERAL else row[1],
                    last_seq=row[2],
                    last_ts=row[3],
                )
                for row in rows
            ]

        return await self._read(work)

    # -- conversations -------------------------------------------------------------------------

    async def load_conversations(self) -> list[ConversationState]:
        async def work(conn: Connection) -> list[ConversationState]:
            rows = await conn.fetch(
                "SELECT id, kind, name, key, topic, public, archived, last_seq, last_ts "
                "FROM conversations"
            )
            return [
                ConversationState(
                    id=row[0],
                    kind=row[1],
                    name=row[2],
                    key=row[3],
                    topic=row[4],
                    public=row[5],
                    archived=row[6],
                    last_seq=row[7],
                    last_ts=row[8],
                )
                for row in rows
            ]

        return await self._read(work)

    async def load_members(self) -> list[MembershipRecord]:
        async def work(conn: Connection) -> list[MembershipRecord]:
            rows = await conn.fetch(
                "SELECT conversation, user_id, role, from_seq, until_seq, read_seq FROM members"
            )
            return [MembershipRecord(*row) for row in rows]

        return await self._read(work)

    def create_conversation(
        self, conversation: NewConversation
    ) -> asyncio.Future[tuple[ConversationState, Entry | None]]:
        return self._submit(lambda conn: _create_conversation(conn, conversation))

    def append_entry(self, entry: NewEntry) -> asyncio.Future[Entry]:
        return self._submit(lambda conn: _append_entry(conn, entry))

    def set_members(self, conversation: str, changes: list[MemberChange]) -> asyncio.Future[None]:
        async def work(conn: Connection) -> None:
            await conn.executemany(
                "INSERT INTO members (user_id, conversation, role, from_seq) "
                "VALUES ($1, $2, $3, 1) ON CONFLICT DO NOTHING",
                [(change.user_id, conversation, change.role) for change in changes],
            )

        return self._submit(work)

    def set_read(self, user_id: int, conversation: str, seq: int) -> asyncio.Future[None]:
        async def work(conn: Connection) -> None:
            await conn.execute(
                "UPDATE members SET read_seq = greatest(read_seq, $1) "
                "WHERE user_id = $2 AND conversation = $3",
                clamp(seq),
                user_id,
                conversation,
            )

        return self._submit(work)

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
        top = SEQ_CEILING if before is None else min(before, SEQ_CEILING)
        if ceiling is not None:
            top = min(top, ceiling + 1)

        async def work(conn: Connection) -> tuple[list[Entry], bool]:
            rows = _stepped(
                conn,
                f"SELECT {_MESSAGE_COLUMNS} WHERE m.conversation = $1 AND m.seq < $2 "
                f"AND m.seq > $3 AND {_SHOWN} ORDER BY m.seq DESC LIMIT $4",
                conversation,
                top,
                clamp(floor),
                limit + 1,
            )
            page, more = await _page(rows, limit, max_bytes)
            page.reverse()
            if await _decorate(conn, page, reader) and _trim(page, max_bytes, newest=True):
                more = True
            return page, more

        return await self._read(work)

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
        top = SEQ_CEILING if ceiling is None else clamp(ceiling)

        async def work(conn: Connection) -> tuple[list[Entry], bool]:
            rows = _stepped(
                conn,
                f"SELECT {_MESSAGE_COLUMNS} WHERE m.conversation = $1 AND m.seq > $2 "
                f"AND m.seq <= $3 AND {_SHOWN} ORDER BY m.seq LIMIT $4",
                conversation,
                clamp(after),
                top,
                limit + 1,
            )
            page, more = await _page(rows, limit, max_bytes)
            if await _decorate(conn, page, reader) and _trim(page, max_bytes, newest=False):
                more = True
            return page, more

        return await self._read(work)

    async def entries_after(
        self,
        ranges: dict[str, tuple[int, int | None]],
        limit: int,
        *,
        max_bytes: int | None = None,
        reader: int | None = None,
        messages_only: bool = False,
    ) -> tuple[list[Entry], bool]:
        only = "AND m.kind = 'message'" if messages_only else ""

        async def work(conn: Connection) -> tuple[list[Entry], bool]:
            # Each conversation contributes at most limit + 1 entries after its cursor (ids grow
            # with seq inside a conversation, so a prefix by id is contiguous per cursor).
            rows = _stepped(
                conn,
                f"""
                SELECT m.* FROM unnest($1::text[], $2::bigint[], $3::bigint[])
                    AS c (id, after, until)
                CROSS JOIN LATERAL (
                    SELECT {_MESSAGE_COLUMNS}
                    WHERE m.conversation = c.id AND m.seq > c.after AND m.seq <= c.until
                    {only} ORDER BY m.seq LIMIT $4
                ) m ORDER BY m.id LIMIT $4
                """,
                list(ranges),
                [clamp(after) for after, _ in ranges.values()],
                [SEQ_CEILING if until is None else clamp(until) for _, until in ranges.values()],
                limit + 1,
            )
            collected, more = await _page(rows, limit, max_bytes)
            if await _decorate(conn, collected, reader) and _trim(
                collected, max_bytes, newest=False
            ):
                more = True
            return collected, more

        return await self._read(work) if ranges else ([], False)

    # -- replies, edits, deletes, reactions, search (version 4) --------------------------------

    def edit_message(self, edit: MessageEdit) -> asyncio.Future[Entry]:
        return self._submit(lambda conn: _edit(conn, edit))

    def delete_message(self, deletion: MessageDeletion) -> asyncio.Future[Entry]:
        return self._submit(lambda conn: _delete(conn, deletion))

    async def finish_erasure(self) -> None:
        """Nothing to wait for here: a deleted text is gone from the tables at the delete's
        commit; PostgreSQL reuses the dead row's space after its autovacuum (an operator who
        must have it gone from the files at once runs ``VACUUM messages``)."""

    def set_reaction(
        self, change: ReactionChange
    ) -> asyncio.Future[tuple[Entry | None, list[Reaction]]]:
        return self._submit(lambda conn: _react(conn, change))

    async def search(self, request: SearchRequest) -> tuple[list[Entry], int | None]:
        if not request.readable:
            return [], None
        return await self._read(lambda conn: _search(conn, request))

    async def unread_counts(
        self, user_id: int, markers: list[tuple[str, int]], cap: int
    ) -> dict[str, tuple[int, int]]:
        async def work(conn: Connection) -> dict[str, tuple[int, int]]:
            rows = await conn.fetch(
                """
                SELECT r.id,
                    (SELECT count(*) FROM (SELECT 1 FROM messages WHERE conversation = r.id
                        AND seq > r.read AND kind = 'message' AND sender_id <> $3 LIMIT $4) x),
                    (SELECT count(*) FROM (SELECT 1 FROM mentions WHERE user_id = $3
                        AND conversation = r.id AND seq > r.read LIMIT $4) x),
                    (SELECT count(*) FROM (SELECT 1 FROM messages WHERE conversation = r.id
                        AND seq > r.read AND mention_all AND sender_id <> $3 LIMIT $4) x),
                    (SELECT count(*) FROM (SELECT 1 FROM mentions n JOIN messages m
                        ON m.conversation = n.conversation AND m.seq = n.seq
                        WHERE n.user_id = $3 AND n.conversation = r.id AND n.seq > r.read
                        AND m.mention_all LIMIT $4) x)
                FROM unnest($1::text[], $2::bigint[]) AS r (id, read)
                """,
                [conversation for conversation, _ in markers],
                [clamp(read) for _, read in markers],
                user_id,
                cap,
            )
            counts: dict[str, tuple[int, int]] = {}
            for conversation, unread, named, everyone, both in rows:
                # A message naming the user and saying @channel mentions them once.
                mentions = min(cap, named + everyone - both) if unread else 0
                counts[conversation] = (unread, mentions)
            return counts

        return await self._read(work) if markers else {}


_STEP = 16
"""Rows a stepped read fetches at a time: what is read past a page's budget stays small."""


async def _stepped(conn: Connection, query: str, *args: Any) -> AsyncGenerator[Any, None]:
    """The rows of ``query`` through a cursor, a few at a time (in a read-only transaction,
    which a cursor needs): the client holds about one reply, whatever the rows behind it."""
    async with conn.transaction(readonly=True):
        async for row in conn.cursor(query, *args, prefetch=_STEP):
            yield row


async def _page(
    rows: AsyncGenerator[Any, None], limit: int, max_bytes: int | None
) -> tuple[list[Entry], bool]:
    """Up to ``limit`` entries of ``rows`` within ``max_bytes`` (the first always), and
    whether more remain."""
    page: list[Entry] = []
    budget = Budget(max_bytes)
    more = False
    async for row in rows:
        if len(page) == limit:
            more = True
            break
        entry = _entry(row)
        if not budget.take(entry, first=not page):
            more = True
            break
        page.append(entry)
    await rows.aclose()
    return page, more


# -- conversation writes -----------------------------------------------------------------------

_INSERT_ENTRY = """
    INSERT INTO messages (conversation, seq, sender_id, target_id, client_id, text, ts, kind, data)
    VALUES ($1, $2, $3, $4, $5, '', $6, $7, $8)
    RETURNING id
"""
_JOIN = """
    INSERT INTO members (user_id, conversation, role, from_seq) VALUES ($1, $2, $3, $4)
    ON CONFLICT (user_id, conversation) DO UPDATE
    SET role = excluded.role, from_seq = excluded.from_seq, until_seq = NULL
"""


async def _insert_entry(
    conn: Connection,
    conversation: str,
    seq: int,
    kind: str,
    actor: UserRecord,
    ts: int,
    target: UserRecord | None,
    data: EntryData,
) -> Entry:
    # Not a message: the client id only has to be unique per actor, and no client sends one
    # of these (they are longer than a client id may be).
    client_id = f"~{kind}~{conversation}~{seq}~" + "-" * 64
    entry_id = await conn.fetchval(
        _INSERT_ENTRY,
        conversation,
        seq,
        actor.id,
        target.id if target is not None else None,
        client_id,
        ts,
        kind,
        encode_data(data),
    )
    return Entry(
        id=entry_id,
        conversation=conversation,
        seq=seq,
        kind=kind,
        sender=actor.name,
        ts=ts,
        target=target.name if target is not None else None,
        name=data.name,
        topic=data.topic,
        role=data.role,
    )


async def _apply_members(
    conn: Connection, conversation: str, seq: int, changes: Iterable[MemberChange]
) -> None:
    joins, leaves, roles = [], [], []
    for change in changes:
        if change.join:
            start = 1 if change.from_start else seq
            joins.append((change.user_id, conversation, change.role, start))
        elif change.leave:
            leaves.append((seq, change.user_id, conversation))
        else:
            roles.append((change.role, change.user_id, conversation))
    if joins:
        await conn.executemany(_JOIN, joins)
    if leaves:
        await conn.executemany(
            "UPDATE members SET until_seq = $1 WHERE user_id = $2 AND conversation = $3", leaves
        )
    if roles:
        await conn.executemany(
            "UPDATE members SET role = $1 WHERE user_id = $2 AND conversation = $3", roles
        )


async def _create_conversation(
    conn: Connection, new: NewConversation
) -> tuple[ConversationState, Entry | None]:
    if new.kind == "direct":
        assert new.id is not None
        low, high = sorted(change.user_id for change in new.members)
        await conn.execute(_CREATE_DIRECTS, [new.id], [low], [high])
        await conn.execute(_CREATE_DIRECT_MEMBERS, [low, high], [new.id, new.id])
        last = await conn.fetchval("SELECT last_seq FROM conversations WHERE id = $1", new.id)
        return ConversationState(id=new.id, kind="direct", last_seq=last or 0), None
    # Nodes may create at once: the next number is taken under a lock held to the commit.
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _CONVERSATION_LOCK)
    top = await conn.fetchval(
        "SELECT coalesce(max(substr(id, 3)::bigint), 0) FROM conversations WHERE id LIKE 'c:%'"
    )
    conversation = f"c:{top + 1}"
    try:
        await conn.execute(
            "INSERT INTO conversations "
            "(id, last_seq, last_ts, kind, name, key, topic, public, created_at) "
            "VALUES ($1, 1, $2, $3, $4, $5, $6, $7, $2)",
            conversation,
            new.ts,
            new.kind,
            new.name,
            new.key,
            new.topic,
            new.public,
        )
    except asyncpg.UniqueViolationError:
        raise NameTakenError(new.key or conversation) from None
    entry = await _insert_entry(
        conn,
        conversation,
        1,
        "created",
        new.creator,
        new.ts,
        None,
        EntryData(name=new.name, topic=new.topic or None),
    )
    await _apply_members(conn, conversation, 1, new.members)
    state = ConversationState(
        id=conversation,
        kind=new.kind,
        name=new.name,
        key=new.key,
        topic=new.topic,
        public=new.public,
        last_seq=1,
        last_ts=new.ts,
    )
    return state, entry


async def _append_entry(conn: Connection, new: NewEntry) -> Entry:
    conversation = new.conversation
    try:
        # The counter row and the conversation's own changes, in one statement.
        seq = await conn.fetchval(
            """
            UPDATE conversations SET last_seq = last_seq + 1, last_ts = $2,
                name = CASE WHEN $3::text IS NULL THEN name ELSE $4 END,
                key = coalesce($3, key),
                topic = coalesce($5, topic),
                archived = archived OR $6
            WHERE id = $1 RETURNING last_seq
            """,
            conversation,
            new.ts,
            new.key,
            new.name,
            new.topic,
            new.archived,
        )
    except asyncpg.UniqueViolationError:
        raise NameTakenError(new.key or conversation) from None
    if seq is None:
        raise StorageError(f"no conversation {conversation!r}")
    entry = await _insert_entry(
        conn,
        conversation,
        seq,
        new.kind,
        new.actor,
        new.ts,
        new.target,
        EntryData(name=new.name, topic=new.topic, role=new.role),
    )
    await _apply_members(conn, conversation, seq, new.members)
    return entry


# -- replies, edits, deletes, reactions ---------------------------------------------------------

_SHOWN = "m.kind NOT IN ('edited', 'deleted', 'reacted', 'unreacted')"
"""What ``history`` shows: messages (in their current state) and membership entries; not the
change entries, nor a deleted message's place (kind ``deleted`` too)."""

_TARGET = "SELECT id, kind, sender_id, ref FROM messages WHERE conversation = $1 AND seq = $2"

_INSERT_CHANGE = """
    INSERT INTO messages (conversation, seq, sender_id, client_id, text, ts, kind, data, ref)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    RETURNING id
"""


async def _decorate(conn: Connection, entries: list[Entry], reader: int | None) -> bool:
    """Fill in the quotes of replies and, for ``reader``, the reactions of messages; True
    when it added anything."""
    replies: dict[str, set[int]] = {}
    shown: dict[str, list[int]] = {}
    for entry in entries:
        if entry.kind != "message":
            continue
        if entry.reply_to is not None:
            replies.setdefault(entry.conversation, set()).add(entry.reply_to)
        if reader is not None:
            shown.setdefault(entry.conversation, []).append(entry.seq)
    quotes: dict[tuple[str, int], Quote] = {}
    for conversation, answered in replies.items():
        rows = await conn.fetch(
            "SELECT m.seq, u.name, m.kind, substr(m.text, 1, $1) FROM messages m "
            "JOIN users u ON u.id = m.sender_id WHERE m.conversation = $2 "
            "AND m.seq = ANY($3::bigint[])",
            REPLY_PREVIEW_CHARS,
            conversation,
            sorted(answered),
        )
        for seq, sender, kind, text in rows:
            deleted = kind != "message"
            quotes[conversation, seq] = Quote(
                seq=seq, sender=sender, text="" if deleted else text, deleted=deleted
            )
    reactions: dict[tuple[str, int], list[Reaction]] = {}
    for conversation, seqs in shown.items():
        rows = await conn.fetch(
            "SELECT seq, emoji, count(*), bool_or(user_id = $1), min(ts) FROM reactions "
            "WHERE conversation = $2 AND seq = ANY($3::bigint[]) "
            'GROUP BY seq, emoji ORDER BY seq, 5, emoji COLLATE "C"',
            reader,
            conversation,
            seqs,
        )
        for seq, emoji, count, mine, _ in rows:
            reactions.setdefault((conversation, seq), []).append(
                Reaction(emoji=emoji, count=count, me=bool(mine))
            )
    if not quotes and not reactions:
        return False
    for entry in entries:
        if entry.kind != "message":
            continue
        if entry.reply_to is not None:
            entry.reply = quotes.get((entry.conversation, entry.reply_to))
        found = reactions.get((entry.conversation, entry.seq))
        if found:
            entry.reactions = found
    return True


def _trim(entries: list[Entry], max_bytes: int | None, *, newest: bool) -> bool:
    """Cut ``entries`` to ``max_bytes`` once quotes and reactions are filled in (the budget
    counted them without): from the oldest end to keep the newest, else from the newest.
    Keeps at least one; True when it cut."""
    if max_bytes is None or not entries:
        return False
    sizes = [len(data_encoder.encode(entry)) + 1 for entry in entries]
    total = sum(sizes)
    if total <= max_bytes:
        return False
    cut = 0
    while total > max_bytes and cut < len(entries) - 1:
        total -= sizes[cut] if newest else sizes[len(sizes) - 1 - cut]
        cut += 1
    if newest:
        del entries[:cut]
    else:
        del entries[len(entries) - cut :]
    return cut > 0


async def _reactions_of(
    conn: Connection, conversation: str, seq: int, reader: int
) -> list[Reaction]:
    rows = await conn.fetch(
        "SELECT emoji, count(*), bool_or(user_id = $1), min(ts) FROM reactions "
        'WHERE conversation = $2 AND seq = $3 GROUP BY emoji ORDER BY 4, emoji COLLATE "C"',
        reader,
        conversation,
        seq,
    )
    return [Reaction(emoji=e, count=c, me=bool(m)) for e, c, m, _ in rows]


async def _require_message(conn: Connection, conversation: str, seq: int) -> Any:
    row = await conn.fetchrow(_TARGET, conversation, clamp(seq))
    if row is None or row[1] != "message":
        raise NoSuchMessageError(f"no message {seq} in {conversation}")
    return row


async def _next_seq(conn: Connection, conversation: str, ts: int) -> int:
    """Take the conversation's next seq from its counter row (locked to the commit)."""
    seq = await conn.fetchval(
        "UPDATE conversations SET last_seq = last_seq + 1, last_ts = $2 WHERE id = $1 "
        "RETURNING last_seq",
        conversation,
        ts,
    )
    if seq is None:
        raise StorageError(f"no conversation {conversation!r}")
    return int(seq)


async def _insert_change(
    conn: Connection,
    conversation: str,
    kind: str,
    actor: UserRecord,
    ts: int,
    ref: int,
    *,
    text: str = "",
    data: EntryData = NO_DATA,
) -> Entry:
    seq = await _next_seq(conn, conversation, ts)
    client_id = f"~{kind}~{conversation}~{seq}~" + "-" * 64
    entry_id = await conn.fetchval(
        _INSERT_CHANGE,
        conversation,
        seq,
        actor.id,
        client_id,
        text,
        ts,
        kind,
        encode_data(data),
        ref,
    )
    return Entry(
        id=entry_id,
        conversation=conversation,
        seq=seq,
        kind=kind,
        sender=actor.name,
        text=text,
        ts=ts,
        ref=ref,
        emoji=data.emoji,
        count=data.count,
    )


async def _append_reply(conn: Connection, message: NewMessage) -> tuple[Message, bool]:
    assert message.reply_to is not None
    existing = await conn.fetchval(
        "SELECT 1 FROM messages WHERE sender_id = $1 AND client_id = $2",
        message.sender.id,
        message.client_id,
    )
    if existing is None:
        # Only a new message needs its original to exist (a retry answers as stored).
        await _require_message(conn, message.conversation, message.reply_to)
    results: list[Any] = [None]
    failed: dict[int, BaseException] = {}
    await _appends(conn, [(0, message)], results, failed, look_up=True)
    if 0 in failed:
        raise failed[0]
    stored, duplicate = results[0]
    await _decorate(conn, [stored], None)
    return stored, duplicate


async def _edit(conn: Connection, edit: MessageEdit) -> Entry:
    row_id, _, sender_id, _ = await _require_message(conn, edit.conversation, edit.seq)
    if sender_id != edit.editor.id:
        raise NotAuthorError("only the author edits a message")
    raw = await conn.fetchval("SELECT data FROM messages WHERE id = $1", row_id)
    data = msgspec.structs.replace(decode_data(raw), edited=edit.ts)
    # The message and every earlier edit of it hold the new text: no old version is kept.
    await conn.execute(
        "UPDATE messages SET text = $1, data = $2, body = $4 WHERE id = $3",
        edit.text,
        encode_data(data),
        row_id,
        search_body(edit.text),
    )
    await conn.execute(
        "UPDATE messages SET text = $1 WHERE conversation = $2 AND ref = $3 AND kind = 'edited'",
        edit.text,
        edit.conversation,
        edit.seq,
    )
    return await _insert_change(
        conn, edit.conversation, "edited", edit.editor, edit.ts, edit.seq, text=edit.text
    )


async def _delete(conn: Connection, deletion: MessageDeletion) -> Entry:
    conversation, seq = deletion.conversation, deletion.seq
    row = await conn.fetchrow(_TARGET, conversation, clamp(seq))
    if row is None or not (row[1] == "message" or (row[1] == "deleted" and row[3] == seq)):
        raise NoSuchMessageError(f"no message {seq} in {conversation}")
    row_id, kind, sender_id, _ = row
    if deletion.author_only and sender_id != deletion.actor.id:
        raise NotAuthorError("only the author, or a channel's owner or admin, deletes it")
    if kind == "deleted":
        # Deleted already (a retry, or two people at once): the first tombstone answers.
        first = await conn.fetchrow(
            f"SELECT {_MESSAGE_COLUMNS} WHERE m.conversation = $1 AND m.ref = $2 "
            "AND m.kind = 'deleted' AND m.seq <> $2 ORDER BY m.seq LIMIT 1",
            conversation,
            seq,
        )
        if first is not None:
            return _entry(first)
    # The row keeps its place (seq, author, client id) and loses everything it said.
    await conn.execute(
        "UPDATE messages SET kind = 'deleted', ref = seq, text = '', data = NULL, "
        "mention_all = false, body = NULL WHERE id = $1",
        row_id,
    )
    await conn.execute(
        "UPDATE messages SET kind = 'deleted', text = '', data = NULL "
        "WHERE conversation = $1 AND ref = $2 AND kind = 'edited'",
        conversation,
        seq,
    )
    await conn.execute(
        "DELETE FROM mentions WHERE conversation = $1 AND seq = $2", conversation, seq
    )
    await conn.execute(
        "DELETE FROM reactions WHERE conversation = $1 AND seq = $2", conversation, seq
    )
    return await _insert_change(conn, conversation, "deleted", deletion.actor, deletion.ts, seq)


async def _react(conn: Connection, change: ReactionChange) -> tuple[Entry | None, list[Reaction]]:
    conversation, seq, user = change.conversation, change.seq, change.user
    await _require_message(conn, conversation, seq)
    key = (conversation, seq, change.emoji, user.id)
    mine = await conn.fetchval(
        "SELECT 1 FROM reactions WHERE conversation = $1 AND seq = $2 AND emoji = $3 "
        "AND user_id = $4",
        *key,
    )
    entry = None
    if change.add and mine is None:
        present = await conn.fetchval(
            "SELECT count(*) FROM reactions WHERE conversation = $1 AND seq = $2 AND emoji = $3",
            conversation,
            seq,
            change.emoji,
        )
        if not present:
            distinct = await conn.fetchval(
                "SELECT count(DISTINCT emoji) FROM reactions WHERE conversation = $1 AND seq = $2",
                conversation,
                seq,
            )
            if distinct >= change.max_distinct:
                raise TooManyReactionsError(f"message {seq} has {distinct} emoji")
        await conn.execute(
            "INSERT INTO reactions (conversation, seq, emoji, user_id, ts) "
            "VALUES ($1, $2, $3, $4, $5)",
            *key,
            change.ts,
        )
        entry = await _insert_change(
            conn,
            conversation,
            "reacted",
            user,
            change.ts,
            seq,
            data=EntryData(emoji=change.emoji, count=present + 1),
        )
    elif not change.add and mine is not None:
        await conn.execute(
            "DELETE FROM reactions WHERE conversation = $1 AND seq = $2 AND emoji = $3 "
            "AND user_id = $4",
            *key,
        )
        left = await conn.fetchval(
            "SELECT count(*) FROM reactions WHERE conversation = $1 AND seq = $2 AND emoji = $3",
            conversation,
            seq,
            change.emoji,
        )
        entry = await _insert_change(
            conn,
            conversation,
            "unreacted",
            user,
            change.ts,
            seq,
            data=EntryData(emoji=change.emoji, count=left),
        )
    return entry, await _reactions_of(conn, conversation, seq, user.id)


# -- search --------------------------------------------------------------------------------------

_FTS_TOKEN = re.compile(r'"((?:[^"]|"")*)"|(\()|(\))|(AND|OR)')


def like_condition(match: str, column: str, params: list[Any]) -> str:
    """The core's FTS5 expression over the trigram index (quoted substrings joined by AND and
    OR, grouped in parentheses: ``server/search.py``, ``Term.fts``) as SQL over ``column``: each
    quoted string a ``LIKE '%…%'`` (a substring of the folded body, as FTS5's trigram phrase
    is), which pg_trgm's index serves. Parameters are appended to ``params``."""
    parts: list[str] = []
    for quoted, opening, closing, operator in _FTS_TOKEN.findall(match):
        if opening:
            parts.append("(")
        elif closing:
            parts.append(")")
        elif operator:
            parts.append(f" {operator} ")
        else:
            text = quoted.replace('""', '"')
            escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            params.append(f"%{escaped}%")
            parts.append(f"{column} LIKE ${len(params)}")
    return "".join(parts)


async def _search(conn: Connection, request: SearchRequest) -> tuple[list[Entry], int | None]:
    """One page of a search (see :meth:`Storage.search`), as SQLite's: the readable
    conversations and their seq windows, the senders, the time bounds, newest first by id
    (cursor: below this id) or best first (cursor: an offset)."""
    params: list[Any] = [
        list(request.readable),
        [clamp(after) for after, _ in request.readable.values()],
        [clamp(ceiling) for _, ceiling in request.readable.values()],
    ]
    where = ["m.kind = 'message'", "m.seq > sc.floor", "m.seq <= sc.ceiling"]
    if request.senders:
        params.append(list(request.senders))
        where.append(f"m.sender_id = ANY(${len(params)}::bigint[])")
    if request.before is not None:
        params.append(request.before)
        where.append(f"m.ts < ${len(params)}")
    if request.after is not None:
        params.append(request.after)
        where.append(f"m.ts >= ${len(params)}")
    best = request.best and request.match is not None
    offset = 0
    order = "m.id DESC"
    if request.match is not None:
        where.append("(" + like_condition(request.match, "m.body", params) + ")")
        if best:
            # Most relevant first: the share of the body the query's words cover (shorter
            # messages that are all match first), then the newest, as FTS5's bm25 favours.
            words = " ".join(
                quoted.replace('""', '"').strip()
                for quoted, *_ in _FTS_TOKEN.findall(request.match)
            )
            params.append(len(words))
            order = f"${len(params)}::float / greatest(length(m.body), 1) DESC, m.id DESC"
    if best:
        offset = max(request.cursor or 0, 0)
    elif request.cursor is not None:
        params.append(request.cursor)
        where.append(f"m.id < ${len(params)}")
    params.append(request.limit + 1)
    limit = f"LIMIT ${len(params)}"
    if best:
        params.append(offset)
        limit += f" OFFSET ${len(params)}"
    rows = await conn.fetch(
        f"SELECT {_MESSAGE_COLUMNS} "
        "JOIN unnest($1::text[], $2::bigint[], $3::bigint[]) AS sc (conversation, floor, ceiling) "
        f"ON sc.conversation = m.conversation WHERE {' AND '.join(where)} "
        f"ORDER BY {order} {limit}",
        *params,
    )
    entries = [_entry(row) for row in rows[: request.limit]]
    await _decorate(conn, entries, request.reader)
    following: int | None = None
    if len(rows) > request.limit:
        following = offset + request.limit if best else entries[-1].id
    return entries, following
