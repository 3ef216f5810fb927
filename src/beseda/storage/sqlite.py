"""SQLite storage: WAL, ``synchronous=FULL``, one writer thread with group commit.

Why a writer thread: a commit waits for the disk (fsync). The event loop must never wait for
that, and SQLite allows one writer at a time anyway. So every write is a small function queued
to a single thread, which takes everything queued, runs it in one transaction, commits once,
and only then resolves the callers' futures. Under load many writes share one fsync (group
commit); without load a write costs one commit. Reads run on a small pool of reader threads,
each with its own connection; WAL lets them read while the writer writes.

A batch has no savepoint per write. A write that fails alone (its failed statement undone by
SQLite) just gets its error; one that fails after changing something makes the writer roll
back and run the batch again without it (see ``_Writer._commit``). Because the writer is the
only writer of the file, it keeps each conversation's last seq in memory; ``PRAGMA
data_version`` and the UNIQUE (conversation, seq) constraint catch another process writing the
same file anyway.

Message appends are queued as ``_Append`` objects rather than closures, so the writer inserts
each run of consecutive appends in a batch with one ``executemany`` (``_Writer._appends``),
choosing seqs and ids itself; a run it cannot do that way (a retried client id stored
earlier, a seq taken by another process) goes one message at a time as before.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

import msgspec

from ..protocol.schema import (
    CHANGE_KINDS,
    GENERAL,
    REPLY_PREVIEW_CHARS,
    Entry,
    Message,
    Quote,
    Reaction,
)
from ..server.search import conversation_mark, fold, fts_phrase, search_body, sender_mark
from ..threadname import name_this_thread
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
    search_index,
)
from .entries import NO_DATA as _NO_DATA
from .entries import Budget as _Budget
from .entries import EntryData as _EntryData
from .entries import data_decoder as _data_decoder
from .entries import data_encoder as _data_encoder
from .migrations import MIGRATIONS

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BATCH = 512
"""Most writes committed in one transaction."""

MAX_GATHER = 0.002
"""Longest the writer waits, seconds, to gather more writes into a commit (see
:func:`gather_wait`). Persisting still comes before every acknowledgement; the wait only
decides how many writes share one fsync."""
_RATE_WINDOW = 0.02
"""Seconds over which the writer averages the arrival rate: a batch that began this long
after the previous one (or longer) sets the rate alone, so a pause forgets a past burst at
once; batches closer together are averaged in proportion to the time between them."""


GATHER_FLOOR = 0.5
"""Writes a wait must have gathered lately (a moving average over the last waits) for the
writer to go on waiting: a client that waits for each acknowledgement before its next write
brings nothing during the wait, and each such wait cost it the whole wait and more CPU
(``python -m bench.storage_cost --batch 1``)."""
_GATHER_WEIGHT = 0.25
"""Weight of the latest wait's gain in that average."""
GATHER_PROBE = 0.05
"""Seconds: while the waits gather nothing, the writer waits all the same once this long has
passed since its last wait, to notice when other writers arrive again (so a lone client
loses at most about one wait in this time: 4 %)."""


def gather_wait(rate: float, queued: int) -> float:
    """Seconds the writer should wait before committing ``queued`` writes, or 0.

    Writes that arrive one at a time (independent users) would each pay a whole commit: its
    fsync, its WAL frames, its conversation rows. So when writes have lately been arriving at
    ``rate`` per second, enough that :data:`MAX_GATHER` is expected to bring at least one more
    and at least as many as are queued already, the writer waits that long: the commit then
    carries at least about twice as many writes, for at most :data:`MAX_GATHER` of extra
    latency. A paced stream (a write every few milliseconds) expects less than one within
    the wait and is committed at once; a queue that already holds many writes (a burst,
    clients that pipeline) is too, since waiting would not double it.
    """
    expected = rate * MAX_GATHER
    if expected < 1 or expected < queued or queued >= MAX_BATCH:
        return 0.0
    return MAX_GATHER


_SEQ_CEILING = 2**62
"""Above every sequence number. Cursors come from clients, who may send any integer, and an
integer SQLite cannot hold (2**63 and up) raises OverflowError instead of matching nothing."""

_MESSAGE_COLUMNS = """
    m.id, m.conversation, m.seq, s.name, r.name, m.text, m.ts, m.client_id,
    m.kind, t.name, m.data, m.mention_all, m.ref
    FROM messages m
    JOIN users s ON s.id = m.sender_id
    LEFT JOIN users r ON r.id = m.recipient_id
    LEFT JOIN users t ON t.id = m.target_id
"""


_BY_CLIENT_ID = f"SELECT {_MESSAGE_COLUMNS} WHERE m.sender_id = ? AND m.client_id = ?"

_INSERT_MESSAGE = """
    INSERT INTO messages
        (conversation, seq, sender_id, recipient_id, client_id, text, ts, data, mention_all)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (sender_id, client_id) DO NOTHING
    RETURNING id
"""

_MAX_SEQ = "SELECT coalesce(max(seq), 0) FROM messages WHERE conversation = ?"

_LAST_SEQ = """
    SELECT max(c.last_seq, coalesce((SELECT max(seq) FROM messages WHERE conversation = c.id), 0))
    FROM conversations c WHERE c.id = ?
"""
"""The last seq of an existing conversation (None without its row). The counter row is the
truth; the messages are asked too in case another program inserted without counting."""

_INSERT_CONVERSATION = (
    "INSERT INTO conversations (id, last_seq, user_a, user_b, kind) VALUES (?, 0, ?, ?, 'direct') "
    "ON CONFLICT (id) DO NOTHING"
)
_INSERT_DIRECT_MEMBERS = (
    "INSERT INTO members (user_id, conversation, role, from_seq) VALUES (?, ?, 'member', 1) "
    "ON CONFLICT DO NOTHING"
)
_INSERT_MENTION = (
    "INSERT INTO mentions (user_id, conversation, seq) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
)


def _message(row: tuple[Any, ...]) -> Entry:
    data = _NO_DATA if row[10] is None else _data_decoder.decode(row[10])
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


def _message_data(message: NewMessage) -> bytes | None:
    if not message.mentions and message.reply_to is None:
        return None
    return _data_encoder.encode(
        _EntryData(mentions=[user.name for user in message.mentions], reply_to=message.reply_to)
    )


def _record_mentions(conn: sqlite3.Connection, message: NewMessage, seq: int) -> None:
    if message.mentions:
        conn.executemany(
            _INSERT_MENTION,
            [(user.id, message.conversation, seq) for user in message.mentions],
        )


def _create_direct(conn: sqlite3.Connection, conversation: str, low: int, high: int) -> None:
    conn.execute(_INSERT_CONVERSATION, (conversation, low, high))
    conn.executemany(_INSERT_DIRECT_MEMBERS, [(low, conversation), (high, conversation)])


def _user(row: tuple[Any, ...] | None) -> UserRecord | None:
    return UserRecord(*row) if row else None


def connect(
    path: Path,
    *,
    readonly: bool = False,
    busy_timeout_ms: int = 5000,
) -> sqlite3.Connection:
    """Open a connection with the settings every beseda connection uses.

    It registers the function the search index's triggers call (``beseda_search_body``).
    """
    uri = f"file:{path}?mode={'ro' if readonly else 'rwc'}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA foreign_keys = ON")
    # A deleted message's text must not stay in freed space of a page (docs/architecture.md,
    # "Deletes").
    conn.execute("PRAGMA secure_delete = ON")
    conn.create_function("beseda_search_body", 3, search_body, deterministic=True)
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations in order; returns the schema version."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > len(MIGRATIONS):
        raise StorageError(
            f"The database has schema version {version}, newer than this beseda knows "
            f"({len(MIGRATIONS)}). Upgrade beseda."
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        log.info("applying migration %d", number)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in script:
                if callable(statement):  # a step computed in Python (a backfill)
                    statement(conn)
                else:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)


class _Transaction:
    """What a write function sees: the connection inside the batch's transaction, and the
    writer's sequence numbers.

    The writer thread is the only writer of the file, so it keeps the last seq of each
    conversation in memory (``committed``, loaded lazily). A batch takes numbers from
    ``pending``, which becomes committed only if the batch commits. A write function changes
    this object only after its last statement has succeeded, so a write that fails leaves it
    as it was.
    """

    __slots__ = ("_committed", "_last_ts", "conn", "pending")

    def __init__(self, conn: sqlite3.Connection, committed: dict[str, int]) -> None:
        self.conn = conn
        self._committed = committed
        self.pending: dict[str, int] = {}
        """Last seq per conversation as this transaction sees it (loaded or taken)."""
        self._last_ts: dict[str, int] = {}

    def last_seq(self, conversation: str) -> int | None:
        """The known last seq of ``conversation``, or None when it must be loaded."""
        seq = self.pending.get(conversation)
        return self._committed.get(conversation) if seq is None else seq

    def know(self, conversation: str, seq: int) -> None:
        """Remember a last seq read from the database."""
        self.pending[conversation] = seq

    def took(self, conversation: str, seq: int, ts: int) -> None:
        """A message with ``seq`` was inserted into ``conversation``."""
        self.pending[conversation] = seq
        self._last_ts[conversation] = ts

    def finish(self) -> None:
        """Bring each conversation row the batch wrote to up to date: once, before COMMIT."""
        if self._last_ts:
            self.conn.executemany(
                "UPDATE conversations SET last_seq = max(last_seq, ?), last_ts = ? WHERE id = ?",
                [(self.pending[c], ts, c) for c, ts in self._last_ts.items()],
            )


