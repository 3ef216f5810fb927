"""``beseda migrate-db``: copy a SQLite server's data into PostgreSQL, exactly, resumably.

What is copied: users (with their password hashes and look-alike skeletons), session tokens,
conversations with their counter rows, memberships with read markers, every entry (ids and
seqs as they are, so clients' cursors stay valid; edits, deletes and reactions included),
mentions and reactions; each message's folded body for PostgreSQL's search is computed on the
way. The source is first brought
to the current SQLite schema (as starting this beseda on it would do); the target gets
PostgreSQL's own schema.

Resumable: entries, by far the largest table, go in chunks of ``chunk`` rows, one transaction
each, after the highest id the target already holds, so an interrupted copy goes on where it
stopped. The other tables are upserted whole each run (a second run also brings rows that
changed since up to date). Verified: afterwards every table's row count and checksum (an
order-independent sum of each row's SHA-256) must be equal on both sides.

The server must be stopped (or at least not writing) while the copy runs and until the new
server starts on PostgreSQL; rows written to the SQLite file after a copy are found by the
verification, and a second run copies them.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg

from ..server.search import search_body
from . import StorageError
from .postgres import PostgresStorage, redact
from .sqlite import connect, migrate

CHUNK: Final = 5000
"""Entries copied per transaction."""


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    """The primary key (what an upsert conflicts on)."""
    booleans: tuple[str, ...] = ()
    """Columns SQLite keeps as 0/1 and PostgreSQL as boolean."""
    binary: tuple[str, ...] = ()
    """Columns that are bytes on both sides."""
    updatable: bool = True
    """Whether a row copied before may have changed (and is then updated)."""


TABLES: Final = (
    Table(
        "users",
        ("id", "name", "key", "password_hash", "created_at", "skeleton", "folded"),
        ("id",),
    ),
    Table("tokens", ("hash", "user_id", "created_at"), ("hash",), binary=("hash",)),
    Table(
        "conversations",
        (
            "id",
            "last_seq",
            "last_ts",
            "user_a",
            "user_b",
            "kind",
            "name",
            "key",
            "topic",
            "public",
            "archived",
            "created_at",
        ),
        ("id",),
        booleans=("public", "archived"),
    ),
    Table(
        "members",
        ("user_id", "conversation", "role", "from_seq", "until_seq", "read_seq"),
        ("user_id", "conversation"),
    ),
    Table(
        "messages",
        (
            "id",
            "conversation",
            "seq",
            "sender_id",
            "recipient_id",
            "client_id",
            "text",
            "ts",
            "kind",
            "target_id",
            "data",
            "mention_all",
            "ref",
        ),
        ("id",),
        booleans=("mention_all",),
        updatable=False,
    ),
    Table("mentions", ("user_id", "conversation", "seq"), ("user_id", "conversation", "seq")),
    Table(
        "reactions",
        ("conversation", "seq", "emoji", "user_id", "ts"),
        ("conversation", "seq", "emoji", "user_id"),
    ),
)
"""In the order they are copied (each refers only to those before it)."""


@dataclass
class TableReport:
    name: str
    copied: int
    source_rows: int
    target_rows: int
    source_checksum: str
    target_checksum: str

    @property
    def equal(self) -> bool:
        return (self.source_rows, self.source_checksum) == (self.target_rows, self.target_checksum)


def parse_source(text: str) -> Path:
    """``sqlite:FILE`` (or a bare path) → the file."""
    path = text.removeprefix("sqlite:")
    if path.startswith("//"):  # sqlite:///abs/path, as some tools write it
        path = path[2:]
    return Path(path)


def _sqlite_value(table: Table, column: str, value: Any) -> Any:
    """A SQLite value as PostgreSQL stores it."""
    if value is None:
        return None
    if column in table.booleans:
        return bool(value)
    if column == "data" and isinstance(value, bytes):
        return value.decode()  # SQLite's writer stores the JSON as a BLOB
    return value


def _canonical(values: Iterable[Any]) -> bytes:
    parts = []
    for value in values:
        if isinstance(value, bool):
            value = int(value)
        elif isinstance(value, (bytes, memoryview)):
            value = "x:" + bytes(value).hex()
        parts.append(repr(value))
    return "\x1f".join(parts).encode()


class _Checksum:
    """An order-independent digest of rows: the sum of their SHA-256s, with the count."""

    def __init__(self) -> None:
        self.total = 0
        self.rows = 0

    def add(self, values: Iterable[Any]) -> None:
        digest = hashlib.sha256(_canonical(values)).digest()
        self.total = (self.total + int.from_bytes(digest, "big")) % 2**256
        self.rows += 1

    @property
    def hex(self) -> str:
        return f"{self.total:064x}"


def _source_rows(
    conn: sqlite3.Connection, table: Table, where: str = "", args: Sequence[Any] = ()
) -> Iterable[tuple[Any, ...]]:
    cursor = conn.execute(
        f"SELECT {', '.join(table.columns)} FROM {table.name} {where}", tuple(args)
    )
    for row in cursor:
        yield tuple(_sqlite_value(table, c, v) for c, v in zip(table.columns, row, strict=True))


def _upsert(table: Table) -> str:
    columns = ", ".join(table.columns)
    values = ", ".join(f"${n}" for n in range(1, len(table.columns) + 1))
    conflict = ", ".join(table.key)
    changed = [c for c in table.columns if c not in table.key]
    if not table.updatable or not changed:
        action = "DO NOTHING"
    else:
        action = "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in changed)
    return (
        f"INSERT INTO {table.name} ({columns}) VALUES ({values}) ON CONFLICT ({conflict}) {action}"
    )


async def copy_database(
    source: Path,
    target_url: str,
    *,
    chunk: int = CHUNK,
    say: Callable[[str], None] = lambda line: None,
) -> list[TableReport]:
    """Copy ``source`` (a SQLite file) into the PostgreSQL database ``target_url`` and verify
    it; returns what each table holds on both sides. Raises :class:`StorageError` when either
    database cannot be opened."""
    if not await asyncio.to_thread(source.is_file):
        raise StorageError(f"No SQLite database at {source}")
    try:
        conn = connect(source)
    except sqlite3.Error as exc:
        raise StorageError(f"Cannot open {source}: {exc}") from exc
    try:
        try:
            migrate(conn)
        except sqlite3.Error as exc:
            raise StorageError(f"{source} is not a beseda database: {exc}") from exc
        store = PostgresStorage(target_url)
        await store.open()  # checks the database and brings it to PostgreSQL's schema
        await store.close()
        target = await asyncpg.connect(target_url)
        try:
            # One read transaction: the copy is of one moment of the source (WAL snapshot).
            conn.execute("BEGIN")
            copied = {
                table.name: await _copy_table(conn, target, table, chunk, say) for table in TABLES
            }
            await _set_identities(target)
            reports = [await _verify(conn, target, table, copied[table.name]) for table in TABLES]
            conn.execute("COMMIT")
        finally:
            await target.close()
    finally:
        conn.close()
    return reports


async def _copy_table(
    conn: sqlite3.Connection,
    target: Any,
    table: Table,
    chunk: int,
    say: Callable[[str], None],
) -> int:
    if table.name != "messages":
        rows = list(_source_rows(conn, table))
        async with target.transaction():
            await target.executemany(_upsert(table), rows)
        say(f"{table.name}: {len(rows)} rows")
        return len(rows)
    # Entries: in chunks, after what the target holds already (an earlier, interrupted run).
    start = await target.fetchval("SELECT coalesce(max(id), 0) FROM messages")
    if start:
        say(f"messages: resuming after id {start}")
    copied = 0
    while True:
        rows = list(_source_rows(conn, table, "WHERE id > ? ORDER BY id LIMIT ?", (start, chunk)))
        if not rows:
            break
        # The folded body PostgreSQL searches (SQLite keeps it in its FTS5 index instead).
        kind, text = table.columns.index("kind"), table.columns.index("text")
        records = [
            (*row, search_body(row[text]) if row[kind] == "message" else None) for row in rows
        ]
        async with target.transaction():
            await target.copy_records_to_table(
                "messages", records=records, columns=(*table.columns, "body")
            )
        copied += len(rows)
        start = rows[-1][0]
        say(f"messages: {copied} rows (up to id {start})")
    return copied


async def _set_identities(target: Any) -> None:
    """The next id PostgreSQL gives is above every copied one."""
    for name in ("users", "messages"):
        await target.execute(
            f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
            f"coalesce((SELECT max(id) FROM {name}), 0) + 1, false)"
        )


async def _verify(conn: sqlite3.Connection, target: Any, table: Table, copied: int) -> TableReport:
    source_sum = _Checksum()
    for row in _source_rows(conn, table):
        source_sum.add(row)
    target_sum = _Checksum()
    columns = ", ".join(table.columns)
    async with target.transaction(readonly=True):
        async for row in target.cursor(f"SELECT {columns} FROM {table.name}", prefetch=2000):
            target_sum.add(tuple(row))
    return TableReport(
        name=table.name,
        copied=copied,
        source_rows=source_sum.rows,
        target_rows=target_sum.rows,
        source_checksum=source_sum.hex,
        target_checksum=target_sum.hex,
    )


def describe(target_url: str) -> str:
    return redact(target_url)
