"""The HTTP port: the web app's files, ``/health``, and the protocol over WebSocket (``/ws``).

Each TCP connection is an ``asyncio.Protocol`` around two sans-I/O objects: websockets'
:class:`~websockets.server.ServerProtocol` (HTTP/1.1 request parsing, the WebSocket
handshake, frames in both directions, ping/pong, the closing handshake) and, once the
connection is a WebSocket, the same :class:`ServerConnection` the TCP transport drives. So
nothing of the chat protocol is rewritten here: one text frame carries one request line, one
frame is sent per reply or event line (without its newline), and every limit, timeout, bound
and error is the connection's own, as on TCP:

- a frame over ``max_line_bytes`` is refused from its header (websockets' ``max_size``) with
  ``error line_too_long``, before the close;
- the bytes of an unfinished frame (and of an unfinished fragmented message) count in the
  server-wide input budget and are timed by ``line_timeout``, as an unfinished line;
- output is written once per loop iteration for all dirty connections (many small frames, and
  many connections, in one callback), its unsent bytes bounded by ``send_buffer_bytes``;
  reading pauses when the connection asks (back-pressure), one timer per connection.

Before the upgrade a connection is plain HTTP: ``GET``/``HEAD`` of a file of the web app
(see ``web.py``), ``/health``, or ``/ws`` with an ``Origin`` on the allow-list. One request
per connection (no keep-alive): the app is a few files cached by the browser, and a reverse
proxy in front serves heavy traffic better anyway (docs/operations.md). The request must
arrive within ``auth_timeout``; HTTP connections count against the same connection caps.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import socket
import ssl
import struct
from typing import Final
from urllib.parse import urlsplit

from websockets.datastructures import Headers
from websockets.exceptions import PayloadTooBig
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State as FrameState
from websockets.server import ServerProtocol

from ... import __version__
from ...protocol import schema
from ..chat import Chat
from ..config import Limits
from ..connection import Capacity, ServerConnection, State
from ..web import (
    HttpResponse,
    StaticFiles,
    file_response,
    json_response,
    security_headers,
    text_response,
)
from . import sockets

log = logging.getLogger(__name__)

# websockets logs every connection's opening and closing at INFO; ours say what matters.
_frames_log = logging.getLogger(__name__ + ".frames")
_frames_log.setLevel(logging.WARNING)

LINGER: Final = 2.0
"""Seconds a closing connection waits for the peer's close before the TCP connection closes."""
WEBSOCKET_PATH: Final = "/ws"
HEALTH_PATH: Final = "/health"

_LEN1 = struct.Struct("!BB").pack
_LEN2 = struct.Struct("!BBH").pack
_LEN8 = struct.Struct("!BBQ").pack
_TEXT_FIN: Final = 0x80 | Opcode.TEXT.value
_CLOSED: Final = State.CLOSED
_FRAMES_OPEN: Final = FrameState.OPEN
"""Module constants: the flush looks them up once per recipient of every message."""


def text_frame(payload: bytes) -> bytes:
    """A server's text frame (RFC 6455 §5.2: final, unmasked, no extension) of ``payload``.

    Written here rather than with websockets' ``send_text`` because fan-out sends the same
    small frame to thousands of connections per loop iteration, and the header is 2–10 bytes:
    this costs a tenth of building a ``Frame`` each time. Tests parse these frames with
    websockets' own parser and real clients."""
    length = len(payload)
    if length < 126:
        return _LEN1(_TEXT_FIN, length) + payload
    if length < 65536:
        return _LEN2(_TEXT_FIN, 126, length) + payload
    return _LEN8(_TEXT_FIN, 127, length) + payload


SHARED_LINE_BYTES: Final = 65536
"""Lines up to this size are looked up in the :class:`FrameCache`: events (one ``bytes``
object for all their recipients) are; larger lines are replies, sent to one connection."""


