"""One load-generator process: many connections on one asyncio loop.

The parent hands it a :class:`WorkerPlan` over a pipe and then says ``go``; it answers with
counts, latencies and its own CPU time (so the parent can tell when the generator, not the
server, was the limit). Every wait is bounded by the plan's deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import socket
import struct
import time
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .system import LOOPBACK, pin_self, raise_fd_limit
from .wire import WIRES, Credential, Wire


@dataclass
class SendPlan:
    """One sending connection: ``count`` messages to ``target`` (None: the general room)."""

    client: int
    target: str | None
    count: int
    rate: float = 0.0
    """Messages per second; 0 sends as fast as the transport takes them (burst)."""
    window: int = 0
    """Most messages awaiting acknowledgement; 0: no limit."""
    phase: float = 0.0
    """Seconds after the start before the first message (paced senders out of step)."""


@dataclass
class StormPlan:
    """Password sign-ins on new connections at ``rate`` per second, during the sending."""

    credentials: list[Credential]
    rate: float
    stay: bool = False
    """Keep each signed-in connection (it then receives the general room too, so the fan-out
    grows during the run); by default it closes once signed in, so that the storm adds
    sign-ins and nothing else."""


@dataclass
class WorkerPlan:
    wire: str
    port: int
    cores: tuple[int, ...] | None
    clients: list[Credential]
    join: bool = True
    sends: list[SendPlan] = field(default_factory=list)
    expect_deliveries: int = 0
    expect_acks: int = 0
    storm: StormPlan | None = None
    connect_timeout: float = 60.0
    run_timeout: float = 60.0
    connect_batch: int = 200
    """Connections this process opens at once."""
    number: int = 0
    """This worker's place among the generator's processes (its loopback addresses)."""


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Tally:
    """What this process saw."""

    def __init__(self) -> None:
        self.deliveries = 0
        self.acks = 0
        self.errors = 0
        self.lost_connections = 0
        self.latencies = array("q")
        """Delivery latencies, ns, to the moment this process read them."""
        self.kernel_latencies = array("q")
        """The same deliveries, to the kernel's receive timestamp (the socket)."""
        self.ack_latencies = array("q")
        self.unstamped = 0
        """Deliveries whose read came without a kernel timestamp (the read time stood in)."""
        self.last_ns = 0
        self.done = asyncio.Event()
        self.expect_deliveries = 0
        self.expect_acks = 0

    def check(self) -> None:
        if self.deliveries >= self.expect_deliveries and self.acks >= self.expect_acks:
            self.done.set()


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
"""Linux: ask the kernel to stamp each received segment (``SCM_TIMESTAMPNS``, CLOCK_REALTIME)."""
_ANCILLARY = socket.CMSG_SPACE(16)
_RECV = 256 * 1024
_HIGH_WATER = 64 * 1024
"""Unsent bytes of one link above which its sender waits (as a transport's pause_writing)."""
_CODE = re.compile(rb'"code":"(\w+)"')
SOURCES = 250
"""Loopback source addresses each worker spreads its connections over (127.0.<w>.1 …)."""


