"""The wire schema: every request, reply and event, defined once.

Server, client library and tests all import these types. Each message is one JSON object on
one line; its ``type`` field selects the struct. docs/protocol.md is the prose contract for
exactly these definitions.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

GENERAL: Final = "general"
"""The id of the general room, which every user is in."""

# ---------------------------------------------------------------------------------------------
# Limits that are part of the contract (documented in docs/protocol.md).
# ---------------------------------------------------------------------------------------------

MAX_LINE_BYTES: Final = 256 * 1024
"""A line longer than this (newline excluded) is refused and the connection closed."""
MAX_TEXT_CHARS: Final = 16_384
"""Longest message text, in Unicode code points."""
MAX_CLIENT_ID_CHARS: Final = 64
MAX_REQUEST_ID_CHARS: Final = 64
MAX_PAGE: Final = 200
"""Largest ``limit`` of a ``history`` or ``users`` page."""
DEFAULT_PAGE: Final = 50
MAX_SYNC_PAGE: Final = 1000
"""Largest number of messages one ``sync`` reply carries."""
MAX_SYNC_CHARS: Final = 1_000_000
"""A ``sync`` reply stops early (``more`` = true) once its texts add up to this many chars."""
MAX_SYNC_CURSORS: Final = 10_000
MAX_WATCH: Final = 1000
"""Most names one ``watch`` request may list (a client shows the presence of a screenful or
two of people, not of the whole directory)."""

MAX_TOPIC_CHARS: Final = 250
"""Longest channel topic, in code points."""
MIN_GROUP_MEMBERS: Final = 3
"""A group is created with at least this many people, its creator included."""
MAX_GROUP_MEMBERS: Final = 32
"""Most members a group may ever have."""
MAX_INVITE: Final = 50
"""Most names one ``create_channel``, ``create_group`` or ``invite`` request may list."""
MAX_MEMBERSHIPS: Final = 1000
"""Most channels and groups one user may be a member of at once (direct conversations and
General do not count)."""
MAX_MENTIONS: Final = 50
"""Names after ``@`` looked up in one message; further ones are plain text."""
MAX_UNREAD_COUNT: Final = 1000
"""Unread and mention counts stop at this number (a client shows "1000+")."""
MAX_REPLY_BYTES: Final = 1_000_000
"""A reply that lists entries stops early (``more`` = true) before it would exceed this."""
TYPING_INTERVAL: Final = 3.0
"""Seconds: a user's ``typing`` in one conversation is passed on at most once per interval."""
TYPING_EXPIRY: Final = 6.0
"""Seconds after which a client stops showing a ``typing`` event it has not seen renewed."""

REPLY_PREVIEW_CHARS: Final = 100
"""A reply's quote carries at most this many code points of the answered message's text."""
MAX_REACTIONS: Final = 20
"""Most distinct emoji on one message (each user may add each of them once)."""
MAX_EMOJI_CHARS: Final = 16
"""Longest reaction, in code points (a family or flag sequence is one emoji of several)."""
MAX_SEARCH_QUERY_CHARS: Final = 256
"""Longest ``search`` query, in code points."""
MAX_SEARCH_TERMS: Final = 16
"""Most words, phrases and filters one ``search`` query may hold."""
MAX_SEARCH_PAGE: Final = 50
"""Largest ``limit`` of a ``search`` page."""
DEFAULT_SEARCH_PAGE: Final = 20
SEARCH_SNIPPET_CHARS: Final = 160
"""A search hit's snippet has at most this many code points of the message's text."""
MIN_SUBSTRING_CHARS: Final = 3
"""A search word this long or longer also finds words that contain it; a shorter one finds
whole words only."""

RequestId = int | Annotated[str, msgspec.Meta(max_length=MAX_REQUEST_ID_CHARS)]
ClientId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CLIENT_ID_CHARS)]
Seq = Annotated[int, msgspec.Meta(ge=0)]
PageLimit = Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)]

