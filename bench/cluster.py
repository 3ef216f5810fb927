"""Fan-out across two nodes: one sender, N receivers spread over two beseda nodes on one
database and one Redis, beside the same fan-out into one node, in the same run.

What it measures is the bus: the sender's node delivers to its own half of the receivers at
once and publishes each message to Redis once; the other node gets it from Redis and delivers
to its half. Both nodes open the same prepared SQLite file (one sender writes: the storage is
not what is measured here; the PostgreSQL rows measure storage). The nodes and Redis run on
the server's core, as the single node does, so the two-node row pays for two processes and
Redis on the same CPU: what it shows is the cost of the hop, not a gain of capacity.

Both rows are timed by the harness (``Bench.timed``: repeats, spread, re-runs when other
work disturbed a run, latency at the socket): the two nodes and Redis stand in for one
server as a :class:`Nodes`, whose CPU is the nodes' and whose generator spreads its workers
over both nodes' ports.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from . import report, scenarios, servers
from .servers import BESEDA
from .system import LOOPBACK, Service, cpu_seconds, free_port, wait_for_port

REDIS_NOTE = "cluster: redis-server is not installed; no two-node row"


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
    with (workdir / f"redis-{port}.log").open("ab") as log:
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


class Nodes:
    """Several nodes and their Redis as the harness's one service: CPU is the nodes' (all
    threads), ``threads()`` adds Redis's as ``redis``; the generator's worker k connects to
    ``ports[k % len(ports)]``."""

    def __init__(self, nodes: list[Service], redis: subprocess.Popen[bytes]) -> None:
        self.nodes = nodes
        self.redis = redis
        self.name = "beseda, 2 nodes"
        self.port = nodes[0].port
        self.ports = [node.port for node in nodes]

    def cpu(self) -> float:
        return sum(node.cpu() for node in self.nodes)

    def threads(self) -> dict[str, float]:
        merged: dict[str, float] = {}
        for node in self.nodes:
            for name, seconds in node.threads().items():
                merged[name] = merged.get(name, 0.0) + seconds
        merged["redis"] = cpu_seconds(self.redis.pid)
        return merged


def cluster(bench: scenarios.Bench) -> dict[str, Any]:
    """The paced fan-out at N = ``repeat_n`` into one node, then over two nodes on Redis."""
    size = bench.sizes
    n = size.repeat_n
    rate = size.paced_rate
    if redis_binary() is None:
        if REDIS_NOTE not in bench.notes:
            bench.notes.append(REDIS_NOTE)
        return {"skipped": REDIS_NOTE}

    def make_row(nodes: int) -> Any:
        def row(outcome: Any, cpu: float) -> dict[str, Any]:
            redis = outcome.threads.pop("redis", 0.0)
            figures = scenarios.summary(
                BESEDA, outcome, cpu, outcome.deliveries, n=n, mode="paced", nodes=nodes
            )
            figures["unit"] = "delivery"
            if nodes > 1:
                figures["redis_cpu_s"] = round(redis, 6)
                figures["cpu_us_per_unit_with_redis"] = round(
                    (cpu + redis) / max(outcome.deliveries, 1) * 1e6, 3
                )
            return figures

        return row

    bench.progress(f"cluster: fan-out N={n} paced, one node")
    with bench.server(BESEDA, users=n + 1) as service:
        one = bench.timed(service, scenarios.fanout_load(bench, BESEDA, n, rate), make_row(1))
    bench.progress(f"cluster: fan-out N={n} paced, two nodes on Redis")
    db = bench.users_db(n + 1)
    with ExitStack() as stack:
        url, redis = stack.enter_context(
            redis_server(bench.workdir, bench.placement.server_prefix())
        )
        nodes = []
        for name in ("node-a", "node-b"):
            node = servers.start(BESEDA, bench.workdir, bench.placement, db=db, bus=url, node=name)
            stack.callback(node.stop)
            nodes.append(node)
        two = bench.timed(
            Nodes(nodes, redis),  # type: ignore[arg-type]
            scenarios.fanout_load(bench, BESEDA, n, rate),
            make_row(2),
        )
    ratio = None
    if one.get("p99_ms") and two.get("p99_ms"):
        ratio = round(two["p99_ms"] / one["p99_ms"], 2)
    return {"single": one, "two_nodes": two, "p99_ratio": ratio}


scenarios.register(
    "cluster", cluster, lambda sizes, contenders: 2 if redis_binary() is not None else 0
)


@report.target
def _cluster_targets(results: dict[str, Any]) -> list[report.Target]:
    cl = results["scenarios"].get("cluster")
    if not cl or cl.get("p99_ratio") is None:
        return []
    ratio = cl["p99_ratio"]
    two, one = cl["two_nodes"], cl["single"]
    return [
        report.row_(
            f"fan-out into {two['n']} over 2 nodes: p99 at the socket, two / one node",
            f"{report._with_spread(two, 'p99_ms')} / {report._with_spread(one, 'p99_ms')} ms, "
            f"{two['losses']} lost",
            None,
            "≤ 2×, zero loss",
            ratio <= 2 and two["losses"] == 0,
            f"{ratio}×",
        )
    ]


@report.section
def _cluster_section(results: dict[str, Any]) -> str | None:
    cl = results["scenarios"].get("cluster")
    if not cl or "single" not in cl:
        return None
    rows = [
        [
            f"{row['nodes']} node{'s' if row['nodes'] > 1 else ''}",
            row["n"],
            row["p50_ms"],
            report._with_spread(row, "p99_ms"),
            row.get("app_p99_ms"),
            row["losses"],
            report._with_spread(row, "cpu_us_per_unit"),
            row.get("cpu_us_per_unit_with_redis", row["cpu_us_per_unit"]),
            report._busy(row),
            row.get("foreign_cores"),
        ]
        for row in (cl["single"], cl["two_nodes"])
    ]
    return "\n".join(
        [
            "## Fan-out across nodes",
            "",
            "One sender and N receivers in General, paced, once into one node and once with "
            "the receivers spread over two nodes on one Redis (the sender's node delivers to its "
            "half at once and publishes each message once; the other node delivers to the other "
            "half from Redis). Both nodes and Redis run on the server's core: the two-node row "
            "pays for the hop through Redis, it gains no CPU (bench/cluster.py).",
            "",
            report._table(
                [
                    "run",
                    "N",
                    "p50 ms",
                    "p99 ms (socket)",
                    "p99 ms (app)",
                    "lost",
                    "server CPU µs/delivery",
                    "with Redis",
                    "generator busy",
                    "foreign cores",
                ],
                rows,
            ),
            "",
            f"p99 ratio two nodes / one: {report._fmt(cl.get('p99_ratio'))}×.",
        ]
    )
