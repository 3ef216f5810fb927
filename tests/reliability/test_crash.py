"""Prove 1: the server is killed with SIGKILL while many clients send; nothing acknowledged
is lost or doubled, order is kept, and every client resumes to the server's history."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from beseda.client import (
    Client,
    ConnectionLostError,
    ConnectionState,
    MessageReceived,
    StateChanged,
)
from beseda.protocol import errors, schema
from beseda.protocol.errors import ProtocolError
from conftest import (
    NO_RATE_LIMITS,
    ServerProcess,
    register_all,
    report,
    sizes,
    unhandled_errors,
    wait_for,
)
from storage_helpers import integrity, query

# Errors after which a client simply sends again with the same client id.
RETRIABLE = {errors.STORAGE_UNAVAILABLE, errors.RATE_LIMITED}


@dataclass(frozen=True)
class Size:
    clients: int
    seconds: float
    kills: int
    pause: float
    """Each client waits up to this long between two messages."""
    general_share: float
    """Share of messages posted to the general room; the rest are direct messages."""


FAST = Size(clients=20, seconds=10, kills=3, pause=0.05, general_share=0.3)
SOAK = Size(clients=200, seconds=60, kills=6, pause=0.5, general_share=0.05)


@dataclass
class Sender:
    name: str
    client: Client
    acked: list[schema.Message]
    retries: int = 0


async def send_until_acked(sender: Sender, rng: random.Random, names: list[str], k: int) -> None:
    client_id = f"{sender.name}-{k}"
    peer = rng.choice(names) if rng.random() >= SIZE_OF[sender.name].general_share else None
    while True:
        try:
            if peer is None:
                send = sender.client.send(client_id, client_id=client_id)
            else:
                send = sender.client.dm(peer, client_id, client_id=client_id)
            message = await asyncio.wait_for(send, 60)
        except ConnectionLostError:
            pass
        except ProtocolError as exc:
            if exc.code not in RETRIABLE:
                raise
        else:
            sender.acked.append(message)
            return
        sender.retries += 1
        await asyncio.sleep(0.05)


SIZE_OF: dict[str, Size] = {}


@pytest.mark.parametrize("size", sizes(FAST, SOAK, fast_timeout=150, soak_timeout=900))
async def test_sigkill_loses_nothing_acknowledged(
    size: Size, server_process: Callable[..., ServerProcess]
) -> None:
    rng = random.Random(20240401)
    proc = server_process(*NO_RATE_LIMITS)
    names = [f"c{i:03d}" for i in range(size.clients)]
    tokens = await register_all(proc.port, names)
    senders: list[Sender] = []
    for name in names:
        SIZE_OF[name] = size
        client = Client("127.0.0.1", proc.port, min_backoff=0.05, max_backoff=0.5)
        await client.connect()
        await client.login(token=tokens[name])
        senders.append(Sender(name, client, []))

    stop = asyncio.Event()

    async def run(sender: Sender, seed: int) -> None:
        own = random.Random(seed)
        k = 0
        while not stop.is_set():
            await send_until_acked(sender, own, names, k)
            k += 1
            await asyncio.sleep(own.uniform(0, size.pause))

    tasks = [asyncio.create_task(run(s, rng.randrange(2**32))) for s in senders]
    started = time.monotonic()
    segment = size.seconds / (size.kills + 1)
    downtimes = []
    for j in range(size.kills):
        kill_at = segment * (j + rng.uniform(0.5, 1.5))
        await asyncio.sleep(max(0.0, started + kill_at - time.monotonic()))
        down = time.monotonic()
        await asyncio.to_thread(proc.kill)
        await asyncio.to_thread(proc.start)  # same port, same database
        downtimes.append(time.monotonic() - down)
    await asyncio.sleep(max(0.0, started + size.seconds - time.monotonic()))
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    elapsed = time.monotonic() - started

    # Every client catches up, then its view is compared with the database.
    views: dict[str, dict[str, list[tuple[int, int, str]]]] = {}
    reconnects = 0
    for sender in senders:
        client = sender.client
        await wait_for(lambda c=client: c.state is ConnectionState.CONNECTED, 60)
        await asyncio.wait_for(client.sync(), 60)
        view: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
        while (event := client.next_event_nowait()) is not None:
            if isinstance(event, MessageReceived):
                m = event.message
                view[m.conversation].append((m.seq, m.id, m.text))
            elif isinstance(event, StateChanged) and event.state is ConnectionState.CONNECTED:
                reconnects += 1
        views[sender.name] = view
        await client.close()
    assert proc.terminate() == 0

    sound = integrity(proc.db)
    user_ids = dict(query(proc.db, "SELECT name, id FROM users"))
    rows = query(
        proc.db,
        "SELECT m.id, m.conversation, m.seq, u.name, m.client_id, m.text "
        "FROM messages m JOIN users u ON u.id = m.sender_id ORDER BY m.id",
    )
    assert sound == "ok"

    acked = [m for s in senders for m in s.acked]
    stored = {row[4]: row for row in rows}
    # Exactly once: each acknowledged client id is stored once, under the acknowledged id.
    texts = [row[5] for row in rows]
    assert len(texts) == len(set(texts))
    for message in acked:
        row = stored[message.client_id]
        assert (row[0], row[1], row[2], row[3]) == (
            message.id,
            message.conversation,
            message.seq,
            message.sender,
        )
    # Every attempt was retried until acknowledged, so nothing stored is unacknowledged.
    assert len(rows) == len(acked)
    # Each sender's order is kept, and every conversation is gap-free.
    for sender in senders:
        ids = [stored[m.client_id][0] for m in sender.acked]
        assert ids == sorted(ids)
        assert [m.client_id for m in sender.acked] == [
            f"{sender.name}-{k}" for k in range(len(sender.acked))
        ]
    by_conversation: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for row in rows:
        by_conversation[row[1]].append((row[2], row[0], row[5]))
    for conversation, items in by_conversation.items():
        assert [seq for seq, _, _ in items] == list(range(1, len(items) + 1)), conversation
    # Every resumed client's view equals the server's history of its conversations.
    for name, view in views.items():
        uid = user_ids[name]
        mine = {
            c
            for c in by_conversation
            if c == schema.GENERAL or uid in {int(x) for x in c.split(":")[1:]}
        }
        assert set(view) == mine, name
        for conversation in mine:
            assert view[conversation] == by_conversation[conversation], (name, conversation)

    log = proc.log.read_text()
    assert not [line for line in unhandled_errors(log) if "Traceback" in line]
    report(
        "crash",
        {
            "clients": size.clients,
            "seconds": round(elapsed, 1),
            "SIGKILLs": size.kills,
            "restart downtime max s": max(downtimes),
            "acknowledged": len(acked),
            "stored": len(rows),
            "reconnections": reconnects,
            "sends failed and sent again": sum(s.retries for s in senders),
            "acknowledged per s": len(acked) / elapsed,
            "conversations": len(by_conversation),
            "integrity_check": integrity,
        },
    )