# Length bounds on names and passwords are checked by the server's account rules (after
# normalisation) so that the error says what is wrong; these only keep absurd input small.
ShortText = Annotated[str, msgspec.Meta(max_length=1024)]


class Base(msgspec.Struct, forbid_unknown_fields=False, omit_defaults=True):
    """Common settings: unknown fields are ignored (forward compatibility)."""


# ---------------------------------------------------------------------------------------------
# Data carried inside replies and events
# ---------------------------------------------------------------------------------------------


class Quote(Base, kw_only=True):
    """The message a reply answers, as it is now (version 4)."""

    seq: int
    sender: str
    text: str = ""
    """The beginning of its text (:data:`REPLY_PREVIEW_CHARS`); empty once deleted."""
    deleted: bool = False
    """The answered message was deleted."""


class Reaction(Base, kw_only=True):
    """One emoji on a message: how many people added it, and whether the reader did."""

    emoji: str
    count: int
    me: bool = False


class Entry(Base, kw_only=True):
    """One entry of a conversation's stream: a message, or a change every member must see.

    Every entry has the conversation's next ``seq``; ``history`` and ``sync`` return entries,
    and a client resumes from the last ``seq`` it saw, whatever the kinds. A new kind of change
    is a new ``kind`` with its own optional fields: clients skip kinds they do not know (they
    still advance their cursor past them). A ``message`` entry has exactly the fields of a
    version-2 ``Message``, plus ``mentions``.
    """

    id: int
    """Server-wide unique id."""
    conversation: str
    """``"general"``, ``"dm:LOW:HIGH"`` (user ids) or ``"c:N"`` (a channel or a group)."""
    seq: int
    """Gap-free, commit-ordered position within the conversation, starting at 1."""
    kind: str = "message"
    """One of :data:`ENTRY_KINDS`; absent means ``message``."""
    sender: str
    """Who wrote the message or made the change."""
    to: str | None = None
    """The recipient's name for a direct message (kept for version-2 clients)."""
    text: str = ""
    """The message's text (``message``)."""
    ts: int
    """Server time of storing, milliseconds since the Unix epoch (UTC)."""
    client_id: str = ""
    """The sender's id of the message, for exactly-once (``message``)."""
    mentions: list[str] = []
    """Members named with ``@name`` in a message (each as registered)."""
    mention_all: bool = False
    """The message mentions every member (``@channel``, ``@all``), as its sender may."""
    target: str | None = None
    """The member the change is about (``added``, ``removed``, ``role``)."""
    name: str | None = None
    """The channel's name (``created``, ``renamed``)."""
    topic: str | None = None
    """The channel's topic (``created``, ``topic``)."""
    role: str | None = None
    """The member's new role (``role``)."""
    reply_to: int | None = None
    """The seq of the message (same conversation) this message answers (version 4)."""
    reply: Quote | None = None
    """The answered message as it is now, so a client draws the quote without a request."""
    edited: int | None = None
    """When the message's text was last edited (ms since the epoch); absent if never."""
    reactions: list[Reaction] = []
    """The message's reactions, aggregated per emoji (``history``, ``sync``, ``search``)."""
    ref: int | None = None
    """The seq of the message a change is about (``edited``, ``deleted``, ``reacted``,
    ``unreacted``)."""
    emoji: str | None = None
    """The emoji added or removed (``reacted``, ``unreacted``)."""
    count: int | None = None
    """How many people have ``emoji`` on the message after the change (``reacted``,
    ``unreacted``): a client sets the count, so applying an entry twice changes nothing."""


Message = Entry
"""Version 2 called entries messages; a message entry has the same fields."""

ENTRY_KINDS: Final = (
    "message",
    "created",
    "joined",
    "left",
    "added",
    "removed",
    "renamed",
    "topic",
    "archived",
    "role",
    "edited",
    "deleted",
    "reacted",
    "unreacted",
)
CHANGE_KINDS: Final = ("edited", "deleted", "reacted", "unreacted")
"""Entries that change an earlier message (its seq in ``ref``). ``history`` leaves them out,
showing each message in its current state; ``sync`` and live events carry them."""
SEARCH_ORDERS: Final = ("newest", "best")

