"""Prove 3: connections that trickle bytes and never log in are all closed at the
authentication timeout, and a real user signs in quickly meanwhile."""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from beseda.client import Client
from beseda.protocol import codec, errors, schema
from conftest import (
    PASSWORD,
    RawConnection,
    ServerProcess,
    percentile,
    register_all,
    report,
    sizes,
    unhandled_errors,
)


@dataclass(frozen=True)
class Size:
    connections: int
    auth_timeout: float
    trickle_every: float
    late_by: float
    """How late after the timeout a connection may be closed (a loaded machine is slow)."""
    sign_in_limit: float | None
    """Asserted bound on a real user's sign-in time (the issue's 0.5 s, soak only)."""


FAST = Size(connections=300, auth_timeout=1, trickle_every=0.25, late_by=10, sign_in_limit=None)
SOAK = Size(connections=2000, auth_timeout=3, trickle_every=0.25, late_by=2, sign_in_limit=0.5)

# A login that never ends: its bytes are sent one at a time and the newline never comes.
TRICKLE = b'{"id": 1, "type": "login", "username": "slow", "password": "' + b"x" * 100


def raise_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@pytest.mark.parametrize("size", sizes(FAST, SOAK, fast_timeout=120, soak_timeout=600))
async def test_slowloris_is_closed_at_auth_timeout(
    size: Size, server_process: Callable[..., ServerProcess]
) -> None:
    # The server and this test each hold one descriptor per connection.
    raise_file_limit(2 * size.connections + 1024)
    proc = server_process(
        "--auth-timeout",
        str(size.auth_timeout),
        "--max-connections-per-address",
        "100000",
    )
    await register_all(proc.port, ["real"])

    opened: list[float] = []
    closed: list[float] = []
    goodbyes: list[str] = []
    open_now = 0
    peak = 0
    stop_trickling = asyncio.Event()

    async def slow(gate: asyncio.Semaphore) -> None:
        nonlocal open_now, peak
        async with gate:
            start = time.monotonic()
            conn = await RawConnection.open(proc.port)
        opened.append(start)
        open_now += 1
        peak = max(peak, open_now)

        async def trickle() -> None:
            for i in range(10**6):
                if stop_trickling.is_set() or conn.writer.is_closing():
                    return
                conn.writer.write(TRICKLE[i % len(TRICKLE) : i % len(TRICKLE) + 1])
                await asyncio.sleep(size.trickle_every)

        trickler = asyncio.create_task(trickle())
        try:
            last = b""
            while line := await conn.reader.readline():
                last = line
            closed.append(time.monotonic() - start)
            goodbye = codec.decode_server_message(last)
            goodbyes.append(goodbye.code if isinstance(goodbye, schema.Bye) else repr(goodbye))
        finally:
            open_now -= 1
            trickler.cancel()
            await conn.close()

    gate = asyncio.Semaphore(200)
    storm = asyncio.gather(*(slow(gate) for _ in range(size.connections)))

    # A real user signs in while the connections pile up and trickle.
    sign_ins = []
    for _ in range(5):
        await asyncio.sleep(size.auth_timeout / 4)
        begin = time.monotonic()
        client = Client("127.0.0.1", proc.port, reconnect=False)
        await client.connect()
        await client.login("real", PASSWORD)
        sign_ins.append(time.monotonic() - begin)
        await client.send("I got in")
        await client.close()

    await asyncio.wait_for(storm, size.auth_timeout * 3 + 120)
    stop_trickling.set()

    report(
        "slowloris",
        {
            "connections": size.connections,
            "most open at once": peak,
            "auth timeout s": size.auth_timeout,
            "closed after s (min)": min(closed),
            "closed after s (median)": percentile(closed, 50),
            "closed after s (max)": max(closed),
            "real user's sign-in s (max of 5)": max(sign_ins),
            "real user's sign-in s (median)": percentile(sign_ins, 50),
        },
    )
    assert goodbyes == [errors.AUTH_TIMEOUT] * size.connections
    assert min(closed) >= size.auth_timeout - 0.05
    assert max(closed) <= size.auth_timeout + size.late_by
    if size.sign_in_limit is not None:
        assert max(sign_ins) < size.sign_in_limit
    assert not unhandled_errors(proc.log.read_text())
