"""What every engine stores of an entry the same way: the kind-specific JSON, reply budgets.

The JSON of ``messages.data`` is the same bytes in every engine, so ``beseda migrate-db``
copies it as it is. (SQLite's module keeps its own copy of these few definitions for now.)
"""

from __future__ import annotations

import msgspec

from ..protocol.schema import Entry, Message
from . import NewMessage

SEQ_CEILING = 2**62
"""Above every sequence number. Cursors come from clients, who may send any integer; one
clamped to this matches nothing instead of overflowing a 64-bit column."""


class EntryData(msgspec.Struct, omit_defaults=True):
    """The kind-specific fields of an entry, kept as JSON in ``messages.data``: a new kind
    of entry adds fields here, not columns."""

    mentions: list[str] = []
    name: str | None = None
    topic: str | None = None
    role: str | None = None
    reply_to: int | None = None
    edited: int | None = None
    emoji: str | None = None
    count: int | None = None


NO_DATA = EntryData()
data_encoder = msgspec.json.Encoder()
data_decoder = msgspec.json.Decoder(EntryData)


def decode_data(text: str | bytes | None) -> EntryData:
    return NO_DATA if text is None else data_decoder.decode(text)


def encode_data(data: EntryData) -> str | None:
    """The column's text (None for no kind-specific fields)."""
    return None if data == NO_DATA else data_encoder.encode(data).decode()


def message_data(message: NewMessage) -> str | None:
    if not message.mentions and message.reply_to is None:
        return None
    return encode_data(
        EntryData(mentions=[user.name for user in message.mentions], reply_to=message.reply_to)
    )


def stored_message(message: NewMessage, id_: int, seq: int) -> Message:
    """The entry a just-inserted message is, as the engines return it."""
    recipient = message.recipient
    stored = Message(
        id=id_,
        conversation=message.conversation,
        seq=seq,
        sender=message.sender.name,
        to=recipient.name if recipient is not None else None,
        text=message.text,
        ts=message.ts,
        client_id=message.client_id,
    )
    if message.mentions or message.mention_all:  # most messages mention nobody
        stored.mentions = [user.name for user in message.mentions]
        stored.mention_all = message.mention_all
    if message.reply_to is not None:
        stored.reply_to = message.reply_to
    return stored


def clamp(seq: int) -> int:
    """A client's sequence number brought into what a column holds (0 … SEQ_CEILING)."""
    return min(max(seq, 0), SEQ_CEILING)


class Budget:
    """Bytes left for the entries of one reply, counted as they will be encoded."""

    __slots__ = ("left",)

    def __init__(self, max_bytes: int | None) -> None:
        self.left = max_bytes

    def take(self, entry: Entry, *, first: bool) -> bool:
        """Count ``entry``; False when it does not fit (the first always does)."""
        if self.left is None:
            return True
        size = len(data_encoder.encode(entry)) + 1
        if size > self.left and not first:
            return False
        self.left -= size
        return True
