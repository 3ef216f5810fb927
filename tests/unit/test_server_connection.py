"""The server's connection without any socket: bytes in, lines out, against a fake core.

A :class:`Link` plays the transport: it feeds bytes, collects what the connection asks to send,
obeys (records) pauses and closes, and moves a fake clock for the deadlines.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import msgspec
import pytest

from beseda.protocol import errors, schema
from beseda.protocol.errors import ProtocolError
from beseda.server.chat import Chat, Session
from beseda.server.config import Limits
from beseda.server.connection import TRANSITIONS, Capacity, Event, ServerConnection, State
from beseda.storage import StorageError, UserRecord

HELLO = b'{"type":"hello"}\n'


class FakeChat:
    """Just enough of the core: ping answers, login as the given name, ``send`` returns a
    future the test resolves, ``boom`` fails, ``store`` fails with a storage error."""

    def __init__(self) -> None:
        self.pending: list[asyncio.Future[msgspec.Struct]] = []
        self.disconnected: list[Session] = []
        self.logged_out = 0
        self.ids = {"alice": 1, "bob": 2}

    async def begin(self, session: Session, request: schema.AnyRequest) -> Any:
        if isinstance(request, schema.Ping):
            return schema.Empty()
        if isinstance(request, schema.Login):
            name = request.username or "alice"
            user_id = self.ids[name]
            session.user = UserRecord(id=user_id, name=name, key=name, password_hash="")
            return schema.AuthResult(user=name, token="t")
        if isinstance(request, schema.Logout):
            session.user = None
            self.logged_out += 1
            return schema.Empty()
        if isinstance(request, schema.Send):
            if request.text == "boom":
                raise RuntimeError("a bug")
            if request.text == "store":
                raise StorageError("disk gone")
            future: asyncio.Future[msgspec.Struct] = asyncio.get_running_loop().create_future()
            self.pending.append(future)
            return future
        raise ProtocolError(errors.NOT_AUTHENTICATED)

    async def disconnect(self, session: Session) -> None:
        session.user = None
        self.disconnected.append(session)


class Link:
    """The transport's side, in memory."""

    def __init__(
        self, chat: FakeChat | None = None, capacity: Capacity | None = None, **limits: Any
    ) -> None:
        self.chat = chat or FakeChat()
        self.capacity = capacity or Capacity(Limits(**limits))
        self.now = 100.0
        self.outputs = 0
        self.conn = ServerConnection(
            cast(Chat, self.chat),
            self.capacity,
            HELLO,
            clock=lambda: self.now,
            on_output=self._output,
        )
        self.sent = b""
        self.conn.start("10.0.0.1")

    def _output(self) -> None:
        self.outputs += 1

    def lines(self) -> list[dict[str, Any]]:
        """Everything sent so far (after the hello), decoded."""
        self.sent += self.conn.data_to_send()
        return [json.loads(line) for line in self.sent.splitlines()[1:]]

    def send(self, *requests: dict[str, Any]) -> None:
        self.conn.receive_data(b"".join(json.dumps(r).encode() + b"\n" for r in requests))


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


# -- the state table ---------------------------------------------------------------------------


def test_every_state_and_event_has_a_transition_and_closed_is_final() -> None:
    # Only these cannot happen: the connection sees a login or logout by the session's user.
    impossible = {(State.CONNECTED, Event.LOGGED_OUT), (State.AUTHENTICATED, Event.LOGGED_IN)}
    assert {(s, e) for s in State for e in Event} - impossible == set(TRANSITIONS)
    assert all(TRANSITIONS[State.CLOSED, e] is State.CLOSED for e in Event)
    assert TRANSITIONS[State.CONNECTED, Event.LOGGED_IN] is State.AUTHENTICATED
    assert TRANSITIONS[State.AUTHENTICATED, Event.LOGGED_OUT] is State.CONNECTED


def test_a_new_connection_says_hello_and_waits_for_a_login() -> None:
    link = Link(auth_timeout=10)
    assert link.conn.data_to_send() == HELLO
    assert link.conn.state is State.CONNECTED
    assert link.conn.deadline == 110.0


