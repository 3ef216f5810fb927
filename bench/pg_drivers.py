"""``python -m bench.pg_drivers``: asyncpg or psycopg 3 for the PostgreSQL store, measured.

Both drivers run the store's two hot paths on the same throwaway PostgreSQL (fsync on, as in
production): one message per transaction (counter row ``UPDATE … RETURNING``, then the
``INSERT``: the cost without load), and group commit (``batch`` messages in one transaction,
the counter rows updated once, the rows inserted with one statement from arrays). Reported:
transactions/s and messages/s, and the client's CPU per message (``getrusage``; the server's
own CPU is the same for both). The figures chose the driver (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pg_server import postgres_server

SCHEMA = """
CREATE TABLE counters (id text PRIMARY KEY, last_seq bigint NOT NULL);
CREATE TABLE rows (
    id bigserial PRIMARY KEY, conversation text NOT NULL, seq bigint NOT NULL,
    sender bigint NOT NULL, client_id text NOT NULL, body text NOT NULL,
    UNIQUE (conversation, seq), UNIQUE (sender, client_id)
);
INSERT INTO counters SELECT 'c' || n, 0 FROM generate_series(0, 99) n;
"""

TEXT = "a durable message of about the size of a chat line " * 2

_BUMP = """
    UPDATE counters c SET last_seq = c.last_seq + v.n
    FROM unnest($1::text[], $2::bigint[]) AS v (id, n) WHERE c.id = v.id
    RETURNING c.id, c.last_seq
"""
_BATCH_INSERT = """
    INSERT INTO rows (conversation, seq, sender, client_id, body)
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[])
"""


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _batch(first: int, size: int) -> tuple[dict[str, int], list[list[Any]]]:
    per: dict[str, int] = {}
    columns: list[list[Any]] = [[], [], [], [], []]
    for n in range(first, first + size):
        conversation = f"c{n % 100}"
        per[conversation] = per.get(conversation, 0) + 1
        columns[0].append(conversation)
        columns[2].append(n % 100)
        columns[3].append(f"m{n}")
        columns[4].append(TEXT)
    return per, columns


async def _asyncpg(url: str, total: int, batch: int) -> dict[str, float]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SCHEMA)
        results: dict[str, float] = {}
        for size in (1, batch):
            start, cpu = time.perf_counter(), _cpu()
            for first in range(0, total, size):
                per, columns = _batch(first + size * total, size)
                async with conn.transaction():
                    bumped = await conn.fetch(_BUMP, list(per), list(per.values()))
                    columns[1] = _seqs_in_order(columns[0], per, dict(bumped))
                    await conn.execute(_BATCH_INSERT, *columns)
            seconds = time.perf_counter() - start
            results[f"batch{size}_msgs_per_s"] = total / seconds
            results[f"batch{size}_cpu_us"] = (_cpu() - cpu) / total * 1e6
        return results
    finally:
        await conn.close()


async def _psycopg(url: str, total: int, batch: int) -> dict[str, float]:
    import psycopg

    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        await conn.execute(SCHEMA.replace("rows", "rows2").replace("counters", "counters2"))
        bump = _BUMP.replace("$1", "%s").replace("$2", "%s").replace("counters", "counters2")
        insert = (
            _BATCH_INSERT.replace("rows", "rows2")
            .replace("$1", "%s")
            .replace("$2", "%s")
            .replace("$3", "%s")
            .replace("$4", "%s")
            .replace("$5", "%s")
        )
        results: dict[str, float] = {}
        for size in (1, batch):
            start, cpu = time.perf_counter(), _cpu()
            for first in range(0, total, size):
                per, columns = _batch(first + size * total, size)
                async with conn.transaction():
                    cursor = await conn.execute(bump, (list(per), list(per.values())), prepare=True)
                    bumped = await cursor.fetchall()
                    columns[1] = _seqs_in_order(columns[0], per, dict(bumped))
                    await conn.execute(insert, columns, prepare=True)
            seconds = time.perf_counter() - start
            results[f"batch{size}_msgs_per_s"] = total / seconds
            results[f"batch{size}_cpu_us"] = (_cpu() - cpu) / total * 1e6
        return results
    finally:
        await conn.close()


def _seqs_in_order(
    conversations: list[str], per: dict[str, int], last: dict[str, int]
) -> list[int]:
    """The seqs taken per conversation (each up to ``last``), handed out in row order."""
    firsts = {conversation: last[conversation] - count + 1 for conversation, count in per.items()}
    out = []
    for conversation in conversations:
        out.append(firsts[conversation])
        firsts[conversation] += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    with postgres_server(fsync=True) as pg:
        for name, run in (("asyncpg", _asyncpg), ("psycopg", _psycopg)):
            url = pg.create_database()
            figures = asyncio.run(run(url, args.messages, args.batch))
            print(name, " ".join(f"{key}={value:.1f}" for key, value in figures.items()))


if __name__ == "__main__":
    main()
