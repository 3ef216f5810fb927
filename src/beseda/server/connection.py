"""The server's side of one connection, sans I/O: bytes (or lines) in, bytes out.

Everything about how a connection *behaves* lives here, so that every transport (TCP today,
WebSocket and IRC later) shares it and it is tested without a socket:

- framing and its bounds: the line buffer, a line's size and the time it may take to arrive, and
  a server-wide budget for unfinished lines (:class:`Capacity`);
- the requests in order: a worker begins them one after another (:meth:`Chat.begin`) and the
  replies leave strictly in request order, a message's reply being a future resolved by its
  commit; at most ``max_in_flight`` of those wait, and reading pauses (:attr:`wants_reading`)
  while ``max_pending_requests`` lines wait to begin;
- error mapping: ``ProtocolError`` → its error reply, ``StorageError`` → ``storage_unavailable``,
  anything else → ``internal_error``, logged with its traceback;
- hello and bye, the connection caps (server-wide, per address, per user) and the auth timeout;
- the lifecycle: a :class:`State` and every transition in one table, :data:`TRANSITIONS`.

The transport only moves bytes. It calls :meth:`ServerConnection.receive_data` (or
:meth:`~ServerConnection.receive_line` for one framed request) and
:meth:`~ServerConnection.receive_eof`; when told (``on_output``) it writes
:meth:`~ServerConnection.data_to_send` at the end of the loop iteration, reports what it could
not send (:meth:`~ServerConnection.note_unsent`), obeys :attr:`~ServerConnection.wants_reading`,
closes once the state is ``CLOSED`` (at once when :attr:`~ServerConnection.aborted`), and calls
:meth:`~ServerConnection.timeout` at :attr:`~ServerConnection.deadline`. The connection keeps no
timer and no task while idle: the worker exists only while there are requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
from collections import Counter, deque
from collections.abc import Callable
from typing import Final

import msgspec

from ..protocol import codec, errors, schema
from ..protocol.errors import ProtocolError
from ..storage import StorageError
from .chat import Chat, Outcome, Session
from .config import Limits
from .limits import AddressLimiter

log = logging.getLogger(__name__)

_ids = itertools.count(1)

RequestId = int | str | None
Reply = bytes | tuple[int | str, "asyncio.Future[msgspec.Struct]"]
"""A reply in waiting: its encoded line, or the request's id and the future of its data."""


# -- the lifecycle -----------------------------------------------------------------------------


class State(enum.Enum):
    """Where a connection is in its life."""

    CONNECTED = "connected"
    """Open and anonymous: it must log in before its auth deadline."""
    AUTHENTICATED = "authenticated"
    """Logged in (a logout returns it to ``CONNECTED``, with a new auth deadline)."""
    CLOSING = "closing"
    """Reads no more (end of input, or shutdown): answers what it read, then says goodbye."""
    CLOSED = "closed"
    """Its last lines are queued; nothing more is read or sent, and the transport closes."""


_CLOSED = State.CLOSED
_CONNECTED = State.CONNECTED
"""For the per-delivery check (an enum member looked up on its class costs more)."""


class Event(enum.Enum):
    """What moves a connection from one state to another."""

    LOGGED_IN = "logged in"
    LOGGED_OUT = "logged out"
    STOP = "stop"
    """No more input: the peer's end of input, or the server shutting down."""
    CLOSE = "close"
    """The connection decided to close: a fatal error, a timeout, a cap, drained after STOP."""
    LOST = "lost"
    """The transport is gone."""


