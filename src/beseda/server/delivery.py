"""Fan-out: bus events become encoded lines appended to each recipient connection.

A message is encoded once, whatever the number of recipients, and handed to each connection's
``deliver``, which only appends to a bounded buffer and never waits (see ``transports/tcp.py``).
So one slow reader cannot delay anyone else.

Presence goes by subscription: a session ``watch``es a set of users and gets the changes of
those only, so a change costs one delivery per watcher. (Sent to every session, a storm of N
logins would cost N²/2 deliveries.)
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable

from ..bus import BusEvent, MessagePosted, PresenceChanged
from ..protocol import codec, schema
from .chat import Session

log = logging.getLogger(__name__)


class DeliveryHub:
    """Registry of this process's authenticated sessions, by user."""

    def __init__(self) -> None:
        self._by_user: defaultdict[int, set[Session]] = defaultdict(set)
        self._sessions: set[Session] = set()
        self._watchers: defaultdict[int, set[Session]] = defaultdict(set)
        """user id → the sessions watching that user's presence."""
        self._watching: dict[Session, frozenset[int]] = {}
        """session → the user ids it watches (only sessions watching someone)."""
        self.delivered = 0
        self.presence_delivered = 0

    def attach(self, session: Session) -> None:
        assert session.user is not None
        self._by_user[session.user.id].add(session)
        self._sessions.add(session)

    def detach(self, session: Session) -> None:
        assert session.user is not None
        self._unwatch(session)
        self._sessions.discard(session)
        sessions = self._by_user.get(session.user.id)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self._by_user[session.user.id]

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

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    @property
    def watchers(self) -> int:
        """How many (user, session) watch pairs there are."""
        return sum(len(ids) for ids in self._watching.values())

    def on_event(self, event: BusEvent) -> None:
        """Bus subscriber: deliver ``event`` to the sessions it concerns."""
        if isinstance(event, MessagePosted):
            data = codec.encode(schema.MessageEvent(message=event.message))
            if event.recipients is None:
                targets: set[Session] | list[Session] = self._sessions
            else:
                targets = [s for uid in set(event.recipients) for s in self._by_user.get(uid, ())]
            origin = event.origin
            # No copy of the set: deliver() never detaches a session synchronously (a dropped
            # slow consumer is forgotten later, from connection_lost).
            count = 0
            for session in targets:
                peer = session.peer
                if peer.conn_id != origin:
                    peer.deliver(data)
                    count += 1
            self.delivered += count
        elif isinstance(event, PresenceChanged):
            watchers = self._watchers.get(event.user_id)
            if not watchers:
                return
            data = codec.encode(schema.PresenceEvent(user=event.name, online=event.online))
            for session in watchers:
                session.peer.deliver(data)
                self.presence_delivered += 1