CONVERSATION_KINDS: Final = ("channel", "group", "direct")
ROLES: Final = ("owner", "admin", "member")


class UserEntry(Base, kw_only=True):
    name: str
    online: bool


class ConversationEntry(Base, kw_only=True):
    conversation: str
    peer: str | None = None
    """The other party of a direct conversation; absent for the general room."""
    last_seq: int
    last_ts: int | None = None


class ConversationInfo(Base, kw_only=True):
    """A conversation as one member sees it (version 3)."""

    conversation: str
    kind: str
    """``channel``, ``group`` or ``direct``."""
    name: str | None = None
    """A channel's name; absent for groups and direct conversations."""
    peer: str | None = None
    """The other party of a direct conversation."""
    topic: str = ""
    public: bool = False
    """A public channel: anyone may find and join it."""
    archived: bool = False
    role: str | None = None
    """The user's role (``owner``, ``admin``, ``member``); absent once they left."""
    member: bool = True
    """False when the user left or was removed (the conversation is kept for its history)."""
    members: int = 0
    """How many members it has now."""
    last_seq: int = 0
    last_ts: int | None = None
    read_seq: int = 0
    """The user's read marker: every entry up to this seq is read."""
    unread: int = 0
    """Messages of others after the read marker (counted up to :data:`MAX_UNREAD_COUNT`)."""
    mentions: int = 0
    """Of those, the ones that mention the user."""


class MemberEntry(Base, kw_only=True):
    name: str
    role: str
    online: bool


class ChannelEntry(Base, kw_only=True):
    """A channel in the directory (public ones, and private ones the user is in)."""

    conversation: str
    name: str
    topic: str = ""
    public: bool
    archived: bool = False
    members: int
    joined: bool


# ---------------------------------------------------------------------------------------------
# Requests (client → server). Every request has a client-chosen ``id`` and gets one reply.
# ---------------------------------------------------------------------------------------------


class Request(Base, tag_field="type", kw_only=True):
    id: RequestId


ProtocolVersion = Annotated[int, msgspec.Meta(ge=1)]


class Register(Request, tag="register"):
    username: ShortText
    password: ShortText
    protocol: ProtocolVersion = 2
    """The protocol version the client speaks (3 for everything below; 2 when absent)."""


class Login(Request, tag="login"):
    """Log in with a username and password, or with a session token."""

    username: ShortText | None = None
    password: ShortText | None = None
    token: ShortText | None = None
    protocol: ProtocolVersion = 2
    """The protocol version the client speaks (3 for everything below; 2 when absent)."""


class Logout(Request, tag="logout"):
    pass


class Send(Request, tag="send"):
    """Post to the general room."""

    client_id: ClientId
    text: str


class DirectMessage(Request, tag="dm"):
    """Send a private message to one user."""

    to: ShortText
    client_id: ClientId
    text: str


class History(Request, tag="history"):
    """One page of a conversation; name it by ``conversation`` or ``peer``.

    The newest page, or the page before ``before``, after ``after`` or around ``around``
    (at most one of the three; ``after`` and ``around`` are version 4)."""

    conversation: ShortText | None = None
    peer: ShortText | None = None
    before: Seq | None = None
    limit: PageLimit = DEFAULT_PAGE
    after: Seq | None = None
    """The page of entries right after this seq, oldest first."""
    around: Seq | None = None
    """The page centred on this seq: about half of ``limit`` before it, it, and the rest
    after it (to open a conversation at a search hit or a quoted message)."""


class Sync(Request, tag="sync"):
    """Everything after the given cursors, oldest first, in pages."""

    cursors: Annotated[dict[str, Seq], msgspec.Meta(max_length=MAX_SYNC_CURSORS)] = {}
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_SYNC_PAGE)] = MAX_SYNC_PAGE


