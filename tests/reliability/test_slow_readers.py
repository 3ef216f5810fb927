"""Prove 2: clients that never read cannot hold the server's memory or anyone's time. They
are disconnected, fast clients' latency stays close to a run without them, and each slow
client recovers every message by syncing when it comes back."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from beseda.client import Client, MessageReceived
from beseda.protocol import schema
from conftest import (
    NO_RATE_LIMITS,
    RawConnection,
    ServerProcess,
    percentile,
    register_all,
    report,
    rss_kib,
    sizes,
    unhandled_errors,
    wait_for,
)

SEND_BUFFER = 64 * 1024
"""The server's per-connection bound on unsent bytes (``send_buffer_bytes``) in this test.

The kernel takes about 3 MiB more (loopback send buffer autotuning up to ``tcp_wmem``), so
each phase sends every client more than 4 MiB."""
MEMORY_SLACK_MIB = 64
"""The documented bound: the idle server's RSS + each connection's send buffer + this."""


@dataclass(frozen=True)
class Size:
    fast: int
    slow: int
    messages: int
    text: int
    """Characters per message."""
    max_ratio: float
    """Asserted bound on fast clients' p99 latency with slow readers / without."""


FAST = Size(fast=10, slow=10, messages=400, text=12_000, max_ratio=5.0)
SOAK = Size(fast=500, slow=100, messages=10_000, text=300, max_ratio=2.0)
LATENCY_FLOOR = 0.005
"""p99 latencies below 5 ms count as 5 ms in the ratio: below that it measures noise."""


async def open_slow(port: int, token: str) -> tuple[RawConnection, socket.socket]:
    """A logged-in connection with a tiny receive buffer that will never be read again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    conn = RawConnection(reader, writer)
    assert isinstance(await conn.receive(), schema.Hello)
    await conn.call(schema.Login(id=0, token=token), schema.AuthResult)
    writer.transport.pause_reading()  # from now on, nothing is read
    return conn, sock


async def broadcast(
    sender: Client, fast: list[Client], phase: str, size: Size
) -> tuple[list[float], list[schema.Message]]:
    """Send ``size.messages`` to general, one after another; returns every fast client's
    delivery latency and the stored messages."""
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    padding = "x" * size.text
    done = 0

    async def consume(client: Client) -> None:
        nonlocal done
        seen = 0
        while seen < size.messages:
            event = await client.next_event()
            if isinstance(event, MessageReceived) and event.message.text.startswith(phase):
                latencies.append(time.monotonic() - sent_at[event.message.client_id])
                seen += 1
        done += 1

    consumers = [asyncio.create_task(consume(c)) for c in fast]
    stored = []
    for i in range(size.messages):
        client_id = f"{phase}-{i}"
        sent_at[client_id] = time.monotonic()
        stored.append(await sender.send(f"{phase} {i} {padding}", client_id=client_id))
    await asyncio.wait_for(asyncio.gather(*consumers), 300)
    return latencies, stored


@pytest.mark.parametrize("size", sizes(FAST, SOAK, fast_timeout=180, soak_timeout=1800))
async def test_slow_readers_are_dropped_and_recover(
    size: Size,
    server_process: Callable[..., ServerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BESEDA_SEND_BUFFER_BYTES", str(SEND_BUFFER))
    proc = server_process(*NO_RATE_LIMITS)
    assert proc.proc is not None
    fast_names = [f"fast{i}" for i in range(size.fast)]
    slow_names = [f"slow{i}" for i in range(size.slow)]
    tokens = await register_all(proc.port, ["sender", *fast_names, *slow_names])

    sender = Client("127.0.0.1", proc.port, reconnect=False)
    await sender.connect()
    await sender.login(token=tokens["sender"])
    fast = []
    for name in fast_names:
        client = Client("127.0.0.1", proc.port, reconnect=False)
        await client.connect()
        await client.login(token=tokens[name])
        fast.append(client)
    await asyncio.sleep(0.5)
    for client in fast:  # anything that came while everyone logged in
        while client.next_event_nowait() is not None:
            pass
    idle_rss = rss_kib(proc.proc.pid)

    # Phase A: no slow readers.
    baseline, _ = await broadcast(sender, fast, "A", size)

    # Phase B: the same, with slow readers connected.
    slow = [await open_slow(proc.port, tokens[name]) for name in slow_names]
    cursor = (await sender.history("general", limit=1)).messages[-1].seq
    peak_rss = idle_rss
    sampling = True

    async def sample() -> None:
        nonlocal peak_rss
        assert proc.proc is not None
        while sampling:
            peak_rss = max(peak_rss, rss_kib(proc.proc.pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    with_slow, stored = await broadcast(sender, fast, "B", size)
    sampling = False
    await sampler
    hwm = rss_kib(proc.proc.pid, "VmHWM")

    # Every slow reader was dropped: its socket ends (reset, or EOF after what was sent).
    async def dropped(conn: RawConnection) -> bool:
        conn.writer.transport.resume_reading()
        try:
            while await asyncio.wait_for(conn.reader.read(1 << 20), 10):
                pass
        except ConnectionResetError:
            pass
        except TimeoutError:
            return False  # still connected
        return True

    assert all([await dropped(conn) for conn, _ in slow])
    log = proc.log.read_text()
    drops = log.count("dropped as a slow consumer")

    # Each slow reader comes back and recovers every message after its cursor.
    recovered = []
    for name, (conn, sock) in zip(slow_names, slow, strict=True):
        await conn.close()
        sock.close()
        client = Client("127.0.0.1", proc.port, reconnect=False, cursors={"general": cursor})
        await client.connect()
        await client.login(token=tokens[name])
        await client.sync()
        await wait_for(lambda c=client: c.cursors.get("general", 0) >= stored[-1].seq, 60)
        got = []
        while (event := client.next_event_nowait()) is not None:
            if isinstance(event, MessageReceived):
                got.append(event.message)
        recovered.append(len(got))
        assert got == stored, name
        await client.close()

    for client in [sender, *fast]:
        await client.close()

    p99_a = percentile(baseline, 99)
    p99_b = percentile(with_slow, 99)
    ratio = max(p99_b, LATENCY_FLOOR) / max(p99_a, LATENCY_FLOOR)
    bound_kib = idle_rss + (size.fast + size.slow + 1) * SEND_BUFFER // 1024
    bound_kib += MEMORY_SLACK_MIB * 1024
    report(
        "slow readers",
        {
            "fast clients": size.fast,
            "slow clients": size.slow,
            "messages per phase": size.messages,
            "bytes per message (approx.)": size.text + 180,
            "send buffer bound KiB": SEND_BUFFER // 1024,
            "slow clients dropped (server log)": drops,
            "server RSS idle MiB": idle_rss / 1024,
            "server RSS peak MiB (sampled)": peak_rss / 1024,
            "server VmHWM MiB": hwm / 1024,
            "documented bound MiB": bound_kib / 1024,
            "fast p50 ms without slow": percentile(baseline, 50) * 1000,
            "fast p99 ms without slow": p99_a * 1000,
            "fast p50 ms with slow": percentile(with_slow, 50) * 1000,
            "fast p99 ms with slow": p99_b * 1000,
            "p99 ratio (floor 5 ms)": ratio,
            "messages recovered by each slow client": sorted(set(recovered)),
        },
    )
    assert drops == size.slow
    assert peak_rss <= bound_kib
    assert ratio <= size.max_ratio
    assert not unhandled_errors(log)
