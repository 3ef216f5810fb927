"""``python -m bench.bus_throughput``: how many entries per second one Redis carries between
beseda nodes, and what one costs: the figures of docs/scaling.md ("The bus").

It starts its own ``redis-server`` (no persistence), opens one publishing ``RedisBus`` and
``--subscribers`` receiving ones (each a node), publishes ``--entries`` message entries as
the core does (``publish`` from the commit callback, never awaiting), and reports entries per
second until every subscriber has them all, the encoded size of one, and the CPU seconds of
Redis and of this process per entry. Every bus runs in this one process, so the figure is a
floor for what a node's event loop spends; Redis's CPU is its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from beseda.bus import BusEvent, EntryPosted, Origin
from beseda.bus.redis import RedisBus, encode
from beseda.protocol.schema import Entry

from .cluster import redis_server
from .system import cpu_seconds


def entry(seq: int) -> Entry:
    return Entry(
        id=seq,
        conversation="c:42",
        seq=seq,
        sender="someone",
        text="a message of about the length people write in a team chat, give or take",
        ts=1_764_000_000_000 + seq,
        client_id=f"client-{seq}",
    )


async def measure(url: str, redis_pid: int, entries: int, subscribers: int) -> dict[str, float]:
    sender = RedisBus(url, "sender")
    receivers = [RedisBus(url, f"node-{k}") for k in range(subscribers)]
    counts = [0] * subscribers
    done = asyncio.Event()
    for k, bus in enumerate(receivers):

        def count(event: BusEvent, k: int = k) -> None:
            counts[k] += 1
            if min(counts) >= entries:
                done.set()

        bus.subscribe(count)
    for bus in (sender, *receivers):
        await bus.open()
    try:
        events = [
            EntryPosted(entry(seq), frozenset(range(50)), Origin("sender", 1))
            for seq in range(1, entries + 1)
        ]
        size = len(encode("sender", events[0]))
        redis0, self0 = cpu_seconds(redis_pid), time.process_time()
        start = time.perf_counter()
        for number, event in enumerate(events):
            sender.publish(event)
            if number % 500 == 499:
                await asyncio.sleep(0)  # as the loop turns between commits
        try:
            await asyncio.wait_for(done.wait(), 60)
        except TimeoutError:
            raise SystemExit(f"lost: {counts} of {entries}") from None
        wall = time.perf_counter() - start
        redis_cpu = cpu_seconds(redis_pid) - redis0
        own_cpu = time.process_time() - self0
    finally:
        for bus in (sender, *receivers):
            await bus.close()
    return {
        "entries": entries,
        "subscribers": subscribers,
        "bytes_per_entry": size,
        "entries_per_s": round(entries / wall),
        "redis_cpu_us_per_entry": round(redis_cpu / entries * 1e6, 2),
        "process_cpu_us_per_entry": round(own_cpu / entries * 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--subscribers", type=int, action="append")
    args = parser.parse_args()
    for subscribers in args.subscribers or [1, 2, 4]:
        # A fresh Redis for each count of subscribers.
        with (
            tempfile.TemporaryDirectory() as directory,
            redis_server(Path(directory), []) as (url, proc),
        ):
            figures = asyncio.run(measure(url, proc.pid, args.entries, subscribers))
        print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
