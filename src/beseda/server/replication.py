"""Between a shared bus and delivery: entries in sequence order, exactly once per node.

Redis pub/sub is at-most-once, and two nodes' publications of one conversation may arrive
in either order. So when the bus is shared, the composition root puts a :class:`Replica`
between it and the delivery hub. It keeps, per conversation, the last seq this node has
delivered (its *cursor*) and hands the hub each entry exactly once, in seq order:

* an entry at ``cursor + 1`` is delivered at once, and then any held ones that follow it;
* an entry further ahead is held; if the gap is still open after :data:`GAP_GRACE` (the
  missing entry may simply be on its way from another node), the gap is read from the
  database by cursor (``Storage.entries_after``) and delivered in order;
* after the bus was lost (and at start), every conversation whose counter in the database
  is past its cursor is read the same way, so what was published meanwhile reaches everyone;
* an entry at or below the cursor is a duplicate and dropped.

Other nodes' changes (a channel created, a member added, a rename …) are applied to this
node's index as they are delivered, in seq order, from what the bus event carries (the
conversation's state and the membership changes, by user id); an entry read from the
database carries neither, so its conversation is read again from the database. Read markers
moved on another node are applied too. Clients still deduplicate by (conversation, seq): a
client that reconnects to another node syncs what it missed and may get some entries twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ..bus import BusEvent, EntryPosted, ReadMoved, Registered
from ..protocol.schema import GENERAL, Entry
from ..storage import Storage, StorageError
from .conversations import DIRECT, MEMBER, Conversation, Index, dm_members

log = logging.getLogger(__name__)

GAP_GRACE = 0.05
"""Seconds a gap may stay open before it is read from the database: entries of one
conversation published by two nodes may arrive out of order, and that is not a loss."""

FILL_PAGE = 1000
"""Entries read from the database at once while filling gaps."""

FILL_RETRIES = 100
"""Times a gap is read again (every :data:`GAP_GRACE`) when the database does not show the
missing entry yet, before the cursor skips it (logged: it should never happen)."""


@dataclass(slots=True)
class _Stream:
    """One conversation's delivery state on this node."""

    cursor: int
    held: dict[int, EntryPosted] = field(default_factory=dict)
    """Entries that arrived ahead of the cursor, by seq."""
    target: int = 0
    """The highest seq known to exist (from a held entry or the database's counter)."""
    misses: int = 0


