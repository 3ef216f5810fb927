"""The in-process bus: synchronous fan-out to subscribers, presence counts in a dict."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from . import BusEvent

log = logging.getLogger(__name__)


class LocalBus:
    """A bus for a single server process (implements :class:`beseda.bus.Bus`)."""

    shared = False

    def __init__(self, node: str = "local") -> None:
        self.node = node
        self._handlers: list[Callable[[BusEvent], None]] = []
        self._connections: Counter[int] = Counter()

    async def open(self) -> None:
        pass

    def on_resume(self, handler: Callable[[], None]) -> None:
        pass  # an in-process bus is never lost

    def subscribe(self, handler: Callable[[BusEvent], None]) -> None:
        self._handlers.append(handler)

    def publish(self, event: BusEvent) -> None:
        for handler in self._handlers:
            try:
                handler(event)
            except Exception:
                # One broken subscriber must not stop delivery to the others.
                log.exception("bus subscriber failed on %r", event)

    async def user_connected(self, user_id: int, name: str) -> bool:
        self._connections[user_id] += 1
        return self._connections[user_id] == 1

    async def user_disconnected(self, user_id: int, name: str) -> bool:
        count = self._connections[user_id] - 1
        if count <= 0:
            del self._connections[user_id]
            return True
        self._connections[user_id] = count
        return False

    async def online(self, user_ids: list[int]) -> set[int]:
        return {user_id for user_id in user_ids if user_id in self._connections}

    async def close(self) -> None:
        self._handlers.clear()
