"""Versioned schema migrations for SQLite.

``PRAGMA user_version`` holds how many have been applied. Each migration is a list of
statements run in one transaction. Never edit a released migration: append a new one.
"""

from __future__ import annotations

from typing import Final

MIGRATIONS: Final[list[list[str]]] = [
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
]