_S, _E = State, Event
TRANSITIONS: Final[dict[tuple[State, Event], State]] = {
    (_S.CONNECTED, _E.LOGGED_IN): _S.AUTHENTICATED,
    (_S.CONNECTED, _E.STOP): _S.CLOSING,
    (_S.CONNECTED, _E.CLOSE): _S.CLOSED,
    (_S.CONNECTED, _E.LOST): _S.CLOSED,
    (_S.AUTHENTICATED, _E.LOGGED_OUT): _S.CONNECTED,
    (_S.AUTHENTICATED, _E.STOP): _S.CLOSING,
    (_S.AUTHENTICATED, _E.CLOSE): _S.CLOSED,
    (_S.AUTHENTICATED, _E.LOST): _S.CLOSED,
    # The requests read before the stop are still carried out, logins and logouts included.
    (_S.CLOSING, _E.LOGGED_IN): _S.CLOSING,
    (_S.CLOSING, _E.LOGGED_OUT): _S.CLOSING,
    (_S.CLOSING, _E.STOP): _S.CLOSING,
    (_S.CLOSING, _E.CLOSE): _S.CLOSED,
    (_S.CLOSING, _E.LOST): _S.CLOSED,
    # A request begun before the close may finish after it; nothing reopens a connection.
    (_S.CLOSED, _E.LOGGED_IN): _S.CLOSED,
    (_S.CLOSED, _E.LOGGED_OUT): _S.CLOSED,
    (_S.CLOSED, _E.STOP): _S.CLOSED,
    (_S.CLOSED, _E.CLOSE): _S.CLOSED,
    (_S.CLOSED, _E.LOST): _S.CLOSED,
}
"""Every transition of every connection. A pair missing here is a bug of ours: it raises."""

_OPEN: Final = frozenset((State.CONNECTED, State.AUTHENTICATED))
"""The states in which input is read."""


# -- what all connections share ----------------------------------------------------------------


