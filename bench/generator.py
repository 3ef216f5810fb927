"""The load generator: several worker processes driven from the parent, pinned off the server.

``LoadGenerator`` spreads connections over the workers, waits until all are signed in, starts
them together and merges what they report. It flags a run in which the generator itself was
busy enough to be the limit.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Any

from . import worker
from .system import Placement
from .wire import WIRES, Credential
from .worker import SendPlan, StormPlan, WorkerPlan

CONNECT_BATCH = 200
"""Connections one process opens at once; more would only queue in the server's backlog."""
SATURATED = 0.85
"""Generator CPU share (of its cores) above which it may have been the bottleneck."""


@dataclass
class Load:
    """What to do: who connects, who sends what, what each connection expects to receive."""

    wire: str
    clients: list[Credential]
    join: bool = True
    sends: list[SendPlan] = field(default_factory=list)
    """``SendPlan.client`` indexes ``clients``."""
    deliveries_per_client: list[int] | None = None
    storm: StormPlan | None = None
    connect_timeout: float = 60.0
    run_timeout: float = 60.0


@dataclass
class Outcome:
    connected: int
    failed_connections: int
    connect_seconds: float
    deliveries: int
    expected_deliveries: int
    acks: int
    expected_acks: int
    errors: int
    lost_connections: int
    latencies_ns: array[int]
    """Deliveries, from the send time to the moment the receiving process read them."""
    kernel_latencies_ns: array[int]
    """The same deliveries, to the kernel's receive timestamp at the receiving socket."""
    ack_latencies_ns: array[int]
    login_latencies_ns: array[int]
    failed_logins: int
    refusals: dict[str, int]
    """Failed storm sign-ins by reason (an error code, timeout, connect, closed)."""
    wall: float
    """Seconds from the start until the last delivery (or the end of the run)."""
    generator_cpu: float
    generator_share: float
    """Generator CPU seconds per second of wall time per generator core."""
    process_shares: list[float] = field(default_factory=list)
    """Each generator process's own CPU share (CPU seconds per second of its run)."""
    unstamped: int = 0
    """Deliveries read without a kernel timestamp (their read time stood in)."""
    foreign_cores: float = 0.0
    """Cores other processes kept busy during the run (set by the harness)."""
    threads: dict[str, float] = field(default_factory=dict)
    """Server CPU seconds per thread name during the run (set by the harness)."""

    @property
    def losses(self) -> int:
        return max(0, self.expected_deliveries - self.deliveries)

    @property
    def generator_saturated(self) -> bool:
        """The generator's cores, or one of its processes, were busy enough to be the limit."""
        return self.generator_share > SATURATED or max(self.process_shares, default=0) > SATURATED


