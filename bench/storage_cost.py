"""``python -m bench.storage_cost``: what a durable message costs in the storage layer alone.

The durable scenario measures the whole server. This takes the network and the protocol out:
the real :class:`~beseda.storage.sqlite.SQLiteStorage` (WAL, ``synchronous=FULL``, the writer
thread) appends direct messages from 100 senders to 100 recipients, ``batch`` at a time, as
the durable scenario's senders do, and reports the process's user and system CPU per message
(``getrusage``: both threads, the kernel's share of the WAL writes and fsyncs included), and
the same rows written by plain sqlite3 ``executemany`` in transactions of the same size.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from pathlib import Path

from beseda.server.chat import dm_conversation
from beseda.storage import NewMessage
from beseda.storage.sqlite import SQLiteStorage

from .dataset import raw_inserts

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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.storage_cost", description=__doc__)
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument(
        "--batch", type=int, action="append", help="repeatable (default 1 8 36 100)"
    )
    args = parser.parse_args()
    print("| batch | beseda storage msgs/s | user µs/msg | sys µs/msg | raw sqlite3 rows/s |")
    print("|---|---|---|---|---|")
    for batch in args.batch or [1, 8, 36, 100]:
        total = min(args.messages, 2_000 * batch)  # batch 1 is one fsync per message
        with tempfile.TemporaryDirectory(prefix="beseda-storage-cost-") as workdir:
            ours = asyncio.run(_beseda(Path(workdir) / "beseda.db", total, batch))
            raw = raw_inserts(Path(workdir) / "raw.db", total, batch, 600, senders=SENDERS)
        print(
            f"| {batch} | {ours['per_s']:,.0f} | {ours['user_us']:.1f} | {ours['sys_us']:.1f} "
            f"| {raw['rows_per_s']:,.0f} |"
        )


if __name__ == "__main__":
    main()
