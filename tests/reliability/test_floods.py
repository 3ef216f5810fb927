"""Prove 8: a user sending 1,000 messages a second is held to the documented rate while
others are unaffected; connections from one address are capped at the documented limit."""

from __future__ import annotations

import asyncio
import resource
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from beseda.client import Client
from beseda.protocol import errors, schema
from beseda.server.config import Limits
from conftest import (
    RawConnection,
    ServerProcess,
    percentile,
    register_all,
    report,
    sizes,
    unhandled_errors,
)

# The documented defaults (docs/protocol.md, "Limits"); the server is started with them
# spelled out so that the test states what it checks.
RATE = Limits.message_rate
BURST = Limits.message_burst
PER_ADDRESS = Limits.max_connections_per_address


@dataclass(frozen=True)
class Size:
    flood_seconds: float
    flood_per_second: int
    others: int
    connections: int
    """Connections opened at once from one address."""
    prompt: float
    """Seconds within which every other user's send must be acknowledged."""


FAST = Size(flood_seconds=3, flood_per_second=1000, others=5, connections=200, prompt=2.0)
SOAK = Size(flood_seconds=30, flood_per_second=1000, others=20, connections=5000, prompt=0.5)


def start_server(server_process: Callable[..., ServerProcess]) -> ServerProcess:
    # --message-max-delay 0: every message over the rate is refused at once, so the count of
    # stored messages shows the rate exactly. By default (a 2 s backlog is held) a flooding
    # connection is instead paced by back-pressure; tests/integration/test_limits.py shows it.
    return server_process(
        "--message-max-delay",
        "0",
        "--message-rate",
        str(RATE),
        "--message-burst",
        str(BURST),
        "--max-connections-per-address",
        str(PER_ADDRESS),
    )


@pytest.mark.parametrize("size", sizes(FAST, SOAK, fast_timeout=90, soak_timeout=300))
async def test_message_flood_is_held_to_the_rate(
    size: Size, server_process: Callable[..., ServerProcess]
) -> None:
    proc = start_server(server_process)
    others = [f"other{i}" for i in range(size.others)]
    tokens = await register_all(proc.port, ["flooder", *others])

    flooder = await RawConnection.open(proc.port)
    await flooder.call(schema.Login(id=0, token=tokens["flooder"]), schema.AuthResult)
    replies: Counter[str] = Counter()
    last_reply = 0.0
    sent = 0
    flooding = True
    end: int | str | None = None
    """The id of a ping sent after the flood: its reply comes after every other reply."""

    async def read_replies() -> None:
        nonlocal last_reply
        while flooding or sum(replies.values()) < sent:
            message = await flooder.receive(30)
            if isinstance(message, schema.Result) and message.id == end:
                continue  # the loop checks again, now that the flood is over
            if isinstance(message, schema.Result):
                replies["stored"] += 1
            elif isinstance(message, schema.Error):
                replies[message.code] += 1
            else:
                continue
            last_reply = time.monotonic()

    async def flood() -> None:
        nonlocal sent, flooding, end
        batch = size.flood_per_second // 100
        begin = time.monotonic()
        while (elapsed := time.monotonic() - begin) < size.flood_seconds:
            due = round(elapsed * size.flood_per_second)
            for _ in range(max(0, min(batch * 5, due - sent))):
                flooder.send(schema.Send(id=0, client_id=f"flood-{sent}", text=f"flood {sent}"))
                sent += 1
            await flooder.writer.drain()
            await asyncio.sleep(0.01)
        flooding = False
        # Wake the reader even if every reply came before the flag fell and nothing else is
        # on its way (the presence events that used to follow went to watchers only).
        end = flooder.send(schema.Ping(id=0))

    latencies: list[float] = []

    async def behave(name: str) -> None:
        # max_rate_limit_retries=0: a rate_limited reply would fail the send, not be hidden.
        client = Client("127.0.0.1", proc.port, reconnect=False, max_rate_limit_retries=0)
        await client.connect()
        await client.login(token=tokens[name])
        try:
            for i in range(int(size.flood_seconds * 5)):
                begin = time.monotonic()
                await client.send(f"{name} says {i}")
                latencies.append(time.monotonic() - begin)
                await asyncio.sleep(0.2)
        finally:
            await client.close()

    began = time.monotonic()
    reader = asyncio.create_task(read_replies())
    await asyncio.gather(flood(), *(behave(name) for name in others))
    await asyncio.wait_for(reader, 60)
    window = last_reply - began
    await flooder.close()

    allowed = BURST + RATE * window
    report(
        "floods: messages",
        {
            "documented rate /s": RATE,
            "documented burst": BURST,
            "flooder sent": sent,
            "flooder sent per s": sent / size.flood_seconds,
            "flooder stored": replies["stored"],
            "flooder rate_limited": replies[errors.RATE_LIMITED],
            "stored per s beyond the burst": (replies["stored"] - BURST) / window,
            "allowed at most": round(allowed, 1),
            "other users": size.others,
            "others' sends": len(latencies),
            "others' latency s p50": percentile(latencies, 50),
            "others' latency s p99": percentile(latencies, 99),
            "others' latency s max": max(latencies),
        },
    )
    assert set(replies) <= {"stored", errors.RATE_LIMITED}
    assert sum(replies.values()) == sent
    assert BURST <= replies["stored"] <= allowed + 1
    assert len(latencies) == size.others * int(size.flood_seconds * 5)  # none refused
    assert max(latencies) < size.prompt
    assert not unhandled_errors(proc.log.read_text())


@pytest.mark.parametrize("size", sizes(FAST, SOAK, fast_timeout=90, soak_timeout=300))
async def test_connections_from_one_address_are_capped(
    size: Size, server_process: Callable[..., ServerProcess]
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = size.connections + 1024
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))
    proc = start_server(server_process)
    tokens = await register_all(proc.port, ["bystander"])

    firsts: Counter[str] = Counter()
    held: list[RawConnection] = []
    gate = asyncio.Semaphore(200)

    async def one() -> None:
        async with gate:
            conn = await RawConnection.open(proc.port, local="127.0.0.3", hello=False)
            held.append(conn)
            first = await conn.receive(30)
            firsts[first.code if isinstance(first, schema.Bye) else type(first).__name__] += 1

    began = time.monotonic()
    await asyncio.gather(*(one() for _ in range(size.connections)))
    opened_in = time.monotonic() - began

    # Someone at another address is not affected while the cap holds.
    begin = time.monotonic()
    bystander = Client("127.0.0.1", proc.port, reconnect=False)
    await bystander.connect()
    await bystander.login(token=tokens["bystander"])
    await bystander.send("still here")
    bystander_time = time.monotonic() - begin
    await bystander.close()
    for conn in held:
        await conn.close()

    report(
        "floods: connections",
        {
            "connections from 127.0.0.3": size.connections,
            "documented cap per address": PER_ADDRESS,
            "welcomed (hello)": firsts["Hello"],
            "refused (bye too_many_connections)": firsts[errors.TOO_MANY_CONNECTIONS],
            "opened in s": opened_in,
            "another address signs in and sends, s": bystander_time,
        },
    )
    assert firsts == {
        "Hello": PER_ADDRESS,
        errors.TOO_MANY_CONNECTIONS: size.connections - PER_ADDRESS,
    }
    log = proc.log.read_text()
    assert not [line for line in unhandled_errors(log) if "Traceback" in line]
