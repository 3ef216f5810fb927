"""Versioned schema migrations for SQLite.

``PRAGMA user_version`` holds how many have been applied. Each migration is a list of steps
run in one transaction: SQL statements, or Python callables given the connection (for a
backfill that SQL cannot compute). Never change the schema a released migration leaves:
append a new one. (A step whose work a later migration undoes may go, as schema 4's search
triggers and backfill did once schema 5 replaced them.)
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import Final

from ..server.accounts import name_skeleton
from ..server.search import fold

log = logging.getLogger(__name__)

Step = str | Callable[[sqlite3.Connection], None]


def _backfill_skeletons(conn: sqlite3.Connection) -> None:
    """Give every existing user the confusable skeleton of their name.

    Names registered before the rule may already look alike: the oldest keeps the skeleton
    (and so the right to it), the later ones keep their accounts and logins with none.
    """
    taken: set[str] = set()
    rows = conn.execute("SELECT id, name FROM users ORDER BY id").fetchall()
    for user_id, name in rows:
        skeleton = name_skeleton(name)
        if skeleton in taken:
            log.warning(
                "user %d: %r looks like an older name; left without a skeleton", user_id, name
            )
            continue
        taken.add(skeleton)
        conn.execute("UPDATE users SET skeleton = ? WHERE id = ?", (skeleton, user_id))


def _backfill_folded_names(conn: sqlite3.Connection) -> None:
    """Give every user the diacritic-free form of their key (directory search)."""
    rows = conn.execute("SELECT id, key FROM users").fetchall()
    conn.executemany("UPDATE users SET folded = ? WHERE id = ?", [(fold(k), i) for i, k in rows])


SEARCH_TRIGGERS: Final = (
    # Messages are indexed after their commit, in runs, by the writer (search_index.py), up
    # to the watermark in ``search_progress``. An edit or a delete of a message the index
    # already holds changes the index in its own transaction; of one not yet indexed, there
    # is nothing to change. One trigger for both halves of an update, in this order: SQLite
    # runs several triggers of one event newest first, and the index must lose the old words
    # before it gets the new ones (words in both would be lost otherwise).
    """
    CREATE TRIGGER search_update AFTER UPDATE OF text, kind ON messages
    WHEN 'message' IN (old.kind, new.kind)
        AND old.id <= (SELECT indexed FROM search_progress WHERE id = 1)
    BEGIN
        INSERT INTO search (search, rowid, body)
        SELECT 'delete', old.id, beseda_search_body(old.text, old.sender_id, old.conversation)
        WHERE old.kind = 'message';
        INSERT INTO search (rowid, body)
        SELECT new.id, beseda_search_body(new.text, new.sender_id, new.conversation)
        WHERE new.kind = 'message';
    END
    """,
    """
    CREATE TRIGGER search_delete AFTER DELETE ON messages
    WHEN old.kind = 'message' AND old.id <= (SELECT indexed FROM search_progress WHERE id = 1)
    BEGIN
        INSERT INTO search (search, rowid, body)
        VALUES ('delete', old.id, beseda_search_body(old.text, old.sender_id, old.conversation));
    END
    """,
)


MIGRATIONS: Final[list[list[Step]]] = [
    # 1: accounts, sessions, conversations and messages.
    [
        """
        CREATE TABLE users (
            id            INTEGER PRIMARY KEY,
            name          TEXT    NOT NULL,
            key           TEXT    NOT NULL UNIQUE,
            password_hash TEXT    NOT NULL,
            created_at    INTEGER NOT NULL
        )
        """,
        """
        CREATE TABLE tokens (
            hash       BLOB    PRIMARY KEY,
            user_id    INTEGER NOT NULL REFERENCES users (id),
            created_at INTEGER NOT NULL
        ) WITHOUT ROWID
        """,
        "CREATE INDEX tokens_by_user ON tokens (user_id)",
        """
        CREATE TABLE conversations (
            id       TEXT    PRIMARY KEY,
            last_seq INTEGER NOT NULL,
            last_ts  INTEGER,
            user_a   INTEGER REFERENCES users (id),
            user_b   INTEGER REFERENCES users (id)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX conversations_by_user_a ON conversations (user_a)",
        "CREATE INDEX conversations_by_user_b ON conversations (user_b)",
        "INSERT INTO conversations (id, last_seq) VALUES ('general', 0)",
        """
        CREATE TABLE messages (
            id           INTEGER PRIMARY KEY,
            conversation TEXT    NOT NULL,
            seq          INTEGER NOT NULL,
            sender_id    INTEGER NOT NULL REFERENCES users (id),
            recipient_id INTEGER REFERENCES users (id),
            client_id    TEXT    NOT NULL,
            text         TEXT    NOT NULL,
            ts           INTEGER NOT NULL,
            UNIQUE (conversation, seq),
            UNIQUE (sender_id, client_id)
        )
        """,
    ],
    # Look-alike names (UTS #39 confusable skeletons), unique where set. Appended last:
    # renumber freely at a merge, it depends only on migration 1's users table.
    [
        "ALTER TABLE users ADD COLUMN skeleton TEXT",
        _backfill_skeletons,
        "CREATE UNIQUE INDEX users_by_skeleton ON users (skeleton)",
    ],
    # 3: conversations of every kind, entries, memberships with read markers, mentions. Every
    # message keeps its id, conversation and seq: version-2 cursors stay valid.
    [
        "ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'message'",
        "ALTER TABLE messages ADD COLUMN target_id INTEGER REFERENCES users (id)",
        "ALTER TABLE messages ADD COLUMN data TEXT",
        "ALTER TABLE messages ADD COLUMN mention_all INTEGER NOT NULL DEFAULT 0",
        """
        CREATE INDEX messages_mention_all ON messages (conversation, seq)
        WHERE mention_all = 1
        """,
        "ALTER TABLE conversations ADD COLUMN kind TEXT NOT NULL DEFAULT 'direct'",
        "ALTER TABLE conversations ADD COLUMN name TEXT",
        "ALTER TABLE conversations ADD COLUMN key TEXT",
        "ALTER TABLE conversations ADD COLUMN topic TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE conversations ADD COLUMN public INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE conversations ADD COLUMN archived INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE conversations ADD COLUMN created_at INTEGER",
        """
        UPDATE conversations SET kind = 'channel', name = 'General', key = 'general', public = 1
        WHERE id = 'general'
        """,
        "CREATE UNIQUE INDEX conversations_by_key ON conversations (key) WHERE key IS NOT NULL",
        """
        CREATE TABLE members (
            user_id      INTEGER NOT NULL REFERENCES users (id),
            conversation TEXT    NOT NULL,
            role         TEXT    NOT NULL,
            from_seq     INTEGER NOT NULL,
            until_seq    INTEGER,
            read_seq     INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (user_id, conversation)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX members_by_conversation ON members (conversation)",
        """
        INSERT INTO members (user_id, conversation, role, from_seq)
        SELECT id, 'general', 'member', 1 FROM users
        """,
        """
        INSERT OR IGNORE INTO members (user_id, conversation, role, from_seq)
        SELECT user_a, id, 'member', 1 FROM conversations WHERE user_a IS NOT NULL
        UNION ALL
        SELECT user_b, id, 'member', 1 FROM conversations WHERE user_b IS NOT NULL
        """,
        """
        CREATE TABLE mentions (
            user_id      INTEGER NOT NULL,
            conversation TEXT    NOT NULL,
            seq          INTEGER NOT NULL,
            PRIMARY KEY (user_id, conversation, seq)
        ) WITHOUT ROWID
        """,
    ],
    # 4: replies, edits, deletes, reactions and search. Change entries name the message they
    # change by its seq in ``ref``; reactions are rows of their own (counted per emoji); the
    # search index is a contentless FTS5 table of each message's folded words (see
    # server/search.py), filled by the writer since migration 5.
    [
        "ALTER TABLE messages ADD COLUMN ref INTEGER",
        "CREATE INDEX messages_by_ref ON messages (conversation, ref) WHERE ref IS NOT NULL",
        """
        CREATE TABLE reactions (
            conversation TEXT    NOT NULL,
            seq          INTEGER NOT NULL,
            emoji        TEXT    NOT NULL,
            user_id      INTEGER NOT NULL REFERENCES users (id),
            ts           INTEGER NOT NULL,
            PRIMARY KEY (conversation, seq, emoji, user_id)
        ) WITHOUT ROWID
        """,
        "ALTER TABLE users ADD COLUMN folded TEXT",
        _backfill_folded_names,
        """
        CREATE VIRTUAL TABLE search USING fts5 (
            body, content = '', tokenize = 'trigram'
        )
        """,
        # (Here the release of schema 4 created triggers that indexed each message in its
        # INSERT, and indexed every stored message: migration 5 drops those triggers if
        # present and fills the index from its watermark instead, so a database arrives at
        # the same schema either way.)
        # Deletes whose text may still be in free pages or old index segments: counted in
        # the delete's transaction, cleared when the index has been merged since, so that an
        # erasure cut short by a stop or a crash is finished at the next start.
        """
        CREATE TABLE erasures (
            id      INTEGER PRIMARY KEY CHECK (id = 1),
            deletes INTEGER NOT NULL
        )
        """,
    ],
    # 5: the index is filled after the commit, by the writer (storage/search_index.py),
    # instead of by a trigger per message inside it. The watermark starts at the last message
    # the index holds: all of them in a database that schema 4's release indexed, none in one
    # that comes from version 3 now (its backfill runs in the background).
    [
        "DROP TRIGGER IF EXISTS search_insert",
        "DROP TRIGGER IF EXISTS search_update",
        "DROP TRIGGER IF EXISTS search_delete",
        """
        CREATE TABLE search_progress (
            id      INTEGER PRIMARY KEY CHECK (id = 1),
            indexed INTEGER NOT NULL
        )
        """,
        "INSERT INTO search_progress VALUES (1, (SELECT coalesce(max(id), 0) FROM search_docsize))",
        *SEARCH_TRIGGERS,
        # FTS5 merges a level's segments when 16 have gathered instead of 4: a message is
        # rewritten by fewer merges (measured: 14 µs of indexing per message instead of 22,
        # in runs of 512 over 100,000 chat lines) for queries that read more segments (at
        # 1,000,000 messages a word's p99 9.8 ms instead of 6.7 with 8; make bench-search).
        # Stored in the index's own config table.
        "INSERT INTO search (search, rank) VALUES ('automerge', 16)",
    ],
    # 6: the index is built anew, cheaper per message: the marks of sender and conversation
    # packed into a few private use characters (server/search.py, ``_mark``: a sixth of a
    # direct message's trigrams before), and the tokenizer case sensitive, since every form
    # it gets, indexed or queried, is folded already (it no longer folds each character
    # again). The old index's forms cannot be deleted with the new ones (a contentless index
    # deletes a message by its form), so it goes whole (``secure_delete`` zeroes its pages)
    # and the watermark starts again at 0: the writer indexes every message again in the
    # background, as after an upgrade from version 3 (docs/operations.md, "Upgrades").
    [
        "DROP TABLE search",
        """
        CREATE VIRTUAL TABLE search USING fts5 (
            body, content = '', tokenize = 'trigram case_sensitive 1'
        )
        """,
        "INSERT INTO search (search, rank) VALUES ('automerge', 16)",
        "UPDATE search_progress SET indexed = 0",
    ],
]
