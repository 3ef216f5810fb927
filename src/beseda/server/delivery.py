"""Fan-out: bus events become encoded lines appended to each recipient connection.

A message is encoded once, whatever the number of recipients, and handed to each connection's
``deliver``, which only appends to a bounded buffer and never waits (see ``transports/tcp.py``).
So one slow reader cannot delay anyone else.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from ..bus import BusEvent, MessagePosted, PresenceChanged
from ..protocol import codec, schema
from .chat import Session

log = logging.getLogger(__name__)


class DeliveryHub:
    """Registry of this process's authenticated sessions, by user."""

    def __init__(self) -> None:
        self._by_user: defaultdict[int, set[Session]] = defaultdict(set)
        self._sessions: set[Session] = set()
        self.delivered = 0

    def attach(self, session: Session) -> None:
        assert session.user is not None
        self._by_user[session.user.id].add(session)
        self._sessions.add(session)

    def detach(self, session: Session) -> None:
        assert session.user is not None
        self._sessions.discard(session)
        sessions = self._by_user.get(session.user.id)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self._by_user[session.user.id]

    @property
    def sessions(self) -> int:
        return len(self._sessions)

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
            for session in targets:
                if session.peer.conn_id != origin:
                    session.peer.deliver(data)
                    self.delivered += 1
        elif isinstance(event, PresenceChanged):
            data = codec.encode(schema.PresenceEvent(user=event.name, online=event.online))
            for session in self._sessions:
                session.peer.deliver(data)
