"""What the load generator says to each server, and how it recognises what comes back.

One adapter per server: beseda's JSON lines, the reference server's plain lines, and IRC. Each
message carries ``~<send time, monotonic ns>~<number>~`` in its text, so any receiver (in any
process: CLOCK_MONOTONIC is system-wide) computes the latency of each delivery without parsing
the whole line; regular expressions over whole chunks find them in C.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Credential:
    """How one generator connection signs in."""

    name: str
    token: str | None = None
    password: str | None = None


class Wire:
    """The base adapter: subclasses fill in the lines and the patterns."""

    name: ClassVar[str]
    delivery: ClassVar[re.Pattern[bytes]]
    """Group 1: the send time of a message delivered to this connection."""
    ack: ClassVar[re.Pattern[bytes] | None] = None
    """Group 1: the send time of this connection's own message, acknowledged."""
    error: ClassVar[re.Pattern[bytes] | None] = None
    has_acks: ClassVar[bool] = False
    backlog: ClassVar[int | None] = None
    """Connection attempts the server can have pending; None: many (backlog ≥ 1024)."""
    websocket: ClassVar[bool] = False
    """Spoken over WebSocket (``/ws``, one line per text frame) rather than bare TCP lines."""

    def __init__(self, join: bool = True) -> None:
        self.join = join

    def sign_in(self, credential: Credential) -> bytes:
        raise NotImplementedError

    def signed_in(self, line: bytes) -> bool | None:
        """True: signed in; False: refused; None: not yet."""
        raise NotImplementedError

    def message(self, target: str | None, number: int, ts: int) -> bytes:
        raise NotImplementedError


class BesedaWire(Wire):
    name = "beseda"
    delivery = re.compile(rb'^\{"type":"message".*?"text":"~(\d+)~', re.M)
    ack = re.compile(rb'^\{"type":"result".*?"text":"~(\d+)~', re.M)
    error = re.compile(rb'^\{"type":"(?:error|bye)"', re.M)
    has_acks = True

    def sign_in(self, credential: Credential) -> bytes:
        request: dict[str, object] = {"type": "login", "id": "login"}
        if credential.token is not None:
            request["token"] = credential.token
        else:
            request["username"] = credential.name
            request["password"] = credential.password
        return json.dumps(request, separators=(",", ":")).encode() + b"\n"

    def signed_in(self, line: bytes) -> bool | None:
        if line.startswith(b'{"type":"result","id":"login"'):
            return True
        if line.startswith(b'{"type":"error","id":"login"') or line.startswith(b'{"type":"bye"'):
            return False
        return None

    def message(self, target: str | None, number: int, ts: int) -> bytes:
        text = f"~{ts}~{number}~ benchmark message"
        if target is None:
            return (
                f'{{"type":"send","id":{number},"client_id":"c{number}","text":"{text}"}}\n'
            ).encode()
        return (
            f'{{"type":"dm","id":{number},"to":"{target}","client_id":"c{number}",'
            f'"text":"{text}"}}\n'
        ).encode()


class BesedaV3Wire(BesedaWire):
    """beseda's protocol 3: ``post`` into a conversation (``target``: its id, ``c:N``), entries
    delivered as ``{"type":"entry","entry":{…}}``, acknowledged with the stored entry."""

    name = "beseda3"
    delivery = re.compile(rb'^\{"type":"entry".*?"text":"~(\d+)~', re.M)

    def sign_in(self, credential: Credential) -> bytes:
        request: dict[str, object] = {"type": "login", "id": "login", "protocol": 3}
        if credential.token is not None:
            request["token"] = credential.token
        else:
            request["username"] = credential.name
            request["password"] = credential.password
        return json.dumps(request, separators=(",", ":")).encode() + b"\n"

    def message(self, target: str | None, number: int, ts: int) -> bytes:
        # One connection may post into several conversations: the client id names the
        # conversation too, so that it stays unique per sender.
        conversation = target or "general"
        return (
            f'{{"type":"post","id":{number},"conversation":"{conversation}",'
            f'"client_id":"{conversation}~{number}","text":"~{ts}~{number}~ benchmark message"}}\n'
        ).encode()


class BesedaWebSocketWire(BesedaWire):
    """beseda's protocol 2 over WebSocket: the very same lines, one per text frame (the link
    frames them and turns the server's frames back into lines)."""

    name = "beseda-ws"
    websocket = True
    # Matched over whole chunks of frames, as the others over chunks of lines: 0x81 (a final
    # text frame's first byte) never occurs in the benchmark's ASCII JSON, so it bounds a match
    # to one frame the way a newline bounds it to one line.
    delivery = re.compile(rb'\{"type":"message"[^\x81]*?"text":"~(\d+)~')
    ack = re.compile(rb'\{"type":"result"[^\x81]*?"text":"~(\d+)~')
    error = re.compile(rb'\{"type":"(?:error|bye)"')


class ReferenceWire(Wire):
    name = "reference"
    delivery = re.compile(rb"^M ~(\d+)~", re.M)
    ack = re.compile(rb"^A ~(\d+)~", re.M)
    has_acks = True

    def sign_in(self, credential: Credential) -> bytes:
        return f"I {credential.name}\n".encode()

    def signed_in(self, line: bytes) -> bool | None:
        return True if line == b"OK" else None

    def message(self, target: str | None, number: int, ts: int) -> bytes:
        text = f"~{ts}~{number}~ benchmark message"
        if target is None:
            return f"B {text}\n".encode()
        return f"D {target} {text}\n".encode()


class IrcWire(Wire):
    """The IRC adapter: NICK/USER (and JOIN #general), PRIVMSG. IRC has no acknowledgements."""

    name = "irc"
    # ngIRCd listens with a short backlog: more pending connects than that lose their SYN and
    # wait seconds for the retransmission.
    backlog = 8
    delivery = re.compile(rb" PRIVMSG \S+ :~(\d+)~")
    error = re.compile(rb"^ERROR ", re.M)
    _ready_join = re.compile(rb"^:\S+ 366 ")
    _ready = re.compile(rb"^:\S+ 001 ")
    _refused = re.compile(rb"^(?:ERROR |:\S+ 4[0-9][0-9] )")

    def sign_in(self, credential: Credential) -> bytes:
        nick = credential.name
        lines = f"NICK {nick}\r\nUSER {nick} 0 * :bench\r\n"
        if self.join:
            lines += "JOIN #general\r\n"
        return lines.encode()

    def signed_in(self, line: bytes) -> bool | None:
        if (self._ready_join if self.join else self._ready).match(line):
            return True
        if self._refused.match(line):
            return False
        return None

    def message(self, target: str | None, number: int, ts: int) -> bytes:
        return f"PRIVMSG {target or '#general'} :~{ts}~{number}~ benchmark message\r\n".encode()


WIRES: dict[str, type[Wire]] = {
    w.name: w for w in (BesedaWire, BesedaV3Wire, BesedaWebSocketWire, ReferenceWire, IrcWire)
}
