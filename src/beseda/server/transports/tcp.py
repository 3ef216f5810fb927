"""The TCP transport: bytes ↔ codec ↔ core, and nothing else.

Each connection is an ``asyncio.Protocol``: incoming bytes are split into lines (bounded) and
queued. A worker task, started only while there are requests, begins them one after another
(:meth:`Chat.begin`). A message does not wait for its commit before the next request begins:
its reply is a future, and replies are sent strictly in request order as they resolve. So a
run of messages read in one go is committed in one group and leaves in one write per
recipient, and an idle connection holds no task at all.

Outgoing lines are appended to a per-connection list and written once per loop iteration
(coalescing many small lines into one ``write``); a connection whose unsent bytes exceed the
bound is dropped as a slow consumer rather than allowed to hold memory or anyone's time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import ssl
from collections import deque
from typing import Final

import msgspec

from ... import __version__
from ...protocol import codec, errors, schema
from ...protocol.errors import ProtocolError
from ...storage import StorageError
from ..chat import Chat, Outcome, Session
from ..config import Limits
from ..limits import AddressLimiter

log = logging.getLogger(__name__)

_ids = itertools.count(1)
LINGER: Final = 2.0
"""Seconds a closing connection waits for the peer to close its side before it is closed."""


RequestId = int | str | None
Reply = bytes | tuple[int | str, "asyncio.Future[msgspec.Struct]"]
"""A reply in waiting: its encoded line, or the request's id and the future of its data."""


