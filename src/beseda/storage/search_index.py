"""Filling SQLite's search index: messages are indexed after their commit, many at a time.

A message is stored and acknowledged without waiting for the index. The writer indexes the
messages stored since the index's *watermark* (``search_progress.indexed``: every message
with an id up to it is in the index as its current text) in runs of up to
:data:`INDEX_CHUNK`:

- inside a batch's own transaction once :data:`INDEX_AFTER` or more entries wait (a busy
  server: no commit of its own, and the index is at most a run behind);
- in a transaction of its own when the writer has had nothing to do for :data:`INDEX_IDLE`
  seconds (a quiet server, and the backfill of an upgraded database, chunk by chunk between
  the writes that arrive meanwhile);
- before every search, up to :data:`SEARCH_CATCH_UP` (so a search finds what was just sent).

Why not a trigger per message, as before: the trigger called the folding function (Python)
from inside SQLite's statement on the writer thread, once per message, each call taking the
interpreter's lock back from the event loop; measured with ``python -m bench.storage_cost``'s
appends (100 senders, 45 per commit), the index then cost 86 µs of CPU per message where
indexing the same messages in runs costs about 20 (docs/architecture.md, "Search").

Edits and deletes of messages at or below the watermark change the index in their own
transaction (triggers of migration 5); above it there is nothing to change: the run that
indexes them reads their text as it is then, and skips a deleted one.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Final

from ..server.search import search_body

log = logging.getLogger(__name__)

INDEX_CHUNK: Final = 2048
"""Most messages one run indexes (about 20 ms of the writer; writes queue meanwhile)."""
INDEX_AFTER: Final = INDEX_CHUNK
"""Entries waiting for the index that make a batch index them in its transaction: a whole
run's worth, since fewer, larger runs leave FTS5 fewer segments to merge (measured over
81,920 chat lines, fold and commit included: 13.6 µs a message in runs of 2,048, 15.3 in
runs of 512, 23.1 in runs of 128)."""
INDEX_IDLE: Final = 0.2
"""Seconds of a writer with nothing to do after which what waits is indexed alone."""
SEARCH_CATCH_UP: Final = 4 * INDEX_CHUNK
"""Most messages a search indexes before it reads (more only while an upgrade's backfill
runs: the search then covers what the backfill has reached)."""

_MARK = "SELECT indexed FROM search_progress WHERE id = 1"
_TOP = "SELECT coalesce(max(id), 0) FROM messages"
_PENDING = (
    "SELECT id, text, sender_id, conversation FROM messages "
    "WHERE id > ? AND kind = 'message' ORDER BY id LIMIT ?"
)


_BEHIND = (
    "SELECT (SELECT coalesce(max(id), 0) FROM messages) - indexed FROM search_progress WHERE id = 1"
)


def behind(conn: sqlite3.Connection) -> int:
    """How many entries (of any kind) were stored after the watermark."""
    (waiting,) = conn.execute(_BEHIND).fetchone()
    return max(0, int(waiting))


def index_pending(conn: sqlite3.Connection, limit: int = INDEX_CHUNK) -> tuple[int, int]:
    """Index up to ``limit`` messages after the watermark and move it past them; how many
    messages it indexed and how many entries are still behind it. Runs inside the caller's
    transaction (which holds the write lock, so nothing is stored between the read and the
    insert)."""
    (mark,) = conn.execute(_MARK).fetchone()
    rows = conn.execute(_PENDING, (mark, limit)).fetchall()
    (top,) = conn.execute(_TOP).fetchone()
    new_mark = rows[-1][0] if len(rows) == limit else max(mark, top)
    if rows:
        conn.executemany(
            "INSERT INTO search (rowid, body) VALUES (?, ?)",
            [(row, search_body(text, sender, where)) for row, text, sender, where in rows],
        )
    if new_mark != mark:
        conn.execute("UPDATE search_progress SET indexed = ? WHERE id = 1", (new_mark,))
    return len(rows), max(0, top - new_mark)


def index_all(conn: sqlite3.Connection, chunk: int = INDEX_CHUNK) -> int:
    """Index everything behind the watermark, one committed transaction per ``chunk`` (an
    upgrade's backfill done at once, as a benchmark or a tool does it); the messages indexed."""
    done = 0
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            indexed, left = index_pending(conn, chunk)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        done += indexed
        if not left:
            return done
