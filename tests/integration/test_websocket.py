"""The protocol over WebSocket: the same requests, replies, events, limits and errors as over
TCP, on the HTTP port's ``/ws``, through real loopback sockets and a plain websockets client."""

from __future__ import annotations

from websocket_client import WebSocketPeer

from beseda.server.app import Server


async def test_two_websocket_users_chat_in_general(server: Server) -> None:
    assert server.http_port is not None
    alice = await WebSocketPeer.user(server.http_port, "alice")
    bob = await WebSocketPeer.user(server.http_port, "bob")
    sent = await alice.request("send", client_id="a-1", text="hello over WebSocket")
    assert sent["type"] == "result", sent
    got = await bob.event("message")
    assert got["message"]["text"] == "hello over WebSocket"
    assert got["message"]["sender"] == "alice"
    await alice.close()
    await bob.close()
