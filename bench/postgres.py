"""The PostgreSQL rows of the benchmark: durable throughput beside SQLite's, and what one
hot conversation's counter row costs when several writers share it.

Both start their own PostgreSQL (``initdb`` + ``pg_ctl`` from Debian's packages, the tests'
``tests/pg_server.py``) with ``fsync`` on, as in production, and skip with a note when
PostgreSQL is not installed. The CPU of PostgreSQL's processes is read from /proc beside
beseda's: on PostgreSQL a message costs CPU in both.

Registered as the ``postgres`` scenario (``python -m bench --scenario durable --scenario
postgres`` puts its durable row beside SQLite's of the same run, which the target compares);
``python -m bench.postgres --writers 1 2 4`` runs the counter-row measurement alone.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import pg_server
from beseda.server.chat import dm_conversation
from beseda.storage import NewMessage
from beseda.storage.postgres import PostgresStorage
from beseda.storage.transfer import copy_database

from . import dataset, report, scenarios, servers
from .servers import BESEDA
from .worker import SendPlan

TEXT = "a durable message of about the size of a chat line " * 2
_TICK = os.sysconf("SC_CLK_TCK")


def available() -> str | None:
    """None when the PostgreSQL rows can run, else why not (a note for the report)."""
    if pg_server.available():
        return None
    return "PostgreSQL is not installed (apt-get install postgresql): its rows were skipped"


def server_cpu(server: pg_server.PostgresServer) -> float:
    """CPU seconds used so far by the server's processes (the postmaster and its children:
    backends, the WAL writer, the checkpointer …, those that have exited included), from
    /proc."""
    pid_file = server.data / "postmaster.pid"
    try:
        postmaster = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == postmaster:
            # utime, stime, and cutime, cstime: the backends that have exited (it reaps them).
            total += sum(int(value) for value in fields[11:15])
        elif int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


# -- the hot counter row -----------------------------------------------------------------------


def _writer(url: str, writer: int, hot: bool, count: int, window: int, start_at: float) -> float:
    """One writer process (a node): ``count`` messages, ``window`` at a time, into General
    (``hot``: every writer's messages take numbers from the same counter row) or into a
    direct conversation of its own. Returns its seconds from the common start."""

    async def run() -> float:
        store = PostgresStorage(url, readers=1)
        await store.open()
        try:
            sender = await store.user_by_key(f"w{writer}")
            peer = await store.user_by_key(f"p{writer}")
            assert sender is not None
            assert peer is not None
            conversation = "general" if hot else dm_conversation(sender.id, peer.id)
            recipient = None if hot else peer
            # A first window, not timed: connections, caches and prepared statements warm.
            await asyncio.gather(
                *(
                    store.append_message(
                        NewMessage(conversation, sender, recipient, f"warm{n}", TEXT, 0)
                    )
                    for n in range(window)
                )
            )
            await asyncio.sleep(max(0.0, start_at - time.time()))
            started = time.perf_counter()
            for first in range(0, count, window):
                await asyncio.gather(
                    *(
                        store.append_message(
                            NewMessage(conversation, sender, recipient, f"m{n}", TEXT, 0)
                        )
                        for n in range(first, min(first + window, count))
                    )
                )
            return time.perf_counter() - started
        finally:
            await store.close()

    return asyncio.run(run())


async def _users(url: str, writers: int) -> None:
    store = PostgresStorage(url, readers=1)
    await store.open()
    try:
        for writer in range(writers):
            await store.create_user(f"w{writer}", f"w{writer}", "-", 0)
            await store.create_user(f"p{writer}", f"p{writer}", "-", 0)
    finally:
        await store.close()


def hot_counter(
    writers: tuple[int, ...], count: int, window: int, progress: Any = None
) -> list[dict[str, Any]]:
    """For each number of writers: the messages/s and the cost per message when every
    writer appends to one conversation, and when each has its own."""
    rows = []
    context = multiprocessing.get_context("spawn")
    with pg_server.postgres_server(fsync=True) as server:
        for n in writers:
            for hot in (True, False):
                if progress is not None:
                    progress(f"postgresql counter row, {n} writers, {'one' if hot else 'own'}")
                url = server.create_database()
                asyncio.run(_users(url, n))
                start_at = time.time() + 3.0  # after every process has connected and warmed
                cpu0 = server_cpu(server)
                with context.Pool(n) as pool:
                    seconds = pool.starmap(
                        _writer, [(url, w, hot, count, window, start_at) for w in range(n)]
                    )
                cpu = server_cpu(server) - cpu0
                total = n * count
                wall = max(seconds)
                rows.append(
                    {
                        "writers": n,
                        "conversations": "one (hot)" if hot else "one each",
                        "messages": total,
                        "window": window,
                        "per_s": round(total / wall, 1),
                        "us_per_message": round(wall / total * 1e6, 1),
                        "postgres_cpu_us_per_message": round(cpu / total * 1e6, 1),
                    }
                )
                server.drop_database(url)
    for row in rows:
        if row["conversations"] == "one (hot)":
            own = next(r for r in rows if r["writers"] == row["writers"] and r is not row)
            row["cost_vs_own"] = round(row["us_per_message"] / own["us_per_message"], 2)
    return rows


# -- the scenario ------------------------------------------------------------------------------


def durable_on_postgres(bench: scenarios.Bench, server: pg_server.PostgresServer) -> dict[str, Any]:
    """The durable scenario's target run (each sender waits for every acknowledgement), with
    ``beseda serve --db postgresql://…``; PostgreSQL's CPU beside beseda's."""
    size = bench.sizes
    senders = size.durable_senders
    total = senders * size.durable_messages
    url = server.create_database()
    asyncio.run(copy_database(bench.users_db(2 * senders), url))  # migrate-db's own code
    sends = [
        SendPlan(client=i, target=dataset.user_name(senders + i), count=total // senders, window=1)
        for i in range(senders)
    ]
    service = servers.start(BESEDA, bench.workdir, bench.placement, db=url)
    try:
        load = bench.load(BESEDA, dataset.credentials(0, senders), sends=sends)
        before = server_cpu(server)
        row = bench.timed(
            service,
            load,
            lambda outcome, cpu: scenarios._durable_row(BESEDA, outcome, cpu, senders, total),
            "acks_per_s",
        )
        database_cpu = server_cpu(server) - before  # sign-ins included: a little above
        service.stop()
        stats = servers.beseda_stats(service, bench.workdir)
    finally:
        service.stop()
    runs = max(1, size.repeats)
    row["engine"] = "postgresql"
    row["commits"] = round(stats.get("batches", 0) / runs)
    row["mean_batch"] = round(stats.get("writes", 0) / max(stats.get("batches", 0), 1), 1)
    row["postgres_cpu_us_per_message"] = round(database_cpu / max(row["acks"] * runs, 1) * 1e6, 1)
    return row


def scenario(bench: scenarios.Bench) -> dict[str, Any]:
    missing = available()
    if missing is not None:
        bench.progress("postgresql: not installed")
        bench.progress("postgresql: not installed")
        return {"skipped": missing}
    bench.progress("durable throughput beseda on PostgreSQL")
    with pg_server.postgres_server(fsync=True) as server:
        durable = durable_on_postgres(bench, server)
    bench.progress("postgresql counter row")
    size = bench.sizes
    counter = hot_counter(size.counter_writers, size.counter_messages, size.counter_window)
    return {"durable": durable, "hot_counter": counter}


scenarios.register("postgres", scenario, lambda sizes, contenders: 2)


@report.target
def _postgres_targets(results: dict[str, Any]) -> list[report.Target]:
    ours = results["scenarios"].get("postgres", {}).get("durable")
    sqlite = results["scenarios"].get("durable", {}).get("beseda")
    if not ours:
        return []
    share = round(ours["acks_per_s"] / sqlite["acks_per_s"], 2) if sqlite else None
    return [
        report.row_(
            "durable throughput on PostgreSQL: acknowledged messages/s",
            ours["acks_per_s"],
            sqlite["acks_per_s"] if sqlite else None,
            "≥ 0.5× SQLite's (same run)",
            None if share is None else share >= 0.5,
            ("" if share is None else f"{share}× SQLite; ")
            + f"mean batch {ours['mean_batch']}; PostgreSQL's own CPU "
            f"{ours['postgres_cpu_us_per_message']} µs/message",
        )
    ]


@report.section
def _postgres_section(results: dict[str, Any]) -> str | None:
    found = results["scenarios"].get("postgres")
    if not found or "durable" not in found:
        return None
    ours = found["durable"]
    lines = [
        "## PostgreSQL",
        "",
        "The durable scenario's target run with `beseda serve --db postgresql://…` on a "
        "throwaway PostgreSQL with fsync on (users copied by `beseda migrate-db`'s code): "
        f"{ours['acks_per_s']} acknowledged messages/s, ack p99 {ours['ack_p99_ms']} ms, mean "
        f"batch {ours['mean_batch']}, beseda's CPU {ours['cpu_us_per_unit']} µs/message and "
        f"PostgreSQL's {ours['postgres_cpu_us_per_message']} µs/message.",
        "",
        "### A hot conversation's counter row",
        "",
        "Writer processes (as nodes would) append messages, each keeping "
        f"{found['hot_counter'][0]['window'] if found['hot_counter'] else '?'} in flight, "
        "into one conversation (every transaction locks its counter row until its commit), "
        "then each into a conversation of its own (docs/scaling.md).",
        "",
        "| writers | into | messages/s | µs/message (wall) | PostgreSQL CPU µs/message | "
        "hot vs own |",
        "|---|---|---|---|---|---|",
    ]
    for r in found["hot_counter"]:
        lines.append(
            f"| {r['writers']} | {r['conversations']} | {r['per_s']} | {r['us_per_message']} "
            f"| {r['postgres_cpu_us_per_message']} | {r.get('cost_vs_own', '')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--messages", type=int, default=2000, help="per writer")
    parser.add_argument("--window", type=int, default=16, help="in flight per writer")
    args = parser.parse_args()
    for row in hot_counter(tuple(args.writers), args.messages, args.window, print):
        print(row)


if __name__ == "__main__":
    main()
