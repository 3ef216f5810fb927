"""Fan-out across two nodes: one sender, N receivers spread over two beseda nodes on one
database and one Redis, beside the same fan-out into one node, in the same run.

What it measures is the bus: the sender's node delivers to its own half of the receivers at
once and publishes each message to Redis once; the other node gets it from Redis and delivers
to its half. Both nodes open the same prepared SQLite file (one sender writes: the storage is
not what is measured here; the PostgreSQL rows measure storage). The nodes and Redis run on
the server's core, as the single node does, so the two-node row pays for two processes and
Redis on the same CPU: what it shows is the cost of the hop, not a gain of capacity.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import servers
from .generator import LoadGenerator
from .servers import BESEDA
from .system import LOOPBACK, Service, cpu_seconds, free_port, wait_for_port


def redis_binary() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/sbin/redis-server" if Path("/usr/sbin/redis-server").exists() else None
    )


@contextmanager
def redis_server(workdir: Path, prefix: list[str]) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A throwaway ``redis-server`` (no persistence) on a free port: its URL and process."""
    binary = redis_binary()
    assert binary is not None
    port = free_port()
    log = (workdir / f"redis-{port}.log").open("ab")
    proc = subprocess.Popen(
        [
            *prefix,
            binary,
            "--port",
            str(port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, proc, 20.0)
        yield f"redis://{LOOPBACK}:{port}/0", proc
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def cluster_fanout(bench: Any) -> dict[str, Any]:
    """The single-node row and the two-node row at N = ``repeat_n``, paced."""
    from .scenarios import fanout_load, median_run, settle, summary

    size = bench.sizes
    n = size.repeat_n
    rate = size.paced_rate
    if redis_binary() is None:
        bench.notes.append("cluster: redis-server is not installed; no two-node row")
        return {}

    def single() -> dict[str, Any]:
        with bench.server(BESEDA, users=n + 1) as service:
            outcome, cpu, _ = bench.drive(service, fanout_load(bench, BESEDA, n, rate))
        return summary(BESEDA, outcome, cpu, outcome.deliveries, n=n, nodes=1, unit="delivery")

    def double() -> dict[str, Any]:
        db = bench.users_db(n + 1)
        prefix = bench.placement.server_prefix()
        with redis_server(bench.workdir, prefix) as (url, redis):
            nodes: list[Service] = []
            try:
                for name in ("node-a", "node-b"):
                    nodes.append(
                        servers.start(
                            BESEDA, bench.workdir, bench.placement, db=db, bus=url, node=name
                        )
                    )
                load = fanout_load(bench, BESEDA, n, rate)
                generator = LoadGenerator(
                    nodes[0].port,
                    bench.placement,
                    size.processes,
                    ports=[node.port for node in nodes],
                )
                with generator.connected(load) as session:
                    for node in nodes:
                        settle(node)
                    cpu0 = sum(node.cpu() for node in nodes)
                    redis0 = cpu_seconds(redis.pid)
                    outcome = session.run()
                    cpu = sum(node.cpu() for node in nodes) - cpu0
                    redis_cpu = cpu_seconds(redis.pid) - redis0
                outcome.connect_seconds = session.connect_seconds
            finally:
                for node in nodes:
                    node.stop()
        row = summary(BESEDA, outcome, cpu, outcome.deliveries, n=n, nodes=2, unit="delivery")
        row["redis_cpu_s"] = round(redis_cpu, 3)
        row["cpu_us_per_unit_with_redis"] = round(
            (cpu + redis_cpu) / max(outcome.deliveries, 1) * 1e6, 3
        )
        return row

    bench.progress(f"fan-out N={n} paced, one node")
    one = median_run(single, size.repeats)
    bench.progress(f"fan-out N={n} paced, two nodes on Redis")
    two = median_run(double, size.repeats)
    ratio = None
    if one.get("p99_ms") and two.get("p99_ms"):
        ratio = round(two["p99_ms"] / one["p99_ms"], 2)
    return {"single": one, "two_nodes": two, "p99_ratio": ratio}
