"""A WebSocket peer for tests, written from docs/protocol.md with the websockets client only:
one JSON object per text frame. It imports nothing from beseda."""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from conftest import TIMEOUT_FACTOR

PASSWORD = "password123"


class WebSocketPeer:
    """One WebSocket connection to ``/ws``. Events that arrive while waiting for a reply are
    kept in :attr:`events`, in arrival order."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.hello: dict[str, Any] | None = None
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    @classmethod
    async def open(
        cls,
        port: int,
        *,
        hello: bool = True,
        origin: str | None = None,
        tls: ssl.SSLContext | None = None,
        max_size: int | None = 2**22,
    ) -> WebSocketPeer:
        scheme = "wss" if tls else "ws"
        headers = {"Origin": origin} if origin else None
        ws = await connect(
            f"{scheme}://127.0.0.1:{port}/ws",
            additional_headers=headers,
            ssl=tls,
            max_size=max_size,
            compression=None,
            open_timeout=10 * TIMEOUT_FACTOR,
        )
        peer = cls(ws)
        if hello:
            peer.hello = await peer.read()
            assert peer.hello is not None, "closed before hello"
            assert peer.hello["type"] == "hello", peer.hello
        return peer

    @classmethod
    async def user(cls, port: int, name: str, password: str = PASSWORD) -> WebSocketPeer:
        """A connection registered as ``name`` (or logged in, when the name exists)."""
        peer = await cls.open(port)
        reply = await peer.request("register", username=name, password=password)
        if reply["type"] == "error" and reply["code"] == "name_taken":
            reply = await peer.request("login", username=name, password=password)
        assert reply["type"] == "result", reply
        return peer

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(message if isinstance(message, (str, bytes)) else json.dumps(message))

    async def read(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """The next message, or None once the server has closed."""
        try:
            data = await asyncio.wait_for(self.ws.recv(), timeout * TIMEOUT_FACTOR)
        except ConnectionClosed:
            return None
        assert isinstance(data, str), "the server sends text frames"
        assert "\n" not in data, "one JSON object per frame, no newline"
        message: dict[str, Any] = json.loads(data)
        return message

    async def request(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Send a request and return its reply; events read meanwhile go to :attr:`events`."""
        request_id = next(self._ids)
        await self.send({"id": request_id, "type": kind, **fields})
        while True:
            message = await self.read()
            assert message is not None, f"closed while waiting for the reply to {kind}"
            if message["type"] in ("result", "error") and message.get("id") == request_id:
                return message
            self.events.append(message)

    async def event(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next event of type ``kind`` (``message``, ``typing``…), :attr:`events` first."""
        for index, message in enumerate(self.events):
            if message.get("type") == kind:
                return self.events.pop(index)
        while True:
            message = await self.read(timeout)
            assert message is not None, f"closed while waiting for a {kind} event"
            if message.get("type") == kind:
                return message
            self.events.append(message)

    async def closing(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Everything the server sends until it closes."""
        messages = []
        while (message := await self.read(timeout)) is not None:
            messages.append(message)
        return messages

    async def close(self) -> None:
        await self.ws.close()
