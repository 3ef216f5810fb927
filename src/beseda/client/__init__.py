"""The asyncio client library: used by the desktop client, by bots and by the tests.

>>> client = Client("127.0.0.1", 7878)
>>> await client.connect()
>>> await client.login("alice", "correct horse")
>>> await client.send("hello")
>>> async for event in client.events():
...     print(event)

It speaks protocol 4 (channels, groups, entries, read markers, typing; replies, edits,
deletes, reactions and search). It keeps a cursor
per conversation and delivers every entry exactly once, in order within
its conversation, across dropped connections and server restarts: after reconnecting it logs
in with the session token, resends unacknowledged messages with their original client ids
(the server stores each only once) and syncs from its cursors.
"""

from .changes import apply_change, quote_deleted
from .connection import (
    Client,
    ClientEvent,
    ConnectionLostError,
    ConnectionState,
    EntryReceived,
    MessageReceived,
    PresenceChanged,
    ReadMarker,
    ServerRefusedError,
    StateChanged,
    TypingStarted,
)

__all__ = [
    "Client",
    "ClientEvent",
    "ConnectionLostError",
    "ConnectionState",
    "EntryReceived",
    "MessageReceived",
    "PresenceChanged",
    "ReadMarker",
    "ServerRefusedError",
    "StateChanged",
    "TypingStarted",
    "apply_change",
    "quote_deleted",
]