class Replica:
    """Sequences bus events per conversation for one node (see the module's docstring)."""

    def __init__(
        self,
        *,
        node: str,
        storage: Storage,
        index: Index,
        deliver: Callable[[BusEvent], None],
        grace: float = GAP_GRACE,
    ) -> None:
        self.node = node
        self._storage = storage
        self._index = index
        self._deliver = deliver
        self._grace = grace
        self._streams: dict[str, _Stream] = {}
        self._gaps: set[str] = set()
        """Conversations with a gap to read from the database."""
        self._filler: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._catching_up = False
        self._resume_wanted = False
        self.filled = 0
        """Entries read from the database because the bus did not bring them (for tests)."""
        self.duplicates = 0
        """Entries dropped because they were delivered already."""

    def start(self) -> None:
        """Take each conversation's cursor from the index (after ``Chat.open``)."""
        for conversation in self._index.conversations.values():
            self._streams[conversation.id] = _Stream(conversation.last_seq)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._filler is not None:
            self._filler.cancel()
            await asyncio.gather(self._filler, return_exceptions=True)

    # -- from the bus ----------------------------------------------------------------------------

    def on_event(self, event: BusEvent) -> None:
        """Bus subscriber: entries are sequenced, everything else is passed on."""
        if isinstance(event, EntryPosted):
            self._entry(event)
            return
        if isinstance(event, Registered):
            if (
                not self._mine(event.origin)
                and self._index.membership(event.user_id, GENERAL) is None
            ):
                # Everyone is in General: so is an account made on another node.
                self._index.join(self._index.conversations[GENERAL], event.user_id, MEMBER, 1)
            return
        if isinstance(event, ReadMoved) and not self._mine(event.origin):
            membership = self._index.membership(event.user_id, event.conversation)
            if membership is not None and event.seq > membership.read_seq:
                membership.read_seq = event.seq
        self._deliver(event)

    def resumed(self) -> None:
        """The bus is (re)connected: read from the database what it may have lost."""
        self._resume_wanted = True
        self._run()

    def _mine(self, origin: object) -> bool:
        return origin is not None and getattr(origin, "node", None) == self.node

    def _stream(self, conversation_id: str) -> _Stream:
        stream = self._streams.get(conversation_id)
        if stream is None:
            stream = self._streams[conversation_id] = _Stream(0)
        return stream

    def _entry(self, event: EntryPosted) -> None:
        seq = event.entry.seq
        stream = self._stream(event.entry.conversation)
        if seq <= stream.cursor:
            self.duplicates += 1
            return
        if seq == stream.cursor + 1 and not stream.held:
            self._emit(stream, event)
            return
        stream.held[seq] = event
        if seq == stream.cursor + 1:
            self._drain(stream)
        if stream.held:
            stream.target = max(stream.target, max(stream.held) - 1)
            self._gaps.add(event.entry.conversation)
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self._grace, self._wake)

    def _drain(self, stream: _Stream) -> None:
        held = stream.held
        while held:
            event = held.pop(stream.cursor + 1, None)
            if event is None:
                break
            self._emit(stream, event)

    def _emit(self, stream: _Stream, event: EntryPosted) -> None:
        entry = event.entry
        stream.cursor = entry.seq
        if not self._mine(event.origin):
            conversation = self._apply(event)
            if conversation is not None and entry.seq > conversation.last_seq:
                conversation.last_seq, conversation.last_ts = entry.seq, entry.ts
        self._deliver(event)

    # -- applying other nodes' changes -----------------------------------------------------------

    def _apply(self, event: EntryPosted) -> Conversation | None:
        """Apply an entry of another node to the index; the conversation, if known."""
        index = self._index
        entry = event.entry
        conversation = index.get(entry.conversation)
        if conversation is None:
            pair = dm_members(entry.conversation)
            if pair is not None:
                # A direct conversation is created by its first message, on any node.
                conversation = Conversation(entry.conversation, DIRECT)
                index.add_conversation(conversation)
                for user_id in set(pair):
                    index.join(conversation, user_id, MEMBER, 1)
            elif event.state is not None:
                conversation = Conversation.from_state(event.state)
                conversation.last_seq, conversation.last_ts = 0, None
                index.add_conversation(conversation)
            else:
                return None
        state = event.state
        if state is not None and entry.kind != "message":
            if state.name is not None and state.key is not None and state.key != conversation.key:
                index.rename(conversation, state.name, state.key)
            conversation.topic = state.topic
            conversation.archived = state.archived
            conversation.public = state.public
            for change in event.changes:
                if change.join:
                    index.join(
                        conversation,
                        change.user_id,
                        change.role,
                        1 if change.from_start else entry.seq,
                    )
                elif change.leave:
                    index.leave(conversation, change.user_id)
                    membership = index.membership(change.user_id, conversation.id)
                    if membership is not None:
                        membership.until_seq = entry.seq
                else:
                    index.set_role(conversation, change.user_id, change.role)
        return conversation

    async def _reload(self, conversation_id: str) -> None:
        """Read one conversation and its memberships from the database into the index (a
        change whose bus event was lost: the entry alone names people, not ids)."""
        index = self._index
        states = [s for s in await self._storage.load_conversations() if s.id == conversation_id]
        if not states:
            return
        rows = [r for r in await self._storage.load_members() if r.conversation == conversation_id]
        fresh = Conversation.from_state(states[0])
        conversation = index.get(conversation_id)
        if conversation is None:
            conversation = fresh
            conversation.last_seq, conversation.last_ts = 0, None
            index.add_conversation(conversation)
        else:
            if fresh.name is not None and fresh.key is not None and fresh.key != conversation.key:
                index.rename(conversation, fresh.name, fresh.key)
            conversation.topic, conversation.archived = fresh.topic, fresh.archived
            conversation.public = fresh.public
        for row in rows:
            if row.until_seq is None:
                index.join(conversation, row.user_id, row.role, row.from_seq)
            else:
                index.leave(conversation, row.user_id)
            membership = index.membership(row.user_id, conversation_id)
            if membership is not None:
                membership.from_seq, membership.until_seq = row.from_seq, row.until_seq
                membership.read_seq = max(membership.read_seq, row.read_seq)

    # -- reading from the database ---------------------------------------------------------------

    def _wake(self) -> None:
        self._timer = None
        self._run()

    def _run(self) -> None:
        if self._filler is None or self._filler.done():
            self._filler = asyncio.get_running_loop().create_task(self._fill(), name="replica")

    async def _fill(self) -> None:
        while self._resume_wanted or self._gaps:
            try:
                if self._resume_wanted:
                    self._resume_wanted = False
                    await self._catch_up()
                await self._read_gaps()
            except StorageError as exc:
                log.warning("cannot read missed entries yet: %s", exc)
                await asyncio.sleep(max(self._grace, 0.5))
            except Exception:
                log.exception("reading missed entries failed")
                await asyncio.sleep(max(self._grace, 0.5))
            if self._gaps and not self._resume_wanted:
                await asyncio.sleep(self._grace)

    async def _catch_up(self) -> None:
        """Every conversation whose counter in the database is past this node's cursor."""
        for state in await self._storage.load_conversations():
            stream = self._stream(state.id)
            if state.last_seq > stream.cursor:
                stream.target = max(stream.target, state.last_seq)
                self._gaps.add(state.id)
        if self._gaps:
            log.info("catching up %d conversation(s) from the database", len(self._gaps))

    async def _read_gaps(self) -> None:
        ranges: dict[str, tuple[int, int | None]] = {}
        for conversation_id in list(self._gaps):
            stream = self._stream(conversation_id)
            self._drain(stream)
            if stream.target <= stream.cursor:
                self._settle(conversation_id, stream)
                continue
            ranges[conversation_id] = (stream.cursor, stream.target)
            if len(ranges) >= 256:
                break
        if not ranges:
            return
        entries, _ = await self._storage.entries_after(ranges, FILL_PAGE)
        by_conversation: dict[str, list[Entry]] = {}
        for entry in entries:
            by_conversation.setdefault(entry.conversation, []).append(entry)
        for conversation_id in ranges:
            stream = self._stream(conversation_id)
            found = by_conversation.get(conversation_id, [])
            if not found:
                stream.misses += 1
                if stream.misses >= FILL_RETRIES:
                    log.error(
                        "%s: seqs %d..%d are not in the database; skipping them",
                        conversation_id,
                        stream.cursor + 1,
                        stream.target,
                    )
                    stream.cursor = stream.target
                    self._drain(stream)
                    self._settle(conversation_id, stream)
                continue
            stream.misses = 0
            for entry in sorted(found, key=lambda e: e.seq):
                if entry.seq <= stream.cursor:
                    continue
                if entry.seq != stream.cursor + 1:
                    break
                event = stream.held.pop(entry.seq, None)
                if event is None:
                    event = await self._from_database(entry)
                    self.filled += 1
                    if entry.seq <= stream.cursor:  # brought by the bus meanwhile
                        continue
                self._emit(stream, event)
                self._drain(stream)
            if stream.target <= stream.cursor:
                self._settle(conversation_id, stream)

    def _settle(self, conversation_id: str, stream: _Stream) -> None:
        """The conversation has no gap up to its target: forget it, unless entries are
        still held beyond another gap."""
        stream.misses = 0
        if stream.held:
            stream.target = max(stream.target, max(stream.held) - 1)
            if stream.target > stream.cursor:
                return
        self._gaps.discard(conversation_id)

    async def _from_database(self, entry: Entry) -> EntryPosted:
        """An entry read from the database as the bus would have brought it."""
        index = self._index
        conversation = index.get(entry.conversation)
        if entry.kind != "message" or (
            conversation is None and dm_members(entry.conversation) is None
        ):
            before = conversation.members if conversation is not None else frozenset()
            await self._reload(entry.conversation)
            conversation = index.get(entry.conversation)
            after = conversation.members if conversation is not None else frozenset()
            recipients: frozenset[int] | None = before | after
            state_known = True
        else:
            state_known = False
            recipients = None
        if conversation is None:
            pair = dm_members(entry.conversation)
            members = frozenset(pair) if pair is not None else frozenset()
            return EntryPosted(entry, members, legacy=pair is not None)
        if not state_known:
            recipients = conversation.members
        if conversation.everyone:
            recipients = None
        return EntryPosted(
            entry,
            recipients,
            legacy=conversation.everyone or conversation.kind == DIRECT,
        )
