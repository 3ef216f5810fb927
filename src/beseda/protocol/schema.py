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


class Message(Base, kw_only=True):
    """A stored message, as every party sees it."""

    id: int
    """Server-wide unique id."""
    conversation: str
    """``"general"`` or the id of a direct conversation, e.g. ``"dm:3:7"``."""
    seq: int
    """Gap-free, commit-ordered position within the conversation, starting at 1."""
    sender: str
    to: str | None = None
    """The recipient's name for a direct message; absent in the general room."""
    text: str
    ts: int
    """Server time of storing, milliseconds since the Unix epoch (UTC)."""
    client_id: str


class UserEntry(Base, kw_only=True):
    name: str
    online: bool


class ConversationEntry(Base, kw_only=True):
    conversation: str
    peer: str | None = None
    """The other party of a direct conversation; absent for the general room."""
    last_seq: int
    last_ts: int | None = None


# ---------------------------------------------------------------------------------------------
# Requests (client → server). Every request has a client-chosen ``id`` and gets one reply.
# ---------------------------------------------------------------------------------------------


class Request(Base, tag_field="type", kw_only=True):
    id: RequestId


class Register(Request, tag="register"):
    username: ShortText
    password: ShortText


class Login(Request, tag="login"):
    """Log in with a username and password, or with a session token."""

    username: ShortText | None = None
    password: ShortText | None = None
    token: ShortText | None = None


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
    """One page of a conversation, newest first; name it by ``conversation`` or ``peer``."""

    conversation: ShortText | None = None
    peer: ShortText | None = None
    before: Seq | None = None
    limit: PageLimit = DEFAULT_PAGE


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
    """The conversations the user is in: general and every direct conversation."""


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


AnyServerMessage = Result | Error | MessageEvent | PresenceEvent | Hello | Bye
PROTOCOL_VERSION: Final = 2
"""2: ``presence`` events go only to connections that ``watch`` the user (1: to everyone)."""