class Users(Request, tag="users"):
    """The user directory, optionally filtered by a search string."""

    query: ShortText = ""
    after: ShortText | None = None
    limit: PageLimit = DEFAULT_PAGE


class Conversations(Request, tag="conversations"):
    """The conversations the user is in, most recently active first, in pages (version 3;
    version 2 gets general and its direct conversations, unpaged)."""

    after: ShortText | None = None
    limit: PageLimit = MAX_PAGE


ConversationId = ShortText
Names = Annotated[list[ShortText], msgspec.Meta(max_length=MAX_INVITE)]


class Post(Request, tag="post"):
    """Post a message into any conversation one is a member of (version 3)."""

    conversation: ConversationId
    client_id: ClientId
    text: str
    reply_to: Seq | None = None
    """Answer the message with this seq in the same conversation (version 4)."""


class Edit(Request, tag="edit"):
    """Replace the text of one's own message (version 4)."""

    conversation: ConversationId
    seq: Seq
    text: str


class Delete(Request, tag="delete"):
    """Delete a message: one's own, or any as an owner or admin of a channel (version 4)."""

    conversation: ConversationId
    seq: Seq


Emoji = Annotated[str, msgspec.Meta(max_length=64)]


class React(Request, tag="react"):
    """Add an emoji reaction to a message (version 4); adding it twice changes nothing."""

    conversation: ConversationId
    seq: Seq
    emoji: Emoji


class Unreact(Request, tag="unreact"):
    """Remove one's own emoji reaction from a message (version 4)."""

    conversation: ConversationId
    seq: Seq
    emoji: Emoji


class Search(Request, tag="search"):
    """Find messages in every conversation the user may read (version 4).

    ``query`` holds words, ``"quoted phrases"`` and filters ``from:name``,
    ``in:channel`` (or ``in:@name`` for a direct conversation, or a conversation id),
    ``before:YYYY-MM-DD`` and ``after:YYYY-MM-DD`` (UTC days).
    """

    query: Annotated[str, msgspec.Meta(max_length=4 * MAX_SEARCH_QUERY_CHARS)]
    conversation: ConversationId | None = None
    """Search only this conversation (as ``in:`` does)."""
    order: ShortText = "newest"
    """``newest`` first, or ``best`` (most relevant) first."""
    cursor: ShortText | None = None
    """The ``next`` of the previous page."""
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_SEARCH_PAGE)] = DEFAULT_SEARCH_PAGE


class CreateChannel(Request, tag="create_channel"):
    name: ShortText
    public: bool = True
    topic: ShortText = ""
    members: Names = []
    """People added at creation (besides the creator, who becomes its owner)."""


class CreateGroup(Request, tag="create_group"):
    members: Names
    """The other people of the group (the creator is a member too)."""


class Join(Request, tag="join"):
    """Join a public channel."""

    conversation: ConversationId


class Leave(Request, tag="leave"):
    conversation: ConversationId


class Invite(Request, tag="invite"):
    """Add people to a channel (owners and admins) or a group (any member)."""

    conversation: ConversationId
    users: Names


class Remove(Request, tag="remove"):
    """Remove a member from a channel (owners and admins)."""

    conversation: ConversationId
    user: ShortText


class SetRole(Request, tag="set_role"):
    """Make a channel member an admin, or an admin a member (owners and admins)."""

    conversation: ConversationId
    user: ShortText
    role: ShortText


class Rename(Request, tag="rename"):
    conversation: ConversationId
    name: ShortText


class SetTopic(Request, tag="set_topic"):
    conversation: ConversationId
    topic: ShortText


class Archive(Request, tag="archive"):
    """Archive a channel: it stays readable, and nobody can post or join any more."""

    conversation: ConversationId


class ConversationRequest(Request, tag="conversation"):
    """One conversation as the user sees it."""

    conversation: ConversationId


class Members(Request, tag="members"):
    """A conversation's members, by name, in pages."""

    conversation: ConversationId
    after: ShortText | None = None
    limit: PageLimit = DEFAULT_PAGE


