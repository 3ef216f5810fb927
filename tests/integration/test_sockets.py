"""The lean socket transport (server/transports/sockets.py) over real loopback sockets: the
calls a protocol gets, in asyncio's order; writes the kernel cannot take at once are kept and
sent in order; close sends what is kept first; write_eof half-closes; a reset is reported;
accepting pauses while the process is out of file descriptors, then goes on."""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

import pytest

from beseda.server.transports import sockets
from conftest import TIMEOUT_FACTOR

TIMEOUT = 10 * TIMEOUT_FACTOR


class Recorder(asyncio.Protocol):
    """Records every call; ``keep_open`` is its answer to ``eof_received``."""

    def __init__(self, keep_open: bool = False) -> None:
        self.calls: list[str] = []
        self.data = bytearray()
        self.transport: sockets.SocketTransport | None = None
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.made = asyncio.Event()
        self.eof = asyncio.Event()
        self.keep_open = keep_open

    def connection_made(self, transport: Any) -> None:
        assert isinstance(transport, sockets.SocketTransport)
        self.calls.append("made")
        self.transport = transport
        self.made.set()

    def data_received(self, data: bytes) -> None:
        if not self.calls or self.calls[-1] != "data":
            self.calls.append("data")
        self.data += data

    def eof_received(self) -> bool:
        self.calls.append("eof")
        self.eof.set()
        return self.keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append("lost")
        assert not self.lost.done(), "connection_lost twice"
        self.lost.set_result(exc)


async def _pair(
    keep_open: bool = False,
) -> tuple[sockets.SocketServer, Recorder, asyncio.StreamReader, asyncio.StreamWriter]:
    made: list[Recorder] = []

    def factory() -> Recorder:
        made.append(Recorder(keep_open))
        return made[-1]

    server = await sockets.serve(factory, "127.0.0.1", 0, backlog=16)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(int(TIMEOUT * 100)):
        if made and made[0].made.is_set():
            break
        await asyncio.sleep(0.01)
    assert made, "no connection accepted"
    return server, made[0], reader, writer


async def test_data_then_eof_then_lost_in_order_and_addresses_asked_for() -> None:
    server, side, reader, writer = await _pair()
    try:
        assert side.transport is not None
        assert side.transport.get_extra_info("peername") == writer.get_extra_info("sockname")
        assert isinstance(side.transport.get_extra_info("socket"), socket.socket)
        writer.write(b"hello ")
        writer.write(b"world\n")
        await writer.drain()
        writer.write_eof()
        await asyncio.wait_for(side.eof.wait(), TIMEOUT)
        assert await asyncio.wait_for(side.lost, TIMEOUT) is None  # eof_received said close
        assert side.calls == ["made", "data", "eof", "lost"]
        assert bytes(side.data) == b"hello world\n"
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # closed on our side too
        assert side.transport.get_extra_info("peername") is None
    finally:
        writer.close()
        server.close()


async def test_what_the_kernel_cannot_take_is_kept_and_sent_in_order_before_the_close() -> None:
    server, side, reader, writer = await _pair()
    try:
        transport = side.transport
        assert transport is not None
        # Far more than the kernel buffers between the ends, while the peer does not read.
        chunks = [bytes([n % 251]) * 65_536 for n in range(256)]  # 16 MiB
        for chunk in chunks:
            transport.write(chunk)
        assert transport.get_write_buffer_size() > 0
        transport.close()  # after what is kept
        assert transport.is_closing()
        assert not side.lost.done()
        received = await asyncio.wait_for(reader.read(), 6 * TIMEOUT)  # until the close
        assert received == b"".join(chunks)
        assert await asyncio.wait_for(side.lost, TIMEOUT) is None
        assert transport.get_write_buffer_size() == 0
    finally:
        writer.close()
        server.close()


async def test_write_eof_half_closes_after_what_is_kept_and_reading_goes_on() -> None:
    server, side, reader, writer = await _pair(keep_open=True)
    try:
        transport = side.transport
        assert transport is not None
        assert transport.can_write_eof()
        transport.write(b"last words\n")
        transport.write_eof()
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b"last words\n"
        writer.write(b"still heard\n")
        await writer.drain()
        for _ in range(int(TIMEOUT * 100)):
            if side.data:
                break
            await asyncio.sleep(0.01)
        assert bytes(side.data) == b"still heard\n"
        writer.close()
        await asyncio.wait_for(side.eof.wait(), TIMEOUT)
        assert not side.lost.done()  # kept open: the protocol closes when it is done
        transport.close()
        assert await asyncio.wait_for(side.lost, TIMEOUT) is None
    finally:
        writer.close()
        server.close()


async def test_a_reset_is_reported_and_abort_drops_what_is_kept() -> None:
    server, side, _, writer = await _pair()
    try:
        sock = writer.get_extra_info("socket")
        # Close with a zero linger: the kernel sends a reset instead of a FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()
        exc = await asyncio.wait_for(side.lost, TIMEOUT)
        assert isinstance(exc, ConnectionResetError)
        assert side.calls[-1] == "lost"
    finally:
        server.close()
    server, side, _, writer = await _pair()
    try:
        transport = side.transport
        assert transport is not None
        for _ in range(64):
            transport.write(b"x" * 1_000_000)
        assert transport.get_write_buffer_size() > 0
        transport.abort()
        assert await asyncio.wait_for(side.lost, TIMEOUT) is None
        assert transport.get_write_buffer_size() == 0
        transport.write(b"after")  # ignored, as on asyncio's closed transports
    finally:
        writer.close()
        server.close()


async def test_accepting_pauses_while_out_of_descriptors_then_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sockets, "ACCEPT_RETRY", 0.2)
    made: list[Recorder] = []
    server = await sockets.serve(
        lambda: made.append(Recorder()) or made[-1], "127.0.0.1", 0, backlog=16
    )
    listening = server.sockets[0]
    real = type(listening).accept
    failures = [OSError(errno.EMFILE, "Too many open files")]

    class Exhausted(socket.socket):
        __slots__ = ()

        def accept(self) -> tuple[socket.socket, Any]:
            if failures:
                raise failures.pop()
            return real(self)

    listening.__class__ = Exhausted
    try:
        port = listening.getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.05)
        assert not made  # waiting in the backlog meanwhile
        for _ in range(int(TIMEOUT * 100)):
            if made:
                break
            await asyncio.sleep(0.01)
        assert made
        assert not failures
        writer.close()
        await asyncio.wait_for(made[0].lost, TIMEOUT)
        del reader
    finally:
        server.close()