_INSERT_PLAIN_MESSAGES = """
    INSERT INTO messages (id, conversation, seq, sender_id, recipient_id, client_id, text, ts)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (sender_id, client_id) DO NOTHING
"""
"""A run of appends none of which mentions anyone (the other columns keep their defaults)."""

_INSERT_MESSAGES = """
    INSERT INTO messages
        (id, conversation, seq, sender_id, recipient_id, client_id, text, ts, data, mention_all)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (sender_id, client_id) DO NOTHING
"""
"""A run of appends in one ``executemany``, with ids chosen by the writer."""

_DELETE_IDS = "DELETE FROM messages WHERE id BETWEEN ? AND ?"

_MAX_ROWID = 2**63 - 1


def _stored(message: NewMessage, id_: int, seq: int) -> Message:
    recipient = message.recipient
    stored = Message(
        id=id_,
        conversation=message.conversation,
        seq=seq,
        sender=message.sender.name,
        to=recipient.name if recipient is not None else None,
        text=message.text,
        ts=message.ts,
        client_id=message.client_id,
    )
    if message.mentions or message.mention_all:  # most messages mention nobody
        stored.mentions = [user.name for user in message.mentions]
        stored.mention_all = message.mention_all
    stored.reply_to = message.reply_to
    return stored


class _Append:
    """The write of one message. Callable like any write (the message alone, one INSERT), and
    recognised by the writer, which runs consecutive appends of a batch together."""

    __slots__ = ("message",)

    def __init__(self, message: NewMessage) -> None:
        self.message = message

    def __call__(self, tx: _Transaction) -> tuple[Message, bool]:
        message = self.message
        sender = message.sender
        recipient = message.recipient
        conversation = message.conversation
        conn = tx.conn
        last = tx.last_seq(conversation)
        loaded = create = False
        if last is None:
            found = conn.execute(_LAST_SEQ, (conversation,)).fetchone()
            if found is not None:
                last, loaded = found[0], True
            elif recipient is None:
                raise StorageError(f"no conversation {conversation!r}")
            else:
                # A new direct conversation: its row is created with its first message.
                create = True
                (last,) = conn.execute(_MAX_SEQ, (conversation,)).fetchone()
        assert last is not None
        seq = last + 1
        row = [
            conversation,
            seq,
            sender.id,
            recipient.id if recipient is not None else None,
            message.client_id,
            message.text,
            message.ts,
            _message_data(message),
            message.mention_all,
        ]
        try:
            inserted = conn.execute(_INSERT_MESSAGE, row).fetchone()
        except sqlite3.IntegrityError:
            # Another process wrote this conversation behind our back (the UNIQUE
            # (conversation, seq) constraint fired): take its last seq from the file. We
            # hold the write lock, so it cannot move again before our commit.
            (actual,) = conn.execute(_MAX_SEQ, (conversation,)).fetchone()
            if actual < seq:
                raise  # some other constraint
            log.warning("conversation %s was written by another process", conversation)
            row[1] = seq = actual + 1
            inserted = conn.execute(_INSERT_MESSAGE, row).fetchone()
        if inserted is None:
            # The sender already stored this client id: answer with the original.
            existing = conn.execute(_BY_CLIENT_ID, (sender.id, message.client_id)).fetchone()
            if loaded:
                tx.know(conversation, seq - 1)
            return _message(existing), True
        _record_mentions(conn, message, seq)
        if create:
            assert recipient is not None
            low, high = sorted((sender.id, recipient.id))
            _create_direct(conn, conversation, low, high)
        tx.took(conversation, seq, message.ts)
        return _stored(message, inserted[0], seq), False


Write = Callable[[_Transaction], Any]
Batch = list[tuple[Write, asyncio.Future[Any]]]
Outcomes = list[tuple[asyncio.Future[Any], Any, BaseException | None]]

_CAREFUL_AFTER = 3
"""Re-runs of one batch after which every remaining write gets its own savepoint: a batch in
which many writes fail then costs a savepoint per write instead of a re-run per failure."""