class FrameCache:
    """The frames made in this loop iteration, by line. An event goes to many connections as
    one ``bytes`` object (encoded once, ``codec.Outgoing``), so its frame is made once too:
    each further recipient costs a dictionary look-up (the line's hash is computed once and
    kept by the object) instead of a header and a copy. Lines over ``SHARED_LINE_BYTES``
    (replies: history pages, sync) are framed directly, never hashed. Emptied after every
    flush of all connections.

    On the hot path use ``cache.get(line) or cache.add(line)``: a hit costs no method call
    of ours (a frame is never empty, so ``or`` only runs ``add`` on a miss)."""

    __slots__ = ("_frames", "_runs", "get")

    def __init__(self) -> None:
        self._frames: dict[bytes, bytes] = {}
        self._runs: dict[tuple[bytes, ...], bytes | None] = {}
        """Runs of lines flushed this iteration → their frames joined (None: seen once)."""
        self.get = self._frames.get

    def run(self, lines: list[bytes]) -> bytes:
        """The frames of ``lines``, joined. In a burst every recipient of one iteration gets
        the same run of events in the same order: from the second recipient of a run on, its
        frames are one look-up by the run's tuple (the lines' hashes are kept by the
        objects), not a look-up per line and a join; a run seen once (replies, direct
        messages) costs that tuple and nothing is kept of it."""
        key = tuple(lines)
        runs = self._runs
        joined = runs.get(key)
        if joined is not None:
            return joined
        get, add = self.get, self.add
        joined = b"".join([get(line) or add(line) for line in lines])
        if key in runs:
            runs[key] = joined  # the second recipient: kept for the others
        elif len(joined) <= SHARED_LINE_BYTES:
            runs[key] = None
        return joined

    def add(self, line: bytes) -> bytes:
        """The text frame of ``line`` without its newline, kept for the next recipients."""
        frame = text_frame(line[:-1])
        if len(line) <= SHARED_LINE_BYTES:
            self._frames[line] = frame
        return frame

    def frame(self, line: bytes) -> bytes:
        return self.get(line) or self.add(line)

    def clear(self) -> None:
        self._frames.clear()
        self._runs.clear()


