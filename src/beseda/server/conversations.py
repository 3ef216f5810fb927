"""Conversations: their ids, the in-memory index of who is in which, and who may do what.

The core keeps every conversation and membership in memory (loaded once at start, then
changed only through the core), so delivering an entry or checking a request never reads the
database. A change is applied to the index when its write is *queued*, in request order, and
its sequence numbers are filled in when it *commits*: every later request already sees it (a
removed member can post nothing after the removal), and every entry's recipients are the
members at its place in the stream.

Who sees which history (docs/protocol.md, "Conversations"):

* a channel's members read its whole history, from its first entry, including members who
  join later (a channel is a team's record);
* a group's members read from the entry that added them (a group is a private talk among
  the people in it when it was said);
* a member who leaves or is removed keeps what they could read up to and including that
  entry, and nothing after it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from ..protocol import errors
from ..protocol.errors import ProtocolError
from ..protocol.schema import GENERAL
from ..storage import ConversationState, MembershipRecord
from .accounts import name_skeleton

CHANNEL: Final = "channel"
GROUP: Final = "group"
DIRECT: Final = "direct"
OWNER: Final = "owner"
ADMIN: Final = "admin"
MEMBER: Final = "member"

_DIRECT_ID = re.compile(r"dm:([1-9][0-9]{0,17}):([1-9][0-9]{0,17})", re.ASCII)
_NUMBERED_ID = re.compile(r"c:[1-9][0-9]{0,17}", re.ASCII)
_MENTION = re.compile(r"(?<![\w@])@([\w.\-]{1,64})")
MENTION_ALL: Final = frozenset({"channel", "all", "everyone"})
"""``@channel``, ``@all`` and ``@everyone`` mention every member (see :meth:`may_mention_all`)."""


def dm_conversation(a: int, b: int) -> str:
    """The id of the direct conversation between two user ids (order does not matter)."""
    low, high = sorted((a, b))
    return f"dm:{low}:{high}"


def dm_members(conversation: str) -> tuple[int, int] | None:
    """The two user ids of a direct conversation id in its canonical form, or None."""
    match = _DIRECT_ID.fullmatch(conversation)
    if match is None:
        return None
    low, high = int(match[1]), int(match[2])
    return (low, high) if low <= high else None


def is_canonical_id(conversation: str) -> bool:
    """Whether ``conversation`` is an id exactly as the server writes it (ASCII digits, no
    leading zeros, a direct pair in order, ``dm:N:N`` for notes to oneself); anything else
    names no conversation."""
    return (
        conversation == GENERAL
        or dm_members(conversation) is not None
        or _NUMBERED_ID.fullmatch(conversation) is not None
    )


def mentioned_names(text: str, limit: int) -> tuple[list[str], bool]:
    """The distinct names after ``@`` in ``text`` (at most ``limit``), and whether it says
    ``@channel``/``@all``/``@everyone``. A trailing ``.``, ``-`` or ``_`` is punctuation."""
    names: dict[str, None] = {}
    everyone = False
    for match in _MENTION.finditer(text):
        name = match[1].rstrip(".-_")
        if not name:
            continue
        if name.casefold() in MENTION_ALL:
            everyone = True
        elif len(names) < limit:
            names.setdefault(name, None)
    return list(names), everyone


@dataclass(slots=True)
class Membership:
    """One user's membership as the core keeps it."""

    role: str
    from_seq: int | None
    """The first readable entry; None until the entry that added them has committed."""
    until_seq: int | None = None
    """The entry that ended the membership; None while a member (or while it is queued)."""
    read_seq: int = 0
    active: bool = True
    """False from the moment a leave or removal is queued."""


@dataclass(slots=True)
class Conversation:
    """A conversation as the core keeps it."""

    id: str
    kind: str
    name: str | None = None
    key: str | None = None
    topic: str = ""
    public: bool = False
    archived: bool = False
    last_seq: int = 0
    """The last committed seq, as far as this process has seen commits."""
    last_ts: int | None = None
    members: frozenset[int] = frozenset()
    """Current members (replaced, never changed in place: an entry's recipients are the set
    at its place in the stream). Unused for General, whose members are everyone."""
    roles: dict[int, str] = field(default_factory=dict)

    @classmethod
    def from_state(cls, state: ConversationState) -> Conversation:
        """The conversation as storage has it, with no members yet."""
        return cls(
            id=state.id,
            kind=state.kind,
            name=state.name,
            key=state.key,
            topic=state.topic,
            public=state.public,
            archived=state.archived,
            last_seq=state.last_seq,
            last_ts=state.last_ts,
        )

    @property
    def everyone(self) -> bool:
        return self.id == GENERAL

    def is_member(self, user_id: int) -> bool:
        return self.everyone or user_id in self.members


