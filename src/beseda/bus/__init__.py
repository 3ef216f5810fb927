"""The bus between server processes: live delivery and presence.

In one process it is :class:`beseda.bus.local.LocalBus`; a Redis adapter can replace it
without touching the core. The bus carries hints only: the database is the truth, and a node
that missed bus traffic backfills from storage by cursor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..protocol.errors import BesedaError
from ..protocol.schema import Entry


class BusError(BesedaError):
    """The bus failed."""


@dataclass(frozen=True, slots=True)
class EntryPosted:
    """A committed entry to deliver to ``recipients`` (user ids; ``None`` means everyone)."""

    entry: Entry
    recipients: frozenset[int] | tuple[int, ...] | None
    """The conversation's members at the entry's place in the stream (for a removal, the
    removed member too, who gets that entry and nothing after it)."""
    origin: int | None = None
    """The connection that sent it (it gets the acknowledgement instead)."""
    legacy: bool = False
    """Shown to version-2 connections too (an entry of General or a direct conversation)."""


MessagePosted = EntryPosted
"""The version-2 name of :class:`EntryPosted`."""


@dataclass(frozen=True, slots=True)
class PresenceChanged:
    user_id: int
    name: str
    online: bool


@dataclass(frozen=True, slots=True)
class ReadMoved:
    """A user's read marker moved: their other connections are told."""

    user_id: int
    conversation: str
    seq: int
    origin: int | None = None


@dataclass(frozen=True, slots=True)
class TypingStarted:
    """Ephemeral: ``name`` is typing in ``conversation``; never stored."""

    conversation: str
    user_id: int
    name: str
    recipients: frozenset[int] | tuple[int, ...] | None


BusEvent = EntryPosted | PresenceChanged | ReadMoved | TypingStarted


class Bus(Protocol):
    """Publish/subscribe of bus events, and the count of each user's connections."""

    def subscribe(self, handler: Callable[[BusEvent], None]) -> None: ...

    def publish(self, event: BusEvent) -> None:
        """Hand ``event`` to the bus now, without waiting: events go out in the order of the
        calls. (A remote bus queues it for a sender task; the core publishes from the commit
        callback, where it must not wait.)"""

    async def user_connected(self, user_id: int) -> bool:
        """Count a new connection of the user; True when it is the user's first."""

    async def user_disconnected(self, user_id: int) -> bool:
        """Count a closed connection of the user; True when it was the user's last."""

    async def online(self, user_ids: list[int]) -> set[int]:
        """Which of these users have at least one connection."""

    async def close(self) -> None: ...