class LoadGenerator:
    def __init__(
        self, port: int, placement: Placement, processes: int, ports: list[int] | None = None
    ) -> None:
        self.port = port
        self.ports = ports or [port]
        """Worker k connects to ``ports[k % len(ports)]`` (several nodes of one cluster)."""
        self.placement = placement
        self.processes = processes
        self._context = multiprocessing.get_context("spawn")

    @contextmanager
    def connected(self, load: Load) -> Iterator[Session]:
        """Start the workers and sign every client in; close everything on the way out."""
        plans = self._split(load)
        pipes = []
        procs = []
        try:
            for plan in plans:
                parent, child = self._context.Pipe()
                proc = self._context.Process(target=worker.main, args=(child, plan), daemon=True)
                proc.start()
                child.close()
                pipes.append(parent)
                procs.append(proc)
            reports = [_receive(p, load.connect_timeout + 30) for p in pipes]
            yield Session(pipes, reports, load, self)
        finally:
            for pipe in pipes:
                with suppress(OSError):
                    pipe.send("close")
            for proc in procs:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)

    def _split(self, load: Load) -> list[WorkerPlan]:
        count = max(1, min(self.processes, len(load.clients)))
        backlog = WIRES[load.wire].backlog
        batch = CONNECT_BATCH if backlog is None else max(1, backlog // count)
        plans = [
            WorkerPlan(
                wire=load.wire,
                port=self.ports[number % len(self.ports)],
                cores=self.placement.generator_cores,
                clients=[],
                join=load.join,
                connect_timeout=load.connect_timeout,
                run_timeout=load.run_timeout,
                connect_batch=batch,
                number=number,
            )
            for number in range(count)
        ]
        where: list[tuple[int, int]] = []
        expected = load.deliveries_per_client or [0] * len(load.clients)
        for index, credential in enumerate(load.clients):
            plan = plans[index % count]
            where.append((index % count, len(plan.clients)))
            plan.clients.append(credential)
            plan.expect_deliveries += expected[index]
        for send in load.sends:
            number, local = where[send.client]
            plans[number].sends.append(replace(send, client=local))
            if WIRES[load.wire].has_acks:
                plans[number].expect_acks += send.count
        if load.storm is not None:
            plans[-1].storm = load.storm
        return plans


class Session:
    """Connected workers, ready to run."""

    def __init__(
        self, pipes: list[Any], reports: list[dict[str, Any]], load: Load, gen: LoadGenerator
    ) -> None:
        self.pipes = pipes
        self.load = load
        self.generator = gen
        self.connected = sum(r["connected"] for r in reports)
        self.failed = sum(r["failed"] for r in reports)
        self.connect_seconds = max(r["seconds"] for r in reports)
        self.connect_cpu = sum(r["cpu"] for r in reports)
        """CPU seconds the generator's processes used from their start until all connected."""

    def run(self) -> Outcome:
        for pipe in self.pipes:
            pipe.send("go")
        reports = [_receive(p, self.load.run_timeout + 60) for p in self.pipes]
        latencies: array[int] = array("q")
        kernel: array[int] = array("q")
        acks: array[int] = array("q")
        logins: array[int] = array("q")
        for report in reports:
            latencies.frombytes(report["latencies"])
            kernel.frombytes(report["kernel_latencies"])
            acks.frombytes(report["ack_latencies"])
            logins.frombytes(report["login_latencies"])
        start = min(r["start_ns"] for r in reports)
        last = max(r["last_ns"] for r in reports)
        walls = max(r["wall"] for r in reports)
        wall = (last - start) / 1e9 if last > start else walls
        cpu = sum(r["cpu"] for r in reports)
        cores = len(self.generator.placement.generator_cores or range(os.cpu_count() or 1))
        return Outcome(
            connected=self.connected,
            failed_connections=self.failed,
            connect_seconds=self.connect_seconds,
            deliveries=sum(r["deliveries"] for r in reports),
            expected_deliveries=sum(r["expected_deliveries"] for r in reports),
            acks=sum(r["acks"] for r in reports),
            expected_acks=sum(r["expected_acks"] for r in reports),
            errors=sum(r["errors"] for r in reports),
            lost_connections=sum(r["lost_connections"] for r in reports),
            latencies_ns=latencies,
            kernel_latencies_ns=kernel,
            ack_latencies_ns=acks,
            login_latencies_ns=logins,
            failed_logins=sum(r["failed_logins"] for r in reports),
            refusals=_merge(r["refusals"] for r in reports),
            wall=wall,
            generator_cpu=cpu,
            generator_share=cpu / max(walls, 1e-9) / cores,
            process_shares=[round(r["cpu"] / max(r["wall"], 1e-9), 3) for r in reports],
            unstamped=sum(r["unstamped"] for r in reports),
        )


def _merge(counts: Any) -> dict[str, int]:
    merged: dict[str, int] = {}
    for count in counts:
        for key, value in count.items():
            merged[key] = merged.get(key, 0) + value
    return merged


def _receive(pipe: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not pipe.poll(0.5):
        if time.monotonic() > deadline:
            raise TimeoutError("a generator worker did not answer in time")
    result: dict[str, Any] = pipe.recv()
    return result
