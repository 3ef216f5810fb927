"""Fan-out: bus events become typed events handed to each recipient connection.

An entry becomes one :class:`codec.Outgoing` per protocol version, whatever the number of
recipients; each connection's ``send_event`` asks it for its own wire format (encoded once,
by the first connection that needs it) and only appends to a bounded buffer, never waiting
(see ``connection.py``). So one slow reader cannot delay anyone else, and a transport with
another format needs no change here.

Presence goes by subscription: a session ``watch``es a set of users and gets the changes of
those only, so a change costs one delivery per watcher. (Sent to every session, a storm of N
logins would cost N²/2 deliveries.)
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable

from ..bus import (
    BusEvent,
    EntryPosted,
    Origin,
    PresenceChanged,
    ReadMoved,
    TokenRevoked,
    TypingStarted,
)
from ..protocol import codec, errors, schema
from .chat import Session

log = logging.getLogger(__name__)


class DeliveryHub:
    """Registry of this process's authenticated sessions, by user."""

    def __init__(self, node: str = "local") -> None:
        self.node = node
        """This node's name: an event whose origin is another node's skips nobody here."""
        self._by_user: dict[int, tuple[Session, ...]] = {}
        """user id → that user's sessions: a tuple, not a set (a user has a few sessions,
        usually one, and an empty set alone is 216 bytes for every idle connection)."""
        self._sessions: set[Session] = set()
        self._watchers: defaultdict[int, set[Session]] = defaultdict(set)
        """user id → the sessions watching that user's presence."""
        self._watching: dict[Session, frozenset[int]] = {}
        """session → the user ids it watches (only sessions watching someone)."""
        self.delivered = 0
        self.presence_delivered = 0

    def attach(self, session: Session) -> None:
        assert session.user is not None
        user_id = session.user.id
        sessions = self._by_user.get(user_id, ())
        if session not in sessions:
            self._by_user[user_id] = (*sessions, session)
        self._sessions.add(session)

    def sessions_of_token(self, user_id: int, token_hash: bytes) -> list[Session]:
        """The attached sessions of ``user_id`` logged in with this token (a token is one
        user's, so its sessions are among that user's few: no index by token, which cost
        every idle connection a set of its own)."""
        return [s for s in self._by_user.get(user_id, ()) if s.token_hash == token_hash]

    def detach(self, session: Session) -> None:
        assert session.user is not None
        self._unwatch(session)
        self._sessions.discard(session)
        user_id = session.user.id
        sessions = self._by_user.get(user_id)
        if sessions is not None:
            remaining = tuple(s for s in sessions if s is not session)
            if remaining:
                self._by_user[user_id] = remaining
            else:
                del self._by_user[user_id]

    def watch(self, session: Session, user_ids: Iterable[int]) -> None:
        """Replace the session's watch set (an empty one stops all its presence events)."""
        if session not in self._sessions:
            return  # signed out meanwhile: nothing to deliver to
        self._unwatch(session)
        ids = frozenset(user_ids)
        if ids:
            self._watching[session] = ids
            for user_id in ids:
                self._watchers[user_id].add(session)

    def _unwatch(self, session: Session) -> None:
        for user_id in self._watching.pop(session, ()):
            watchers = self._watchers.get(user_id)
            if watchers is not None:
                watchers.discard(session)
                if not watchers:
                    del self._watchers[user_id]

    def watched(self, session: Session) -> frozenset[int]:
        """The user ids the session watches."""
        return self._watching.get(session, frozenset())

    def users(self) -> list[int]:
        """The users with a session here (whose conversations this node delivers into)."""
        return list(self._by_user)

    def _local(self, origin: Origin | None) -> int | None:
        """The connection id of ``origin`` when it is on this node, else None."""
        if origin is None or origin.node != self.node:
            return None
        return origin.connection

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    @property
    def watchers(self) -> int:
        """How many (user, session) watch pairs there are."""
        return sum(len(ids) for ids in self._watching.values())

    def on_event(self, event: BusEvent) -> None:
        """Bus subscriber: deliver ``event`` to the sessions it concerns."""
        if isinstance(event, EntryPosted):
            self._entry(event)
        elif isinstance(event, PresenceChanged):
            watchers = self._watchers.get(event.user_id)
            if not watchers:
                return
            presence = codec.Outgoing(schema.PresenceEvent(user=event.name, online=event.online))
            for session in watchers:
                session.peer.send_event(presence)
                self.presence_delivered += 1
        elif isinstance(event, ReadMoved):
            read = codec.Outgoing(schema.ReadEvent(conversation=event.conversation, seq=event.seq))
            sender = self._local(event.origin)
            for session in self._by_user.get(event.user_id, ()):
                if session.protocol >= 3 and session.peer.conn_id != sender:
                    session.peer.send_event(read)
        elif isinstance(event, TokenRevoked):
            if event.origin is not None and event.origin.node != self.node:
                # Logged out on another node: end this node's connections of the token.
                for session in self.sessions_of_token(event.user_id, event.token_hash):
                    session.peer.close(errors.SESSION_ENDED)
        elif isinstance(event, TypingStarted):
            typing = codec.Outgoing(
                schema.TypingEvent(conversation=event.conversation, user=event.name)
            )
            for session in self._targets(event.recipients):
                if session.protocol >= 3 and session.user_id != event.user_id:
                    session.peer.send_event(typing)

    def _targets(self, recipients: frozenset[int] | tuple[int, ...] | None) -> Iterable[Session]:
        if recipients is None:
            return self._sessions
        by_user = self._by_user
        if len(recipients) > len(by_user):
            # A large conversation with few of its members online: walk the online ones.
            return [s for uid, sessions in by_user.items() if uid in recipients for s in sessions]
        return [s for uid in recipients for s in by_user.get(uid, ())]

    def _entry(self, event: EntryPosted) -> None:
        # One typed event per protocol version, each encoded once per wire format by the
        # first connection of that format, whatever the number of recipients.
        current: codec.Outgoing | None = None
        legacy: codec.Outgoing | None = None
        origin = self._local(event.origin)
        count = 0
        # No copy of the set: deliver() never detaches a session synchronously (a dropped
        # slow consumer is forgotten later, from connection_lost).
        for session in self._targets(event.recipients):
            peer = session.peer
            if peer.conn_id == origin:
                continue
            if session.protocol >= 3:
                if current is None:
                    current = codec.Outgoing(schema.EntryEvent(entry=event.entry))
                peer.send_event(current)
            elif event.legacy:
                if legacy is None:
                    legacy = codec.Outgoing(schema.MessageEvent(message=event.entry))
                peer.send_event(legacy)
            else:
                continue
            count += 1
        self.delivered += count