class HttpConnection(asyncio.Protocol):
    """One TCP connection of the HTTP port: an HTTP request, or a WebSocket after one."""

    # Thousands of these live at once: no __dict__ (see docs/performance.md, idle memory).
    __slots__ = (
        "_address",
        "_admitted",
        "_closing_code",
        "_fragments",
        "_http_deadline",
        "_linger",
        "_listener",
        "_loop",
        "_paused",
        "_refusal",
        "_scheduled",
        "_timer",
        "_transport",
        "closed",
        "connection",
        "protocol",
    )

    def __init__(self, listener: HttpListener) -> None:
        self._listener = listener
        self._loop = asyncio.get_running_loop()
        self.protocol = ServerProtocol(max_size=listener.limits.max_line_bytes, logger=_frames_log)
        self.connection: ServerConnection | None = None
        """The chat connection, once this is a WebSocket."""
        self._transport: asyncio.Transport | None = None
        self._address = "?"
        self._admitted = False
        self._refusal: str | None = None
        """The cap this connection is over, when it is."""
        self._paused = False
        self._scheduled = False
        self._fragments: bytearray | None = None
        """The payload so far of a fragmented message."""
        self._http_deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._closing_code = CloseCode.NORMAL_CLOSURE
        self.closed = self._loop.create_future()

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self._listener.connections.add(self)
        # Counted against the connection caps from the start. One over them may still ask for
        # the WebSocket, which then says why it is refused as TCP does (bye); any other
        # request of it gets 503.
        self._refusal = self._listener.capacity.admit(self._address)
        self._admitted = self._refusal is None
        self._http_deadline = self._loop.time() + self._listener.limits.auth_timeout
        self._arm()

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        protocol.receive_data(data)
        events = protocol.events_received()
        if self.connection is None:
            # Nothing after the request yet (a client waits for the handshake's answer): the
            # handshake's protocol object may then be replaced by a fresh one.
            alone = data.endswith(b"\r\n\r\n") and not protocol.reader.buffer
            for index, event in enumerate(events):
                if isinstance(event, Request):
                    self._on_request(event, alone=alone)
                    events = events[index + 1 :]  # frames sent before our answer, if any
                    break
            if self.connection is None:
                self._write_protocol_output()
                return
        connection = self.connection
        completed = False  # a whole message came: what is unfinished now began after it
        for frame in events:
            if not isinstance(frame, Frame):
                continue
            opcode = frame.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                if frame.fin:
                    connection.receive_line(bytes(frame.data))  # bytes already: no copy
                    completed = True
                else:
                    self._fragments = bytearray(frame.data)
            elif opcode is Opcode.CONT and self._fragments is not None:
                self._fragments += frame.data
                if frame.fin:
                    message, self._fragments = bytes(self._fragments), None
                    connection.receive_line(message)
                    completed = True
        if protocol.state is FrameState.OPEN:
            held = len(protocol.reader.buffer)
            if self._fragments is not None:
                # A message in fragments is unfinished from its first byte to its last, so it
                # is timed as one line however its fragments trickle in (even empty ones).
                held += max(1, len(self._fragments))
            connection.receive_partial(held, began=completed)
        elif isinstance(protocol.parser_exc, PayloadTooBig):
            # Refused from its header: our error goes out before websockets' close frame.
            connection.refuse_line()
            transport = self._transport
            lines = connection.lines_to_send()
            if transport is not None and lines:
                transport.write(b"".join([text_frame(line[:-1]) for line in lines]))
        else:  # the peer closed (or broke the framing): no more input
            self._fragments = None
            connection.receive_partial(0, began=False)
            if connection.state is not State.CLOSED:
                connection.receive_eof()
        if not connection.wants_reading and not self._paused and self._linger is None:
            assert self._transport is not None
            self._transport.pause_reading()
            self._paused = True
        self._write_protocol_output()
        self._arm()

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        if self.connection is not None and self.connection.state is not State.CLOSED:
            self.connection.receive_eof()
        self._write_protocol_output()
        return None  # our side closes too: nothing more can be sent once the peer is gone

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._timer, self._linger):
            if timer is not None:
                timer.cancel()
        self._timer = self._linger = None
        self._listener.connections.discard(self)
        if self._admitted:
            self._listener.capacity.release(self._address)
            self._admitted = False
        if self.connection is not None:
            self._listener.track(self.connection.connection_lost())
        self._transport = None
        if not self.closed.done():
            self.closed.set_result(None)
        log.debug("http %s: closed (%s)", self._address, exc or "clean")

    # -- HTTP ----------------------------------------------------------------------------------

    def _on_request(self, request: Request, *, alone: bool = False) -> None:
        self._http_deadline = None
        listener = self._listener
        path = urlsplit(request.path).path
        host = request.headers.get("Host")
        base = security_headers(host, listener.tls)
        if listener.hsts:
            base.append(("Strict-Transport-Security", "max-age=31536000"))
        if path == WEBSOCKET_PATH and request.method == "GET":
            self._upgrade(request, host, base, alone=alone)
            return
        head = request.method == "HEAD"
        if self._refusal is not None:
            log.warning("http %s: refused (%s)", self._address, self._refusal)
            response = text_response(503, "Service Unavailable", f"{self._refusal}\n", base)
        elif request.method not in ("GET", "HEAD"):
            response = text_response(405, "Method Not Allowed", "GET or HEAD only.\n", base)
            response.headers.append(("Allow", "GET, HEAD"))
        elif path == HEALTH_PATH:
            response = json_response(listener.health(), base, head=head)
        else:
            response = file_response(
                listener.files,
                request.method,
                path,
                if_none_match=request.headers.get("If-None-Match"),
                accept_encoding=request.headers.get("Accept-Encoding"),
                base=base,
            )
        self._respond(response)

    def _respond(self, response: HttpResponse) -> None:
        headers = Headers()
        headers["Date"] = email.utils.formatdate(usegmt=True)
        headers["Server"] = f"beseda/{__version__}"
        headers["Connection"] = "close"
        for name, value in response.headers:
            headers[name] = value
        self.protocol.send_response(
            Response(response.status, response.reason, headers, response.body)
        )
        self._write_protocol_output()

    def _upgrade(
        self, request: Request, host: str | None, base: list[tuple[str, str]], *, alone: bool
    ) -> None:
        listener = self._listener
        origin = request.headers.get("Origin")
        if origin is not None and not listener.origin_allowed(origin, host):
            log.info("http %s: WebSocket refused, origin %s", self._address, origin)
            text = (
                f"The origin {origin} may not open a WebSocket here. The server's own origin "
                "may; add others with --allowed-origins.\n"
            )
            self._respond(text_response(403, "Forbidden", text, base))
            return
        response = self.protocol.accept(request)
        if response.status_code != 101:
            for name, value in base:
                response.headers[name] = value
            self.protocol.send_response(response)
            self._write_protocol_output()
            return
        self.protocol.send_response(response)
        self._write_protocol_output()
        if alone:
            # websockets' handshake parser keeps the request and its headers (about 2.6 KiB)
            # for the connection's life; a protocol made open has the frame parser alone.
            self.protocol = ServerProtocol(
                state=FrameState.OPEN, max_size=listener.limits.max_line_bytes, logger=_frames_log
            )
        # The chat connection counts itself against the caps from here on (and says bye if
        # it is over them).
        if self._admitted:
            listener.capacity.release(self._address)
            self._admitted = False
        self.connection = ServerConnection(
            listener.chat,
            listener.capacity,
            listener.hello,
            clock=self._loop.time,
            on_output=self._schedule,
        )
        self.connection.start(self._address)
        self._arm()

    # -- output --------------------------------------------------------------------------------

    def _write_protocol_output(self) -> None:
        """Write what websockets has to send (a response, pongs, a close); close the TCP
        connection when it says the stream ends."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        ended = False
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            else:
                ended = True
        if ended:
            self._end(transport)
        elif self.protocol.close_expected() and self._linger is None:
            self._linger = self._loop.call_later(LINGER, transport.abort)

    def _end(self, transport: asyncio.Transport) -> None:
        if self._linger is not None:
            return
        if not transport.can_write_eof():
            transport.close()  # TLS cannot half-close: sends what is buffered, then closes
            return
        # Half-close, then read and drop until the peer closes (or LINGER passes): closing
        # at once while the peer's unread bytes sit in our receive buffer makes the kernel
        # send a reset, which can destroy our last frames before the peer reads them.
        try:
            transport.write_eof()
        except OSError:
            transport.abort()
            return
        if self._paused:
            transport.resume_reading()
            self._paused = False
        self._linger = self._loop.call_later(LINGER, transport.close)

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._listener.schedule_flush(self)

    def flush(self, frames: FrameCache) -> None:
        """Send the chat connection's queued lines, one frame each, in one write; then do
        what it asks (close, read again, a new deadline). Called once per loop iteration,
        with the iteration's :class:`FrameCache`."""
        self._scheduled = False
        connection = self.connection
        transport = self._transport
        assert connection is not None
        lines = connection.lines_to_send()
        if transport is None or transport.is_closing():
            return
        # websockets' own output (a response, pongs, a close) is written as soon as it is
        # made, so only ours is left here: each line a frame, all in one write. Once per
        # recipient of every message in the paced fan-out, so the fewest calls, as on TCP: a
        # write the kernel took whole leaves nothing to report, and no chat deadline leaves
        # nothing to arm (the HTTP request's deadline ended with the upgrade).
        if lines and self.protocol.state is _FRAMES_OPEN:
            if len(lines) == 1:
                transport.write(frames.get(lines[0]) or frames.add(lines[0]))
            else:
                transport.write(frames.run(lines))
            unsent = transport.get_write_buffer_size()
            if unsent:
                connection.note_unsent(unsent)
        if connection.state is _CLOSED:
            self._close(transport)
            return
        if self._paused and connection.wants_reading:
            transport.resume_reading()
            self._paused = False
        if connection.deadline is not None:
            self._arm()

    def _close(self, transport: asyncio.Transport) -> None:
        assert self.connection is not None
        if self.connection.aborted:
            transport.abort()  # not reading: a goodbye would not reach it; free the buffer
            return
        if self.protocol.state is FrameState.OPEN:
            self.protocol.send_close(self._closing_code)
        if self._paused:
            transport.resume_reading()  # to read the peer's close
            self._paused = False
        self._write_protocol_output()

    # -- time ----------------------------------------------------------------------------------

    def _arm(self) -> None:
        """Keep one timer, at the earliest deadline (the HTTP request's, or the chat
        connection's) or before it."""
        deadline = self._http_deadline
        if self.connection is not None:
            deadline = self.connection.deadline
        timer = self._timer
        if deadline is None or (timer is not None and timer.when() <= deadline):
            return
        if timer is not None:
            timer.cancel()
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._loop.time()
        if self.connection is not None:
            self.connection.timeout(now)
        elif self._http_deadline is not None and now >= self._http_deadline:
            log.info("http %s: no request within the time allowed", self._address)
            self._http_deadline = None
            self._respond(text_response(408, "Request Timeout", "Request timeout.\n", []))
            return
        self._arm()

    async def finish(self, grace: float) -> None:
        """Graceful close: stop reading, let queued requests finish, say bye, close."""
        transport = self._transport
        if transport is None:
            return
        connection = self.connection
        if connection is None:
            transport.close()  # an HTTP request in progress: not worth waiting for
            return
        if connection.state is State.CLOSED:
            return
        transport.pause_reading()
        self._paused = True
        self._closing_code = CloseCode.GOING_AWAY
        await connection.finish(grace)