async def test_login_then_logout_goes_back_to_connected_with_a_new_deadline() -> None:
    link = Link(auth_timeout=10)
    link.send({"id": 1, "type": "login", "username": "alice", "password": "p"})
    await settle()
    assert link.conn.state is State.AUTHENTICATED
    assert link.conn.deadline is None
    link.now = 500.0
    link.send({"id": 2, "type": "logout"})
    await settle()
    assert link.conn.state is State.CONNECTED
    assert link.conn.deadline == 510.0
    assert [m["id"] for m in link.lines()] == [1, 2]


# -- ordering and errors -----------------------------------------------------------------------


async def test_replies_leave_in_request_order_when_commits_finish_out_of_order() -> None:
    link = Link()
    link.send({"id": 1, "type": "login"})
    link.send(*({"id": n, "type": "send", "client_id": str(n), "text": "hi"} for n in (2, 3, 4)))
    link.send({"id": 5, "type": "ping"})
    await settle()
    first, second, third = link.chat.pending
    third.set_result(schema.Empty())
    second.set_result(schema.Empty())
    await settle()
    assert [m["id"] for m in link.lines()] == [1]  # 2 still waits for its commit
    first.set_exception(StorageError("lost"))
    await settle()
    replies = link.lines()
    assert [m["id"] for m in replies] == [1, 2, 3, 4, 5]
    assert replies[1]["code"] == errors.STORAGE_UNAVAILABLE


async def test_errors_are_mapped_to_codes_and_the_connection_stays_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    link = Link()
    link.send({"id": 1, "type": "history"})
    link.conn.receive_data(b"not json\n")
    link.send({"id": 2, "type": "send", "client_id": "a", "text": "boom"})
    link.send({"id": 3, "type": "send", "client_id": "b", "text": "store"})
    await settle()
    codes = [(m["id"], m["code"]) for m in link.lines()]
    assert codes == [
        (1, errors.NOT_AUTHENTICATED),
        (None, errors.BAD_JSON),
        (2, errors.INTERNAL_ERROR),
        (3, errors.STORAGE_UNAVAILABLE),
    ]
    assert link.conn.state is State.CONNECTED
    assert any(r.exc_info for r in caplog.records)  # the bug is logged with its traceback


async def test_a_byte_that_is_not_utf8_anywhere_in_the_line_is_bad_json() -> None:
    link = Link()
    link.conn.receive_data(b'{"id":4,"type":"ping","x":"\xff"}\n')
    await settle()
    assert [m["code"] for m in link.lines()] == [errors.BAD_JSON]


async def test_messages_in_flight_are_bounded() -> None:
    link = Link(max_in_flight=2)
    link.send({"id": 1, "type": "login"})
    link.send(*({"id": n, "type": "send", "client_id": str(n), "text": "hi"} for n in range(2, 6)))
    await settle()
    assert len(link.chat.pending) == 2  # the third waits for the oldest commit
    link.chat.pending[0].set_result(schema.Empty())
    await settle()
    assert len(link.chat.pending) == 3


# -- bounds and deadlines ----------------------------------------------------------------------


async def test_reading_pauses_while_too_many_requests_wait_and_resumes_after() -> None:
    link = Link(max_pending_requests=4)
    link.send({"id": 1, "type": "login"})
    link.send(*({"id": n, "type": "send", "client_id": str(n), "text": "hi"} for n in range(2, 8)))
    assert not link.conn.wants_reading
    for _ in range(3):
        await settle()
        for future in link.chat.pending:
            if not future.done():
                future.set_result(schema.Empty())
    assert link.conn.wants_reading
    assert [m["id"] for m in link.lines()] == list(range(1, 8))


def test_an_over_long_line_is_an_error_and_closes() -> None:
    link = Link(max_line_bytes=10)
    link.conn.receive_data(b"x" * 11)
    assert link.conn.state is State.CLOSED
    assert [m["code"] for m in link.lines()] == [errors.LINE_TOO_LONG]
    link.conn.receive_line(b"late")  # nothing is read any more
    assert link.conn.data_to_send() == b""


