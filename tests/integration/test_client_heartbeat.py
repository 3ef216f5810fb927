"""The client notices a server that went silent without closing the connection."""

from __future__ import annotations

import asyncio
import json

from beseda.client import Client, ConnectionState, StateChanged


async def test_silent_server_is_detected_by_the_heartbeat() -> None:
    connections = 0

    async def silent_after_login(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal connections
        connections += 1
        hello = {"type": "hello", "server": "mute", "protocol": 1, "limits": {}}
        writer.write(json.dumps(hello).encode() + b"\n")
        request = json.loads(await reader.readline())
        reply = {"type": "result", "id": request["id"], "data": {"user": "a", "token": "t"}}
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()
        # Then silence: the link is "up" but nothing answers, like a pulled cable.
        try:
            await reader.read()  # until the client gives up and closes
        finally:
            writer.close()

    server = await asyncio.start_server(silent_after_login, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Client("127.0.0.1", port, heartbeat=0.4, min_backoff=5)
    try:
        await client.connect()
        await client.login("a", "password123")
        while True:
            event = await client.next_event(timeout=10)
            if isinstance(event, StateChanged) and event.state is ConnectionState.RECONNECTING:
                break
        assert connections == 1
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
