"""Databases for the benchmark, written directly with sqlite3 (seconds, not hours).

Users are inserted with one real argon2id hash (the production parameters, computed once) and a
session token each, so generator connections sign in by token without paying a hash, and the
sign-in storm pays the real price. Messages for the history scenario are bulk-inserted with the
schema of ``beseda.storage.migrations``. Also the raw-sqlite3 reference: plain inserts at
beseda's durability (WAL, ``synchronous=FULL``) and batch size.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from beseda.server.accounts import PasswordHasher
from beseda.storage.search_index import index_all
from beseda.storage.sqlite import connect, migrate

from .wire import Credential

PASSWORD = "bench-password"
TEXT = "a benchmark message of ordinary length, about sixty characters"


def user_name(index: int) -> str:
    return f"u{index}"


def token(index: int) -> str:
    return f"bench-token-{index:08d}"


def credentials(first: int, count: int, *, password: bool = False) -> list[Credential]:
    if password:
        return [Credential(user_name(i), password=PASSWORD) for i in range(first, first + count)]
    return [Credential(user_name(i), token=token(i)) for i in range(first, first + count)]


def password_hash() -> str:
    async def compute() -> str:
        hasher = PasswordHasher()
        try:
            return await hasher.hash(PASSWORD)
        finally:
            hasher.close()

    return asyncio.run(compute())


def _bulk(path: Path) -> sqlite3.Connection:
    conn = connect(path)
    migrate(conn)
    # Building, not serving: durability does not matter until the file is complete.
    conn.execute("PRAGMA synchronous = OFF")
    return conn


def _caught_up(conn: sqlite3.Connection) -> None:
    """Index what was inserted for search, as a running server's writer would have by now
    (otherwise the server under test would spend the run on the backfill), and checkpoint."""
    index_all(conn)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def build_users(path: Path, count: int, hashed: str) -> None:
    """A fresh database with users ``u0`` … and their tokens (user id = index + 1)."""
    path.unlink(missing_ok=True)
    conn = _bulk(path)
    now = int(time.time() * 1000)
    with conn:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO users (id, name, key, password_hash, created_at) VALUES (?, ?, ?, ?, ?)",
            ((i + 1, user_name(i), user_name(i), hashed, now) for i in range(count)),
        )
        conn.executemany(
            "INSERT INTO tokens (hash, user_id, created_at) VALUES (?, ?, ?)",
            ((hashlib.sha256(token(i).encode()).digest(), i + 1, now) for i in range(count)),
        )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def copy_database(source: Path, target: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(source, target)


def add_general_messages(path: Path, count: int, senders: int, batch: int = 50_000) -> int:
    """Append ``count`` messages to the general room; returns its last seq."""
    conn = _bulk(path)
    (last,) = conn.execute("SELECT last_seq FROM conversations WHERE id = 'general'").fetchone()
    now = int(time.time() * 1000)
    for first in range(0, count, batch):
        size = min(batch, count - first)
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO messages (conversation, seq, sender_id, recipient_id, client_id, text, "
            "ts) VALUES ('general', ?, ?, NULL, ?, ?, ?)",
            (
                (last + n + 1, (last + n) % senders + 1, f"h{last + n}", TEXT, now)
                for n in range(first, first + size)
            ),
        )
        conn.execute(
            "UPDATE conversations SET last_seq = ?, last_ts = ? WHERE id = 'general'",
            (last + first + size, now),
        )
        conn.execute("COMMIT")
    _caught_up(conn)
    conn.close()
    return int(last + count)


def raw_inserts(
    path: Path, total: int, batch: int, timeout: float, *, senders: int = 1
) -> dict[str, float]:
    """The floor for durable writes: plain INSERTs, one commit per ``batch``, FULL sync.

    Row ``i`` comes from sender ``i % senders`` into that sender's own direct conversation,
    the spread of the durable scenario: each commit then touches as many index pages as
    beseda's do (with one sender and one conversation it touches about three, which is a
    cheaper job than the one measured).
    """
    path.unlink(missing_ok=True)
    conn = connect(path)
    migrate(conn)
    conn.executemany(
        "INSERT INTO users (id, name, key, password_hash, created_at) VALUES (?, ?, ?, '', 0)",
        ((n, f"u{n}", f"u{n}") for n in range(1, 2 * senders + 1)),
    )
    now = int(time.time() * 1000)
    written = 0
    cpu0 = time.thread_time()
    started = time.perf_counter()
    deadline = started + timeout
    while written < total and time.perf_counter() < deadline:
        size = min(batch, total - written)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO messages (conversation, seq, sender_id, recipient_id, client_id, text, "
            "ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (_raw_row(written + n, senders, now) for n in range(size)),
        )
        conn.execute("COMMIT")
        written += size
    seconds = time.perf_counter() - started
    cpu = time.thread_time() - cpu0
    conn.close()
    return {"rows": written, "seconds": seconds, "rows_per_s": written / seconds, "cpu_s": cpu}


def raw_commits(path: Path, samples: int) -> dict[str, Any]:
    """One row per transaction, ``samples`` times, WAL and ``synchronous=FULL``: each commit's
    wall time (its fsync) and the CPU (this thread, user + system) per commit."""
    path.unlink(missing_ok=True)
    conn = connect(path)
    migrate(conn)
    conn.executemany(
        "INSERT INTO users (id, name, key, password_hash, created_at) VALUES (?, ?, ?, '', 0)",
        ((n, f"u{n}", f"u{n}") for n in (1, 2)),
    )
    now = int(time.time() * 1000)
    times = []
    cpu0 = time.thread_time()
    for n in range(samples):
        began = time.perf_counter_ns()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO messages (conversation, seq, sender_id, recipient_id, client_id, text, "
            "ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
            ("dm:1:2", n + 1, 1, 2, f"r{n}", TEXT, now),
        )
        conn.execute("COMMIT")
        times.append(time.perf_counter_ns() - began)
    cpu = time.thread_time() - cpu0
    conn.close()
    ordered = sorted(times)
    return {
        "commits": samples,
        "p50_ms": round(ordered[len(ordered) // 2] / 1e6, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1e6, 3),
        "cpu_us_per_commit": round(cpu / samples * 1e6, 1),
    }


def _raw_row(n: int, senders: int, now: int) -> tuple[object, ...]:
    sender = n % senders + 1
    recipient = sender + senders
    return (f"dm:{sender}:{recipient}", n // senders + 1, sender, recipient, f"r{n}", TEXT, now)


def memberships(users: int, channels: int, per_user: int, seed: int) -> list[list[int]]:
    """Which users (indices) are in which channel: every user in ``per_user`` channels, every
    channel of ``users * per_user / channels`` members, chosen at random (fixed ``seed``)."""
    total = users * per_user
    if total % channels:
        raise ValueError("users × channels per user must divide evenly among the channels")
    size = total // channels
    if size > users:
        raise ValueError("a channel cannot have more members than there are users")
    rng = random.Random(seed)
    slots = [user for user in range(users) for _ in range(per_user)]
    rng.shuffle(slots)
    groups = [slots[k * size : (k + 1) * size] for k in range(channels)]
    members = [set(group) for group in groups]
    # A user drawn twice into one channel swaps that place with a place elsewhere where both
    # swapped users are new; the seed makes the repairs as reproducible as the draw.
    for k, group in enumerate(groups):
        seen: set[int] = set()
        for place, user in enumerate(group):
            if user not in seen:
                seen.add(user)
                continue
            while True:
                other = rng.randrange(channels)
                if other == k:
                    continue
                spot = rng.randrange(size)
                swapped = groups[other][spot]
                if swapped in members[k] or user in members[other]:
                    continue
                groups[other][spot] = user
                members[other].discard(swapped)
                members[other].add(user)
                group[place] = swapped
                members[k].add(swapped)
                seen.add(swapped)
                break
    return [sorted(group) for group in groups]


def add_channels(path: Path, members: list[list[int]], *, prefix: str = "bench") -> list[str]:
    """Public channels ``c:1`` … with these members (user indices, the first one its owner),
    each opened by its ``created`` entry at seq 1 and readable from there; returns their ids."""
    conn = _bulk(path)
    now = int(time.time() * 1000)
    ids = [f"c:{k + 1}" for k in range(len(members))]
    with conn:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO conversations (id, last_seq, last_ts, kind, name, key, topic, public, "
            "created_at) VALUES (?, 1, ?, 'channel', ?, ?, '', 1, ?)",
            ((cid, now, f"{prefix}-{k}", f"{prefix}-{k}", now) for k, cid in enumerate(ids)),
        )
        conn.executemany(
            "INSERT INTO messages (conversation, seq, sender_id, target_id, client_id, text, ts, "
            "kind, data) VALUES (?, 1, ?, NULL, ?, '', ?, 'created', ?)",
            (
                (
                    cid,
                    group[0] + 1,
                    f"~created~{cid}~1~" + "-" * 64,
                    now,
                    json.dumps({"name": f"{prefix}-{k}"}),
                )
                for k, (cid, group) in enumerate(zip(ids, members, strict=True))
            ),
        )
        conn.executemany(
            "INSERT INTO members (user_id, conversation, role, from_seq) VALUES (?, ?, ?, 1)",
            (
                (user + 1, cid, "owner" if place == 0 else "member")
                for cid, group in zip(ids, members, strict=True)
                for place, user in enumerate(group)
            ),
        )
    _caught_up(conn)
    conn.close()
    return ids


def add_channel_messages(
    path: Path, counts: dict[str, int], senders: dict[str, list[int]], seed: int
) -> dict[str, int]:
    """Append ``counts[c]`` messages to each channel ``c``, from its ``senders`` (user indices)
    at random, interleaved across channels in a random order (ids follow arrival, as when
    they are posted live); returns each channel's last seq."""
    rng = random.Random(seed)
    order = [cid for cid, count in counts.items() for _ in range(count)]
    rng.shuffle(order)
    conn = _bulk(path)
    last = {
        cid: conn.execute("SELECT last_seq FROM conversations WHERE id = ?", (cid,)).fetchone()[0]
        for cid in counts
    }
    now = int(time.time() * 1000)
    rows = []
    for cid in order:
        last[cid] += 1
        sender = rng.choice(senders[cid]) + 1
        rows.append((cid, last[cid], sender, f"s~{cid}~{last[cid]}", TEXT, now))
    with conn:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO messages (conversation, seq, sender_id, recipient_id, client_id, text, "
            "ts) VALUES (?, ?, ?, NULL, ?, ?, ?)",
            rows,
        )
        conn.executemany(
            "UPDATE conversations SET last_seq = ?, last_ts = ? WHERE id = ?",
            ((seq, now, cid) for cid, seq in last.items()),
        )
    _caught_up(conn)
    conn.close()
    return last