class Capacity:
    """What all connections of a server share, whatever their transport: the caps on
    connections (server-wide, per address, per logged-in user) and the budget of bytes held in
    unfinished lines."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.connections = 0
        self.input_bytes = 0
        """Bytes of unfinished lines held, all connections together."""
        self._addresses = AddressLimiter(limits.max_connections_per_address)
        self._users: Counter[int] = Counter()

    def admit(self, address: str) -> str | None:
        """Count a new connection; the ``bye`` code refusing it (nothing counted), or None."""
        if self.connections >= self.limits.max_connections:
            return errors.SERVER_FULL
        if not self._addresses.acquire(address):
            return errors.TOO_MANY_CONNECTIONS
        self.connections += 1
        return None

    def release(self, address: str) -> None:
        self.connections -= 1
        self._addresses.release(address)

    def add_user(self, user_id: int) -> bool:
        """Count a connection logged in as ``user_id``; False (nothing counted) over the cap."""
        if self._users[user_id] >= self.limits.max_connections_per_user:
            return False
        self._users[user_id] += 1
        return True

    def remove_user(self, user_id: int) -> None:
        self._users[user_id] -= 1
        if self._users[user_id] <= 0:
            del self._users[user_id]

    def user_connections(self, user_id: int) -> int:
        return self._users[user_id]


# -- the connection ----------------------------------------------------------------------------


class ServerConnection:
    """One client connection's behaviour, without I/O. It is the core's :class:`Peer`."""

    # Thousands of these live at once: no __dict__ (see docs/performance.md, idle memory).
    __slots__ = (
        "_aborted",
        "_auth_deadline",
        "_capacity",
        "_chat",
        "_clock",
        "_counted",
        "_held",
        "_hello",
        "_limits",
        "_lines",
        "_on_output",
        "_out",
        "_out_bytes",
        "_partial_since",
        "_paused",
        "_replies",
        "_requests",
        "_send_limit",
        "_shutting_down",
        "_user_id",
        "_worker",
        "address",
        "conn_id",
        "session",
        "state",
    )

    def __init__(
        self,
        chat: Chat,
        capacity: Capacity,
        hello: bytes,
        *,
        clock: Callable[[], float],
        on_output: Callable[[], None],
    ) -> None:
        """``clock`` gives the time of deadlines (the loop's); ``on_output`` tells the
        transport that there is something for it: data to send, a close, a change of
        :attr:`wants_reading` or :attr:`deadline`."""
        self.conn_id = next(_ids)
        self.address = "?"
        self.state = State.CONNECTED
        self.session = Session(self)
        self._chat = chat
        self._capacity = capacity
        self._limits = capacity.limits
        self._send_limit = self._limits.send_buffer_bytes
        self._hello = hello
        self._clock = clock
        self._on_output = on_output
        self._lines = codec.LineBuffer(self._limits.max_line_bytes)
        self._held = 0
        """Bytes of the unfinished line counted in the server-wide input budget."""
        self._partial_since: float | None = None
        """When the unfinished line began (None: there is none)."""
        # Both made when needed and let go when empty: an idle connection holds neither.
        self._requests: deque[bytes] | None = None
        """Lines read and not yet begun."""
        self._replies: deque[Reply] | None = None
        """Replies of begun requests, in request order, not yet sent."""
        self._worker: asyncio.Task[None] | None = None
        self._out: list[bytes] | None = None
        """Lines queued for the transport (None while there are none)."""
        self._out_bytes = 0
        self._auth_deadline: float | None = None
        self._paused = False
        self._shutting_down = False
        self._aborted = False
        self._counted = False
        self._user_id: int | None = None
        """The user counted against ``max_connections_per_user``, while logged in."""

    # -- the state machine ---------------------------------------------------------------------

    def _transition(self, event: Event) -> None:
        try:
            new = TRANSITIONS[self.state, event]
        except KeyError:
            message = f"conn {self.conn_id}: {event.value} when {self.state.value}"
            raise RuntimeError(message) from None
        old, self.state = self.state, new
        if new is old:
            return
        if new is State.CONNECTED:  # logged out: must log in again in time
            self._auth_deadline = self._clock() + self._limits.auth_timeout
            self._on_output()  # a new deadline
        elif new is State.AUTHENTICATED:
            self._auth_deadline = None
        elif new is State.CLOSED:
            self._auth_deadline = None
            self._stop_reading()
            self._on_output()  # time to close

    @property
    def wants_reading(self) -> bool:
        """False while the transport should not read (back-pressure, or no more input)."""
        return self.state in _OPEN and not self._paused

    @property
    def aborted(self) -> bool:
        """Closed without a goodbye (a slow consumer): the transport drops it at once."""
        return self._aborted

    @property
    def deadline(self) -> float | None:
        """The earliest time (of ``clock``) at which :meth:`timeout` has something to do."""
        auth = self._auth_deadline if self.state is _CONNECTED else None
        since = self._partial_since
        line = None if since is None else since + self._limits.line_timeout
        if auth is None:
            return line
        return auth if line is None else min(auth, line)

    # -- input ---------------------------------------------------------------------------------

    def start(self, address: str) -> None:
        """The transport is connected: admit the connection (hello) or refuse it (bye)."""
        self.address = address
        refusal = self._capacity.admit(address)
        if refusal is not None:
            log.warning("conn %d: refused (%s) from %s", self.conn_id, refusal, address)
            self.close(refusal)
            return
        self._counted = True
        log.debug("conn %d: opened from %s", self.conn_id, address)
        self.deliver(self._hello)
        self._auth_deadline = self._clock() + self._limits.auth_timeout

    def receive_data(self, data: bytes) -> None:
        """Bytes of the stream of lines, as they come."""
        if self.state not in _OPEN:
            return
        requests = self._requests
        if requests is None:
            requests = self._requests = deque()
        lines = self._lines
        complete = 0
        try:
            for line in lines.feed(data):
                complete += 1
                if line.strip():
                    requests.append(line)
        except ProtocolError as exc:
            log.info("conn %d: %s", self.conn_id, exc)
            self.close(exc.code, exc.message, as_error=True)
            return
        pending = lines.pending
        if pending != self._held and not self._hold(pending):
            return
        if not pending:
            self._partial_since = None
        elif complete or self._partial_since is None:
            self._partial_since = self._clock()  # a new line began
        self._queued()

    def receive_line(self, line: bytes) -> None:
        """One whole request from a framed transport (a WebSocket text frame)."""
        if self.state not in _OPEN:
            return
        if len(line) > self._limits.max_line_bytes:
            self.refuse_line()
            return
        if line.strip():
            if self._requests is None:
                self._requests = deque()
            self._requests.append(line)
            self._queued()

    def refuse_line(self) -> None:
        """A framed transport's frame is over ``max_line_bytes`` (its framing library refused
        it from its header, before it was whole): refused as an over-long line is."""
        if self.state not in _OPEN:
            return
        message = f"A line may be at most {self._limits.max_line_bytes} bytes."
        self.close(errors.LINE_TOO_LONG, message, as_error=True)

    def receive_partial(self, pending: int, *, began: bool) -> None:
        """A framed transport holds ``pending`` bytes of an unfinished frame (``began``: the
        one before it completed meanwhile). Counted in the server-wide input budget and timed
        by ``line_timeout``, exactly as an unfinished line."""
        if self.state not in _OPEN:
            return
        if pending != self._held and not self._hold(pending):
            return
        if not pending:
            self._partial_since = None
        elif began or self._partial_since is None:
            self._partial_since = self._clock()

    def receive_eof(self) -> None:
        """The peer sent all it will: answer what it asked, then close."""
        self._transition(Event.STOP)
        self._start_worker()

    def timeout(self, now: float) -> None:
        """Called at (or after) :attr:`deadline`: close a connection that is out of time."""
        auth = self._auth_deadline
        if self.state is State.CONNECTED and auth is not None and now >= auth:
            log.info("conn %d: no login within %.1f s", self.conn_id, self._limits.auth_timeout)
            self.close(errors.AUTH_TIMEOUT)
            return
        since = self._partial_since
        if since is not None and self.state in _OPEN and now >= since + self._limits.line_timeout:
            log.info("conn %d: a line unfinished for %.1f s", self.conn_id, now - since)
            self.close(errors.LINE_TIMEOUT)

    def connection_lost(self) -> asyncio.Task[None]:
        """The transport is gone. Returns the task that tells the core, once the request in
        hand is done; the transport's owner should keep it until it ends."""
        self._transition(Event.LOST)
        if self._counted:
            self._capacity.release(self.address)
            self._counted = False
        self._forget_user()
        return asyncio.get_running_loop().create_task(self._forget())

    async def finish(self, grace: float) -> None:
        """Graceful close (the transport stopped reading): let the requests read so far
        finish for up to ``grace`` seconds, say bye, close."""
        if self.state is State.CLOSED:
            return
        self._shutting_down = True
        self._transition(Event.STOP)
        self._start_worker()
        worker = self._worker
        if worker is not None:
            # The worker says bye and closes after the requests queued before the stop.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(worker), grace)
        if self.state in (State.CLOSING, *_OPEN):  # the worker did not get to its goodbye
            self.close(errors.SERVER_SHUTDOWN)

    def _hold(self, pending: int) -> bool:
        """Count an unfinished line's new size in the server-wide budget; False (closed) if
        it does not fit."""
        capacity = self._capacity
        grown = pending - self._held
        capacity.input_bytes += grown
        self._held = pending
        if grown > 0 and capacity.input_bytes > self._limits.input_buffer_bytes:
            log.warning(
                "conn %d: closed, unfinished lines hold %d bytes server-wide",
                self.conn_id,
                capacity.input_bytes,
            )
            self.close(errors.SERVER_BUSY)
            return False
        return True

    def _queued(self) -> None:
        requests = self._requests
        if not requests:
            return
        self._start_worker()
        if not self._paused and len(requests) >= self._limits.max_pending_requests:
            self._paused = True  # back-pressure: the transport stops reading

    def _stop_reading(self) -> None:
        # Drop what was read but not started; let the request in hand finish. Cancelling it
        # could leave a committed message unpublished or a login half done.
        if self._requests is not None:
            self._requests.clear()
        self._lines.clear()
        self._partial_since = None
        self._hold(0)

    async def _forget(self) -> None:
        # Only after the worker is done: a login finishing late must not leave a ghost session.
        if self._worker is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._forget_user()
        await self._chat.disconnect(self.session)

    def _forget_user(self) -> None:
        if self._user_id is not None:
            self._capacity.remove_user(self._user_id)
            self._user_id = None

    # -- requests ------------------------------------------------------------------------------

    def _start_worker(self) -> None:
        if self._worker is None and (self._requests or self.state is State.CLOSING):
            self._worker = asyncio.get_running_loop().create_task(
                self._work(), name=f"beseda-conn-{self.conn_id}"
            )

    async def _work(self) -> None:
        """Begin the queued requests in order; ends when none are left (or closes)."""
        try:
            limits = self._limits
            while requests := self._requests:
                line = requests.popleft()
                if self._paused and len(requests) < limits.max_pending_requests // 2:
                    self._paused = False
                    self._on_output()  # read again
                await self._begin(line)
                # Bound the replies in waiting too (messages whose commit is pending).
                while self._replies is not None and len(self._replies) >= limits.max_in_flight:
                    await self._head_reply()
            if self.state is State.CLOSING:
                while self._replies:  # the last replies go out before the goodbye
                    await self._head_reply()
                if self._shutting_down:
                    self.close(errors.SERVER_SHUTDOWN)
                else:
                    self._transition(Event.CLOSE)
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
            if not isinstance(outcome, asyncio.Future):
                await self._follow_login(request)
        except Exception as exc:
            self._reply(self._error_reply(request_id, exc))
            return
        if isinstance(outcome, asyncio.Future):
            outcome.add_done_callback(self._on_reply_ready)
            self._reply((request.id, outcome))
            return
        self._reply(codec.encode(schema.Result(id=request.id, data=codec.encode_data(outcome))))

    async def _follow_login(self, request: schema.AnyRequest) -> None:
        """Follow a login or logout the request made in the core; refuse a login over the
        user's connection cap (raises ``too_many_sessions``)."""
        user = self.session.user
        if user is not None and self._user_id is None:
            if not self._capacity.add_user(user.id):
                await self._undo_login(request)
                raise ProtocolError(errors.TOO_MANY_SESSIONS)
            self._user_id = user.id
            self._transition(Event.LOGGED_IN)
        elif user is None and self._user_id is not None:
            self._forget_user()
            self._transition(Event.LOGGED_OUT)

    async def _undo_login(self, request: schema.AnyRequest) -> None:
        log.info("conn %d: refused, too many connections of this user", self.conn_id)
        if isinstance(request, schema.Login) and request.token is not None:
            await self._chat.disconnect(self.session)  # the token stays: it is the user's
        else:  # the token made for this login is revoked: nobody will ever see it
            await self._chat.begin(self.session, schema.Logout(id=request.id))

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

    # -- output --------------------------------------------------------------------------------

    def send_event(self, event: codec.Outgoing) -> None:
        """Queue an event from the delivery hub, in this connection's wire format."""
        self.deliver(event.line())

    def deliver(self, data: bytes) -> None:
        """Queue a line for the transport's next write. Never blocks.

        Once per recipient of every message, so it is kept to the fewest lookups (the
        closed state as a module constant, the limit copied into a slot)."""
        if self.state is _CLOSED:
            return
        out = self._out
        if out is None:
            self._out = [data]
            self._on_output()
        else:
            out.append(data)
        queued = self._out_bytes + len(data)
        self._out_bytes = queued
        if queued > self._send_limit:
            self._drop_slow_consumer(queued)

    def data_to_send(self) -> bytes:
        """What is queued, in one piece (empty when nothing is)."""
        out = self._out
        if out is None:
            return b""
        self._out = None
        self._out_bytes = 0
        return b"".join(out) if len(out) > 1 else out[0]

    def lines_to_send(self) -> list[bytes]:
        """What is queued, line by line, each with its newline (for a framed transport, which
        sends each as one message); empty when nothing is."""
        out = self._out
        if out is None:
            return []
        self._out = None
        self._out_bytes = 0
        return out

    def note_unsent(self, unsent: int) -> None:
        """The transport holds ``unsent`` bytes the peer has not taken yet."""
        if unsent > self._limits.send_buffer_bytes:
            self._drop_slow_consumer(unsent)

    def close(self, code: str, message: str | None = None, *, as_error: bool = False) -> None:
        """Say why (a ``bye`` event, or an ``error`` for a protocol violation), then close."""
        if self.state is State.CLOSED:
            return
        text = message or errors.MESSAGES.get(code, code)
        event: schema.ServerMessage = (
            schema.Error(id=None, code=code, message=text)
            if as_error
            else schema.Bye(code=code, message=text)
        )
        self.deliver(codec.encode(event))
        self._transition(Event.CLOSE)

    def _drop_slow_consumer(self, unsent: int) -> None:
        log.warning("conn %d: dropped as a slow consumer (%d bytes unsent)", self.conn_id, unsent)
        # It is not reading, so a goodbye would not reach it: drop at once and free the
        # buffer. It loses nothing: after reconnecting it syncs from its cursors.
        self._out = None
        self._out_bytes = 0
        self._aborted = True
        self._transition(Event.CLOSE)
