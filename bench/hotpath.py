"""``python -m bench.hotpath``: nanoseconds of the per-recipient output path, in-process.

Every delivery of a message to a connection goes through ``ServerConnection.deliver`` (queue
the line) and, at the end of the loop iteration, ``data_to_send`` (take it for the one
write). In the paced fan-out each message is alone in its iteration, so this pair runs once
per recipient per message. This times the pair on a real ``ServerConnection`` (no socket: the
write itself is the kernel's, and the fan-out scenario measures the whole); the best of
``--rounds`` rounds. Run it pinned (``taskset -c 0``) and compare two versions of the code.

The second row times the same through the TCP transport's side as well: 500 signed-in
``TcpConnection`` objects each get the line, then the listener's end-of-iteration flush
writes each one's (to a transport that takes everything at once, so the kernel's part is
left out again). The third does the same for 500 WebSockets of the HTTP port (each opened
by a real handshake, then signed in as above), whose flush frames the line once for all
(``FrameCache``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Any

from beseda.server.config import Limits
from beseda.server.connection import Capacity, ServerConnection, State
from beseda.server.transports.tcp import TcpConnection, TcpListener
from beseda.server.transports.websocket import HttpConnection, HttpListener

LINE = b"x" * 200
"""About the size of an encoded chat entry."""


def deliver_and_take(calls: int) -> float:
    connection = ServerConnection(
        None,  # type: ignore[arg-type]  # no request is handled: no chat needed
        Capacity(Limits()),
        b"hello\n",
        clock=time.monotonic,
        on_output=lambda: None,
    )
    connection.data_to_send()  # the hello
    deliver, take = connection.deliver, connection.data_to_send
    began = time.perf_counter_ns()
    for _ in range(calls):
        deliver(LINE)
        take()
    return (time.perf_counter_ns() - began) / calls


class _Taker(asyncio.Transport):
    """A transport whose kernel takes every write whole."""

    def __init__(self, address: str = "127.0.0.1") -> None:
        super().__init__()
        self._address = address

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self._address, 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False


async def _best_of(
    rounds: int, connections: list[Any], flush_all: Callable[[], None], messages: int
) -> float:
    """ns per recipient of ``messages`` lines delivered to each of ``connections`` and
    flushed by ``flush_all`` once per line, the best of ``rounds``."""
    best = float("inf")
    for _ in range(rounds):
        began = time.perf_counter_ns()
        for _ in range(messages):
            for connection in connections:
                connection.deliver(LINE)
            flush_all()
        best = min(best, (time.perf_counter_ns() - began) / (messages * len(connections)))
        await asyncio.sleep(0)  # (the flush the loop was asked for finds nothing)
    return best


async def _deliver_and_flush(rounds: int, recipients: int = 500, messages: int = 20) -> float:
    listener = TcpListener(None, Limits())  # type: ignore[arg-type]  # no request is handled
    listener.clock = asyncio.get_running_loop().time
    connections = []
    for n in range(recipients):
        tcp = TcpConnection(listener)
        tcp._transport = _Taker()  # type: ignore[assignment]
        connection: Any = tcp.connection
        connection.start(f"127.0.{n // 200}.{n % 200 + 1}")
        connection.data_to_send()  # the hello
        connection.state = State.AUTHENTICATED  # as after a login: no deadline left
        connection._auth_deadline = None
        connections.append(tcp.connection)
    return await _best_of(rounds, connections, listener._flush_all, messages)


_UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def _ws_deliver_and_flush(rounds: int, recipients: int = 500, messages: int = 20) -> float:
    limits = Limits()
    listener = HttpListener(None, limits, Capacity(limits), b"hello\n", None)  # type: ignore[arg-type]
    connections = []
    for n in range(recipients):
        http = HttpConnection(listener)
        http.connection_made(_Taker(f"127.0.{n // 200}.{n % 200 + 1}"))
        http.data_received(_UPGRADE)
        connection: Any = http.connection
        assert connection is not None, "the handshake did not open a WebSocket"
        connection.data_to_send()  # the hello
        connection.state = State.AUTHENTICATED  # as after a login: no deadline left
        connection._auth_deadline = None
        connections.append(connection)
    listener._flush_all()
    return await _best_of(rounds, connections, listener._flush_all, messages)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    best = min(deliver_and_take(args.calls) for _ in range(args.rounds))
    print(f"deliver + data_to_send: {best:.1f} ns per recipient (best of {args.rounds})")
    flushed = asyncio.run(_deliver_and_flush(2 * args.rounds))
    print(f"deliver + the TCP flush: {flushed:.1f} ns per recipient (best of {2 * args.rounds})")
    framed = asyncio.run(_ws_deliver_and_flush(2 * args.rounds))
    print(
        f"deliver + the WebSocket flush: {framed:.1f} ns per recipient (best of {2 * args.rounds})"
    )


if __name__ == "__main__":
    main()