class HttpListener:
    """Accepts the HTTP port's connections and owns them."""

    def __init__(
        self,
        chat: Chat,
        limits: Limits,
        capacity: Capacity,
        hello: bytes,
        files: StaticFiles,
        *,
        allowed_origins: tuple[str, ...] = (),
    ) -> None:
        self.chat = chat
        self.limits = limits
        self.capacity = capacity
        self.hello = hello
        self.files = files
        self.allowed_origins = frozenset(origin.lower() for origin in allowed_origins)
        self.tls = False
        self.hsts = False
        """Strict-Transport-Security: with an operator's certificate only (a self-signed one
        must stay something a person can choose to trust)."""
        self.connections: set[HttpConnection] = set()
        self._server: asyncio.Server | sockets.SocketServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._dirty: list[HttpConnection] = []
        self.frames = FrameCache()

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        """The page's origin is the server's own (same scheme, and the host and port the
        browser asked for in ``Host``), or on the operator's list."""
        if origin.lower() in self.allowed_origins:
            return True
        if host is None:
            return False
        scheme = "https" if self.tls else "http"
        default = ":443" if self.tls else ":80"
        ours = {f"{scheme}://{host.lower()}", f"{scheme}://{host.lower().removesuffix(default)}"}
        return origin.lower() in ours

    def health(self) -> dict[str, object]:
        return {
            "status": "ok",
            "server": f"beseda {__version__}",
            "protocol": schema.PROTOCOL_VERSION,
            "connections": self.capacity.connections,
        }

    def schedule_flush(self, connection: HttpConnection) -> None:
        """Flush ``connection`` at the end of this loop iteration, with every other one that
        has output: one callback for all of them."""
        if not self._dirty:
            asyncio.get_running_loop().call_soon(self._flush_all)
        self._dirty.append(connection)

    def _flush_all(self) -> None:
        dirty, self._dirty = self._dirty, []
        frames = self.frames
        try:
            for connection in dirty:
                connection.flush(frames)
        finally:
            frames.clear()

    async def start(
        self, host: str, port: int, tls: ssl.SSLContext | None = None, *, hsts: bool = False
    ) -> None:
        self.tls = tls is not None
        self.hsts = hsts and self.tls
        loop = asyncio.get_running_loop()
        if tls is None and sockets.available(loop):
            # Plain HTTP: the lean transport, as for TCP (docs/architecture.md, "Lean sockets").
            self._server = await sockets.serve(
                lambda: HttpConnection(self), host, port, backlog=1024
            )
            return
        self._server = await loop.create_server(
            lambda: HttpConnection(self),
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
        pending = [c.closed for c in connections if not c.closed.done()]
        if pending:
            _, still_open = await asyncio.wait(pending, timeout=grace)
            for connection in connections:
                transport = connection._transport
                if not connection.closed.done() and transport is not None:
                    transport.abort()
            if still_open:
                await asyncio.wait(still_open, timeout=1)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._server = None
