"""A lean stream transport for plain TCP: the part of ``asyncio.Transport`` beseda uses, in an
object of nine slots.

asyncio's own socket transport costs about 1.2 KiB of Python heap per connection (its
attribute dictionary, the dictionary of extra information with the peer's and the socket's
addresses, a buffer object, bound methods kept for its callbacks), measured with 5,000 idle
connections (docs/architecture.md, "Lean sockets"). An idle chat connection holds a socket
and waits; what it needs of a transport is a reader callback, a buffer while the kernel's is
full, and the close sequence. This one keeps no buffer object while nothing waits, asks the
socket for its addresses when they are asked for, and registers its reader with the loop
directly (``loop.add_reader``). Protocols see the same calls, in the same order, as with
asyncio's transport: ``connection_made``, ``data_received``, ``eof_received`` (whose answer
keeps the write side open or closes), ``connection_lost`` once, scheduled, as asyncio does it.

TLS keeps asyncio's transports (``ssl`` needs them); so do loops without ``add_reader``
(:func:`available`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import Any, Final

log = logging.getLogger(__name__)

MAX_READ: Final = 256 * 1024
"""Most bytes one read takes from the socket (asyncio's own ``max_size``)."""
ACCEPT_RETRY: Final = 1.0
"""Seconds before accepting again when the process is out of file descriptors (asyncio's
``ACCEPT_RETRY_DELAY``): the pending connections wait in the backlog meanwhile."""
_OUT_OF_RESOURCES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def available(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` can run these transports (a selector loop: not Windows' proactor)."""
    return isinstance(loop, asyncio.SelectorEventLoop)


class SocketTransport(asyncio.Transport):
    """One connected, non-blocking stream socket."""

    __slots__ = ("_buffer", "_closing", "_eof", "_fd", "_loop", "_protocol", "_reading", "_sock")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: asyncio.Protocol
    ) -> None:
        self._loop = loop
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._buffer: bytearray | None = None
        """Bytes the kernel did not take yet (None while there are none)."""
        self._closing = False
        self._eof = False
        """``write_eof`` was called: half-close once the buffer is sent."""
        self._reading = False
        loop.call_soon(self._start)

    def _start(self) -> None:
        if self._sock is None:
            return  # aborted before it began
        self._protocol.connection_made(self)
        self.resume_reading()  # (not if connection_made closed it)

    # -- reading -------------------------------------------------------------------------------

    def _read_ready(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            data = sock.recv(MAX_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        if data:
            try:
                self._protocol.data_received(data)
            except Exception as exc:  # as asyncio's transport: the connection goes, not the loop
                log.exception("protocol.data_received() failed on fd %d", self._fd)
                self._lost(exc)
            return
        # The peer sent all it will.
        self.pause_reading()
        if not self._protocol.eof_received():
            self.close()

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if not self._reading and self._sock is not None and not self._closing:
            self._reading = True
            self._loop.add_reader(self._fd, self._read_ready)

    # -- writing -------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        sock = self._sock
        if sock is None or self._eof or not data:
            return
        if self._buffer is None:
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._fatal(exc)
                return
            if sent == len(data):
                return
            self._buffer = bytearray(memoryview(data)[sent:])
            self._loop.add_writer(self._fd, self._write_ready)
        else:
            self._buffer += data

    def _write_ready(self) -> None:
        sock, buffer = self._sock, self._buffer
        if sock is None or buffer is None:
            return
        try:
            sent = sock.send(buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        del buffer[:sent]
        if buffer:
            return
        self._buffer = None
        self._loop.remove_writer(self._fd)
        if self._closing:
            self._lost(None)
        elif self._eof:
            self._shutdown()

    def get_write_buffer_size(self) -> int:
        return len(self._buffer) if self._buffer is not None else 0

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._eof or self._sock is None:
            return
        self._eof = True
        if self._buffer is None:
            self._shutdown()

    def _shutdown(self) -> None:
        assert self._sock is not None
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:  # the peer is gone
            self._fatal(exc)

    # -- closing -------------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop reading; close once what is buffered has been sent."""
        if self._closing:
            return
        self._closing = True
        self.pause_reading()
        if self._buffer is None:
            self._lost(None)

    def abort(self) -> None:
        """Close now; what is buffered is dropped."""
        self._lost(None)

    def _fatal(self, exc: OSError) -> None:
        if not isinstance(exc, ConnectionError | BrokenPipeError | TimeoutError):
            log.debug("socket error on fd %d: %r", self._fd, exc)
        self._lost(exc)

    def _lost(self, exc: Exception | None) -> None:
        """Release the socket; tell the protocol, at the next iteration (as asyncio does)."""
        sock = self._sock
        if sock is None:
            return
        self._closing = True
        self.pause_reading()
        if self._buffer is not None:
            self._buffer = None
            self._loop.remove_writer(self._fd)
        self._sock = None
        self._loop.call_soon(self._finish, sock, exc)

    def _finish(self, sock: socket.socket, exc: Exception | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            sock.close()

    # -- what else a transport tells -----------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        sock = self._sock
        if sock is None:
            return default
        try:
            if name == "peername":
                return sock.getpeername()
            if name == "sockname":
                return sock.getsockname()
        except OSError:
            return default
        if name == "socket":
            return sock
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


class SocketServer:
    """Listening sockets whose connections get a :class:`SocketTransport` each."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sockets: list[socket.socket],
        factory: Callable[[], asyncio.Protocol],
        backlog: int,
    ) -> None:
        self._loop = loop
        self.sockets = sockets
        self._factory = factory
        self._backlog = backlog
        self._retry: asyncio.TimerHandle | None = None
        self._serving = False
        self._listen()

    def _listen(self) -> None:
        self._retry = None
        self._serving = True
        for sock in self.sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, listening: socket.socket) -> None:
        # Up to a backlog's worth per wake-up, as asyncio does: a storm of connections is
        # taken in few iterations without starving the connections already open.
        for _ in range(self._backlog):
            try:
                sock, _ = listening.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                # Out of descriptors: leave the rest in the backlog and try again later.
                log.error("accepting connections paused for %.1f s: %s", ACCEPT_RETRY, exc)
                self._pause()
                self._retry = self._loop.call_later(ACCEPT_RETRY, self._listen)
                return
            sock.setblocking(False)
            SocketTransport(self._loop, sock, self._factory())

    def _pause(self) -> None:
        if self._serving:
            self._serving = False
            for sock in self.sockets:
                self._loop.remove_reader(sock.fileno())

    def close(self) -> None:
        """Stop accepting and close the listening sockets (open connections stay)."""
        self._pause()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        for sock in self.sockets:
            sock.close()


async def serve(
    factory: Callable[[], asyncio.Protocol], host: str | None, port: int, *, backlog: int
) -> SocketServer:
    """Listen on every address of ``host`` (all interfaces for None or ""), as
    ``loop.create_server`` does: one socket per address, ``SO_REUSEADDR``, IPv6 sockets
    IPv6 only."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    seen: set[tuple[Any, ...]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"error while attempting to bind on address {address!r}: {exc}"
                ) from None
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return SocketServer(loop, sockets, factory, backlog)
