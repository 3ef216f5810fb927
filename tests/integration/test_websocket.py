"""The protocol over WebSocket: the same requests, replies, events, limits and errors as over
TCP, on the HTTP port's ``/ws``, through real loopback sockets and a plain websockets client.
(docs/protocol.md's example sessions also run over WebSocket: test_protocol_doc.py.)"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from websocket_client import WebSocketPeer
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from beseda import tls
from beseda.client import Client, MessageReceived, ServerRefusedError
from beseda.server.accounts import PasswordHasher
from beseda.server.app import Server
from conftest import TIMEOUT_FACTOR, test_settings, wait_for


def http_port(server: Server) -> int:
    assert server.http_port is not None
    return server.http_port


async def test_two_websocket_users_chat_in_general(server: Server) -> None:
    alice = await WebSocketPeer.user(http_port(server), "alice")
    bob = await WebSocketPeer.user(http_port(server), "bob")
    sent = await alice.request("send", client_id="a-1", text="hello over WebSocket")
    assert sent["type"] == "result", sent
    got = await bob.event("message")
    assert got["message"] == sent["data"]["message"]
    page = await bob.request("history", conversation="general")
    assert [m["text"] for m in page["data"]["messages"]] == ["hello over WebSocket"]
    await alice.close()
    await bob.close()


async def test_a_websocket_user_and_a_tcp_client_library_user_talk(server: Server) -> None:
    browser = await WebSocketPeer.user(http_port(server), "wanda")
    async with Client("127.0.0.1", server.port) as desktop:
        await desktop.register("tomas", "password123")
        sent = await browser.request("send", client_id="w-1", text="from the browser")
        while True:
            event = await desktop.next_event(timeout=10 * TIMEOUT_FACTOR)
            if isinstance(event, MessageReceived):
                break
        assert event.message.text == "from the browser"
        assert event.message.seq == sent["data"]["message"]["seq"]
        reply = await desktop.dm("wanda", "from the desktop")
        got = await browser.event("message")
        assert got["message"]["text"] == "from the desktop"
        assert got["message"]["conversation"] == reply.conversation
    await browser.close()


async def test_a_newline_at_the_end_of_a_frame_is_allowed(server: Server) -> None:
    peer = await WebSocketPeer.open(http_port(server))
    await peer.send('{"id":1,"type":"register","username":"nina","password":"password123"}\n')
    reply = await peer.read()
    assert reply is not None
    assert reply["type"] == "result", reply
    await peer.close()


async def test_malformed_json_is_an_error_and_the_connection_stays(server: Server) -> None:
    peer = await WebSocketPeer.open(http_port(server))
    await peer.send("{not json")
    error = await peer.read()
    assert error is not None
    assert error["type"] == "error"
    assert error["code"] == "bad_json"
    reply = await peer.request("register", username="ola", password="password123")
    assert reply["type"] == "result", reply
    await peer.close()


async def test_a_fragmented_message_is_one_request(server: Server) -> None:
    peer = await WebSocketPeer.open(http_port(server))
    line = '{"id":7,"type":"register","username":"frag","password":"password123"}'
    await peer.ws.send([line[:10], line[10:30], line[30:]])  # three frames, one message
    reply = await peer.read()
    assert reply is not None
    assert reply["id"] == 7
    assert reply["type"] == "result", reply
    await peer.close()


async def test_a_frame_over_the_line_limit_is_refused_as_on_tcp(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(max_line_bytes=1000)
    await server.start()
    peer = await WebSocketPeer.open(http_port(server))
    assert peer.hello is not None
    assert peer.hello["limits"]["max_line_bytes"] == 1000
    # Exactly the limit is read (and answered); one byte more is refused from the header.
    await peer.send('{"id":1,"type":"x","pad":"' + "a" * (1000 - 29) + '"}')
    reply = await peer.read()
    assert reply is not None
    assert reply["code"] != "line_too_long", reply
    await peer.send("x" * 5000)
    messages = await peer.closing()
    assert [m["code"] for m in messages] == ["line_too_long"]
    assert messages[0]["type"] == "error"
    assert peer.ws.close_code == 1009  # message too big
    await peer.close()


async def test_a_fragmented_message_over_the_line_limit_is_refused(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(max_line_bytes=1000)
    await server.start()
    peer = await WebSocketPeer.open(http_port(server))
    await peer.ws.send(["a" * 600, "b" * 600])
    messages = await peer.closing()
    assert [m["code"] for m in messages] == ["line_too_long"]
    await peer.close()


async def test_a_websocket_that_never_logs_in_is_closed(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(auth_timeout=0.3)
    await server.start()
    peer = await WebSocketPeer.open(http_port(server))
    messages = await peer.closing()
    assert [(m["type"], m["code"]) for m in messages] == [("bye", "auth_timeout")]
    await peer.close()


async def test_too_many_websockets_from_one_address_get_bye(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(max_connections_per_address=2)
    await server.start()
    first = await WebSocketPeer.open(http_port(server))
    second = await WebSocketPeer.open(http_port(server))
    third = await WebSocketPeer.open(http_port(server), hello=False)
    messages = await third.closing()
    assert [(m["type"], m["code"]) for m in messages] == [("bye", "too_many_connections")]
    # The caps are shared with TCP: a TCP connection is refused as well.
    with pytest.raises(ServerRefusedError, match="too_many_connections"):
        async with Client("127.0.0.1", server.port, reconnect=False):
            pass
    for peer in (first, second, third):
        await peer.close()
    # Once they are gone, there is room again.
    await wait_for(lambda: server.capacity.connections == 0)
    again = await WebSocketPeer.open(http_port(server))
    await again.close()


async def test_rate_limits_apply_over_websocket(make_server: Callable[..., Server]) -> None:
    server = make_server(message_rate=0.5, message_burst=2, message_max_delay=0)
    await server.start()
    peer = await WebSocketPeer.user(http_port(server), "quick")
    replies = [
        await peer.request("send", client_id=f"r-{n}", text=f"message {n}") for n in range(3)
    ]
    assert [r["type"] for r in replies] == ["result", "result", "error"]
    assert replies[2]["code"] == "rate_limited"
    assert replies[2]["retry_after"] > 0
    await peer.close()


# -- what a raw WebSocket does, byte by byte ---------------------------------------------------


async def raw_websocket(
    port: int, *, rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket opened by hand: the handshake written and its response read."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True, length: int | None = None):  # type: ignore[no-untyped-def]
    """A client frame's bytes; ``length`` declares another payload length than the real one
    (to send a frame's start only)."""
    declared = len(payload) if length is None else length
    first = (0x80 if fin else 0) | opcode
    if declared < 126:
        header = struct.pack("!BB", first, 0x80 | declared)
    elif declared < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, declared)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, declared)
    mask = os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    assert not second & 0x80, "server frames are not masked"
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(length)