class Channels(Request, tag="channels"):
    """The channel directory: public channels and the private ones the user is in."""

    query: ShortText = ""
    after: ShortText | None = None
    limit: PageLimit = DEFAULT_PAGE


class Read(Request, tag="read"):
    """Move the read marker of a conversation forward to ``seq``."""

    conversation: ConversationId
    seq: Seq


class Typing(Request, tag="typing"):
    """The user is typing in a conversation (an ephemeral event to its other members)."""

    conversation: ConversationId


class Ping(Request, tag="ping"):
    pass


class Watch(Request, tag="watch"):
    """Replace the connection's presence watch set: ``presence`` events come for these users
    only. An empty list stops them all."""

    users: Annotated[list[ShortText], msgspec.Meta(max_length=MAX_WATCH)]


AnyRequest = (
    Register
    | Login
    | Logout
    | Send
    | DirectMessage
    | History
    | Sync
    | Users
    | Conversations
    | Ping
    | Watch
    | Post
    | CreateChannel
    | CreateGroup
    | Join
    | Leave
    | Invite
    | Remove
    | SetRole
    | Rename
    | SetTopic
    | Archive
    | ConversationRequest
    | Members
    | Channels
    | Read
    | Typing
    | Edit
    | Delete
    | React
    | Unreact
    | Search
)
REQUEST_TYPES: Final = frozenset(
    t.__struct_config__.tag
    for t in (
        Register,
        Login,
        Logout,
        Send,
        DirectMessage,
        History,
        Sync,
        Users,
        Conversations,
        Ping,
        Watch,
        Post,
        CreateChannel,
        CreateGroup,
        Join,
        Leave,
        Invite,
        Remove,
        SetRole,
        Rename,
        SetTopic,
        Archive,
        ConversationRequest,
        Members,
        Channels,
        Read,
        Typing,
        Edit,
        Delete,
        React,
        Unreact,
        Search,
    )
)

# ---------------------------------------------------------------------------------------------
# Results: the ``data`` of a successful reply, one type per request.
# ---------------------------------------------------------------------------------------------


class AuthResult(Base, kw_only=True):
    """Reply to ``register`` and ``login``."""

    user: str
    token: str


class Empty(Base):
    """Reply data of requests that return nothing (``logout``, ``ping``)."""


class SendResult(Base, kw_only=True):
    """The acknowledgement: the message as stored. Sent only after it is committed."""

    message: Message
    duplicate: bool = False
    """True when this ``client_id`` was already stored: the original is returned."""


class HistoryResult(Base, kw_only=True):
    conversation: str
    messages: list[Message]
    """Oldest first within the page."""
    more: bool
    """True when older messages exist: ask again with ``before`` = ``messages[0].seq``."""


class SyncResult(Base, kw_only=True):
    messages: list[Message]
    """Oldest first within each conversation."""
    more: bool
    """True when the page was full: ask again with the advanced cursors."""


class PostResult(Base, kw_only=True):
    """The acknowledgement of ``post`` (version 3): the entry as stored, after its commit."""

    entry: Entry
    duplicate: bool = False


class EntriesResult(Base, kw_only=True):
    """Reply to ``history`` and ``sync`` in version 3."""

    conversation: str | None = None
    """The conversation of a ``history`` page."""
    entries: list[Entry]
    """Oldest first within each conversation."""
    more: bool
    """``history``: older entries exist (ask with ``before`` = ``entries[0].seq``); ``sync``:
    the page was full (ask again with the advanced cursors)."""
    newer: bool = False
    """``history`` with ``after`` or ``around`` (version 4): newer entries exist (ask with
    ``after`` = ``entries[-1].seq``)."""

    @property
    def messages(self) -> list[Entry]:
        """The entries, by their version-2 name (kept for callers of ``HistoryResult``)."""
        return self.entries


class ReactionResult(Base, kw_only=True):
    """Reply to ``react`` and ``unreact`` (version 4)."""

    conversation: str
    seq: int
    reactions: list[Reaction]
    """The message's reactions now."""
    entry: Entry | None = None
    """The ``reacted`` or ``unreacted`` entry; absent when nothing changed (the reaction was
    there already, or was not there to remove)."""


