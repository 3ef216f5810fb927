"""The network thread against a real server (no display): events come back on the queue."""

from __future__ import annotations

import asyncio
import queue
import socket
import threading
import time

from beseda.client import Client, MessageReceived
from beseda.gui import events
from beseda.gui.network import Network
from beseda.protocol import codec, errors, schema
from conftest import TIMEOUT_FACTOR, free_port

from .conftest import ServerThread


def collect(
    inbox: queue.SimpleQueue[tuple[int, events.Event]], kind: type, timeout: float = 10.0
) -> list[events.Event]:
    seen: list[events.Event] = []
    deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
    while time.monotonic() < deadline:
        try:
            _session, event = inbox.get(timeout=0.05)
        except queue.Empty:
            continue
        seen.append(event)
        if isinstance(event, kind):
            return seen
    raise TimeoutError(f"no {kind.__name__} among {seen}")


def test_sign_in_skips_the_backlog_and_delivers_what_is_new(chat_server: ServerThread) -> None:
    async def chatter(texts: list[str]) -> None:
        async with Client("127.0.0.1", chat_server.port) as client:
            try:
                await client.register("bob", "password123")
            except Exception:
                await client.login("bob", "password123")
            for text in texts:
                await client.send(text)

    asyncio.run(chatter([f"old {i}" for i in range(60)]))
    inbox: queue.SimpleQueue[tuple[int, events.Event]] = queue.SimpleQueue()
    network = Network(lambda s, e: inbox.put((s, e)))
    try:
        network.sign_in(
            "127.0.0.1", chat_server.port, "alice", "password123", create=True, token=None
        )
        seen = collect(inbox, events.SignedIn)
        signed_in = seen[-1]
        assert isinstance(signed_in, events.SignedIn)
        assert [(e.conversation, e.last_seq) for e in signed_in.conversations] == [("general", 60)]
        asyncio.run(chatter(["new"]))
        seen = collect(inbox, MessageReceived)
        texts = [e.message.text for e in seen if isinstance(e, MessageReceived)]
        assert texts == ["new"]
    finally:
        network.close()


def test_an_unreachable_server_is_reported() -> None:
    inbox: queue.SimpleQueue[tuple[int, events.Event]] = queue.SimpleQueue()
    network = Network(lambda s, e: inbox.put((s, e)))
    try:
        session = network.sign_in("127.0.0.1", free_port(), "a", "b", create=False, token=None)
        failed = collect(inbox, events.SignInFailed)[-1]
        assert isinstance(failed, events.SignInFailed)
        assert failed.code == events.UNREACHABLE
        assert session == 1
    finally:
        network.close()


def test_a_server_that_refuses_at_hello_is_reported_with_its_code() -> None:
    refusal = codec.encode(
        schema.Bye(code=errors.TOO_MANY_CONNECTIONS, message="Too many connections.")
    )
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def answer() -> None:
            connection, _address = listener.accept()
            with connection:
                connection.sendall(refusal)

        threading.Thread(target=answer, daemon=True).start()
        inbox: queue.SimpleQueue[tuple[int, events.Event]] = queue.SimpleQueue()
        network = Network(lambda s, e: inbox.put((s, e)))
        try:
            port = listener.getsockname()[1]
            network.sign_in("127.0.0.1", port, "a", "b", create=False, token=None)
            failed = collect(inbox, events.SignInFailed)[-1]
        finally:
            network.close()
    assert isinstance(failed, events.SignInFailed)
    assert failed.code == errors.TOO_MANY_CONNECTIONS