def test_a_framed_line_over_the_bound_is_refused_too() -> None:
    link = Link(max_line_bytes=10)
    link.conn.receive_line(b"x" * 11)
    assert [m["code"] for m in link.lines()] == [errors.LINE_TOO_LONG]


async def test_a_framed_transport_gets_the_same_replies() -> None:
    link = Link()
    link.conn.receive_line(b'{"id":1,"type":"ping"}')
    await settle()
    assert link.lines() == [{"type": "result", "id": 1, "data": {}}]


def test_a_frame_refused_from_its_header_is_line_too_long() -> None:
    link = Link(max_line_bytes=10)
    link.conn.refuse_line()
    assert link.conn.state is State.CLOSED
    assert [(m["type"], m["code"]) for m in link.lines()] == [("error", errors.LINE_TOO_LONG)]


def test_an_unfinished_frame_is_timed_and_budgeted_as_an_unfinished_line() -> None:
    capacity = Capacity(Limits(input_buffer_bytes=100, auth_timeout=1000, line_timeout=5))
    link, other = Link(capacity=capacity), Link(capacity=capacity)
    link.conn.receive_partial(40, began=False)
    assert capacity.input_bytes == 40
    assert link.conn.deadline == 105.0
    link.now = 103.0
    link.conn.receive_partial(60, began=False)  # the same frame, grown: its clock runs on
    assert (capacity.input_bytes, link.conn.deadline) == (60, 105.0)
    link.conn.receive_partial(10, began=True)  # that one ended; a new one began at 103
    assert (capacity.input_bytes, link.conn.deadline) == (10, 108.0)
    other.conn.receive_partial(95, began=False)  # over the budget shared with every transport
    assert [m["code"] for m in other.lines()] == [errors.SERVER_BUSY]
    assert capacity.input_bytes == 10
    link.conn.receive_partial(0, began=True)
    assert (capacity.input_bytes, link.conn.deadline) == (0, 1100.0)
    link.conn.receive_partial(20, began=False)
    link.conn.timeout(109.0)
    assert [m["code"] for m in link.lines()] == [errors.LINE_TIMEOUT]
    assert capacity.input_bytes == 0  # a closed connection holds nothing


async def test_a_framed_transport_takes_what_is_queued_line_by_line() -> None:
    link = Link()
    assert link.conn.lines_to_send() == [HELLO]
    link.conn.receive_line(b'{"id":1,"type":"ping"}')
    link.conn.receive_line(b'{"id":2,"type":"ping"}\n')  # a newline at the end is fine
    await settle()
    lines = link.conn.lines_to_send()
    assert [json.loads(line)["id"] for line in lines] == [1, 2]
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
    assert link.conn.lines_to_send() == []
    assert link.conn.data_to_send() == b""


def test_no_login_by_the_deadline_says_bye_auth_timeout() -> None:
    link = Link(auth_timeout=10)
    link.conn.timeout(105.0)
    assert link.conn.state is State.CONNECTED
    link.conn.timeout(110.0)
    assert link.conn.state is State.CLOSED
    assert link.lines() == [
        {"type": "bye", "code": "auth_timeout", "message": errors.MESSAGES[errors.AUTH_TIMEOUT]}
    ]


def test_a_line_unfinished_too_long_says_bye_line_timeout() -> None:
    link = Link(auth_timeout=1000, line_timeout=5)
    link.conn.receive_data(b'{"id":1,')
    assert link.conn.deadline == 105.0
    link.now = 103.0
    link.conn.receive_data(b'"type":')  # the same line: its clock keeps running
    assert link.conn.deadline == 105.0
    link.conn.timeout(105.0)
    assert link.conn.state is State.CLOSED
    assert [m["code"] for m in link.lines()] == [errors.LINE_TIMEOUT]