class _Writer(threading.Thread):
    """The single writer: runs queued write functions in batches, one commit per batch.

    It never dies of a failed write: a failed commit (disk full, read-only file system, a lock
    held too long) fails that batch's futures and the next batch tries again, so the server
    recovers by itself once the cause is fixed. Before each batch it checks that the database
    file is still the one it opened: SQLite would go on writing into a deleted file, and
    acknowledge messages that vanish at the next restart.
    """

    def __init__(
        self,
        path: Path,
        loop: asyncio.AbstractEventLoop,
        busy_timeout_ms: int,
        *,
        search_index: bool = True,
    ) -> None:
        super().__init__(name="beseda-sqlite-writer", daemon=True)
        self._path = path
        self._search_index = search_index
        self._loop = loop
        self._busy_timeout_ms = busy_timeout_ms
        self._queue: queue.SimpleQueue[tuple[Write, asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self.ready: asyncio.Future[None] = loop.create_future()
        self.batches = 0
        self.writes = 0
        self.gathered = 0
        """Batches for which the writer waited a moment to gather more writes."""
        self.rate = 0.0
        """Writes per second arriving lately (averaged over :data:`_RATE_WINDOW`)."""
        self.gain = 1.0
        """Writes the last waits gathered, a moving average (see :data:`GATHER_FLOOR`)."""
        self._waited = 0.0
        """When the writer last waited (``time.monotonic``)."""
        self.together = 0
        """Messages inserted in a run of appends (one ``executemany``), not one by one."""
        self.reruns = 0
        """Batches run again without a write that failed after changing something."""
        self.generation = 0
        """Bumped each time the database file is reopened; readers reopen too."""
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._seqs: dict[str, int] = {}
        """Committed last seq per conversation (only conversations whose row exists)."""
        self._data_version: int | None = None
        """``PRAGMA data_version`` after our last commit: it changes when another connection
        commits, and then ``_seqs`` may be stale."""
        self.unindexed = 0
        """Entries stored after the search index's watermark as of the last commit: counted
        exactly after each run of the indexer, estimated in between (one per write), so that
        a batch reads the count from the file only when a run may be due."""
        self._recount = True
        """The estimate must be read again from the file (opened, or written elsewhere)."""
        self.index_runs = 0
        """Runs of the search indexer (in a batch's transaction or alone)."""

    def submit(self, work: Callable[[_Transaction], T]) -> asyncio.Future[T]:
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put((work, future))
        return future

    def stop(self) -> None:
        self._queue.put(None)

    def run(self) -> None:
        name_this_thread("beseda-writer")
        try:
            self._open()
        except (sqlite3.Error, StorageError, OSError) as exc:
            error = exc if isinstance(exc, StorageError) else StorageError(str(exc))
            self._loop.call_soon_threadsafe(_set_exception, self.ready, error)
            return
        self._loop.call_soon_threadsafe(_set_result, self.ready, None)
        try:
            self._serve()
        finally:
            if self._conn is not None:
                self._conn.close()

    def _open(self) -> None:
        conn = connect(self._path, busy_timeout_ms=self._busy_timeout_ms)
        try:
            migrate(conn)
            status = os.stat(self._path)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._identity = (status.st_dev, status.st_ino)
        self._seqs.clear()
        self._data_version = None
        self.unindexed = search_index.behind(conn) if self._search_index else 0
        self._recount = False

    def _file_problem(self) -> str | None:
        """Why the open database can no longer be trusted, or None. Reopens when it can."""
        try:
            status = os.stat(self._path)
        except FileNotFoundError:
            return f"The database file {self._path} has vanished; restore it from a backup."
        except OSError as exc:
            return f"The database file {self._path} cannot be checked: {exc}"
        if self._conn is not None and (status.st_dev, status.st_ino) == self._identity:
            return None
        # A different file stands at the path now (restored from a backup): switch to it.
        old, self._conn = self._conn, None
        if old is not None:
            old.close()
        try:
            self._open()
        except (sqlite3.Error, StorageError, OSError) as exc:
            return f"The database file {self._path} cannot be opened: {exc}"
        self.generation += 1
        log.warning("database file %s replaced; reopened it", self._path)
        return None

    def _serve(self) -> None:
        get = self._queue.get
        previous = time.monotonic()
        while True:
            if self.unindexed:
                try:
                    item = get(timeout=search_index.INDEX_IDLE)
                except queue.Empty:
                    self._index_alone()
                    continue
            else:
                item = get()
            began = time.monotonic()
            stopping = item is None
            batch: Batch = [] if item is None else [item]
            stopping = self._drain(batch) or stopping
            elapsed = max(began - previous, 1e-6)
            if batch and not stopping:
                # After a pause longer than the window the average is stale: what came now is
                # all there is to go by (a write after a quiet second does not wait).
                rate = self.rate if elapsed < _RATE_WINDOW else len(batch) / elapsed
                wait = gather_wait(rate, len(batch))
                if wait and self._worth_waiting(began):
                    # One sleep, not a wake-up per arriving write; then take what came.
                    time.sleep(wait)
                    self.gathered += 1
                    queued = len(batch)
                    stopping = self._drain(batch)
                    self.gain += _GATHER_WEIGHT * (len(batch) - queued - self.gain)
            if batch:
                # Writes per second since the previous batch began: the arrival rate.
                weight = min(1.0, elapsed / _RATE_WINDOW)
                self.rate += weight * (len(batch) / elapsed - self.rate)
                previous = began
                problem = self._file_problem()
                if problem is not None:
                    log.error("refusing %d writes: %s", len(batch), problem)
                    outcomes: Outcomes = [(f, None, StorageError(problem)) for _, f in batch]
                else:
                    assert self._conn is not None
                    outcomes = self._commit(self._conn, batch)
                self._loop.call_soon_threadsafe(_resolve, outcomes)
            if stopping:
                return

    def _worth_waiting(self, now: float) -> bool:
        """Whether a wait the rate calls for is worth it: yes while the last waits gathered
        writes; while they gathered none, once :data:`GATHER_PROBE` has passed since the
        last."""
        if self.gain < GATHER_FLOOR and now - self._waited < GATHER_PROBE:
            return False
        self._waited = now
        return True

    def _drain(self, batch: Batch) -> bool:
        """Move what is queued into ``batch`` (up to :data:`MAX_BATCH`); True on ``stop``."""
        get_nowait = self._queue.get_nowait
        stopping = False
        while len(batch) < MAX_BATCH:
            try:
                item = get_nowait()
            except queue.Empty:
                break
            if item is None:
                stopping = True
                continue
            batch.append(item)
        return stopping

    def _commit(self, conn: sqlite3.Connection, batch: Batch) -> Outcomes:
        """Run ``batch`` in one transaction and commit it; the outcomes in batch order.

        A write that fails gets its error and the others go on. When the failed write had
        changed nothing (a constraint fails its statement, which SQLite undoes alone) the
        transaction simply continues; otherwise it is rolled back and the batch runs again
        without that write, so nothing is half written. A failed COMMIT fails every write.
        """
        failed: dict[int, BaseException] = {}
        results: list[Any] = [None] * len(batch)
        reruns = 0
        while True:
            tx = _Transaction(conn, self._seqs)
            try:
                conn.execute("BEGIN IMMEDIATE")
                (version,) = conn.execute("PRAGMA data_version").fetchone()
                if version != self._data_version:
                    # Another connection committed since our last commit (or this is the
                    # first batch): what we remember of the file may be stale.
                    self._seqs.clear()
                    self._data_version = version
                    self._recount = True
                if self._run(tx, batch, results, failed, careful=reruns >= _CAREFUL_AFTER):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    reruns += 1
                    self.reruns += 1
                    continue
                unindexed = self._index_within(conn, len(batch))
                tx.finish()
                conn.execute("COMMIT")
                self.unindexed = unindexed
            except sqlite3.Error as exc:
                log.error("commit of %d writes failed: %s", len(batch), exc)
                self._seqs.clear()  # whatever happened, the database tells the truth
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        log.exception("rollback failed")
                error = StorageError(f"The database could not commit: {exc}")
                return [(future, None, error) for _, future in batch]
            break
        self._seqs.update(tx.pending)
        self.batches += 1
        self.writes += len(batch)
        if not failed:
            return [
                (future, result, None) for (_, future), result in zip(batch, results, strict=True)
            ]
        return [
            (future, None, failed[index]) if index in failed else (future, results[index], None)
            for index, (_, future) in enumerate(batch)
        ]

    def _index_within(self, conn: sqlite3.Connection, writes: int) -> int:
        """Index what waits inside the batch's transaction when enough waits; how many entries
        are behind the index's watermark then (estimated: one per write, read from the file
        when a run may be due). A failure of the index leaves the batch alone (the messages
        wait for the next run)."""
        if not self._search_index:
            return 0
        if self._recount:
            self._recount = False
            waiting = search_index.behind(conn)
        else:
            waiting = self.unindexed + writes
        if waiting < search_index.INDEX_AFTER:
            return waiting
        waiting = search_index.behind(conn)
        if waiting < search_index.INDEX_AFTER:
            return waiting
        conn.execute("SAVEPOINT search_index")
        try:
            _, waiting = search_index.index_pending(conn)
        except sqlite3.Error:
            log.exception("indexing messages for search failed; they wait for the next run")
            conn.execute("ROLLBACK TO search_index")
        conn.execute("RELEASE search_index")
        self.index_runs += 1
        return waiting

    def catch_up(self, tx: _Transaction, limit: int) -> int:
        """A write: one run of the indexer of up to ``limit`` in the batch (before a search);
        the entries still waiting. The batch's count is read from the file again after it."""
        self._recount = True
        return search_index.index_pending(tx.conn, limit)[1]

    def _index_alone(self) -> None:
        """One run of the indexer in a transaction of its own (the writer has been idle)."""
        problem = self._file_problem()  # (which reopens a replaced file: take conn after it)
        conn = self._conn
        if conn is None or problem is not None:
            self.unindexed = 0  # nothing to do until a write reopens the file
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            _, waiting = search_index.index_pending(conn)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.error("indexing messages for search failed: %s", exc)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self.unindexed = 0  # tried again after the next write
            return
        self.index_runs += 1
        self.unindexed = waiting

    def _run(
        self,
        tx: _Transaction,
        batch: Batch,
        results: list[Any],
        failed: dict[int, BaseException],
        *,
        careful: bool,
    ) -> bool:
        """Run the writes not yet failed; True when the transaction must be run again.

        Whether a failed write left anything behind is read from ``total_changes``, which
        counts the rows of every INSERT, UPDATE and DELETE that completed (a statement that
        failed on a constraint is undone by SQLite and not counted). So a write function must
        change the database only with those statements (no DDL, no REPLACE).
        """
        size = len(batch)
        index = 0
        while index < size:
            end = index + 1
            if not careful and type(batch[index][0]) is _Append:
                while end < size and type(batch[end][0]) is _Append:
                    end += 1
                run = [i for i in range(index, end) if i not in failed]
                if len(run) > 1 and self._together(tx, batch, run, results, failed):
                    index = end
                    continue
            for one in range(index, end):
                if one not in failed and _Writer._one(tx, one, batch, results, failed, careful):
                    return True
            index = end
        return False

    @staticmethod
    def _one(
        tx: _Transaction,
        index: int,
        batch: Batch,
        results: list[Any],
        failed: dict[int, BaseException],
        careful: bool,
    ) -> bool:
        """Run one write; True when the transaction must be run again."""
        conn = tx.conn
        if careful:
            conn.execute("SAVEPOINT w")
        changes = conn.total_changes
        try:
            results[index] = batch[index][0](tx)
        except (sqlite3.IntegrityError, StorageError) as exc:
            failed[index] = _map_error(exc)
            undone = conn.total_changes == changes
        except sqlite3.Error:
            raise  # disk full, I/O error …: the whole transaction is in doubt
        except Exception as exc:
            # A bug in one write must not take the others (or this thread) down.
            log.exception("a write failed")
            failed[index] = StorageError(f"write failed: {exc!r}")
            undone = False  # who knows what it left behind
        else:
            if careful:
                conn.execute("RELEASE w")
            return False
        if not conn.in_transaction:
            return True
        if careful:
            conn.execute("ROLLBACK TO w")
            conn.execute("RELEASE w")
            return False
        return not undone

    def _together(
        self,
        tx: _Transaction,
        batch: Batch,
        run: list[int],
        results: list[Any],
        failed: dict[int, BaseException],
    ) -> bool:
        """``_appends``; a bug in it (which can only come before its INSERT, or in the
        INSERT, whose rows it then removes) sends the run one by one."""
        try:
            inserted = _Writer._appends(tx, batch, run, results, failed)
        except sqlite3.Error:
            raise
        except Exception:
            log.exception("appending a run of messages failed; one by one instead")
            return False
        if inserted is None:
            return False
        self.together += inserted
        return True

    @staticmethod
    def _appends(
        tx: _Transaction,
        batch: Batch,
        run: list[int],
        results: list[Any],
        failed: dict[int, BaseException],
    ) -> int | None:
        """Insert the messages of consecutive appends (``run``, indices into ``batch``) with
        one ``executemany``; how many rows it inserted, or None, having changed nothing, when
        they must go one by one.

        Seqs are taken in batch order; the ids are chosen here as SQLite would choose them
        (one above the largest, the writer holding the write lock), since ``executemany``
        returns no rows. A message into a room that does not exist fails alone, and a later
        copy of a (sender, client id) in the run answers with the first. A duplicate of a
        message stored before the run (skipped by ON CONFLICT, so fewer rows changed) or a
        seq taken by another process (the INSERT fails part-way): the run's rows, known by
        their ids, are deleted and the run goes message by message, which handles both.
        """
        conn = tx.conn
        last_seq = tx.last_seq
        seqs: dict[str, int] = {}
        """Last seq per conversation in this run (as loaded, then as taken)."""
        created: list[tuple[str, int, int]] = []
        firsts: dict[tuple[int, str], int] = {}
        """Position in ``rows`` of each (sender id, client id) the run inserts."""
        rows: list[tuple[Any, ...]] = []
        placed: list[tuple[int, Message]] = []
        mentioning = False
        copies: list[tuple[int, int]] = []
        refused: list[tuple[int, StorageError]] = []
        (top,) = conn.execute("SELECT max(id) FROM messages").fetchone()
        next_id = (top or 0) + 1
        if next_id + len(run) > _MAX_ROWID:
            return None
        for index in run:
            message = cast(_Append, batch[index][0]).message
            sender = message.sender
            key = (sender.id, message.client_id)
            first = firsts.get(key)
            if first is not None:
                copies.append((index, first))
                continue
            conversation = message.conversation
            last = seqs.get(conversation)
            if last is None:
                last = last_seq(conversation)
                if last is None:
                    found = conn.execute(_LAST_SEQ, (conversation,)).fetchone()
                    recipient = message.recipient
                    if found is not None:
                        last = found[0]
                    elif recipient is None:
                        refused.append((index, StorageError(f"no conversation {conversation!r}")))
                        continue
                    else:
                        # A new direct conversation: its row is created with its messages.
                        low, high = sorted((sender.id, recipient.id))
                        created.append((conversation, low, high))
                        (last,) = conn.execute(_MAX_SEQ, (conversation,)).fetchone()
            seqs[conversation] = seq = last + 1
            firsts[key] = len(rows)
            recipient = message.recipient
            rows.append(
                (
                    next_id,
                    conversation,
                    seq,
                    sender.id,
                    recipient.id if recipient is not None else None,
                    message.client_id,
                    message.text,
                    message.ts,
                )
            )
            # Built before the INSERT: once it has succeeded, nothing here may fail.
            placed.append((index, _stored(message, next_id, seq)))
            if message.mentions or message.mention_all:
                mentioning = True
            next_id += 1
        if rows:
            # No savepoint (it would copy every page the run touches to a sub-journal, a
            # quarter of the run's cost): the run's rows are told apart by their ids instead.
            try:
                if mentioning:
                    # The kind-specific columns only when some message of the run needs them:
                    # most runs mention nobody, and the narrower statement is cheaper.
                    wide = [
                        (*row, _message_data(message), message.mention_all)
                        for row, message in zip(
                            rows,
                            (cast(_Append, batch[index][0]).message for index, _ in placed),
                            strict=True,
                        )
                    ]
                    cursor = conn.executemany(_INSERT_MESSAGES, wide)
                else:
                    cursor = conn.executemany(_INSERT_PLAIN_MESSAGES, rows)
            except sqlite3.Error as exc:
                if not isinstance(exc, sqlite3.IntegrityError):
                    raise  # disk full, I/O error …: the whole transaction is in doubt
                inserted = -1  # another process took a seq (or a bug): one by one
            except Exception:
                inserted = -1  # a value SQLite cannot hold, say: one by one, it fails alone
            else:
                # The statement's own rows (``total_changes`` would count the rows that the
                # search index's triggers write too).
                inserted = cursor.rowcount
            if inserted != len(rows):
                # Some message was stored before this run (ON CONFLICT DO NOTHING skipped
                # it, so the seqs after it are wrong), or the INSERT failed part-way: remove
                # what the run inserted and go one by one.
                conn.execute(_DELETE_IDS, (rows[0][0], rows[-1][0]))
                return None
            if mentioning:
                for index, stored in placed:
                    _record_mentions(conn, cast(_Append, batch[index][0]).message, stored.seq)
            for conversation, low, high in created:
                _create_direct(conn, conversation, low, high)
        took = tx.took
        for index, stored in placed:
            took(stored.conversation, stored.seq, stored.ts)
            results[index] = (stored, False)
        for index, first in copies:
            results[index] = (results[placed[first][0]][0], True)
        for index, error in refused:
            failed[index] = error
        return len(rows)


def _map_error(exc: BaseException) -> BaseException:
    if isinstance(exc, StorageError):
        return exc
    return StorageError(str(exc))


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


class SQLiteStorage:
    """The embedded default store (implements :class:`beseda.storage.Storage`)."""

    def __init__(
        self,
        path: Path | str,
        *,
        readers: int = 2,
        busy_timeout: float = 5.0,
        search_index: bool = True,
    ) -> None:
        """``search_index=False`` (``beseda serve --search-index off``): messages written are
        not indexed for search (and an upgrade's backfill does not run either); a later start
        with the index on indexes them then, from the watermark."""
        self.path = Path(path)
        self._search_index = search_index
        self._readers = readers
        self._busy_timeout_ms = int(busy_timeout * 1000)
        self._writer: _Writer | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._erasing: asyncio.Future[None] | None = None
        self._erase_again = False

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"Cannot create the directory of {self.path}: {exc}") from exc
        loop = asyncio.get_running_loop()
        self._writer = _Writer(
            self.path, loop, self._busy_timeout_ms, search_index=self._search_index
        )
        self._writer.start()
        try:
            await self._writer.ready
        except StorageError as exc:
            self._writer = None
            raise StorageError(f"Cannot open the database {self.path}: {exc}") from exc
        self._pool = ThreadPoolExecutor(
            self._readers,
            thread_name_prefix="beseda-sqlite-reader",
            initializer=name_this_thread,
            initargs=("beseda-reader",),
        )
        # An erasure a stop or a crash cut short is finished now.
        pending = await self._read(
            lambda conn: conn.execute("SELECT 1 FROM erasures WHERE id = 1").fetchone()
        )
        if pending is not None:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            self._erase_later(done)

    async def close(self) -> None:
        # A deleted text is not left in the files by a stop (the erasure is bounded work).
        await self.finish_erasure()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.stop()
            await asyncio.to_thread(writer.join)
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    @property
    def stats(self) -> dict[str, int]:
        """Counts of committed batches, writes, and batches the writer waited to gather
        (group-commit efficiency); runs of the search indexer, and the entries waiting for it
        (estimated between runs)."""
        if self._writer is None:
            return {"batches": 0, "writes": 0, "gathered": 0, "index_runs": 0, "unindexed": 0}
        return {
            "batches": self._writer.batches,
            "writes": self._writer.writes,
            "gathered": self._writer.gathered,
            "index_runs": self._writer.index_runs,
            "unindexed": self._writer.unindexed,
        }

    # -- plumbing ------------------------------------------------------------------------------

    async def _write(self, work: Callable[[_Transaction], T]) -> T:
        return await self._submit(work)

    def _submit(self, work: Callable[[_Transaction], T]) -> asyncio.Future[T]:
        """Queue ``work`` for the writer now; its future resolves after the commit."""
        if self._writer is None:
            future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            future.set_exception(StorageError("The database is closed."))
            return future
        return self._writer.submit(work)

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._pool is None:
            raise StorageError("The database is closed.")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run_read, work)

    def _run_read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        generation = self._writer.generation if self._writer is not None else 0
        try:
            if conn is not None and self._local.generation != generation:
                # The writer reopened a replaced database file: follow it.
                with self._lock:
                    self._connections.remove(conn)
                conn.close()
                conn = None
            if conn is None:
                conn = connect(self.path, busy_timeout_ms=self._busy_timeout_ms)
                self._local.conn = conn
                self._local.generation = generation
                with self._lock:
                    self._connections.append(conn)
            return work(conn)
        except sqlite3.Error as exc:
            raise StorageError(f"The database could not be read: {exc}") from exc

    # -- accounts ------------------------------------------------------------------------------

    async def create_user(
        self, name: str, key: str, password_hash: str, now: int, *, skeleton: str | None = None
    ) -> UserRecord:
        def work(tx: _Transaction) -> UserRecord:
            try:
                cursor = tx.conn.execute(
                    "INSERT INTO users (name, key, password_hash, created_at, skeleton, folded) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (name, key, password_hash, now, skeleton, fold(key)),
                )
            except sqlite3.IntegrityError:
                # The same key is "taken"; only another key of the same skeleton is a look-alike
                # (SQLite may report either index first).
                same = tx.conn.execute("SELECT 1 FROM users WHERE key = ?", (key,)).fetchone()
                raise (NameTakenError if same else LookAlikeNameError)(key) from None
            assert cursor.lastrowid is not None
            return UserRecord(cursor.lastrowid, name, key, password_hash)

        return await self._write(work)

    async def user_by_key(self, key: str) -> UserRecord | None:
        return await self._read(
            lambda conn: _user(
                conn.execute(
                    "SELECT id, name, key, password_hash FROM users WHERE key = ?", (key,)
                ).fetchone()
            )
        )

    async def set_password_hash(self, user_id: int, password_hash: str) -> None:
        await self._write(
            lambda tx: tx.conn.execute(
                "UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id)
            )
        )

    async def add_token(self, token_hash: bytes, user_id: int, now: int) -> None:
        await self._write(
            lambda tx: tx.conn.execute(
                "INSERT INTO tokens (hash, user_id, created_at) VALUES (?, ?, ?)",
                (token_hash, user_id, now),
            )
        )

    async def user_by_token(self, token_hash: bytes) -> UserRecord | None:
        return await self._read(
            lambda conn: _user(
                conn.execute(
                    "SELECT u.id, u.name, u.key, u.password_hash FROM tokens t "
                    "JOIN users u ON u.id = t.user_id WHERE t.hash = ?",
                    (token_hash,),
                ).fetchone()
            )
        )

    async def delete_token(self, token_hash: bytes) -> None:
        await self._write(
            lambda tx: tx.conn.execute("DELETE FROM tokens WHERE hash = ?", (token_hash,))
        )

    async def list_users(self, query: str, after: str | None, limit: int) -> list[UserRecord]:
        def work(conn: sqlite3.Connection) -> list[UserRecord]:
            rows = conn.execute(
                "SELECT id, name, key, password_hash FROM users "
                "WHERE key > ? AND instr(folded, ?) > 0 ORDER BY key LIMIT ?",
                (after or "", query, limit),
            ).fetchall()
            return [UserRecord(*row) for row in rows]

        return await self._read(work)

    async def users_by_keys(self, keys: list[str]) -> list[UserRecord]:
        return await self._users_where("key", keys)

    async def _users_where(self, column: str, values: list[Any]) -> list[UserRecord]:
        """The users whose ``column`` (``key`` or ``id``) is one of ``values``, in one read."""
        unique = list(dict.fromkeys(values))

        def work(conn: sqlite3.Connection) -> list[UserRecord]:
            # In chunks, to stay under any build's limit of bound variables (999 in old ones).
            found: list[UserRecord] = []
            for start in range(0, len(unique), 500):
                chunk = unique[start : start + 500]
                rows = conn.execute(
                    "SELECT id, name, key, password_hash FROM users "
                    f"WHERE {column} IN ({', '.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                found.extend(UserRecord(*row) for row in rows)
            return found

        return await self._read(work) if unique else []

    # -- messages ------------------------------------------------------------------------------

    def append_message(self, message: NewMessage) -> asyncio.Future[tuple[Message, bool]]:
        if message.reply_to is not None:
            # A reply checks and quotes what it answers: one at a time, not in a run.
            return self._submit(lambda tx: _append_reply(tx, message))
        # An _Append, not a closure: the writer recognises consecutive appends in a batch and
        # inserts them together (see _Writer._appends).
        return self._submit(_Append(message))

    async def messages_after(
        self, cursors: dict[str, int], limit: int
    ) -> tuple[list[Message], bool]:
        def work(conn: sqlite3.Connection) -> tuple[list[Message], bool]:
            collected: list[Message] = []
            for conversation, after in cursors.items():
                rows = conn.execute(
                    f"SELECT {_MESSAGE_COLUMNS} WHERE m.conversation = ? AND m.seq > ? "
                    "ORDER BY m.seq LIMIT ?",
                    (conversation, min(after, _SEQ_CEILING), limit + 1),
                ).fetchall()
                collected.extend(_message(row) for row in rows)
            # Ordering by id keeps each conversation's run contiguous from its cursor, since
            # ids grow with seq inside a conversation; cutting at ``limit`` keeps a prefix.
            collected.sort(key=lambda message: message.id)
            return collected[:limit], len(collected) > limit

        return await self._read(work)

    async def conversations_of(self, user_id: int) -> list[ConversationRecord]:
        def work(conn: sqlite3.Connection) -> list[ConversationRecord]:
            rows = conn.execute(
                "SELECT c.id, CASE WHEN c.user_a = ? THEN b.name ELSE a.name END, "
                "c.last_seq, c.last_ts FROM conversations c "
                "LEFT JOIN users a ON a.id = c.user_a LEFT JOIN users b ON b.id = c.user_b "
                "WHERE c.id = ? OR c.user_a = ? OR c.user_b = ? "
                "ORDER BY coalesce(c.last_ts, 0) DESC",
                (user_id, GENERAL, user_id, user_id),
            ).fetchall()
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

    # -- conversations (version 3) -------------------------------------------------------------

    async def load_conversations(self) -> list[ConversationState]:
        def work(conn: sqlite3.Connection) -> list[ConversationState]:
            rows = conn.execute(
                "SELECT id, kind, name, key, topic, public, archived, last_seq, last_ts "
                "FROM conversations"
            ).fetchall()
            return [
                ConversationState(
                    id=row[0],
                    kind=row[1],
                    name=row[2],
                    key=row[3],
                    topic=row[4],
                    public=bool(row[5]),
                    archived=bool(row[6]),
                    last_seq=row[7],
                    last_ts=row[8],
                )
                for row in rows
            ]

        return await self._read(work)

    async def load_members(self) -> list[MembershipRecord]:
        def work(conn: sqlite3.Connection) -> list[MembershipRecord]:
            rows = conn.execute(
                "SELECT conversation, user_id, role, from_seq, until_seq, read_seq FROM members"
            ).fetchall()
            return [MembershipRecord(*row) for row in rows]

        return await self._read(work)

    async def users_by_ids(self, user_ids: list[int]) -> list[UserRecord]:
        return await self._users_where("id", user_ids)

    def create_conversation(
        self, conversation: NewConversation
    ) -> asyncio.Future[tuple[ConversationState, Entry | None]]:
        return self._submit(lambda tx: _create_conversation(tx, conversation))

    def append_entry(self, entry: NewEntry) -> asyncio.Future[Entry]:
        return self._submit(lambda tx: _append_entry(tx, entry))

    def set_members(self, conversation: str, changes: list[MemberChange]) -> asyncio.Future[None]:
        def work(tx: _Transaction) -> None:
            tx.conn.executemany(
                "INSERT INTO members (user_id, conversation, role, from_seq) VALUES (?, ?, ?, 1) "
                "ON CONFLICT DO NOTHING",
                [(change.user_id, conversation, change.role) for change in changes],
            )

        return self._submit(work)

    def set_read(self, user_id: int, conversation: str, seq: int) -> asyncio.Future[None]:
        def work(tx: _Transaction) -> None:
            tx.conn.execute(
                "UPDATE members SET read_seq = max(read_seq, ?) "
                "WHERE user_id = ? AND conversation = ?",
                (min(seq, _SEQ_CEILING), user_id, conversation),
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
    ) -> tuple[list[Message], bool]:
        top = _SEQ_CEILING if before is None else min(before, _SEQ_CEILING)
        if ceiling is not None:
            top = min(top, ceiling + 1)

        def work(conn: sqlite3.Connection) -> tuple[list[Message], bool]:
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} WHERE m.conversation = ? AND m.seq < ? "
                f"AND m.seq > ? AND {_SHOWN} ORDER BY m.seq DESC LIMIT ?",
                (conversation, top, min(max(floor, 0), _SEQ_CEILING), limit + 1),
            )
            page: list[Message] = []
            budget = _Budget(max_bytes)
            more = False
            for row in rows:  # stepped one by one: what is read past the page is nothing
                if len(page) == limit:
                    more = True
                    break
                entry = _message(row)
                if not budget.take(entry, first=not page):
                    more = True
                    break
                page.append(entry)
            page.reverse()
            if _decorate(conn, page, reader) and _trim(page, max_bytes, newest=True):
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
    ) -> tuple[list[Message], bool]:
        top = _SEQ_CEILING if ceiling is None else min(ceiling, _SEQ_CEILING)

        def work(conn: sqlite3.Connection) -> tuple[list[Message], bool]:
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} WHERE m.conversation = ? AND m.seq > ? "
                f"AND m.seq <= ? AND {_SHOWN} ORDER BY m.seq LIMIT ?",
                (conversation, min(max(after, 0), _SEQ_CEILING), top, limit + 1),
            )
            page: list[Message] = []
            budget = _Budget(max_bytes)
            more = False
            for row in rows:
                if len(page) == limit:
                    more = True
                    break
                entry = _message(row)
                if not budget.take(entry, first=not page):
                    more = True
                    break
                page.append(entry)
            if _decorate(conn, page, reader) and _trim(page, max_bytes, newest=False):
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
    ) -> tuple[list[Message], bool]:
        only = "AND m.kind = 'message'" if messages_only else ""

        def work(conn: sqlite3.Connection) -> tuple[list[Message], bool]:
            streams = []
            for conversation, (after, until) in ranges.items():
                top = _SEQ_CEILING if until is None else min(until, _SEQ_CEILING)
                cursor = conn.cursor()
                cursor.execute(
                    f"SELECT {_MESSAGE_COLUMNS} WHERE m.conversation = ? AND m.seq > ? "
                    f"AND m.seq <= ? {only} ORDER BY m.seq",
                    (conversation, min(max(after, 0), _SEQ_CEILING), top),
                )
                streams.append(cursor)
            # Merged by id, each conversation's cursor stepped only as far as the page needs:
            # memory is bounded by the reply, whatever is stored behind the cursors.
            collected: list[Message] = []
            budget = _Budget(max_bytes)
            more = False
            try:
                for row in heapq.merge(*streams, key=lambda row: row[0]):
                    if len(collected) == limit:
                        more = True
                        break
                    entry = _message(row)
                    if not budget.take(entry, first=not collected):
                        more = True
                        break
                    collected.append(entry)
            finally:
                for cursor in streams:
                    cursor.close()
            if _decorate(conn, collected, reader) and _trim(collected, max_bytes, newest=False):
                more = True
            return collected, more

        return await self._read(work) if ranges else ([], False)

    async def unread_counts(
        self, user_id: int, markers: list[tuple[str, int]], cap: int
    ) -> dict[str, tuple[int, int]]:
        def work(conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
            counts: dict[str, tuple[int, int]] = {}
            for conversation, read in markers:
                read = min(read, _SEQ_CEILING)
                (unread,) = conn.execute(
                    "SELECT count(*) FROM (SELECT 1 FROM messages WHERE conversation = ? "
                    "AND seq > ? AND kind = 'message' AND sender_id <> ? LIMIT ?)",
                    (conversation, read, user_id, cap),
                ).fetchone()
                mentions = 0
                if unread:
                    (named,) = conn.execute(
                        "SELECT count(*) FROM (SELECT 1 FROM mentions WHERE user_id = ? "
                        "AND conversation = ? AND seq > ? LIMIT ?)",
                        (user_id, conversation, read, cap),
                    ).fetchone()
                    (everyone,) = conn.execute(
                        "SELECT count(*) FROM (SELECT 1 FROM messages WHERE conversation = ? "
                        "AND seq > ? AND mention_all = 1 AND sender_id <> ? LIMIT ?)",
                        (conversation, read, user_id, cap),
                    ).fetchone()
                    # A message naming the user and saying @channel mentions them once.
                    (both,) = conn.execute(
                        "SELECT count(*) FROM (SELECT 1 FROM mentions JOIN messages USING "
                        "(conversation, seq) WHERE mentions.user_id = ? AND conversation = ? "
                        "AND seq > ? AND mention_all = 1 LIMIT ?)",
                        (user_id, conversation, read, cap),
                    ).fetchone()
                    mentions = min(cap, named + everyone - both)
                counts[conversation] = (unread, mentions)
            return counts

        return await self._read(work) if markers else {}

    # -- replies, edits, deletes, reactions, search (version 4) --------------------------------

    def edit_message(self, edit: MessageEdit) -> asyncio.Future[Entry]:
        return self._submit(lambda tx: _edit(tx, edit))

    def delete_message(self, deletion: MessageDeletion) -> asyncio.Future[Entry]:
        future = self._submit(lambda tx: _delete(tx, deletion))
        future.add_done_callback(self._erase_later)
        return future

    def _erase_later(self, deleted: asyncio.Future[Any]) -> None:
        if deleted.cancelled() or deleted.exception() is not None or self._writer is None:
            return
        self._erase_again = True
        if self._erasing is None or self._erasing.done():
            self._erasing = asyncio.ensure_future(self._erase())

    async def _erase(self) -> None:
        """Merge the search index into one segment step by step, then checkpoint and
        truncate the WAL: afterwards no page of either file holds a deleted text."""
        while self._erase_again:
            self._erase_again = False
            try:
                step = _MergeRound()
                while not await self._submit(step):
                    pass
                await self._read(_truncate_wal)
            except StorageError as exc:
                log.error("erasing deleted messages from the files failed: %s", exc)
                return

    async def finish_erasure(self) -> None:
        while self._erasing is not None and not self._erasing.done():
            await asyncio.shield(self._erasing)

    def set_reaction(
        self, change: ReactionChange
    ) -> asyncio.Future[tuple[Entry | None, list[Reaction]]]:
        return self._submit(lambda tx: _react(tx, change))

    async def search(self, request: SearchRequest) -> tuple[list[Entry], int | None]:
        await self.catch_up_index()
        return await self._read(lambda conn: _search(conn, request))

    async def catch_up_index(self, limit: int = search_index.SEARCH_CATCH_UP) -> int:
        """Index up to ``limit`` of the messages waiting for the search index now (a search
        finds what was sent a moment ago); how many entries still wait after it."""
        writer = self._writer
        if not self._search_index or writer is None:
            return 0
        return await self._submit(lambda tx: writer.catch_up(tx, limit))


_LAST_CONVERSATION_NUMBER = (
    "SELECT coalesce(max(CAST(substr(id, 3) AS INTEGER)), 0) FROM conversations WHERE id LIKE 'c:%'"
)
_INSERT_ENTRY = """
    INSERT INTO messages
        (conversation, seq, sender_id, target_id, client_id, text, ts, kind, data)
    VALUES (?, ?, ?, ?, ?, '', ?, ?, ?)
    RETURNING id
"""
_JOIN = """
    INSERT INTO members (user_id, conversation, role, from_seq) VALUES (?, ?, ?, ?)
    ON CONFLICT (user_id, conversation) DO UPDATE
    SET role = excluded.role, from_seq = excluded.from_seq, until_seq = NULL
"""


def _next_seq(tx: _Transaction, conversation: str) -> int:
    last = tx.last_seq(conversation)
    if last is None:
        found = tx.conn.execute(_LAST_SEQ, (conversation,)).fetchone()
        if found is None:
            raise StorageError(f"no conversation {conversation!r}")
        last = found[0]
        tx.know(conversation, last)
    return last + 1


def _insert_entry(
    tx: _Transaction,
    conversation: str,
    seq: int,
    kind: str,
    actor: UserRecord,
    ts: int,
    target: UserRecord | None,
    data: _EntryData,
) -> Entry:
    # Not a message: the client id only has to be unique per actor, and no client sends one
    # of these (they are longer than a client id may be).
    client_id = f"~{kind}~{conversation}~{seq}~" + "-" * 64
    (entry_id,) = tx.conn.execute(
        _INSERT_ENTRY,
        (
            conversation,
            seq,
            actor.id,
            target.id if target is not None else None,
            client_id,
            ts,
            kind,
            _data_encoder.encode(data) if data != _NO_DATA else None,
        ),
    ).fetchone()
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


def _apply_members(
    conn: sqlite3.Connection, conversation: str, seq: int, changes: Iterable[MemberChange]
) -> None:
    for change in changes:
        if change.join:
            start = 1 if change.from_start else seq
            conn.execute(_JOIN, (change.user_id, conversation, change.role, start))
        elif change.leave:
            conn.execute(
                "UPDATE members SET until_seq = ? WHERE user_id = ? AND conversation = ?",
                (seq, change.user_id, conversation),
            )
        else:
            conn.execute(
                "UPDATE members SET role = ? WHERE user_id = ? AND conversation = ?",
                (change.role, change.user_id, conversation),
            )


def _create_conversation(
    tx: _Transaction, new: NewConversation
) -> tuple[ConversationState, Entry | None]:
    conn = tx.conn
    if new.kind == "direct":
        assert new.id is not None
        low, high = sorted(change.user_id for change in new.members)
        _create_direct(conn, new.id, low, high)
        last = tx.last_seq(new.id)
        if last is None:
            (last,) = conn.execute(_LAST_SEQ, (new.id,)).fetchone()
        return ConversationState(id=new.id, kind="direct", last_seq=last or 0), None
    (top,) = conn.execute(_LAST_CONVERSATION_NUMBER).fetchone()
    conversation = f"c:{top + 1}"
    try:
        conn.execute(
            "INSERT INTO conversations "
            "(id, last_seq, kind, name, key, topic, public, created_at) "
            "VALUES (?, 0, ?, ?, ?, ?, ?, ?)",
            (conversation, new.kind, new.name, new.key, new.topic, new.public, new.ts),
        )
    except sqlite3.IntegrityError:
        raise NameTakenError(new.key or conversation) from None
    entry = _insert_entry(
        tx,
        conversation,
        1,
        "created",
        new.creator,
        new.ts,
        None,
        _EntryData(name=new.name, topic=new.topic or None),
    )
    _apply_members(conn, conversation, 1, new.members)
    tx.took(conversation, 1, new.ts)
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


def _append_entry(tx: _Transaction, new: NewEntry) -> Entry:
    conn = tx.conn
    conversation = new.conversation
    seq = _next_seq(tx, conversation)
    if new.key is not None:
        try:
            conn.execute(
                "UPDATE conversations SET name = ?, key = ? WHERE id = ?",
                (new.name, new.key, conversation),
            )
        except sqlite3.IntegrityError:
            raise NameTakenError(new.key) from None
    if new.topic is not None:
        conn.execute("UPDATE conversations SET topic = ? WHERE id = ?", (new.topic, conversation))
    if new.archived:
        conn.execute("UPDATE conversations SET archived = 1 WHERE id = ?", (conversation,))
    entry = _insert_entry(
        tx,
        conversation,
        seq,
        new.kind,
        new.actor,
        new.ts,
        new.target,
        _EntryData(name=new.name, topic=new.topic, role=new.role),
    )
    _apply_members(conn, conversation, seq, new.members)
    tx.took(conversation, seq, new.ts)
    return entry


# -- replies, edits, deletes, reactions (version 4) ---------------------------------------------

_SHOWN = "m.kind NOT IN ('edited', 'deleted', 'reacted', 'unreacted')"
"""What ``history`` shows: messages (in their current state) and membership entries; not the
change entries, nor a deleted message's place (kind ``deleted`` too)."""

_TARGET = "SELECT id, kind, sender_id, ref FROM messages WHERE conversation = ? AND seq = ?"

_INSERT_CHANGE = """
    INSERT INTO messages
        (conversation, seq, sender_id, client_id, text, ts, kind, data, ref)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
    RETURNING id
"""


def _decorate(conn: sqlite3.Connection, entries: list[Entry], reader: int | None) -> bool:
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
        for chunk in _chunks(sorted(answered)):
            rows = conn.execute(
                "SELECT m.seq, u.name, m.kind, substr(m.text, 1, ?) FROM messages m "
                "JOIN users u ON u.id = m.sender_id WHERE m.conversation = ? "
                f"AND m.seq IN ({', '.join('?' * len(chunk))})",
                (REPLY_PREVIEW_CHARS, conversation, *chunk),
            ).fetchall()
            for seq, sender, kind, text in rows:
                deleted = kind != "message"
                quotes[conversation, seq] = Quote(
                    seq=seq, sender=sender, text="" if deleted else text, deleted=deleted
                )
    reactions: dict[tuple[str, int], list[Reaction]] = {}
    for conversation, seqs in shown.items():
        # One seek tells whether the page's range has any reaction at all (most have none).
        if not conn.execute(
            "SELECT 1 FROM reactions WHERE conversation = ? AND seq BETWEEN ? AND ? LIMIT 1",
            (conversation, min(seqs), max(seqs)),
        ).fetchone():
            continue
        for chunk in _chunks(seqs):
            rows = conn.execute(
                "SELECT seq, emoji, count(*), max(user_id = ?), min(ts) FROM reactions "
                f"WHERE conversation = ? AND seq IN ({', '.join('?' * len(chunk))}) "
                "GROUP BY seq, emoji ORDER BY seq, 5, emoji",
                (reader, conversation, *chunk),
            ).fetchall()
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
    sizes = [len(_data_encoder.encode(entry)) + 1 for entry in entries]
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


def _chunks(values: list[int], size: int = 500) -> Iterable[list[int]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _reactions_of(
    conn: sqlite3.Connection, conversation: str, seq: int, reader: int
) -> list[Reaction]:
    rows = conn.execute(
        "SELECT emoji, count(*), max(user_id = ?), min(ts) FROM reactions "
        "WHERE conversation = ? AND seq = ? GROUP BY emoji ORDER BY 4, emoji",
        (reader, conversation, seq),
    ).fetchall()
    return [Reaction(emoji=e, count=c, me=bool(m)) for e, c, m, _ in rows]


def _require_message(tx: _Transaction, conversation: str, seq: int) -> tuple[Any, ...]:
    row = tx.conn.execute(_TARGET, (conversation, min(seq, _SEQ_CEILING))).fetchone()
    if row is None or row[1] != "message":
        raise NoSuchMessageError(f"no message {seq} in {conversation}")
    return cast(tuple[Any, ...], row)


def _insert_change(
    tx: _Transaction,
    conversation: str,
    kind: str,
    actor: UserRecord,
    ts: int,
    ref: int,
    *,
    text: str = "",
    data: _EntryData = _NO_DATA,
) -> Entry:
    seq = _next_seq(tx, conversation)
    client_id = f"~{kind}~{conversation}~{seq}~" + "-" * 64
    (entry_id,) = tx.conn.execute(
        _INSERT_CHANGE,
        (
            conversation,
            seq,
            actor.id,
            client_id,
            text,
            ts,
            kind,
            _data_encoder.encode(data) if data != _NO_DATA else None,
            ref,
        ),
    ).fetchone()
    tx.took(conversation, seq, ts)
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


def _append_reply(tx: _Transaction, message: NewMessage) -> tuple[Message, bool]:
    assert message.reply_to is not None
    conn = tx.conn
    existing = conn.execute(_BY_CLIENT_ID, (message.sender.id, message.client_id)).fetchone()
    if existing is None:
        # Only a new message needs its original to exist (a retry answers as stored).
        _require_message(tx, message.conversation, message.reply_to)
    stored, duplicate = _Append(message)(tx)
    _decorate(conn, [stored], None)
    return stored, duplicate


def _edit(tx: _Transaction, edit: MessageEdit) -> Entry:
    conn = tx.conn
    row_id, _, sender_id, _ = _require_message(tx, edit.conversation, edit.seq)
    if sender_id != edit.editor.id:
        raise NotAuthorError("only the author edits a message")
    (raw,) = conn.execute("SELECT data FROM messages WHERE id = ?", (row_id,)).fetchone()
    data = _NO_DATA if raw is None else _data_decoder.decode(raw)
    data = msgspec.structs.replace(data, edited=edit.ts)
    # The message and every earlier edit of it hold the new text: no old version is kept.
    conn.execute(
        "UPDATE messages SET text = ?, data = ? WHERE id = ?",
        (edit.text, _data_encoder.encode(data), row_id),
    )
    conn.execute(
        "UPDATE messages SET text = ? WHERE conversation = ? AND ref = ? AND kind = 'edited'",
        (edit.text, edit.conversation, edit.seq),
    )
    return _insert_change(
        tx, edit.conversation, "edited", edit.editor, edit.ts, edit.seq, text=edit.text
    )


def _delete(tx: _Transaction, deletion: MessageDeletion) -> Entry:
    conn = tx.conn
    conversation, seq = deletion.conversation, deletion.seq
    row = conn.execute(_TARGET, (conversation, min(seq, _SEQ_CEILING))).fetchone()
    if row is None or not (row[1] == "message" or (row[1] == "deleted" and row[3] == seq)):
        raise NoSuchMessageError(f"no message {seq} in {conversation}")
    row_id, kind, sender_id, _ = row
    if deletion.author_only and sender_id != deletion.actor.id:
        raise NotAuthorError("only the author, or a channel's owner or admin, deletes it")
    if kind == "deleted":
        # Deleted already (a retry, or two people at once): the first tombstone answers.
        first = conn.execute(
            f"SELECT {_MESSAGE_COLUMNS} WHERE m.conversation = ? AND m.ref = ? "
            "AND m.kind = 'deleted' AND m.seq <> ? ORDER BY m.seq LIMIT 1",
            (conversation, seq, seq),
        ).fetchone()
        if first is not None:
            return _message(first)
    # The row keeps its place (seq, author, client id) and loses everything it said; the
    # search index's trigger removes it from the index with the text it had.
    conn.execute(
        "UPDATE messages SET kind = 'deleted', ref = seq, text = '', data = NULL, "
        "mention_all = 0 WHERE id = ?",
        (row_id,),
    )
    conn.execute(
        "UPDATE messages SET kind = 'deleted', text = '', data = NULL "
        "WHERE conversation = ? AND ref = ? AND kind = 'edited'",
        (conversation, seq),
    )
    conn.execute("DELETE FROM mentions WHERE conversation = ? AND seq = ?", (conversation, seq))
    conn.execute("DELETE FROM reactions WHERE conversation = ? AND seq = ?", (conversation, seq))
    conn.execute(
        "INSERT INTO erasures (id, deletes) VALUES (1, 1) "
        "ON CONFLICT (id) DO UPDATE SET deletes = deletes + 1"
    )
    return _insert_change(tx, conversation, "deleted", deletion.actor, deletion.ts, seq)


def _react(tx: _Transaction, change: ReactionChange) -> tuple[Entry | None, list[Reaction]]:
    conn = tx.conn
    conversation, seq, user = change.conversation, change.seq, change.user
    _require_message(tx, conversation, seq)
    key = (conversation, seq, change.emoji, user.id)
    mine = conn.execute(
        "SELECT 1 FROM reactions WHERE conversation = ? AND seq = ? AND emoji = ? AND user_id = ?",
        key,
    ).fetchone()
    entry = None
    if change.add and mine is None:
        (present,) = conn.execute(
            "SELECT count(*) FROM reactions WHERE conversation = ? AND seq = ? AND emoji = ?",
            (conversation, seq, change.emoji),
        ).fetchone()
        if not present:
            (distinct,) = conn.execute(
                "SELECT count(DISTINCT emoji) FROM reactions WHERE conversation = ? AND seq = ?",
                (conversation, seq),
            ).fetchone()
            if distinct >= change.max_distinct:
                raise TooManyReactionsError(f"message {seq} has {distinct} emoji")
        conn.execute(
            "INSERT INTO reactions (conversation, seq, emoji, user_id, ts) VALUES (?, ?, ?, ?, ?)",
            (*key, change.ts),
        )
        entry = _insert_change(
            tx,
            conversation,
            "reacted",
            user,
            change.ts,
            seq,
            data=_EntryData(emoji=change.emoji, count=present + 1),
        )
    elif not change.add and mine is not None:
        conn.execute(
            "DELETE FROM reactions WHERE conversation = ? AND seq = ? AND emoji = ? "
            "AND user_id = ?",
            key,
        )
        (left,) = conn.execute(
            "SELECT count(*) FROM reactions WHERE conversation = ? AND seq = ? AND emoji = ?",
            (conversation, seq, change.emoji),
        ).fetchone()
        entry = _insert_change(
            tx,
            conversation,
            "unreacted",
            user,
            change.ts,
            seq,
            data=_EntryData(emoji=change.emoji, count=left),
        )
    return entry, _reactions_of(conn, conversation, seq, user.id)


MERGE_PAGES = 256
"""Leaf pages of the search index merged per write while erasing: each step holds the writer
for a few milliseconds, and messages are committed between steps."""


class _MergeRound:
    """One round of erasure: merge the search index into one segment, a bounded part per
    write; the write that finishes clears the count of deletes it covers.

    FTS5 removes a deleted document from its segments only when they are merged (this
    SQLite has no ``secure-delete`` option): merging every segment into one leaves nothing
    of a deleted message's words behind, and ``secure_delete`` zeroes the pages freed."""

    __slots__ = ("deletes",)

    def __init__(self) -> None:
        self.deletes: int | None = None
        """The count of deletes when the round began (those it erases)."""

    def __call__(self, tx: _Transaction) -> bool:
        """One step; True when the round is done."""
        conn = tx.conn
        if self.deletes is None:
            row = conn.execute("SELECT deletes FROM erasures WHERE id = 1").fetchone()
            self.deletes = row[0] if row else 0
        before = conn.total_changes
        conn.execute("INSERT INTO search (search, rank) VALUES ('merge', ?)", (-MERGE_PAGES,))
        if conn.total_changes - before >= 2:
            return False
        # A delete committed during the round counted one more: it stays pending.
        conn.execute("DELETE FROM erasures WHERE id = 1 AND deletes = ?", (self.deletes,))
        return True


def _truncate_wal(conn: sqlite3.Connection) -> None:
    """Copy the WAL into the database and cut it to nothing (waits for readers, as the
    busy timeout allows)."""
    busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if busy:
        raise StorageError("the WAL could not be checkpointed (the database is busy)")


# -- search ---------------------------------------------------------------------------------------

_SCOPE = """
    CREATE TEMP TABLE IF NOT EXISTS search_scope (
        conversation TEXT PRIMARY KEY, floor INTEGER NOT NULL, ceiling INTEGER NOT NULL
    ) WITHOUT ROWID
"""


_CLOCK_MARGIN_MS = 3_600_000
"""Ids grow in commit order and ``ts`` is the server's clock at the commit, so the first id
stored at or after a time can be found by bisecting ids. A clock that stepped back would make
the two disagree; the bound is widened by an hour, and the exact ``ts`` test applies anyway."""


def _first_id_at(conn: sqlite3.Connection, ts: int) -> int:
    """The smallest message id stored at or after ``ts`` (one past the largest when none),
    by bisecting ids: some twenty primary-key reads, instead of an index on ``ts`` that every
    message would pay for."""
    # Two reads: SQLite answers a lone min() or max() of the key from the b-tree's edge, and
    # scans the table for anything more.
    (low,) = conn.execute("SELECT min(id) FROM messages").fetchone()
    (high,) = conn.execute("SELECT max(id) FROM messages").fetchone()
    if low is None:
        return 1
    high += 1
    while low < high:
        middle = (low + high) // 2
        row = conn.execute(
            "SELECT id, ts FROM messages WHERE id >= ? ORDER BY id LIMIT 1", (middle,)
        ).fetchone()
        if row is None or row[1] >= ts:
            high = middle
        else:
            low = row[0] + 1
    return int(low)


def _search(conn: sqlite3.Connection, request: SearchRequest) -> tuple[list[Entry], int | None]:
    """One page of a search (see :meth:`Storage.search`)."""
    if not request.readable:
        return [], None
    # The conversations the reader may read, as a table the query joins: a temporary one,
    # of this reader thread's connection.
    conn.execute(_SCOPE)
    conn.execute("DELETE FROM temp.search_scope")
    conn.executemany(
        "INSERT INTO temp.search_scope VALUES (?, ?, ?)",
        [
            (c, max(after, 0), min(ceiling, _SEQ_CEILING))
            for c, (after, ceiling) in request.readable.items()
        ],
    )
    where = ["m.kind = 'message'", "m.seq > sc.floor", "m.seq <= sc.ceiling"]
    params: list[Any] = []
    if request.senders:
        where.append(f"m.sender_id IN ({', '.join('?' * len(request.senders))})")
        params.extend(request.senders)
    if request.before is not None:
        where.append("m.ts < ?")
        params.append(request.before)
        # Also as a bound on ids, which the index seeks to instead of walking every newer
        # match; see _first_id_at for the clock margin.
        where.append("{id} < ?")
        params.append(_first_id_at(conn, request.before + _CLOCK_MARGIN_MS))
    if request.after is not None:
        where.append("m.ts >= ?")
        params.append(request.after)
        where.append("{id} >= ?")
        params.append(_first_id_at(conn, request.after - _CLOCK_MARGIN_MS))
    limit = request.limit + 1
    offset = 0
    # The sender and a single conversation are marks in the index: looked up with the words
    # (FTS5 skips along the shorter posting list) instead of checked at every match.
    parts = [f"({request.match})"] if request.match is not None else []
    if request.senders:
        parts.append("(" + " OR ".join(fts_phrase(sender_mark(s)) for s in request.senders) + ")")
    if len(request.readable) == 1:
        (only,) = request.readable
        parts.append(fts_phrase(conversation_mark(only)))
    match = " AND ".join(parts) if parts else None
    if match is None:
        # Filters only: newest first over the messages table, whatever the order asked.
        if request.cursor is not None:
            where.append("m.id < ?")
            params.append(min(request.cursor, _MAX_ROWID))
        sql = (
            f"SELECT {_MESSAGE_COLUMNS} JOIN temp.search_scope sc "
            f"ON sc.conversation = m.conversation WHERE {' AND '.join(where).format(id='m.id')} "
            "ORDER BY m.id DESC LIMIT ?"
        )
        rows = conn.execute(sql, (*params, limit)).fetchall()
        best = False
    else:
        # The index drives (CROSS JOIN keeps that order): its matches come newest first
        # (rowid = message id) or best first, and each is checked against the scope.
        best = request.best and request.match is not None
        if best:
            offset = max(request.cursor or 0, 0)
            order = "ORDER BY f.rank, f.rowid DESC LIMIT ? OFFSET ?"
        else:
            if request.cursor is not None:
                where.append("f.rowid < ?")
                params.append(min(request.cursor, _MAX_ROWID))
            order = "ORDER BY f.rowid DESC LIMIT ?"
        columns = _MESSAGE_COLUMNS.replace(
            "FROM messages m", "FROM search f CROSS JOIN messages m ON m.id = f.rowid", 1
        )
        sql = (
            f"SELECT {columns} CROSS JOIN temp.search_scope sc "
            f"ON sc.conversation = m.conversation WHERE f.search MATCH ? "
            f"AND {' AND '.join(where).format(id='f.rowid')} {order}"
        )
        arguments: list[Any] = [match, *params, limit]
        if best:
            arguments.append(offset)
        try:
            rows = conn.execute(sql, arguments).fetchall()
        except sqlite3.OperationalError as exc:
            raise StorageError(f"search failed: {exc}") from exc
    entries = [_message(row) for row in rows[: request.limit]]
    _decorate(conn, entries, request.reader)
    following: int | None = None
    if len(rows) > request.limit:
        following = offset + request.limit if best else entries[-1].id
    return entries, following
