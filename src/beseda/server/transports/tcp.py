"""The TCP transport: bytes in, bytes out, and nothing else.

Each connection is an ``asyncio.Protocol`` around a :class:`ServerConnection`, which holds all
of the connection's behaviour (framing, request order, bounds, errors, the lifecycle). This
module only moves bytes: what is read goes to the connection; what the connection has to send
is written once per loop iteration (coalescing many small lines, and many connections, into one
callback); it pauses reading when told, drops a connection whose unsent bytes exceed the bound,
arms one timer at the connection's deadline, and closes with a TCP half-close and a linger so
that the last lines reach the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import sys
import time
from collections.abc import Callable
from typing import Final

from ... import __version__
from ...protocol import codec, schema
from ..chat import Chat, Session
from ..config import Limits, advertised_limits
from ..connection import Capacity, ServerConnection, State
from . import sockets

log = logging.getLogger(__name__)

_CLOSED: Final = State.CLOSED

LINGER: Final = 2.0
"""Seconds a closing connection waits for the peer to close its side before it is closed."""


class TcpConnection(asyncio.Protocol):
    """One client connection over TCP (or TLS)."""

    # Thousands of these live at once: no __dict__ (see docs/performance.md, idle memory).
    __slots__ = (
        "_closed",
        "_eof",
        "_linger",
        "_listener",
        "_loop",
        "_paused",
        "_scheduled",
        "_timer",
        "_transport",
        "connection",
    )

    def __init__(self, listener: TcpListener) -> None:
        self._listener = listener
        self._loop = asyncio.get_running_loop()
        self.connection = ServerConnection(
            listener.chat,
            listener.capacity,
            listener.hello,
            clock=listener.clock,
            on_output=self._schedule,
        )
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self._scheduled = False
        self._eof = False
        self._timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._closed: asyncio.Future[None] | bool = False
        """True once the transport is gone; a future while someone waits for that (made
        when asked for, not one per connection)."""

    @property
    def closed(self) -> asyncio.Future[None]:
        """Done once the connection has closed (its transport is gone)."""
        closed = self._closed
        if isinstance(closed, asyncio.Future):
            return closed
        future = self._loop.create_future()
        if closed:
            future.set_result(None)
        else:
            self._closed = future
        return future

    @property
    def session(self) -> Session:
        return self.connection.session

    @property
    def conn_id(self) -> int:
        return self.connection.conn_id

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Dead peers (no FIN ever comes) are found and their connections freed.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._listener.connections.add(self)
        address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        # One string for the connections of one address (an office behind one NAT).
        self.connection.start(sys.intern(address))
        self._arm()

    def data_received(self, data: bytes) -> None:
        connection = self.connection
        connection.receive_data(data)
        if not connection.wants_reading and not self._paused and self._linger is None:
            assert self._transport is not None
            self._transport.pause_reading()
            self._paused = True
        self._arm()

    def eof_received(self) -> bool | None:
        self._eof = True
        self.connection.receive_eof()
        if self.connection.state is State.CLOSED:
            self.flush()
            return None  # our side is done too: asyncio closes the transport
        return True  # keep the write side open until the pending replies are sent

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._timer, self._linger):
            if timer is not None:
                timer.cancel()
        self._timer = None
        self._listener.track(self.connection.connection_lost())
        self._transport = None
        closed, self._closed = self._closed, True
        if isinstance(closed, asyncio.Future) and not closed.done():
            closed.set_result(None)
        self._listener.closed(self)
        log.debug("conn %d: closed (%s)", self.conn_id, exc or "clean")

    # -- what the connection asks for ----------------------------------------------------------

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._listener.schedule_flush(self)

    def flush(self) -> None:
        """Write what the connection has queued, in one call, and do what it asks (close,
        read again, a new deadline). Called once per loop iteration."""
        self._scheduled = False
        connection = self.connection
        transport = self._transport
        data = connection.data_to_send()
        if transport is None or transport.is_closing():
            return
        # Once per recipient of every message in the paced fan-out: the fewest calls (a
        # write the kernel took whole leaves nothing to report; no deadline and no timer
        # leave nothing to arm).
        if data:
            transport.write(data)
            unsent = transport.get_write_buffer_size()
            if unsent:
                connection.note_unsent(unsent)
        if connection.state is _CLOSED:
            self._close(transport)
            return
        if self._paused and connection.wants_reading:
            transport.resume_reading()
            self._paused = False
        if self._timer is not None or connection.deadline is not None:
            self._arm()

    def _arm(self) -> None:
        """Keep one timer, at the connection's deadline or before it."""
        deadline = self.connection.deadline
        timer = self._timer
        if deadline is None:
            if timer is not None:  # (signed in: the login's deadline is gone, and its timer)
                timer.cancel()
                self._timer = None
            return
        if timer is not None and timer.when() <= deadline:
            return  # an early timer finds nothing to do, and arms the next
        if timer is not None:
            timer.cancel()
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.connection.timeout(self._loop.time())
        self._arm()

    def _close(self, transport: asyncio.Transport) -> None:
        if self._linger is not None:
            return  # half-closed already, waiting for the peer
        if self.connection.aborted:
            transport.abort()  # not reading: a goodbye would not reach it; free the buffer
            return
        if transport.can_write_eof() and not self._eof:
            # Half-close, then read and drop until the peer closes (or LINGER passes).
            # Closing at once while the peer's unread requests sit in our receive buffer
            # makes the kernel send a reset, which can destroy our last lines (the bye, the
            # final replies) before the peer reads them.
            try:
                transport.write_eof()  # after what is buffered
            except OSError:  # the peer is already gone (ENOTCONN): nothing left to protect
                transport.abort()
                return
            transport.resume_reading()
            self._paused = False
            self._linger = self._loop.call_later(LINGER, transport.close)
        else:
            transport.close()  # TLS cannot half-close: sends what is buffered, then closes

    async def finish(self, grace: float) -> None:
        """Graceful close: stop reading, let queued requests finish, say bye, close."""
        if self._transport is None or self.connection.state is State.CLOSED:
            return
        self._transport.pause_reading()
        self._paused = True
        await self.connection.finish(grace)