async def test_a_finished_line_stops_the_line_clock() -> None:
    link = Link(auth_timeout=1000, line_timeout=5)
    link.conn.receive_data(b'{"id":1,')
    link.now = 104.0
    link.conn.receive_data(b'"type":"ping"}\n{"id"')
    assert link.conn.deadline == 109.0  # the next line began at 104
    link.conn.receive_data(b':2,"type":"ping"}\n')
    assert link.conn.deadline == 1100.0  # only the auth deadline is left
    await settle()
    assert [m["id"] for m in link.lines()] == [1, 2]


async def test_unfinished_lines_share_one_budget_server_wide() -> None:
    capacity = Capacity(Limits(input_buffer_bytes=100))
    first, second = Link(capacity=capacity), Link(capacity=capacity)
    first.conn.receive_data(b"x" * 60)
    assert capacity.input_bytes == 60
    second.conn.receive_data(b"y" * 50)
    assert second.conn.state is State.CLOSED
    assert [m["code"] for m in second.lines()] == [errors.SERVER_BUSY]
    assert capacity.input_bytes == 60
    first.conn.receive_data(b"\n")
    assert capacity.input_bytes == 0
    await settle()


def test_connections_over_the_server_cap_get_bye_server_full() -> None:
    capacity = Capacity(Limits(max_connections=1))
    first, second = Link(capacity=capacity), Link(capacity=capacity)
    assert first.conn.state is State.CONNECTED
    assert second.conn.state is State.CLOSED
    assert json.loads(second.conn.data_to_send())["code"] == errors.SERVER_FULL


async def test_a_login_over_the_users_cap_is_refused_and_the_connection_stays_anonymous() -> None:
    chat = FakeChat()
    capacity = Capacity(Limits(max_connections_per_user=1))
    first, second = Link(chat, capacity), Link(chat, capacity)
    first.send({"id": 1, "type": "login", "username": "alice"})
    second.send({"id": 1, "type": "login", "username": "alice"})
    await settle()
    assert [m["code"] for m in second.lines()] == [errors.TOO_MANY_SESSIONS]
    assert second.conn.state is State.CONNECTED
    assert second.conn.session.user is None
    assert chat.logged_out == 1  # the token made for the refused login is revoked
    second.send({"id": 2, "type": "login", "username": "bob"})
    await settle()
    assert second.conn.state is State.AUTHENTICATED
    first.conn.connection_lost()
    await settle()
    assert capacity.user_connections(1) == 0


# -- output and closing ------------------------------------------------------------------------


def test_a_peer_that_does_not_read_is_dropped_without_a_goodbye() -> None:
    link = Link(send_buffer_bytes=100)
    link.conn.deliver(b"x" * 101)
    assert link.conn.state is State.CLOSED
    assert link.conn.aborted
    assert link.conn.data_to_send() == b""  # the hello too: its buffer is let go


async def test_end_of_input_answers_what_was_read_then_closes() -> None:
    link = Link()
    link.send({"id": 1, "type": "ping"}, {"id": 2, "type": "ping"})
    link.conn.receive_eof()
    assert link.conn.state is State.CLOSING
    await settle()
    assert link.conn.state is State.CLOSED
    assert [m["id"] for m in link.lines()] == [1, 2]


async def test_shutdown_answers_in_flight_messages_then_says_bye() -> None:
    link = Link()
    link.send({"id": 1, "type": "login"}, {"id": 2, "type": "send", "client_id": "a", "text": "x"})
    await settle()
    finishing = asyncio.create_task(link.conn.finish(grace=5))
    await settle()
    link.chat.pending[0].set_result(schema.Empty())
    await finishing
    assert [m.get("id", m["type"]) for m in link.lines()] == [1, 2, "bye"]
    assert link.conn.state is State.CLOSED


async def test_the_core_forgets_the_session_after_the_transport_is_lost() -> None:
    link = Link()
    link.send({"id": 1, "type": "login"})
    await settle()
    await link.conn.connection_lost()
    assert link.chat.disconnected == [link.conn.session]
    assert link.capacity.connections == 0
