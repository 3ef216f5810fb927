"""The Python floor: a minimal asyncio broadcast server, no auth, no storage.

Lines in: ``I <name>`` (take a name), ``B <payload>`` (to everyone else), ``D <name> <payload>``
(to one). Lines out: ``M <payload>`` to the recipients and ``A <payload>`` to the sender.

``--coalesce`` appends to a per-connection list and writes once per loop iteration; without it
every recipient gets one ``transport.write`` per message. Run: ``python -m bench.reference``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from .system import LOOPBACK, raise_fd_limit


class Hub:
    def __init__(self, coalesce: bool) -> None:
        self.coalesce = coalesce
        self.everyone: set[Peer] = set()
        self.named: dict[bytes, Peer] = {}


class Peer(asyncio.Protocol):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.rest = b""
        self.out: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.hub.everyone.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.everyone.discard(self)
        for name in [name for name, peer in self.hub.named.items() if peer is self]:
            del self.hub.named[name]

    def send(self, data: bytes) -> None:
        if not self.hub.coalesce:
            assert self.transport is not None
            self.transport.write(data)
            return
        if not self.out:
            self.loop.call_soon(self.flush)
        self.out.append(data)

    def flush(self) -> None:
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def data_received(self, data: bytes) -> None:
        lines = (self.rest + data).split(b"\n")
        self.rest = lines.pop()
        for line in lines:
            kind, _, body = line.partition(b" ")
            if kind == b"B":
                out = b"M " + body + b"\n"
                for peer in self.hub.everyone:
                    if peer is not self:
                        peer.send(out)
                self.send(b"A " + body + b"\n")
            elif kind == b"D":
                name, _, payload = body.partition(b" ")
                target = self.hub.named.get(name)
                if target is not None:
                    target.send(b"M " + payload + b"\n")
                self.send(b"A " + payload + b"\n")
            elif kind == b"I":
                self.hub.named[body] = self
                self.send(b"OK\n")


async def serve(port: int, coalesce: bool) -> None:
    hub = Hub(coalesce)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Peer(hub), LOOPBACK, port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--coalesce", action="store_true")
    args = parser.parse_args()
    raise_fd_limit()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.coalesce))


if __name__ == "__main__":
    main()
