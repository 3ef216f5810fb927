"""A client as a newcomer writes it from the protocol description: asyncio streams and json.

It imports nothing from beseda, so the integration tests that use it prove the wire format
itself (one JSON object per line, a ``hello`` first, one reply per request id, pushed events)
rather than the library's reading of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
from typing import Any

from conftest import TIMEOUT_FACTOR

PASSWORD = "password123"


class Newcomer:
    """One raw connection. Events that arrive while waiting for a reply are kept in
    :attr:`events`, in arrival order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.hello: dict[str, Any] | None = None
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    @classmethod
    async def open(cls, port: int, *, hello: bool = True, rcvbuf: int | None = None) -> Newcomer:
        """Connect to 127.0.0.1:``port`` and (by default) read the ``hello``."""
        if rcvbuf is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**22)
        else:
            # A small receive window set before connecting, so a peer that stops reading
            # fills the path quickly.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=2**22)
        conn = cls(reader, writer)
        if hello:
            conn.hello = await conn.read()
            assert conn.hello is not None, "closed before hello"
            assert conn.hello["type"] == "hello", conn.hello
        return conn

    @classmethod
    async def user(cls, port: int, name: str, password: str = PASSWORD) -> Newcomer:
        """A connection registered as ``name`` (or logged in, when the name exists)."""
        conn = await cls.open(port)
        reply = await conn.request("register", username=name, password=password)
        if reply["type"] == "error" and reply["code"] == "name_taken":
            reply = await conn.request("login", username=name, password=password)
        assert reply["type"] == "result", reply
        return conn

    # -- writing ---------------------------------------------------------------------------------

    def send_line(self, line: bytes) -> None:
        self.writer.write(line + b"\n")

    def send(self, type_: str, **fields: Any) -> int:
        """Write one request without waiting; returns its id."""
        request_id = next(self._ids)
        message = {"id": request_id, "type": type_, **fields}
        self.send_line(json.dumps(message, ensure_ascii=False).encode())
        return request_id

    # -- reading ---------------------------------------------------------------------------------

    async def read_line(self, timeout: float = 10.0) -> bytes:
        """The next raw line, newline included; b"" at end of stream."""
        return await asyncio.wait_for(self.reader.readline(), timeout * TIMEOUT_FACTOR)

    async def read(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """The next message, or None when the server closed the connection."""
        try:
            line = await self.read_line(timeout)
        except ConnectionResetError:
            return None
        if not line:
            return None
        message: dict[str, Any] = json.loads(line)
        return message

    async def reply(self, request_id: int | str | None, timeout: float = 10.0) -> dict[str, Any]:
        """The result or error answering ``request_id``; events on the way go to ``events``."""
        while True:
            message = await self.read(timeout)
            assert message is not None, "connection closed while waiting for a reply"
            if message["type"] in ("result", "error") and message.get("id") == request_id:
                return message
            assert message["type"] not in ("result", "error"), f"unexpected {message}"
            self.events.append(message)

    async def request(self, type_: str, **fields: Any) -> dict[str, Any]:
        return await self.reply(self.send(type_, **fields))

    async def call(self, type_: str, **fields: Any) -> Any:
        """The ``data`` of a successful reply (fails the test on an error reply)."""
        reply = await self.request(type_, **fields)
        assert reply["type"] == "result", reply
        return reply["data"]

    async def event(self, type_: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        """The next event of ``type_`` (already kept or still to come) whose fields match."""

        def matches(message: dict[str, Any]) -> bool:
            return message["type"] == type_ and all(message.get(k) == v for k, v in match.items())

        for index, message in enumerate(self.events):
            if matches(message):
                del self.events[index]
                return message
        while True:
            message = await self.read(timeout)
            assert message is not None, f"closed while waiting for a {type_} event"
            if matches(message):
                return message
            self.events.append(message)

    async def closing(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Read until the server closes the connection; returns what came before."""
        seen = []
        while (message := await self.read(timeout)) is not None:
            seen.append(message)
        return seen

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def messages_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``message`` payloads of the message events in ``events``."""
    return [e["message"] for e in events if e["type"] == "message"]
