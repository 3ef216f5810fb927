"""One conversation's messages as the client knows them, and the window of them on screen.

A conversation may hold 10,000 loaded messages; the message view shows at most
:attr:`Timeline.CAP` of them, a window that grows towards where the reader scrolls and is cut
on the far side. The window is kept as indices into the items (stored messages by seq, then
one's own messages still on their way), adjusted like marks in a text editor as items are
inserted and removed.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

from ..protocol import schema


@dataclass
class Outgoing:
    """One of the user's messages that the server has not acknowledged (yet)."""

    local_id: str
    """Also the message's client id: resending it never stores it twice."""
    text: str
    sent_at: float
    """Wall-clock seconds when the user sent it."""
    failed: str | None = None
    """Why it could not be sent; None while it is on its way."""
    final: bool = False
    """The server refused it for good (no longer a member, an archived channel …): sending it
    again cannot succeed, so no Retry is offered."""
    version: int = 0
    """Bumped on every change, so the row shown for it is rebuilt."""
    reply_to: int | None = None
    """The seq of the message it answers."""
    quote: schema.Quote | None = None
    """That message, quoted above it while it is on its way."""


Item = schema.Message | Outgoing


class Timeline:
    """Stored messages in seq order, then outgoing ones in the order they were written."""

    INITIAL = 150
    """Rows shown when a conversation is opened."""
    STEP = 100
    """Rows added when the reader reaches the top or the bottom of the window."""
    CAP = 400
    """Most rows ever shown at once."""

    def __init__(self) -> None:
        self.messages: list[schema.Message] = []
        self._seqs: list[int] = []
        self.outgoing: list[Outgoing] = []
        self.lo = 0
        self.hi = 0
        self.at_bottom = True
        self.at_top = True
        self.has_newer = False
        """Newer messages than these exist on the server (a page opened around an older
        message, by a search hit or a quote): scrolling down loads them."""

    def __len__(self) -> int:
        return len(self.messages) + len(self.outgoing)

    def item(self, index: int) -> Item:
        if index < len(self.messages):
            return self.messages[index]
        return self.outgoing[index - len(self.messages)]

    def visible(self) -> list[Item]:
        return [self.item(i) for i in range(self.lo, self.hi)]

    @property
    def oldest_seq(self) -> int | None:
        return self._seqs[0] if self._seqs else None

    @property
    def newest_seq(self) -> int:
        return self._seqs[-1] if self._seqs else 0

    @property
    def attached(self) -> bool:
        """The window reaches the newest item."""
        return self.hi == len(self) and not self.has_newer

    def index_of(self, seq: int) -> int | None:
        index = bisect.bisect_left(self._seqs, seq)
        return index if index < len(self._seqs) and self._seqs[index] == seq else None

    def find(self, seq: int) -> schema.Message | None:
        index = self.index_of(seq)
        return None if index is None else self.messages[index]

    # -- changes -------------------------------------------------------------------------------

    def add(self, message: schema.Message) -> bool:
        """Store ``message`` (replacing the outgoing one with its client id); False if known."""
        index = bisect.bisect_left(self._seqs, message.seq)
        if index < len(self._seqs) and self._seqs[index] == message.seq:
            return False
        for position, outgoing in enumerate(self.outgoing):
            if outgoing.local_id == message.client_id:
                del self.outgoing[position]
                self._removed(len(self.messages) + position)
                break
        self.messages.insert(index, message)
        self._seqs.insert(index, message.seq)
        self._inserted(index, 1)
        return True

    def add_page(self, messages: Iterable[schema.Message]) -> int:
        """Store a page of history; returns how many messages were new."""
        fresh = [m for m in messages if not self.has(m.seq)]
        fresh.sort(key=lambda m: m.seq)
        if fresh and (not self._seqs or fresh[-1].seq < self._seqs[0]):
            # The usual case, an older page: one block at the front.
            self.messages[:0] = fresh
            self._seqs[:0] = [m.seq for m in fresh]
            self._inserted(0, len(fresh), before_window=True)
            return len(fresh)
        return sum(self.add(m) for m in fresh)

    def has(self, seq: int) -> bool:
        index = bisect.bisect_left(self._seqs, seq)
        return index < len(self._seqs) and self._seqs[index] == seq

    def replace(self, message: schema.Message) -> bool:
        """Put ``message`` in place of the stored one with its seq (an edit, a reaction)."""
        index = self.index_of(message.seq)
        if index is None:
            return False
        self.messages[index] = message
        return True

    def remove(self, seq: int) -> bool:
        """Take out the message with this seq (it was deleted); False if not stored."""
        index = self.index_of(seq)
        if index is None:
            return False
        del self.messages[index]
        del self._seqs[index]
        self._removed(index)
        return True

    def add_outgoing(self, outgoing: Outgoing) -> None:
        self.outgoing.append(outgoing)
        self._inserted(len(self) - 1, 1)

    def find_outgoing(self, local_id: str) -> Outgoing | None:
        return next((o for o in self.outgoing if o.local_id == local_id), None)

    def _inserted(self, index: int, count: int, *, before_window: bool = False) -> None:
        """Adjust the window; an insertion at its first row is inside it unless
        ``before_window`` (an older page, shown when the reader scrolls up to it)."""
        before = len(self) - count
        if index == before and self.hi == before:
            self.hi += count  # new at the end of a window that reaches the end
        elif index < self.lo or (index == self.lo and before_window):
            self.lo += count
            self.hi += count
        elif index < self.hi:
            self.hi += count
        self._cap()

    def _removed(self, index: int) -> None:
        if index < self.lo:
            self.lo -= 1
            self.hi -= 1
        elif index < self.hi:
            self.hi -= 1

    def _cap(self) -> None:
        if self.hi - self.lo > self.CAP:
            if self.at_bottom:
                self.lo = self.hi - self.CAP
            else:
                self.hi = self.lo + self.CAP

    # -- the window ----------------------------------------------------------------------------

    def show_newest(self) -> None:
        """Put the window at the end, as when the conversation is opened."""
        self.hi = len(self)
        self.lo = max(0, self.hi - self.INITIAL)
        self.at_bottom = True

    def show_around(self, seq: int) -> bool:
        """Put the window around the message with this seq (a jump to it); False if it is
        not stored."""
        index = self.index_of(seq)
        if index is None:
            return False
        if self.lo <= index < self.hi:
            return True
        self.lo = max(0, index - self.INITIAL // 2)
        self.hi = min(len(self), self.lo + self.INITIAL)
        self.lo = max(0, self.hi - self.INITIAL)
        self.at_bottom = False
        return True

    def extend_up(self) -> bool:
        """Show older rows already in memory; False when the window starts at the first."""
        if self.lo == 0:
            return False
        self.lo = max(0, self.lo - self.STEP)
        if self.hi - self.lo > self.CAP:
            self.hi = self.lo + self.CAP
        return True

    def extend_down(self) -> bool:
        """Show newer rows already in memory; False when the window reaches the end."""
        if self.hi == len(self):
            return False
        self.hi = min(len(self), self.hi + self.STEP)
        if self.hi - self.lo > self.CAP:
            self.lo = self.hi - self.CAP
        return True
