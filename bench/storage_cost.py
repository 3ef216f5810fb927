"""``python -m bench.storage_cost``: what a durable message costs in the storage layer alone.

The durable scenario measures the whole server. This takes the network and the protocol out:
the real :class:`~beseda.storage.sqlite.SQLiteStorage` (WAL, ``synchronous=FULL``, the writer
thread) appends direct messages from 100 senders to 100 recipients, ``batch`` at a time, as
the durable scenario's senders do, and reports the process's user and system CPU per message
(``getrusage``: both threads, the kernel's share of the WAL writes and fsyncs included), and
the same rows written by plain sqlite3 ``executemany`` in transactions of the same size.

``--arrivals RATE`` instead submits the appends one at a time at random (exponential) gaps,
``RATE`` per second, as independent users do, alternately with the writer's gathering wait
(``MAX_GATHER``) on and off: CPU per message, messages per commit and the latency from
submission to commit, for each.

``--postgresql`` adds the same appends through :class:`~beseda.storage.postgres.PostgresStorage`
on a throwaway PostgreSQL with fsync on (its server's CPU not counted: the user and system
columns are this process's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import resource
import tempfile
import time
from pathlib import Path

from beseda.server.chat import dm_conversation
from beseda.storage import NewMessage, sqlite
from beseda.storage.sqlite import SQLiteStorage

from .dataset import raw_inserts
from .postgres import pg_server

SENDERS = 100
TEXT = "a durable message of about the size of a chat line " * 2


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


async def _beseda(path: Path, total: int, batch: int) -> dict[str, float]:
    storage = SQLiteStorage(path)
    await storage.open()
    try:
        users = [await storage.create_user(f"u{n}", f"u{n}", "-", 0) for n in range(2 * SENDERS)]
        senders, recipients = users[:SENDERS], users[SENDERS:]
        before = storage.stats["batches"]
        user0, sys0 = _cpu()
        started = time.perf_counter()
        for first in range(0, total, batch):
            calls = []
            for n in range(first, min(first + batch, total)):
                sender, recipient = senders[n % SENDERS], recipients[n % SENDERS]
                conversation = dm_conversation(sender.id, recipient.id)
                message = NewMessage(conversation, sender, recipient, f"c{n}", TEXT, 0)
                calls.append(storage.append_message(message))
            await asyncio.gather(*calls)
        seconds = time.perf_counter() - started
        user1, sys1 = _cpu()
        commits = storage.stats["batches"] - before
    finally:
        await storage.close()
    return {
        "per_s": total / seconds,
        "user_us": (user1 - user0) / total * 1e6,
        "sys_us": (sys1 - sys0) / total * 1e6,
        "mean_batch": total / max(commits, 1),
    }


async def _arrivals(path: Path, total: int, rate: float, gather: float) -> dict[str, float]:
    sqlite.MAX_GATHER = gather  # read by the writer at each batch
    storage = SQLiteStorage(path)
    await storage.open()
    try:
        users = [await storage.create_user(f"u{n}", f"u{n}", "-", 0) for n in range(2 * SENDERS)]
        before = storage.stats["batches"]
        rng = random.Random(1)
        latencies: list[float] = []
        futures = []
        user0, sys0 = _cpu()
        due = time.perf_counter()
        for n in range(total):
            due += rng.expovariate(rate)
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sender, recipient = users[n % SENDERS], users[SENDERS + n % SENDERS]
            conversation = dm_conversation(sender.id, recipient.id)
            sent = time.perf_counter()
            future = storage.append_message(
                NewMessage(conversation, sender, recipient, f"c{n}", TEXT, 0)
            )
            future.add_done_callback(
                lambda _, sent=sent: latencies.append(time.perf_counter() - sent)
            )
            futures.append(future)
        await asyncio.gather(*futures)
        user1, sys1 = _cpu()
        commits = storage.stats["batches"] - before
    finally:
        await storage.close()
    latencies.sort()
    return {
        "cpu_us": (user1 - user0 + sys1 - sys0) / total * 1e6,
        "per_commit": total / max(commits, 1),
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
    }


def arrivals(rate: float, total: int, rounds: int) -> None:
    default = sqlite.MAX_GATHER
    print("| gathering | CPU µs/msg (process) | messages per commit | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for _ in range(rounds):
        for gather in (0.0, default):
            with tempfile.TemporaryDirectory(prefix="beseda-storage-cost-") as workdir:
                got = asyncio.run(_arrivals(Path(workdir) / "a.db", total, rate, gather))
            print(
                f"| {'on' if gather else 'off'} | {got['cpu_us']:.1f} | {got['per_commit']:.2f} "
                f"| {got['p50_ms']:.2f} | {got['p99_ms']:.2f} |",
                flush=True,
            )
    sqlite.MAX_GATHER = default


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.storage_cost", description=__doc__)
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument(
        "--batch", type=int, action="append", help="repeatable (default 1 8 36 100)"
    )
    parser.add_argument(
        "--arrivals",
        type=float,
        metavar="RATE",
        help="appends one at a time at RATE/s, gathering on and off alternately",
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --arrivals")
    parser.add_argument(
        "--postgresql", action="store_true", help="add PostgresStorage (a throwaway server)"
    )
    args = parser.parse_args()
    if args.arrivals:
        arrivals(args.arrivals, min(args.messages, round(args.arrivals * 2)), args.rounds)
        return
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(pg_server.postgres_server(fsync=True)) if args.postgresql else None
        header = "| batch | beseda storage msgs/s | user µs/msg | sys µs/msg | raw sqlite3 rows/s |"
        rule = "|---|---|---|---|---|"
        if pg is not None:
            header += " PostgresStorage msgs/s | its user µs/msg | vs SQLite |"
            rule += "---|---|---|"
        print(header)
        print(rule)
        for batch in args.batch or [1, 8, 36, 100]:
            total = min(args.messages, 2_000 * batch)  # batch 1 is one fsync per message
            with tempfile.TemporaryDirectory(prefix="beseda-storage-cost-") as workdir:
                ours = asyncio.run(_beseda(Path(workdir) / "beseda.db", total, batch))
                raw = raw_inserts(Path(workdir) / "raw.db", total, batch, 600, senders=SENDERS)
            line = (
                f"| {batch} | {ours['per_s']:,.0f} | {ours['user_us']:.1f} "
                f"| {ours['sys_us']:.1f} | {raw['rows_per_s']:,.0f} |"
            )
            if pg is not None:
                theirs = asyncio.run(_beseda(pg.create_database(), total, batch))
                line += (
                    f" {theirs['per_s']:,.0f} | {theirs['user_us']:.1f} "
                    f"| {theirs['per_s'] / ours['per_s']:.2f}× |"
                )
            print(line)


if __name__ == "__main__":
    main()