async def test_an_unfinished_frame_is_timed_like_an_unfinished_line(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(line_timeout=0.3, auth_timeout=30)
    await server.start()
    reader, writer = await raw_websocket(http_port(server))
    opcode, hello = await read_frame(reader)
    assert json.loads(hello)["type"] == "hello"
    writer.write(masked_frame(0x1, b'{"id":1', length=200))  # and the rest never comes
    opcode, data = await asyncio.wait_for(read_frame(reader), 10 * TIMEOUT_FACTOR)
    assert json.loads(data)["code"] == "line_timeout"
    opcode, _ = await asyncio.wait_for(read_frame(reader), 10 * TIMEOUT_FACTOR)
    assert opcode == 0x8  # close
    writer.close()
    await writer.wait_closed()


async def test_a_message_trickled_in_fragments_is_timed_from_its_first_byte(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(line_timeout=0.5, auth_timeout=30)
    await server.start()
    reader, writer = await raw_websocket(http_port(server))
    await read_frame(reader)  # hello
    writer.write(masked_frame(0x1, b'{"id":1,', fin=False))

    async def trickle() -> None:  # a fragment every 0.2 s, each of them whole: still one line
        while True:
            await asyncio.sleep(0.2)
            writer.write(masked_frame(0x0, b" ", fin=False))

    trickling = asyncio.create_task(trickle())
    try:
        _, data = await asyncio.wait_for(read_frame(reader), 10 * TIMEOUT_FACTOR)
    finally:
        trickling.cancel()
    assert json.loads(data)["code"] == "line_timeout"
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def test_unfinished_frames_count_in_the_server_wide_input_budget(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(input_buffer_bytes=3000, max_line_bytes=2000)
    await server.start()
    first, first_writer = await raw_websocket(http_port(server))
    second, second_writer = await raw_websocket(http_port(server))
    for reader in (first, second):
        await read_frame(reader)  # hello
    first_writer.write(masked_frame(0x1, b"a" * 1800, length=1900))
    await wait_for(lambda: server.capacity.input_bytes >= 1800)
    second_writer.write(masked_frame(0x1, b"b" * 1800, length=1900))
    _, data = await asyncio.wait_for(read_frame(second), 10 * TIMEOUT_FACTOR)
    assert json.loads(data)["code"] == "server_busy"
    for writer in (first_writer, second_writer):
        writer.close()
        await writer.wait_closed()
    await wait_for(lambda: server.capacity.input_bytes == 0)


async def test_a_request_sent_with_the_handshake_is_answered(server: Server) -> None:
    port = http_port(server)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    handshake = (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    writer.write(handshake + masked_frame(0x1, b'{"id":1,"type":"ping"}'))  # without waiting
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    _, hello = await read_frame(reader)
    assert json.loads(hello)["type"] == "hello"
    _, reply = await read_frame(reader)
    assert json.loads(reply) == {"type": "result", "id": 1, "data": {}}
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def test_a_ping_is_answered_and_a_binary_frame_is_read_like_text(server: Server) -> None:
    reader, writer = await raw_websocket(http_port(server))
    await read_frame(reader)  # hello
    writer.write(masked_frame(0x9, b"are you there"))
    assert await read_frame(reader) == (0xA, b"are you there")
    writer.write(masked_frame(0x2, b'{"id":1,"type":"register","username":"bin","password":"x"}'))
    _, data = await read_frame(reader)
    assert json.loads(data)["code"] == "invalid_password"
    writer.close()
    await writer.wait_closed()


async def test_a_websocket_that_stops_reading_is_dropped_as_a_slow_consumer(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(send_buffer_bytes=64 * 1024)
    await server.start()
    reader, writer = await raw_websocket(http_port(server), rcvbuf=4096)
    await read_frame(reader)  # hello
    register = b'{"id":1,"type":"register","username":"sloth","password":"password123"}'
    writer.write(masked_frame(0x1, register))
    _, reply = await read_frame(reader)
    assert json.loads(reply)["type"] == "result"
    writer.transport.pause_reading()  # from here on, nothing is read
    async with Client("127.0.0.1", server.port) as sender:
        await sender.register("flood", "password123")
        for number in range(400):
            await sender.send(f"{number:04} " + "x" * 12_000)
            if server.capacity.connections <= 1:
                break
        await wait_for(lambda: server.capacity.connections == 1)  # only the sender's
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def test_shutdown_says_bye_over_websocket(make_server: Callable[..., Server]) -> None:
    server = make_server()
    await server.start()
    peer = await WebSocketPeer.user(http_port(server), "leaver")
    stopping = asyncio.create_task(server.stop())
    messages = await peer.closing()
    await stopping
    assert [(m["type"], m["code"]) for m in messages] == [("bye", "server_shutdown")]
    assert peer.ws.close_code == 1001  # going away
    await peer.close()


# -- the handshake: origins --------------------------------------------------------------------


async def test_the_servers_own_origin_may_open_a_websocket(server: Server) -> None:
    port = http_port(server)
    for origin in (f"http://127.0.0.1:{port}", None):  # a page of ours; a program
        peer = await WebSocketPeer.open(port, origin=origin)
        await peer.close()


async def test_another_origin_is_refused_with_403(server: Server) -> None:
    port = http_port(server)
    for origin in ("https://evil.example", f"https://127.0.0.1:{port}", "null"):
        with pytest.raises(InvalidStatus) as refused:
            await WebSocketPeer.open(port, origin=origin)
        response = refused.value.response
        assert response.status_code == 403
        assert b"--allowed-origins" in response.body
    await wait_for(lambda: server.capacity.connections == 0)


async def test_allowed_origins_are_added_to_the_servers_own(
    tmp_path: Path, hasher: PasswordHasher
) -> None:
    settings = replace(test_settings(tmp_path), allowed_origins=("https://chat.example.org",))
    async with Server(settings, hasher=hasher) as server:
        peer = await WebSocketPeer.open(http_port(server), origin="https://chat.example.org")
        await peer.close()
        with pytest.raises(InvalidStatus):
            await WebSocketPeer.open(http_port(server), origin="https://other.example.org")


# -- TLS ---------------------------------------------------------------------------------------


async def test_tls_auto_gives_wss_with_the_same_certificate(
    tmp_path: Path, hasher: PasswordHasher
) -> None:
    settings = replace(test_settings(tmp_path), tls_auto=True)
    async with Server(settings, hasher=hasher) as server:
        port = http_port(server)
        seen = await asyncio.to_thread(tls.fetch_fingerprint, "127.0.0.1", port)
        assert seen == server.fingerprint  # the TCP port's certificate
        context = ssl.create_default_context(cafile=tmp_path / "tls-cert.pem")
        context.check_hostname = False  # the certificate names localhost; we dial 127.0.0.1
        peer = await WebSocketPeer.open(port, tls=context, origin=f"https://127.0.0.1:{port}")
        reply = await peer.request("register", username="secure", password="password123")
        assert reply["type"] == "result"
        await peer.close()
        # A plain-text WebSocket to the TLS port does not get through.
        with pytest.raises((InvalidHandshake, OSError, TimeoutError)):
            async with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=2):
                pass
