"""What the network thread tells the Tk thread: typed events, queued with a session number.

Besides these, the client library's own events (:class:`~beseda.client.MessageReceived`,
:class:`~beseda.client.EntryReceived`, :class:`~beseda.client.ReadMarker`,
:class:`~beseda.client.TypingStarted`, :class:`~beseda.client.PresenceChanged`,
:class:`~beseda.client.StateChanged`) are forwarded as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..client import (
    EntryReceived,
    MessageReceived,
    PresenceChanged,
    ReadMarker,
    StateChanged,
    TypingStarted,
)
from ..protocol import schema

UNREACHABLE = "unreachable"
"""Sign-in failure: nothing answered at the address."""
GONE = "gone"
"""Sign-in failure: the server closed the connection."""
TLS_FAILED = "tls"
"""Sign-in failure: no secure connection could be set up (a server without TLS, say)."""


@dataclass(frozen=True, slots=True)
class SignedIn:
    user: str
    token: str
    conversations: Sequence[schema.ConversationEntry | schema.ConversationInfo]
    online: dict[str, bool]
    """Presence of the peers of ``conversations``, which the connection now watches."""


@dataclass(frozen=True, slots=True)
class SignInFailed:
    code: str
    """An error code of the protocol, or :data:`UNREACHABLE` / :data:`GONE`."""
    detail: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class FingerprintFetched:
    """The fingerprint of the certificate a server presents, for a person to trust or not."""

    address: str
    """``host:port``, as the trusted servers are kept."""
    fingerprint: str


@dataclass(frozen=True, slots=True)
class CertificateChanged:
    """The server presented a certificate other than the trusted one: not connected."""

    address: str
    expected: str
    fingerprint: str | None
    """The certificate's it presents now; None when it presented none."""


@dataclass(frozen=True, slots=True)
class SignedOut:
    pass


@dataclass(frozen=True, slots=True)
class HistoryLoaded:
    key: str
    result: schema.HistoryResult | schema.EntriesResult
    before: int | None
    after: int | None = None
    """The page after this seq (scrolling down a conversation opened at an older message)."""
    around: int | None = None
    """The page around this seq (a jump to a search hit or a quoted message)."""


@dataclass(frozen=True, slots=True)
class HistoryFailed:
    key: str
    detail: str


@dataclass(frozen=True, slots=True)
class Sent:
    local_id: str
    message: schema.Message


@dataclass(frozen=True, slots=True)
class SendFailed:
    local_id: str
    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class UsersFound:
    request: int
    result: schema.UsersResult
    appended: bool
    """A further page of the same search."""


@dataclass(frozen=True, slots=True)
class ConversationOpened:
    """A conversation was created, joined or looked up: show it (``select``: open it)."""

    info: schema.ConversationInfo
    select: bool = True


@dataclass(frozen=True, slots=True)
class ConversationLeft:
    conversation: str


@dataclass(frozen=True, slots=True)
class ChannelsFound:
    request: int
    result: schema.ChannelsResult


@dataclass(frozen=True, slots=True)
class MembersLoaded:
    conversation: str
    result: schema.MembersResult


@dataclass(frozen=True, slots=True)
class SearchFound:
    request: int
    result: schema.SearchResult
    appended: bool
    """A further page of the same search."""


@dataclass(frozen=True, slots=True)
class SearchFailed:
    request: int
    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class ActionFailed:
    """A conversation action (create, join, invite, …) was refused."""

    code: str
    detail: str


Event = (
    SignedIn
    | SignInFailed
    | FingerprintFetched
    | CertificateChanged
    | SignedOut
    | HistoryLoaded
    | HistoryFailed
    | Sent
    | SendFailed
    | UsersFound
    | ConversationOpened
    | ConversationLeft
    | ChannelsFound
    | MembersLoaded
    | SearchFound
    | SearchFailed
    | ActionFailed
    | EntryReceived
    | ReadMarker
    | TypingStarted
    | MessageReceived
    | PresenceChanged
    | StateChanged
)