class SearchHit(Base, kw_only=True):
    """One message found by ``search`` (version 4)."""

    conversation: str
    seq: int
    id: int
    sender: str
    ts: int
    snippet: str
    """Part of the message's text around the first match (:data:`SEARCH_SNIPPET_CHARS`),
    with "…" where it was cut."""
    highlights: list[tuple[int, int]] = []
    """``[start, end)`` offsets in code points of ``snippet`` of each match."""
    edited: int | None = None
    reply_to: int | None = None


class SearchResult(Base, kw_only=True):
    results: list[SearchHit]
    next: str | None = None
    """Pass as ``cursor`` for the next page; absent on the last page."""


class ConversationResult(Base, kw_only=True):
    conversation: ConversationInfo


class ConversationsPage(Base, kw_only=True):
    """Reply to ``conversations`` in version 3."""

    conversations: list[ConversationInfo]
    next: str | None = None
    """Pass as ``after`` to get the next page; absent on the last page."""


class MembersResult(Base, kw_only=True):
    members: list[MemberEntry]
    next: str | None = None


class ChannelsResult(Base, kw_only=True):
    channels: list[ChannelEntry]
    next: str | None = None


class ReadResult(Base, kw_only=True):
    conversation: str
    seq: int
    """The read marker now (never moves back; never past the last entry)."""


class UsersResult(Base, kw_only=True):
    users: list[UserEntry]
    next: str | None = None
    """Pass as ``after`` to get the next page; absent on the last page."""


class ConversationsResult(Base, kw_only=True):
    conversations: list[ConversationEntry]


class WatchResult(Base, kw_only=True):
    """Reply to ``watch``: the state now of each watched user, in the order asked."""

    users: list[UserEntry]
    unknown: list[str] = []
    """The names, as sent, that nobody has (they are not watched)."""


# ---------------------------------------------------------------------------------------------
# Server → client: replies and events
# ---------------------------------------------------------------------------------------------


class ServerMessage(Base, tag_field="type", kw_only=True):
    pass


class Result(ServerMessage, tag="result"):
    id: RequestId
    data: msgspec.Raw = msgspec.Raw(b"{}")


class Error(ServerMessage, tag="error"):
    """A failed request (``id`` set) or a protocol error on the connection (``id`` null)."""

    id: RequestId | None
    code: str
    message: str
    retry_after: float | None = None
    """Seconds to wait before retrying, for ``rate_limited``."""


class MessageEvent(ServerMessage, tag="message"):
    message: Message


class EntryEvent(ServerMessage, tag="entry"):
    """A new entry of a conversation the user is a member of (version 3)."""

    entry: Entry


class ReadEvent(ServerMessage, tag="read"):
    """The user's read marker moved (on another of their connections)."""

    conversation: str
    seq: int


class TypingEvent(ServerMessage, tag="typing"):
    """Someone is typing in a conversation; show it for :data:`TYPING_EXPIRY` seconds."""

    conversation: str
    user: str


class PresenceEvent(ServerMessage, tag="presence"):
    user: str
    online: bool


class Hello(ServerMessage, tag="hello"):
    """Sent by the server on connect."""

    server: str
    protocol: int
    limits: dict[str, int | float]


class Bye(ServerMessage, tag="bye"):
    """The server is closing this connection and says why."""

    code: str
    message: str


AnyServerMessage = (
    Result
    | Error
    | MessageEvent
    | EntryEvent
    | ReadEvent
    | TypingEvent
    | PresenceEvent
    | Hello
    | Bye
)
PROTOCOL_VERSION: Final = 4
"""4: replies, edits, deletes, reactions, ``search``, ``history`` after and around a seq.
3: conversations (channels, groups), entries, read markers, mentions, typing.
2: ``presence`` events go only to connections that ``watch`` the user (1: to everyone)."""
