"""Helpers of the storage tests (unit and integration): messages to append, a held lock.

Not in ``conftest.py``: pytest imports every ``conftest.py`` under that one module name, so a
test that imports from it may get another directory's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from beseda.protocol.schema import GENERAL
from beseda.server.chat import dm_conversation
from beseda.storage import NewMessage, UserRecord

TS = 1_700_000_000_000
"""A fixed timestamp (ms)."""


def general(sender: UserRecord, client_id: str, text: str = "hi", ts: int = TS) -> NewMessage:
    return NewMessage(GENERAL, sender, None, client_id, text, ts)


def direct(
    sender: UserRecord, recipient: UserRecord, client_id: str, text: str = "hi", ts: int = TS
) -> NewMessage:
    return NewMessage(
        dm_conversation(sender.id, recipient.id), sender, recipient, client_id, text, ts
    )


@contextmanager
def write_lock(path: Path) -> Iterator[None]:
    """Hold the database's write lock from another connection: the server's writer then
    waits at its next commit, and every write queued meanwhile joins the batch after it."""
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        blocker.execute("COMMIT")
        blocker.close()
