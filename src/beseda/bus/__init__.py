"""The bus between server processes: live delivery and presence.

In one process it is :class:`beseda.bus.local.LocalBus`; across several nodes it is
:class:`beseda.bus.redis.RedisBus`, and the core does not know which. The bus carries hints
only: the database is the truth, and a node that missed bus traffic reads the gap from storage
by cursor (``server/replication.py``).

Every node is named, and an event's origin is ``(node, connection)``: a connection id alone is
a per-process counter, which two nodes both start at 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from ..protocol.errors import BesedaError
from ..protocol.schema import Entry
from ..storage import ConversationState, MemberChange


class BusError(BesedaError):
    """The bus failed (for a remote bus: it could not be reached at start)."""


class Origin(NamedTuple):
    """Where an event comes from: the node's name and that node's connection id."""

    node: str
    connection: int


@dataclass(frozen=True, slots=True)
class EntryPosted:
    """A committed entry to deliver to ``recipients`` (user ids; ``None`` means everyone)."""

    entry: Entry
    recipients: frozenset[int] | tuple[int, ...] | None
    """The conversation's members at the entry's place in the stream (for a removal, the
    removed member too, who gets that entry and nothing after it)."""
    origin: Origin | None = None
    """The connection that sent it (it gets the acknowledgement instead)."""
    legacy: bool = False
    """Shown to version-2 connections too (an entry of General or a direct conversation)."""
    state: ConversationState | None = None
    """For a change (any kind but ``message``): the conversation as it is after it, so that
    other nodes can apply the change to their index without reading the database."""
    changes: tuple[MemberChange, ...] = ()
    """For a change: the memberships it changes (by user id)."""


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
    origin: Origin | None = None


@dataclass(frozen=True, slots=True)
class TypingStarted:
    """Ephemeral: ``name`` is typing in ``conversation``; never stored."""

    conversation: str
    user_id: int
    name: str
    recipients: frozenset[int] | tuple[int, ...] | None


@dataclass(frozen=True, slots=True)
class TokenRevoked:
    """A session token was logged out: every connection that logged in with it ends, on
    every node (the node of the logout has ended its own already)."""

    user_id: int
    token_hash: bytes
    origin: Origin | None = None


@dataclass(frozen=True, slots=True)
class Registered:
    """A new account, a member of General from now on (on every node's index)."""

    user_id: int
    origin: Origin | None = None


BusEvent = EntryPosted | PresenceChanged | ReadMoved | TypingStarted | TokenRevoked | Registered


class Bus(Protocol):
    """Publish/subscribe of bus events, and the count of each user's connections."""

    node: str
    """This node's name (the first part of every :class:`Origin` it makes)."""
    shared: bool
    """Whether other nodes publish into this bus too: then entries may arrive out of order or
    not at all, and the composition root puts a ``Replica`` between the bus and delivery."""

    async def open(self) -> None:
        """Connect; raises :class:`BusError` when the bus cannot be reached."""

    def subscribe(self, handler: Callable[[BusEvent], None]) -> None:
        """Call ``handler`` with every event: this node's at once, in ``publish``, and other
        nodes' as they arrive."""

    def on_resume(self, handler: Callable[[], None]) -> None:
        """Call ``handler`` each time the bus is (re)connected after a loss, once events from
        other nodes flow again: what was published meanwhile is lost, and the handler reads
        it from the database."""

    def publish(self, event: BusEvent) -> None:
        """Hand ``event`` to the bus now, without waiting: events go out in the order of the
        calls. (A remote bus queues it for a sender task; the core publishes from the commit
        callback, where it must not wait.)"""

    async def user_connected(self, user_id: int, name: str) -> bool:
        """Count a new connection of the user; True when it is the user's first."""

    async def user_disconnected(self, user_id: int, name: str) -> bool:
        """Count a closed connection of the user; True when it was the user's last."""

    async def online(self, user_ids: list[int]) -> set[int]:
        """Which of these users have at least one connection."""

    async def close(self) -> None: ...