class Index:
    """Every conversation and membership, by id and by user."""

    def __init__(self) -> None:
        self.conversations: dict[str, Conversation] = {}
        self.by_key: dict[str, str] = {}
        """Channel key (canonical name) → conversation id ("" while its creation is queued)."""
        self.by_skeleton: dict[str, str] = {name_skeleton("General"): GENERAL}
        """Channel name's confusable skeleton → conversation id ("" while queued)."""
        self.memberships: dict[int, dict[str, Membership]] = {}
        """User id → conversation id → membership (past ones kept, for their history)."""
        self.counted: dict[int, int] = {}
        """User id → channels and groups they are an active member of."""
        self.everyone = 0
        """How many users there are (all of them are in General)."""
        self.conversations[GENERAL] = Conversation(
            GENERAL, CHANNEL, name="General", key="general", public=True
        )

    def load(self, states: Iterable[ConversationState], rows: Iterable[MembershipRecord]) -> None:
        for state in states:
            conversation = Conversation.from_state(state)
            self.conversations[state.id] = conversation
            if state.key is not None and state.id != GENERAL:
                self.by_key[state.key] = state.id
            if state.kind == CHANNEL and state.name is not None:
                self.by_skeleton.setdefault(name_skeleton(state.name), state.id)
        members: dict[str, set[int]] = {}
        for row in rows:
            found = self.conversations.get(row.conversation)
            if found is None:
                continue
            conversation = found
            active = row.until_seq is None
            self.memberships.setdefault(row.user_id, {})[row.conversation] = Membership(
                role=row.role,
                from_seq=row.from_seq,
                until_seq=row.until_seq,
                read_seq=row.read_seq,
                active=active,
            )
            if conversation.everyone:
                self.everyone += 1
            elif active:
                members.setdefault(row.conversation, set()).add(row.user_id)
                conversation.roles[row.user_id] = row.role
                if conversation.kind != DIRECT:
                    self.counted[row.user_id] = self.counted.get(row.user_id, 0) + 1
        for conversation_id, ids in members.items():
            self.conversations[conversation_id].members = frozenset(ids)

    # -- looking up ----------------------------------------------------------------------------

    def get(self, conversation_id: str) -> Conversation | None:
        return self.conversations.get(conversation_id)

    def membership(self, user_id: int, conversation_id: str) -> Membership | None:
        return self.memberships.get(user_id, {}).get(conversation_id)

    def of_user(self, user_id: int) -> Iterator[tuple[Conversation, Membership]]:
        for conversation_id, membership in self.memberships.get(user_id, {}).items():
            yield self.conversations[conversation_id], membership

    def readable(self, user_id: int, conversation: Conversation) -> tuple[int, int] | None:
        """The seqs ``(after, ceiling)`` the user may read: entries with ``after < seq <=
        ceiling``; None when they may read nothing of it."""
        membership = self.membership(user_id, conversation.id)
        if membership is None:
            if conversation.everyone:
                return 0, conversation.last_seq  # General: everyone, from the start
            return None
        if membership.from_seq is None:
            return None
        ceiling = conversation.last_seq
        if membership.until_seq is not None:
            ceiling = min(ceiling, membership.until_seq)
        return membership.from_seq - 1, ceiling

    # -- changing (at queue time) --------------------------------------------------------------

    def add_conversation(self, conversation: Conversation) -> None:
        self.conversations[conversation.id] = conversation
        if conversation.key is not None:
            self.by_key[conversation.key] = conversation.id
        if conversation.kind == CHANNEL and conversation.name is not None:
            self.by_skeleton[name_skeleton(conversation.name)] = conversation.id

    def join(
        self, conversation: Conversation, user_id: int, role: str, from_seq: int | None
    ) -> None:
        """Make ``user_id`` a member now (``from_seq`` None: known when the entry commits)."""
        if not conversation.everyone:
            if user_id not in conversation.members:
                conversation.members = conversation.members | {user_id}
                if conversation.kind != DIRECT:
                    self.counted[user_id] = self.counted.get(user_id, 0) + 1
            conversation.roles[user_id] = role
        memberships = self.memberships.setdefault(user_id, {})
        old = memberships.get(conversation.id)
        if conversation.everyone and old is None:
            self.everyone += 1
        read = old.read_seq if old is not None else 0
        memberships[conversation.id] = Membership(role, from_seq, None, read, True)

    def leave(self, conversation: Conversation, user_id: int) -> None:
        """End ``user_id``'s membership now; its last seq is set when the entry commits."""
        if user_id in conversation.members:
            conversation.members = conversation.members - {user_id}
            if conversation.kind != DIRECT:
                self.counted[user_id] = max(0, self.counted.get(user_id, 0) - 1)
        conversation.roles.pop(user_id, None)
        membership = self.membership(user_id, conversation.id)
        if membership is not None:
            membership.active = False

    def set_role(self, conversation: Conversation, user_id: int, role: str) -> None:
        conversation.roles[user_id] = role
        membership = self.membership(user_id, conversation.id)
        if membership is not None:
            membership.role = role

    def rename(self, conversation: Conversation, name: str, key: str) -> None:
        if conversation.key is not None and self.by_key.get(conversation.key) == conversation.id:
            del self.by_key[conversation.key]
        if conversation.name is not None:
            old = name_skeleton(conversation.name)
            if self.by_skeleton.get(old) == conversation.id:
                del self.by_skeleton[old]
        conversation.name, conversation.key = name, key
        self.by_key[key] = conversation.id
        self.by_skeleton[name_skeleton(name)] = conversation.id

    # -- rules ---------------------------------------------------------------------------------

    def require_readable(self, user_id: int, conversation_id: str) -> Conversation:
        """The conversation, if the user may read it (a member now or before); a public
        channel's non-member gets ``not_a_member``, anyone else ``unknown_conversation``, the
        same whether it exists or not."""
        conversation = self.conversations.get(conversation_id)
        if conversation is not None and (
            conversation.everyone or self.membership(user_id, conversation_id) is not None
        ):
            return conversation
        if conversation is not None and conversation.kind == CHANNEL and conversation.public:
            raise ProtocolError(errors.NOT_A_MEMBER, f"Join {conversation.name!r} to read it.")
        raise unknown(conversation_id)

    def require_member(self, user_id: int, conversation_id: str) -> Conversation:
        """The conversation, if the user is a member now; a public channel's non-member gets
        ``not_a_member``, anyone else ``unknown_conversation``."""
        conversation = self.conversations.get(conversation_id)
        if conversation is None:
            raise unknown(conversation_id)
        if conversation.is_member(user_id):
            return conversation
        if conversation.kind == CHANNEL and conversation.public:
            raise ProtocolError(
                errors.NOT_A_MEMBER, f"Join {conversation.name!r} first.", retry_after=None
            )
        if self.membership(user_id, conversation_id) is not None:
            raise ProtocolError(errors.NOT_A_MEMBER, "You are no longer a member.")
        raise unknown(conversation_id)

    def require_manager(self, user_id: int, conversation: Conversation) -> None:
        """Owners and admins manage a channel; nobody manages General or a direct chat."""
        if conversation.everyone or conversation.kind != CHANNEL:
            raise ProtocolError(errors.NOT_ALLOWED, "Only a channel has owners and admins.")
        if conversation.roles.get(user_id) not in (OWNER, ADMIN):
            raise ProtocolError(errors.NOT_ALLOWED, "Only the channel's owners and admins may.")

    def may_add(self, user_id: int, conversation: Conversation) -> None:
        if conversation.kind == GROUP:
            return  # any member of a group may add people
        self.require_manager(user_id, conversation)

    def may_mention_all(self, user_id: int, conversation: Conversation) -> bool:
        """``@channel``: any member of a group; owners and admins of a channel; nobody in
        General (everyone on the server) or a direct conversation (there is one other)."""
        if conversation.kind == GROUP:
            return True
        if conversation.kind == CHANNEL and not conversation.everyone:
            return conversation.roles.get(user_id) in (OWNER, ADMIN)
        return False


def unknown(conversation_id: str) -> ProtocolError:
    return ProtocolError(
        errors.UNKNOWN_CONVERSATION, f"No conversation {conversation_id[:80]!r} is yours."
    )