class TcpListener:
    """Accepts TCP connections and owns them."""

    def __init__(self, chat: Chat, limits: Limits, capacity: Capacity | None = None) -> None:
        self.chat = chat
        self.limits = limits
        self.capacity = capacity or Capacity(limits)
        self.connections: set[TcpConnection] = set()
        self.hello = codec.encode(
            schema.Hello(
                server=f"beseda {__version__}",
                protocol=schema.PROTOCOL_VERSION,
                limits=advertised_limits(limits),
            )
        )
        self._server: asyncio.Server | sockets.SocketServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._dirty: list[TcpConnection] = []
        self.clock: Callable[[], float] = time.monotonic
        """The loop's clock (set at :meth:`start`), one bound method for all connections."""
        self._drained: asyncio.Future[None] | None = None
        """While stopping: done when the last connection has closed (one future for all of
        them, not one per connection)."""

    def closed(self, connection: TcpConnection) -> None:
        """``connection`` has closed (its transport is gone)."""
        self.connections.discard(connection)
        drained = self._drained
        if drained is not None and not self.connections and not drained.done():
            drained.set_result(None)

    def schedule_flush(self, connection: TcpConnection) -> None:
        """Flush ``connection`` at the end of this loop iteration, with every other one that
        has output: one callback for all of them, not one each."""
        if not self._dirty:
            asyncio.get_running_loop().call_soon(self._flush_all)
        self._dirty.append(connection)

    def _flush_all(self) -> None:
        dirty, self._dirty = self._dirty, []
        for connection in dirty:
            connection.flush()

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.clock = loop.time
        if tls is None and sockets.available(loop):
            # Plain TCP: the lean transport (about 1.2 KiB less per connection than asyncio's).
            self._server = await sockets.serve(
                lambda: TcpConnection(self), host, port, backlog=1024
            )
            return
        self._server = await loop.create_server(
            lambda: TcpConnection(self),
            host,
            port,
            reuse_address=True,
            backlog=1024,
            ssl=tls,
            ssl_handshake_timeout=self.limits.auth_timeout if tls else None,
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self, grace: float) -> None:
        """Stop accepting, finish in-flight requests, tell clients, close."""
        if self._server is None:
            return
        self._server.close()
        connections = list(self.connections)
        await asyncio.gather(*(c.finish(grace) for c in connections))
        await self._wait_closed(grace)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._server = None

    async def _wait_closed(self, grace: float) -> None:
        # No new connection comes (the server stopped accepting): wait until none is left.
        if not self.connections:
            return
        drained = self._drained = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(drained), grace)
        for connection in list(self.connections):
            if connection._transport is not None:
                connection._transport.abort()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(drained), 1)