class TcpConnection(asyncio.Protocol):
    """One client connection."""

    # Thousands of these live at once: no __dict__ (see docs/performance.md, idle memory).
    __slots__ = (
        "_auth_timer",
        "_chat",
        "_closing",
        "_counted",
        "_eof",
        "_limits",
        "_lines",
        "_linger",
        "_listener",
        "_loop",
        "_out",
        "_out_bytes",
        "_paused",
        "_replies",
        "_requests",
        "_shutting_down",
        "_stopping",
        "_transport",
        "_worker",
        "address",
        "closed",
        "conn_id",
        "session",
    )

    def __init__(self, listener: TcpListener) -> None:
        self.conn_id = next(_ids)
        self.address = "?"
        self._listener = listener
        self._limits = listener.limits
        self._chat = listener.chat
        self._loop = asyncio.get_running_loop()
        self._lines = codec.LineBuffer(self._limits.max_line_bytes)
        # Both made when needed and let go when empty: an idle connection holds neither.
        self._requests: deque[bytes] | None = None
        """Lines read and not yet begun."""
        self._replies: deque[Reply] | None = None
        """Replies of begun requests, in request order, not yet sent."""
        self._stopping = False
        """No more requests will be read: once the queued ones are answered, close."""
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._transport: asyncio.Transport | None = None
        self._counted = False
        self._closing = False
        self._paused = False
        self._shutting_down = False
        self._auth_timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._eof = False
        self._worker: asyncio.Task[None] | None = None
        self.session = Session(self)
        self.closed = self._loop.create_future()

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Dead peers (no FIN ever comes) are found and their connections freed.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._listener.connections.add(self)
        if not self._listener.addresses.acquire(self.address):
            log.warning(
                "conn %d: refused, too many connections from %s", self.conn_id, self.address
            )
            self.close_with(errors.TOO_MANY_CONNECTIONS)
            return
        self._counted = True
        log.debug("conn %d: opened from %s", self.conn_id, self.address)
        self.deliver(codec.encode(self._listener.hello))
        self._auth_timer = self._loop.call_later(self._limits.auth_timeout, self._auth_timeout)

    def data_received(self, data: bytes) -> None:
        if self._closing or self._stopping:
            return
        requests = self._requests
        if requests is None:
            requests = self._requests = deque()
        try:
            for line in self._lines.feed(data):
                if line.strip():
                    requests.append(line)
        except ProtocolError as exc:
            log.info("conn %d: %s", self.conn_id, exc)
            self.close_with(exc.code, exc.message, as_error=True)
            return
        if requests:
            self._start_worker()
            if not self._paused and len(requests) >= self._limits.max_pending_requests:
                # Back-pressure: stop reading until the worker catches up.
                assert self._transport is not None
                self._transport.pause_reading()
                self._paused = True

    def eof_received(self) -> bool | None:
        self._eof = True
        if self._closing:
            return None  # our side is done too: asyncio closes the transport
        self._stopping = True
        self._start_worker()
        return True  # keep the write side open until the pending replies are sent

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._auth_timer is not None:
            self._auth_timer.cancel()
        if self._linger is not None:
            self._linger.cancel()
        if self._counted:
            self._listener.addresses.release(self.address)
            self._counted = False
        self._stop_worker()
        self._listener.connections.discard(self)
        self._listener.track(self._loop.create_task(self._forget()))
        if not self.closed.done():
            self.closed.set_result(None)
        log.debug("conn %d: closed (%s)", self.conn_id, exc or "clean")

    def _stop_worker(self) -> None:
        # Drop what was read but not started; let the request in hand finish. Cancelling it
        # could leave a committed message unpublished or a login half done.
        if self._requests is not None:
            self._requests.clear()
        self._stopping = True

    async def _forget(self) -> None:
        # Only after the worker is done: a login finishing late must not leave a ghost session.
        if self._worker is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        await self._chat.disconnect(self.session)

    # -- requests ------------------------------------------------------------------------------

    def _start_worker(self) -> None:
        if self._worker is None:
            self._worker = self._loop.create_task(self._work(), name=f"beseda-conn-{self.conn_id}")

    async def _work(self) -> None:
        """Begin the queued requests in order; ends when none are left (or closes)."""
        try:
            in_flight = self._limits.max_in_flight
            while requests := self._requests:
                line = requests.popleft()
                if self._paused and len(requests) < self._limits.max_pending_requests // 2:
                    assert self._transport is not None
                    self._transport.resume_reading()
                    self._paused = False
                await self._begin(line)
                # Bound the replies in waiting too (messages whose commit is pending).
                while self._replies is not None and len(self._replies) >= in_flight:
                    await self._head_reply()
            if self._stopping:
                while self._replies:  # the last replies go out before the goodbye
                    await self._head_reply()
                if self._shutting_down:
                    self.close_with(errors.SERVER_SHUTDOWN)
                else:
                    self._close_when_flushed()
        finally:
            self._worker = None
            if not self._requests:
                self._requests = None

    async def _head_reply(self) -> None:
        """Wait until the oldest reply in waiting has been sent."""
        assert self._replies
        head = self._replies[0]
        assert not isinstance(head, bytes)  # a ready head is always sent at once
        await asyncio.wait((head[1],))
        # The future's own callback (registered first) sent it; make sure in any case.
        self._send_replies()

    async def _begin(self, line: bytes) -> None:
        request_id: RequestId = None
        try:
            request = codec.decode_request(line)
            request_id = request.id
            outcome: Outcome = await self._chat.begin(self.session, request)
        except Exception as exc:
            self._reply(self._error_reply(request_id, exc))
            return
        if isinstance(outcome, asyncio.Future):
            outcome.add_done_callback(self._on_reply_ready)
            self._reply((request.id, outcome))
            return
        if self._auth_timer is not None and self.session.user is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        elif self._auth_timer is None and self.session.user is None:
            # Logged out: the connection must log in again within the timeout too.
            self._auth_timer = self._loop.call_later(self._limits.auth_timeout, self._auth_timeout)
        self._reply(codec.encode(schema.Result(id=request.id, data=codec.encode_data(outcome))))

    def _reply(self, reply: Reply) -> None:
        replies = self._replies
        if replies is None:
            if isinstance(reply, bytes):
                self.deliver(reply)  # nothing waits ahead of it
                return
            replies = self._replies = deque()
        replies.append(reply)
        self._send_replies()

    def _on_reply_ready(self, _: asyncio.Future[msgspec.Struct]) -> None:
        self._send_replies()

    def _send_replies(self) -> None:
        """Send the replies at the head that are ready, in request order."""
        replies = self._replies
        if replies is None:
            return
        while replies:
            head = replies[0]
            if isinstance(head, bytes):
                line = head
            else:
                request_id, future = head
                if not future.done():
                    return
                if future.cancelled():
                    line = self._error_reply(request_id, asyncio.CancelledError())
                elif (error := future.exception()) is not None:
                    line = self._error_reply(request_id, error)
                else:
                    result = schema.Result(id=request_id, data=codec.encode_data(future.result()))
                    line = codec.encode(result)
            replies.popleft()
            self.deliver(line)
        self._replies = None

    def _error_reply(self, request_id: RequestId, exc: BaseException) -> bytes:
        if isinstance(exc, ProtocolError):
            error = schema.Error(
                id=exc.request_id if request_id is None else request_id,
                code=exc.code,
                message=exc.message,
                retry_after=exc.retry_after,
            )
        elif isinstance(exc, StorageError):
            log.error("conn %d: storage failed: %s", self.conn_id, exc)
            error = schema.Error(
                id=request_id,
                code=errors.STORAGE_UNAVAILABLE,
                message=errors.MESSAGES[errors.STORAGE_UNAVAILABLE],
            )
        else:
            log.error("conn %d: failed to handle a request", self.conn_id, exc_info=exc)
            error = schema.Error(
                id=request_id,
                code=errors.INTERNAL_ERROR,
                message=errors.MESSAGES[errors.INTERNAL_ERROR],
            )
        return codec.encode(error)

    def _auth_timeout(self) -> None:
        self._auth_timer = None
        if self.session.user is None:
            log.info("conn %d: no login within %.1f s", self.conn_id, self._limits.auth_timeout)
            self.close_with(errors.AUTH_TIMEOUT)

    # -- output --------------------------------------------------------------------------------

    def deliver(self, data: bytes) -> None:
        """Queue a line; it is written at the end of this loop iteration. Never blocks."""
        if self._closing:
            return
        if not self._out:
            self._listener.schedule_flush(self)
        self._out.append(data)
        self._out_bytes += len(data)
        if self._out_bytes > self._limits.send_buffer_bytes:
            self._drop_slow_consumer(self._out_bytes)

    def flush(self) -> None:
        """Write what was queued in one call (called once per loop iteration)."""
        out = self._out
        if not out:
            return
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(b"".join(out) if len(out) > 1 else out[0])
            unsent = transport.get_write_buffer_size()
            if unsent > self._limits.send_buffer_bytes:
                self._drop_slow_consumer(unsent)
        out.clear()
        self._out_bytes = 0

    def _drop_slow_consumer(self, unsent: int) -> None:
        log.warning("conn %d: dropped as a slow consumer (%d bytes unsent)", self.conn_id, unsent)
        # It is not reading, so a goodbye would not reach it: drop at once and free the
        # buffer. It loses nothing: after reconnecting it syncs from its cursors.
        self._closing = True
        self._out.clear()
        self._out_bytes = 0
        if self._transport is not None:
            self._transport.abort()

    def close_with(self, code: str, message: str | None = None, *, as_error: bool = False) -> None:
        """Say why (a ``bye`` event, or an ``error`` for a protocol violation), then close."""
        if self._closing:
            return
        text = message or errors.MESSAGES.get(code, code)
        event: schema.ServerMessage = (
            schema.Error(id=None, code=code, message=text)
            if as_error
            else schema.Bye(code=code, message=text)
        )
        self.deliver(codec.encode(event))
        self._close_when_flushed()

    def _close_when_flushed(self) -> None:
        self._closing = True
        if self._worker is not asyncio.current_task():
            self._stop_worker()
        self.flush()
        transport = self._transport
        if transport is None or transport.is_closing():
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
            self._linger = self._loop.call_later(LINGER, transport.close)
        else:
            transport.close()  # TLS cannot half-close: sends what is buffered, then closes

    async def finish(self, grace: float) -> None:
        """Graceful close: stop reading, let queued requests finish, say bye, close."""
        if self._transport is None or self._closing:
            return
        self._transport.pause_reading()
        self._shutting_down = True
        self._stopping = True
        self._start_worker()
        worker = self._worker
        if worker is not None:
            # The worker says bye and closes after the requests queued before the stop.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(worker), grace)
        if not self._closing:
            self.close_with(errors.SERVER_SHUTDOWN)


class TcpListener:
    """Accepts TCP connections and owns them."""

    def __init__(self, chat: Chat, limits: Limits) -> None:
        self.chat = chat
        self.limits = limits
        self.addresses = AddressLimiter(limits.max_connections_per_address)
        self.connections: set[TcpConnection] = set()
        self.hello = schema.Hello(
            server=f"beseda {__version__}",
            protocol=schema.PROTOCOL_VERSION,
            limits={
                "max_line_bytes": limits.max_line_bytes,
                "max_text_chars": schema.MAX_TEXT_CHARS,
                "auth_timeout": limits.auth_timeout,
                "message_rate": limits.message_rate,
                "message_burst": limits.message_burst,
            },
        )
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._dirty: list[TcpConnection] = []

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
        await self._wait_closed(connections, grace)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._server = None

    async def _wait_closed(self, connections: list[TcpConnection], grace: float) -> None:
        pending = [c.closed for c in connections if not c.closed.done()]
        if pending:
            _, still_open = await asyncio.wait(pending, timeout=grace)
            for connection in connections:
                if not connection.closed.done() and connection._transport is not None:
                    connection._transport.abort()
            if still_open:
                await asyncio.wait(still_open, timeout=1)
