"""Run the beseda server for a benchmark: ``beseda serve`` with the limits raised.

The server is the production one (``beseda.server.app.Server``, the real argon2 parameters,
WAL and ``synchronous=FULL``); only the per-user and per-address limits that would refuse a
load generator on one address are raised. On exit it writes the storage's group-commit
counts and the hub's delivery count to ``--stats`` as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from pathlib import Path

from beseda.server.app import Server
from beseda.server.config import Limits, Settings

from .system import LOOPBACK, raise_fd_limit

UNLIMITED = 1e9


def bench_settings(port: int, db: Path) -> Settings:
    limits = Limits(
        auth_timeout=600.0,
        max_connections=1_000_000,
        max_connections_per_address=1_000_000,
        message_rate=UNLIMITED,
        message_burst=1_000_000_000,
        login_failures_per_address=(UNLIMITED, UNLIMITED),
        registrations_per_address=(UNLIMITED, UNLIMITED),
    )
    return Settings(
        host=LOOPBACK, port=port, db=db, log_level="WARNING", limits=limits, http_port=None
    )


async def run(port: int, db: Path, stats: Path | None) -> None:
    server = Server(bench_settings(port, db))
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        counts = dict(server.storage.stats)
        counts["delivered"] = server.hub.delivered
        await server.stop()
        if stats is not None:
            await asyncio.to_thread(stats.write_text, json.dumps(counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--stats", type=Path)
    args = parser.parse_args()
    raise_fd_limit()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args.port, args.db, args.stats))


if __name__ == "__main__":
    main()