class StampPrimer:
    """Holds one loopback connection with ``SO_TIMESTAMPNS`` open for a worker's life.

    Linux turns receive timestamping on for the whole machine while any socket asks for it,
    and turns it on *deferred* (a static key flipped from a work queue): a socket that asks
    while no other does gets its first segments unstamped. Measured here: a fresh loopback
    pair missed the stamp on its first read 38 times in 200. The primer asks first and waits
    until a read of its own comes stamped, so the links' reads are stamped from the start.
    """

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []

    def open(self, timeout: float = 5.0) -> bool:
        """Whether the kernel stamps reads now (False: it did not within ``timeout``)."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((LOOPBACK, 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        client.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        server, _ = listener.accept()
        listener.close()
        self.socks = [client, server]
        deadline = time.monotonic() + timeout
        while True:
            server.sendall(b"x")
            _, ancillary, _, _ = client.recvmsg(16, _ANCILLARY)
            if any(kind == SO_TIMESTAMPNS for _, kind, _ in ancillary):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.socks = []


def source_address(worker: int, index: int) -> str:
    """The loopback address connection ``index`` of worker ``worker`` connects from."""
    return f"127.0.{1 + worker % 250}.{1 + index % SOURCES}"


class Link:
    """One connection of the generator, on a plain non-blocking socket.

    Not an asyncio transport: it reads with ``recvmsg`` so that each read carries the
    kernel's receive timestamp (``SO_TIMESTAMPNS``): the time the last segment of the read
    reached the socket, whatever this process was doing then. Latency is taken both ways:
    at the socket (kernel) and when this process read it (application).
    """

    def __init__(self, wire: Wire, tally: Tally, sock: socket.socket) -> None:
        self.wire = wire
        self.tally = tally
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.rest = b""
        self.out = bytearray()
        self.signed_in: asyncio.Future[bool] = self.loop.create_future()
        self.writable = asyncio.Event()
        self.writable.set()
        self.window: asyncio.Semaphore | None = None
        self.closed = False
        self.closing = False
        self.refusal = b""
        """The line that refused the sign-in, if one did."""
        self.stamped = True
        """Whether the last read came with a kernel timestamp (else the read time stands in)."""
        self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            data, ancillary, _, _ = self.sock.recvmsg(_RECV, _ANCILLARY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._lost()
            return
        now = time.monotonic_ns()
        if not data:
            self._lost()
            return
        kernel = now
        self.stamped = True
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                seconds, nanoseconds = struct.unpack_from("qq", payload)
                # Realtime → monotonic with the offset of this moment (no drift over a run).
                kernel = seconds * 1_000_000_000 + nanoseconds - (time.time_ns() - now)
                break
        else:
            self.stamped = False
        self.data_received(data, now, min(kernel, now))

    def _lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._release()
        self.writable.set()
        if not self.signed_in.done():
            self.signed_in.set_result(False)
        elif not self.closing:
            self.tally.lost_connections += 1

    def _release(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
            self.loop.remove_writer(self.sock.fileno())
        self.sock.close()

    def data_received(self, data: bytes, now: int, kernel: int) -> None:
        buffer = self.rest + data if self.rest else data
        cut = buffer.rfind(b"\n")
        if cut < 0:
            self.rest = buffer
            return
        chunk, self.rest = buffer[:cut], buffer[cut + 1 :]
        if not self.signed_in.done():
            chunk = self._sign_in_lines(chunk)
        if not chunk:
            return
        tally = self.tally
        wire = self.wire
        delivered = wire.delivery.findall(chunk)
        if delivered:
            sent = [int(ts) for ts in delivered]
            tally.deliveries += len(sent)
            tally.latencies.extend([now - ts for ts in sent])
            tally.kernel_latencies.extend([kernel - ts for ts in sent])
            if not self.stamped:
                tally.unstamped += len(sent)
            tally.last_ns = now
        if len(delivered) > chunk.count(b"\n"):
            pass  # every line was a delivery: nothing else to look for (the common case)
        else:
            self._other_lines(chunk, now)
        if delivered or tally.acks >= tally.expect_acks:
            tally.check()

    def _other_lines(self, chunk: bytes, now: int) -> None:
        tally = self.tally
        wire = self.wire
        if wire.ack is not None:
            acked = wire.ack.findall(chunk)
            if acked:
                tally.acks += len(acked)
                tally.last_ns = now
                tally.ack_latencies.extend([now - int(ts) for ts in acked])
                if self.window is not None:
                    for _ in acked:
                        self.window.release()
        if wire.error is not None:
            tally.errors += len(wire.error.findall(chunk))

    def _sign_in_lines(self, chunk: bytes) -> bytes:
        lines = chunk.split(b"\n")
        for index, line in enumerate(lines):
            verdict = self.wire.signed_in(line.rstrip(b"\r"))
            if verdict is False:
                self.refusal = line
            if verdict is not None:
                self.signed_in.set_result(verdict)
                return b"\n".join(lines[index + 1 :])
        return b""

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.out:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._lost()
                return
            if sent == len(data):
                return
            data = data[sent:]
            self.loop.add_writer(self.sock.fileno(), self._flush)
        self.out += data
        if len(self.out) > _HIGH_WATER:
            self.writable.clear()

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._lost()
            return
        del self.out[:sent]
        if not self.out:
            self.loop.remove_writer(self.sock.fileno())
        if len(self.out) <= _HIGH_WATER:
            self.writable.set()

    def close(self) -> None:
        self.closing = True
        if not self.closed:
            self.closed = True
            self._release()


class WebSocketLink(Link):
    """A connection to ``/ws``: the handshake, then each line written as one masked text
    frame, and the server's text frames read as lines (so the same patterns count them), with
    the same kernel receive timestamps as :class:`Link`.

    The mask is all zero (valid, and the server must unmask it all the same): the generator
    spends its CPU on counting, not on XOR."""

    _HANDSHAKE = (
        "GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: YmVzZWRhLWJlbmNobWFyaw==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    _MASK = b"\x00\x00\x00\x00"

    def __init__(self, wire: Wire, tally: Tally, sock: socket.socket, port: int) -> None:
        super().__init__(wire, tally, sock)
        self.open = False
        self.queued: list[bytes] = []
        Link.write(self, self._HANDSHAKE.format(host=LOOPBACK, port=port).encode())

    def data_received(self, data: bytes, now: int, kernel: int) -> None:
        buffer = self.rest + data if self.rest else data
        if not self.open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.rest = buffer
                return
            if not buffer.startswith(b"HTTP/1.1 101 "):
                self.refusal = buffer[: buffer.find(b"\r\n")]
                if not self.signed_in.done():
                    self.signed_in.set_result(False)
                return
            self.open = True
            buffer = buffer[end + 4 :]
            for queued in self.queued:
                self.write(queued)
            self.queued.clear()
        # Step over whole frames only (no copies); the rest waits for more bytes.
        at, size, frames = 0, len(buffer), 0
        while size - at >= 2:
            length = buffer[at + 1] & 0x7F
            head = 2
            if length == 126:
                if size - at < 4:
                    break
                length, head = (buffer[at + 2] << 8) | buffer[at + 3], 4
            elif length == 127:
                if size - at < 10:
                    break
                length, head = int.from_bytes(buffer[at + 2 : at + 10], "big"), 10
            if size - at < head + length:
                break
            at += head + length
            frames += 1
        if not frames:
            self.rest = buffer
            return
        chunk = buffer if at == size else buffer[:at]
        self.rest = b"" if at == size else buffer[at:]
        if not self.signed_in.done():
            lines = b"\n".join(self._payloads(chunk)) + b"\n"
            rest, self.rest = self.rest, b""
            Link.data_received(self, lines, now, kernel)  # the sign-in, as lines
            self.rest = rest
            return
        tally = self.tally
        delivered = self.wire.delivery.findall(chunk)
        if delivered:
            sent = [int(ts) for ts in delivered]
            tally.deliveries += len(sent)
            tally.latencies.extend([now - ts for ts in sent])
            tally.kernel_latencies.extend([kernel - ts for ts in sent])
            tally.last_ns = now
        if len(delivered) < frames:
            self._other_lines(chunk, now)
        if delivered or tally.acks >= tally.expect_acks:
            tally.check()

    @staticmethod
    def _payloads(chunk: bytes) -> list[bytes]:
        """The payloads of the whole text frames in ``chunk`` (while signing in: a few)."""
        payloads, at = [], 0
        while at < len(chunk):
            length, head = chunk[at + 1] & 0x7F, 2
            if length == 126:
                length, head = int.from_bytes(chunk[at + 2 : at + 4], "big"), 4
            elif length == 127:
                length, head = int.from_bytes(chunk[at + 2 : at + 10], "big"), 10
            if chunk[at] & 0x0F == 0x1:
                payloads.append(chunk[at + head : at + head + length])
            at += head + length
        return payloads

    def write(self, data: bytes) -> None:
        if not self.open:
            self.queued.append(data)
            return
        frames = []
        for line in data.split(b"\n"):
            if not line:
                continue
            length = len(line)
            if length < 126:
                header = bytes((0x81, 0x80 | length))
            elif length < 65536:
                header = bytes((0x81, 0x80 | 126)) + length.to_bytes(2, "big")
            else:
                header = bytes((0x81, 0x80 | 127)) + length.to_bytes(8, "big")
            frames.append(header + self._MASK + line)
        super().write(b"".join(frames))


async def open_link(
    wire: Wire, tally: Tally, port: int, credential: Credential, source: str = LOOPBACK
) -> Link:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.bind((source, 0))
        await loop.sock_connect(sock, (LOOPBACK, port))
    except BaseException:
        sock.close()
        raise
    link = WebSocketLink(wire, tally, sock, port) if wire.websocket else Link(wire, tally, sock)
    link.write(wire.sign_in(credential))
    try:
        verdict = await link.signed_in
    except BaseException:
        link.close()
        raise
    if not verdict:
        link.close()
        code = _CODE.search(link.refusal)
        raise ConnectionError(code.group(1).decode() if code else "closed")
    return link


class Worker:
    def __init__(self, plan: WorkerPlan) -> None:
        self.plan = plan
        self.wire = WIRES[plan.wire](join=plan.join)
        self.tally = Tally()
        self.links: list[Link] = []
        self.storm_links: list[Link] = []
        self.login_latencies = array("q")
        self.failed_logins = 0
        self.storm_count = 0
        self.runs = 0
        self.refusals: dict[str, int] = {}
        """Storm sign-ins that failed, by error code (or timeout, connect, closed)."""

    async def connect(self) -> dict[str, Any]:
        started = time.monotonic()
        failed = 0
        deadline = started + self.plan.connect_timeout
        clients = self.plan.clients
        for first in range(0, len(clients), self.plan.connect_batch):
            remaining = deadline - time.monotonic()
            batch = clients[first : first + self.plan.connect_batch]
            tasks = [
                asyncio.ensure_future(
                    open_link(
                        self.wire,
                        self.tally,
                        self.plan.port,
                        c,
                        source_address(self.plan.number, first + k),
                    )
                )
                for k, c in enumerate(batch)
            ]
            done, pending = await asyncio.wait(tasks, timeout=max(0.1, remaining))
            for task in pending:
                task.cancel()
            for task in tasks:
                if task in done and task.exception() is None:
                    self.links.append(task.result())
                else:
                    failed += 1
                    if task in done:
                        task.exception()  # retrieved: not logged as never retrieved
        return {
            "connected": len(self.links),
            "failed": failed,
            "seconds": time.monotonic() - started,
            "cpu": _cpu(),
        }

    def _reset(self) -> None:
        """Counts and latencies start from nothing again after each run (a row's repeats
        share one session). Not at the start of a run: the other workers may have started
        sending before this one was told to go, and what arrived meanwhile counts."""
        tally = self.tally
        tally.deliveries = tally.acks = tally.errors = tally.last_ns = tally.unstamped = 0
        tally.latencies, tally.kernel_latencies = array("q"), array("q")
        tally.ack_latencies = array("q")
        self.login_latencies = array("q")
        self.failed_logins = 0
        self.refusals = {}

    async def run(self) -> dict[str, Any]:
        plan = self.plan
        tally = self.tally
        tally.expect_deliveries = plan.expect_deliveries
        tally.expect_acks = plan.expect_acks
        cpu0, wall0 = _cpu(), time.monotonic()
        start_ns = time.monotonic_ns()
        senders = [asyncio.ensure_future(self._send(s)) for s in plan.sends]
        storm = asyncio.ensure_future(self._storm(plan.storm)) if plan.storm else None
        tally.done.clear()  # sign-in traffic may have set it before the expectations were known
        tally.check()
        deadline = wall0 + plan.run_timeout
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tally.done.wait(), plan.run_timeout)
        if senders:
            _, pending = await asyncio.wait(senders, timeout=max(0.1, deadline - time.monotonic()))
            for task in pending:
                task.cancel()
        if storm is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(storm, max(0.1, deadline - time.monotonic()))
        cpu = _cpu() - cpu0
        wall = time.monotonic() - wall0
        self.runs += 1
        # Storm connections that stayed leave now, so that the next run starts as this one did.
        for link in self.storm_links:
            link.close()
        self.storm_links.clear()
        report = {
            "deliveries": tally.deliveries,
            "expected_deliveries": plan.expect_deliveries,
            "acks": tally.acks,
            "expected_acks": plan.expect_acks,
            "errors": tally.errors,
            "lost_connections": tally.lost_connections,
            "latencies": tally.latencies.tobytes(),
            "kernel_latencies": tally.kernel_latencies.tobytes(),
            "unstamped": tally.unstamped,
            "ack_latencies": tally.ack_latencies.tobytes(),
            "login_latencies": self.login_latencies.tobytes(),
            "failed_logins": self.failed_logins,
            "refusals": self.refusals,
            "start_ns": start_ns,
            "last_ns": tally.last_ns,
            "cpu": cpu,
            "wall": wall,
        }
        self._reset()
        return report

    async def _send(self, plan: SendPlan) -> None:
        link = self.links[plan.client]
        if plan.window and link.window is None:
            link.window = asyncio.Semaphore(plan.window)
        started = time.monotonic() + plan.phase
        message = self.wire.message
        first = self.runs * plan.count  # client ids new in every run (no retries seen)
        for number in range(first, first + plan.count):
            if link.closed:
                return
            if plan.rate:
                delay = started + (number - first) / plan.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif number % 32 == 31:
                await asyncio.sleep(0)  # let the replies in
            if link.window is not None:
                await link.window.acquire()
            if not link.writable.is_set():
                await link.writable.wait()
            link.write(message(plan.target, number, time.monotonic_ns()))

    async def _storm(self, plan: StormPlan) -> None:
        started = time.monotonic()
        tasks = []
        for index, credential in enumerate(plan.credentials):
            delay = started + index / plan.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(self._sign_in(credential)))
        if tasks:
            await asyncio.gather(*tasks)

    async def _sign_in(self, credential: Credential) -> None:
        began = time.monotonic_ns()
        self.storm_count += 1
        try:
            link = await asyncio.wait_for(
                open_link(
                    self.wire,
                    Tally(),
                    self.plan.port,
                    credential,
                    source_address(self.plan.number, len(self.plan.clients) + self.storm_count),
                ),
                30,
            )
        except ConnectionError as exc:  # refused: by its error code
            self.failed_logins += 1
            reason = str(exc) or "closed"
            self.refusals[reason] = self.refusals.get(reason, 0) + 1
            return
        except (OSError, TimeoutError) as exc:
            self.failed_logins += 1
            reason = "timeout" if isinstance(exc, TimeoutError) else "connect"
            self.refusals[reason] = self.refusals.get(reason, 0) + 1
            return
        self.login_latencies.append(time.monotonic_ns() - began)
        if self.plan.storm is not None and self.plan.storm.stay:
            self.storm_links.append(link)
        else:
            link.close()

    async def close(self) -> None:
        for link in self.links + self.storm_links:
            link.close()
        await asyncio.sleep(0.05)


def main(pipe: Connection, plan: WorkerPlan) -> None:
    """Entry point of a worker process."""
    pin_self(plan.cores)
    raise_fd_limit()
    asyncio.run(_serve(pipe, plan))


async def _serve(pipe: Connection, plan: WorkerPlan) -> None:
    worker = Worker(plan)
    loop = asyncio.get_running_loop()
    primer = StampPrimer()
    primer.open()
    try:
        pipe.send(await worker.connect())
        while True:
            command = await loop.run_in_executor(None, pipe.recv)
            if command == "go":
                pipe.send(await worker.run())
            elif command == "close":
                break
    finally:
        await worker.close()
        primer.close()
        pipe.close()
