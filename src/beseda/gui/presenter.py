"""The desktop client's behaviour, in plain Python: client state in, what the views show out.

The :class:`Presenter` receives the user's actions (from the views) and the network's events
(from the queue the Tk thread drains), keeps the state of the session, and tells a
:class:`View` what to show, through small immutable row models. It asks a :class:`Backend` to do
network work, which answers later with events. Nothing here imports tkinter: the tests drive a
presenter with a fake view and a fake backend.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from ..client import (
    ConnectionState,
    EntryReceived,
    MessageReceived,
    PresenceChanged,
    ReadMarker,
    StateChanged,
    TypingStarted,
    apply_change,
    quote_deleted,
)
from ..client.connection import new_client_id
from ..protocol import errors, schema
from ..tls import CertificateChangedError, TLSError
from . import events
from .i18n import _, ngettext
from .network import parse_address
from .preferences import Preferences, SavedSession
from .text import (
    clock_time,
    colour_of,
    day_bounds,
    day_label,
    format_time,
    initials,
    list_time,
    local_day,
    preview,
    sanitize,
    sanitize_name,
    sanitize_spans,
)
from .timeline import Item, Outgoing, Timeline

GENERAL_KEY = "#general"


def dm_key(peer: str) -> str:
    """The key of the direct conversation with ``peer`` (names compare case-insensitively)."""
    return "@" + peer.casefold()


# ---------------------------------------------------------------------------------------------
# What the views show
# ---------------------------------------------------------------------------------------------


_FINAL_REFUSALS = frozenset(
    {
        errors.NOT_A_MEMBER,
        errors.UNKNOWN_CONVERSATION,
        errors.ARCHIVED,
        errors.MESSAGE_TOO_LONG,
        errors.EMPTY_MESSAGE,
        errors.CLIENT_ID_REUSED,
    }
)
"""Refusals a resend cannot change: the failed message offers no Retry."""


@dataclass(frozen=True, slots=True)
class TrustPrompt:
    """Asks whether to trust a server's self-signed certificate, showing its fingerprint."""

    address: str
    fingerprint: str
    text: str


@dataclass(frozen=True, slots=True)
class SignInForm:
    server: str
    username: str = ""
    remember: bool = True
    error: str = ""
    busy: bool = False
    tls: bool = False
    """The "Secure connection (TLS)" box."""
    trust: TrustPrompt | None = None
    """When set, the form asks to trust this certificate (Trust / Cancel) before going on."""


CHANNELS, DIRECT = "channels", "direct"
"""The sidebar's sections: channels (General among them), and direct messages and groups."""


@dataclass(frozen=True, slots=True)
class ConversationRow:
    key: str
    title: str
    unread: int
    online: bool | None
    """The peer's presence; None for General, channels and groups."""
    section: str = DIRECT
    mentions: int = 0
    """Unread messages that mention the user (the badge shows ``@n`` in the accent colour)."""
    preview: str = ""
    """The last message, on one line ("anna: see you" in a channel, "You: ok" one's own)."""
    time: str = ""
    """When the last message came (14:05 today, Yesterday, Mar 12 …)."""


@dataclass(frozen=True, slots=True)
class MessageRow:
    id: str
    sender: str
    time: str
    text: str
    own: bool
    note: str = ""
    """For one's own messages: sending, waiting, sent (✓) or why it failed."""
    failed: bool = False
    """Shows a Retry link."""
    marker: bool = False
    """Not a message: the "new messages" line above the first one the reader has not seen."""
    event: bool = False
    """Not a message: a change in the conversation ("Anna added Boris"), a small grey line."""
    mention: bool = False
    """The message mentions the user: highlighted."""
    continued: bool = False
    """The same sender's message right after another of theirs (within
    :data:`GROUP_SECONDS` of the first): shown under that one's header, without its own."""
    avatar: str = ""
    """The initials in the sender's avatar."""
    colour: int = 0
    """The sender's colour (of :data:`~.text.AVATAR_COLOURS`), for the avatar and the name."""
    day: bool = False
    """Not a message: the line above a day's first message ("Today", "Yesterday", a date)."""
    quote: str = ""
    """The message this one answers ("anna: the beginning of it", or that it was deleted)."""
    quote_seq: int = 0
    """That message's seq: a click on the quote jumps there (0: not a reply)."""
    edited: bool = False
    """The text was edited: an "edited" mark."""
    reactions: tuple[ReactionChip, ...] = ()
    """Under the text: each emoji, how many added it, whether the user did."""
    highlight: bool = False
    """The message a jump (a search hit, a quote) went to, marked for a moment."""


@dataclass(frozen=True, slots=True)
class ReactionChip:
    emoji: str
    count: int
    mine: bool
    """The user added it: highlighted; a click removes it."""


@dataclass(frozen=True, slots=True)
class ComposerContext:
    """The bar above the composer while replying to or editing a message."""

    kind: str
    """``reply`` or ``edit``."""
    title: str
    text: str
    """The beginning of the message replied to, or edited."""


@dataclass(frozen=True, slots=True)
class MessageMenu:
    """What a message's menu (right click) offers."""

    row_id: str
    text: str
    """What Copy puts on the clipboard: the message's text."""
    reply: bool
    edit: bool
    delete: bool
    react: bool
    mine: frozenset[str] = frozenset()
    """The emoji the user has on it."""


@dataclass(frozen=True, slots=True)
class SearchRow:
    title: str
    """The conversation it is in."""
    sender: str
    time: str
    snippet: str
    highlights: tuple[tuple[int, int], ...]
    """``[start, end)`` of each match in ``snippet``."""


@dataclass(frozen=True, slots=True)
class SearchPanel:
    """The search window (Ctrl+F): results, newest first, and a line of status."""

    rows: tuple[SearchRow, ...]
    status: str
    more: bool
    """More results exist (Show more)."""


@dataclass(frozen=True, slots=True)
class Header:
    title: str
    subtitle: str
    """The presence of a direct conversation's peer, or a channel's topic."""
    online: bool | None = None
    shared: bool = False
    """A channel or group the user is in: the Members and Leave buttons."""
    settings: bool = False
    """A channel the user owns or administers (not General, not archived): Channel settings."""
    note: str = ""
    """A mark beside the title ("archived")."""


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    """The Channel settings dialog of the conversation on screen."""

    title: str
    name: str
    topic: str
    confirm: str = ""
    """When set, the dialog asks this (Archive / Cancel) before archiving."""


@dataclass(frozen=True, slots=True)
class Status:
    state: str
    """``connected``, ``connecting``, ``reconnecting`` or ``offline``."""
    text: str


@dataclass(frozen=True, slots=True)
class PersonRow:
    name: str
    online: bool
    me: bool


@dataclass(frozen=True, slots=True)
class SwitcherRow:
    key: str
    title: str
    detail: str


@dataclass(frozen=True, slots=True)
class ChannelRow:
    """A channel of the directory (Browse channels)."""

    conversation: str
    name: str
    topic: str
    members: int
    joined: bool
    public: bool


@dataclass(frozen=True, slots=True)
class MemberRow:
    name: str
    role: str
    """Translated: owner, admin, member."""
    online: bool
    removable: bool
    """The user may remove this member (an owner or admin, not themselves)."""
    roles: tuple[str, ...] = ()
    """The roles the user may give this member (``owner``, ``admin``, ``member``)."""


@dataclass(frozen=True, slots=True)
class MembersPanel:
    title: str
    rows: tuple[MemberRow, ...]
    can_invite: bool
    can_leave: bool


class View(Protocol):
    """What the presenter asks of the window."""

    def show_sign_in(self, form: SignInForm) -> None: ...
    def show_chat(self, user: str) -> None: ...
    def show_conversations(self, rows: Sequence[ConversationRow], selected: str) -> None: ...
    def show_header(self, header: Header) -> None: ...
    def edit_messages(
        self,
        start: int,
        removed: int,
        rows: Sequence[MessageRow],
        *,
        reset: bool,
        follow: bool = True,
    ) -> None:
        """Replace ``removed`` rows from ``start`` with ``rows``; ``reset``: a new list,
        scrolled to its end; ``follow``: the rows reach the newest message, so a reader at
        the bottom stays at the bottom."""

    def show_status(self, status: Status) -> None: ...
    def show_jump(self, text: str) -> None:
        """The "jump to latest" button over the messages, with this label; "" hides it."""

    def scroll_to_bottom(self) -> None:
        """Scroll the messages to the newest row (the reader asked for it)."""

    def show_people(self, rows: Sequence[PersonRow], more: bool) -> None: ...
    def show_switcher(self, rows: Sequence[SwitcherRow]) -> None: ...
    def show_typing(self, text: str) -> None:
        """The line under the messages ("Anna is typing…"); "" hides it."""

    def show_channels(self, rows: Sequence[ChannelRow]) -> None:
        """The Browse channels dialog's list."""

    def show_members(self, panel: MembersPanel) -> None: ...
    def show_settings(self, panel: ChannelSettings | None) -> None:
        """The Channel settings dialog's contents; None closes it (no longer allowed)."""

    def show_composer(self, note: str) -> None:
        """ "": the composer takes messages; otherwise it is disabled, with this note."""

    def show_error(self, text: str) -> None:
        """A refused action (create, join, invite, …), told to the user."""

    def show_composer_context(self, context: ComposerContext | None) -> None:
        """The reply or edit bar above the composer; None hides it."""

    def set_composer_text(self, text: str) -> None:
        """Put ``text`` in the composer (the message to edit), replacing what is there."""

    def show_confirm(self, text: str) -> None:
        """Ask before deleting a message (Delete / Cancel); "" closes the question."""

    def show_search(self, panel: SearchPanel) -> None:
        """The search window's results, when it is open."""

    def scroll_to_row(self, row_id: str) -> None:
        """Bring this message row into view (a jump to it)."""

    def show_composer_error(self, text: str) -> None: ...
    def set_title(self, title: str) -> None: ...
    def bell(self) -> None: ...


class Backend(Protocol):
    """The network side (:class:`~.network.Network`); every call returns at once."""

    def sign_in(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        create: bool,
        token: str | None,
        fingerprint: str | None = None,
    ) -> int: ...
    def fetch_fingerprint(self, host: str, port: int) -> int: ...
    def sign_out(self) -> None: ...
    def send(self, local_id: str, peer: str | None, text: str) -> None: ...
    def history(
        self,
        key: str,
        *,
        conversation: str | None,
        peer: str | None,
        before: int | None,
        limit: int = schema.DEFAULT_PAGE,
        after: int | None = None,
        around: int | None = None,
    ) -> None: ...
    def users(self, request: int, query: str, *, after: str | None = None) -> None: ...
    def watch(self, names: list[str]) -> None: ...
    # Protocol 3: conversations.
    def post(
        self, local_id: str, conversation: str, text: str, *, reply_to: int | None = None
    ) -> None: ...
    def create_channel(self, name: str, *, public: bool, topic: str) -> None: ...
    def create_group(self, members: list[str]) -> None: ...
    def join(self, conversation: str) -> None: ...
    def leave(self, conversation: str) -> None: ...
    def invite(self, conversation: str, names: list[str]) -> None: ...
    def remove(self, conversation: str, name: str) -> None: ...
    def set_role(self, conversation: str, name: str, role: str) -> None: ...
    def rename(self, conversation: str, name: str) -> None: ...
    def set_topic(self, conversation: str, topic: str) -> None: ...
    def archive(self, conversation: str) -> None: ...
    def lookup(self, conversation: str) -> None:
        """Ask for a conversation's info (a :class:`~.events.ConversationOpened`, unselected)."""

    def members(self, conversation: str) -> None: ...
    def channels(self, request: int, query: str) -> None: ...
    def read(self, conversation: str, seq: int) -> None: ...
    def typing(self, conversation: str) -> None: ...
    # Protocol 4: messages.
    def edit(self, conversation: str, seq: int, text: str) -> None: ...
    def delete(self, conversation: str, seq: int) -> None: ...
    def react(self, conversation: str, seq: int, emoji: str) -> None: ...
    def unreact(self, conversation: str, seq: int, emoji: str) -> None: ...
    def search(self, request: int, query: str, *, cursor: str | None = None) -> None: ...


# ---------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------


@dataclass
class Conversation:
    key: str
    peer: str | None
    """The other party's name; None for General."""
    conversation_id: str | None = None
    last_seq: int = 0
    last_activity: float = 0.0
    """Wall-clock seconds of the newest message (or of opening it), for the order."""
    read_seq: int = 0
    has_older: bool = True
    loading: bool = False
    timeline: Timeline = field(default_factory=Timeline)
    marker_seq: int | None = None
    """The "new messages" line goes above the message with this seq (seqs have no gaps)."""
    unseen: int = 0
    """Messages of others that arrived while the reader was scrolled up, not yet looked at."""
    kind: str = "direct"
    """``general``, ``direct``, ``channel`` or ``group``."""
    name: str = ""
    """A channel's name."""
    topic: str = ""
    people: list[str] = field(default_factory=list)
    """A group's members (for its title), the user left out."""
    role: str | None = None
    member: bool = True
    archived: bool = False
    """An archived channel is read-only."""
    counted_unread: int | None = None
    """Protocol 3 counts unread messages of others (entries of other kinds have seqs too)."""
    mentions: int = 0
    typing: dict[str, float] = field(default_factory=dict)
    """Who is typing: name → until when (the presenter's clock)."""
    live: Timeline | None = None
    """While ``timeline`` is a page opened around an older message (a jump), the timeline
    of the newest messages, kept up to date, to go back to."""
    live_has_older: bool = True
    opening_at: int | None = None
    """The seq a page is being fetched around (a jump)."""
    deleted: set[int] = field(default_factory=set)
    """Seqs of messages deleted this session: a page fetched before the delete leaves them
    out."""

    @property
    def unread(self) -> int:
        if self.counted_unread is not None:
            return self.counted_unread
        return max(0, self.last_seq - self.read_seq)


SIGN_IN, SIGNING_IN, TRUSTING, CHAT = "sign_in", "signing_in", "trusting", "chat"
READ_SAVE_INTERVAL = 3.0
GROUP_SECONDS = 5 * 60
"""A sender's consecutive messages this close to the first of them share one header."""
HIGHLIGHT_SECONDS = 3.0
"""How long the message a jump went to stays marked."""
PREVIEWS_AT_SIGN_IN = 30
"""The most recent conversations whose last message is fetched at sign-in for the list's
preview (the others show it once opened or once a message comes)."""


class Presenter:
    """Turns the client's state into what the window shows; see the module docstring."""

    def __init__(
        self,
        view: View,
        backend: Backend,
        preferences: Preferences,
        *,
        server: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.view = view
        self.backend = backend
        self.preferences = preferences
        self.clock = clock
        self.wall = wall
        self.stage = SIGN_IN
        self.server = server or preferences.server
        self.session = 0
        self.user = ""
        self.token = ""
        self.remember = True
        self.tls = preferences.tls
        self.using_token = False
        self._awaiting: tuple[str, str, bool, str | None] | None = None
        """While the trust prompt is up: username, password, create, token to go on with."""
        self.form = SignInForm(self.server, tls=self.tls)
        self.conversations: dict[str, Conversation] = {}
        self.selected = GENERAL_KEY
        self.presence: dict[str, bool] = {}
        self._watched: frozenset[str] = frozenset()
        """Case-folded names whose presence the connection watches (see :meth:`_watch`)."""
        self.connection = ConnectionState.OFFLINE
        self.retry_at: float | None = None
        self.focused = True
        self.people: list[schema.UserEntry] = []
        self.people_query = ""
        self.people_next: str | None = None
        self.switcher_query: str | None = None
        self.switcher_people: list[schema.UserEntry] = []
        self._requests = 0
        self._people_request = -1
        self._switcher_request = -1
        self._outgoing: dict[str, str] = {}
        """local id → conversation key, for the user's messages not yet acknowledged."""
        self._reads_dirty = False
        self._reads_saved_at = 0.0
        self._ring = False
        self._typing_sent_at: float | None = None
        self._channels_request = -1
        self.members_of: str | None = None
        """The conversation whose Members panel is open."""
        self.settings_of: str | None = None
        """The conversation whose Channel settings dialog is open."""
        self._confirming = False
        """The settings dialog asks whether to archive."""
        self._left: set[str] = set()
        """Conversations the user left here: their last entries do not bring them back."""
        self._members: list[schema.MemberEntry] = []
        self._replying: dict[str, int] = {}
        """Conversation key → the seq of the message the composer answers there."""
        self._editing: tuple[str, int] | None = None
        """The conversation and seq of the message the composer edits."""
        self._deleting: tuple[str, int] | None = None
        """The message whose deletion is being confirmed."""
        self._scroll_to: tuple[str, int] | None = None
        """A jump's message, to bring into view once it is shown."""
        self._highlight: tuple[str, int, float] | None = None
        """A jump's message, marked until then (the presenter's clock)."""
        self._pending_jump: tuple[str, int] | None = None
        """A search hit in a conversation not in the list yet: its id and seq."""
        self.search_query = ""
        self._search_request = -1
        self._search_hits: list[schema.SearchHit] = []
        self._search_next: str | None = None
        self._search_status = ""
        self._shown_context: ComposerContext | None = None
        # What the view shows now, to send it only changes.
        self._shown_key: str | None = None
        self._shown_rows: list[MessageRow] = []
        self._row_cache: dict[tuple[str, int, bool], MessageRow] = {}
        self._previews: dict[str, tuple[Item, str]] = {}
        """Conversation key → its last item and the list's preview of it."""
        self._shown_list: tuple[list[ConversationRow], str] | None = None
        self._shown_status: Status | None = None
        self._shown_title = ""
        self._shown_header: Header | None = None
        self._shown_people: tuple[list[PersonRow], bool] | None = None
        self._shown_jump: str | None = None
        self._shown_typing = ""
        self._shown_composer: str | None = ""

    # -- starting and signing in ---------------------------------------------------------------

    def start(self) -> None:
        """Sign in with a kept session, or show the sign-in form."""
        saved = self.preferences.session()
        if saved is not None and saved.server == self.server:
            self.form = SignInForm(saved.server, saved.user, remember=True, tls=self.tls)
            self._begin_sign_in(saved.server, saved.user, "", create=False, token=saved.token)
        else:
            self.form = SignInForm(self.server, tls=self.tls)
            self.view.show_sign_in(self.form)
        self.view.set_title(_("beseda"))

    def sign_in(
        self,
        server: str,
        username: str,
        password: str,
        *,
        remember: bool,
        create: bool,
        tls: bool | None = None,
    ) -> None:
        """The Sign in (``create`` False) or Create account button; ``tls``: the "Secure
        connection" box (None: as remembered)."""
        if self.stage in (SIGNING_IN, TRUSTING):
            return
        server, username = server.strip(), username.strip()
        self.remember = remember
        if tls is not None:
            self.tls = tls
        self.form = SignInForm(server, username, remember, tls=self.tls)
        try:
            parse_address(server)
        except ValueError:
            self._sign_in_error(_("Enter the server as host:port, for example 127.0.0.1:7878."))
            return
        token = None
        if not password:
            saved = self.preferences.session()
            if (
                not create
                and saved is not None
                and saved.server == server
                and saved.user.casefold() == username.casefold()
            ):
                token = saved.token
            else:
                self._sign_in_error(_("Enter your username and password."))
                return
        if not username:
            self._sign_in_error(_("Enter your username and password."))
            return
        self.preferences.server = server
        self.preferences.tls = self.tls
        self._begin_sign_in(server, username, password, create=create, token=token)

    def _begin_sign_in(
        self, server: str, username: str, password: str, *, create: bool, token: str | None
    ) -> None:
        host, port = parse_address(server)
        self.server = server
        self.stage = SIGNING_IN
        self.using_token = token is not None
        self.form = SignInForm(server, username, self.form.remember, busy=True, tls=self.tls)
        fingerprint = None
        if self.tls:
            try:
                fingerprint = self.preferences.trusted_servers.get(f"{host}:{port}")
            except TLSError as exc:
                self._sign_in_error(str(exc))
                return
            if fingerprint is None:
                # Trust on first use: show the certificate's fingerprint to a person first.
                self._awaiting = (username, password, create, token)
                self.view.show_sign_in(self.form)
                self.session = self.backend.fetch_fingerprint(host, port)
                return
        self.view.show_sign_in(self.form)
        self.session = self.backend.sign_in(
            host, port, username, password, create=create, token=token, fingerprint=fingerprint
        )

    def _fingerprint_fetched(self, event: events.FingerprintFetched) -> None:
        if self.stage != SIGNING_IN or self._awaiting is None:
            return
        self.stage = TRUSTING
        text = _(
            "Trust this server? {address} presents a certificate with the fingerprint\n"
            "{fingerprint}\n"
            "Compare the fingerprint with the one your server's operator gave you, and trust "
            "it only if they match."
        ).format(address=event.address, fingerprint=event.fingerprint)
        prompt = TrustPrompt(event.address, event.fingerprint, text)
        self.form = SignInForm(
            self.form.server, self.form.username, self.form.remember, tls=True, trust=prompt
        )
        self.view.show_sign_in(self.form)

    def trust(self) -> None:
        """The prompt's Trust button: remember the fingerprint and sign in, pinned to it."""
        prompt, awaiting = self.form.trust, self._awaiting
        if self.stage != TRUSTING or prompt is None or awaiting is None:
            return
        self._awaiting = None
        try:
            self.preferences.trusted_servers.trust(prompt.address, prompt.fingerprint)
        except (OSError, TLSError) as exc:
            self._sign_in_error(
                _("Cannot save the trusted certificate: {reason}").format(reason=str(exc))
            )
            return
        username, password, create, token = awaiting
        self._begin_sign_in(self.server, username, password, create=create, token=token)

    def cancel_trust(self) -> None:
        """The prompt's Cancel button: back to the form, nothing trusted, not connected."""
        if self.stage != TRUSTING:
            return
        self._awaiting = None
        self.using_token = False
        self._sign_in_error("")

    def _certificate_changed(self, address: str, expected: str, actual: str | None) -> None:
        self._awaiting = None
        text = _(
            "The certificate of {address} has changed: it was {expected}, it is now "
            "{actual}. Someone may be intercepting the connection, so beseda did not "
            "connect. If the server's operator replaced the certificate on purpose, remove "
            "{address} from trusted-servers.json in {folder} and sign in again."
        )
        self._sign_in_error(
            text.format(
                address=address,
                expected=expected,
                actual=actual or _("no certificate"),
                folder=str(self.preferences.directory),
            )
        )

    def _sign_in_error(self, text: str) -> None:
        self.stage = SIGN_IN
        self.form = SignInForm(
            self.form.server, self.form.username, self.form.remember, text, tls=self.tls
        )
        self.view.show_sign_in(self.form)

    def sign_out(self) -> None:
        """Revoke the session (its kept token too) and return to the sign-in form."""
        if self.stage != CHAT:
            return
        self._save_reads()
        self.backend.sign_out()
        self.preferences.forget_session()
        self._end_session(SignInForm(self.server, self.user, self.remember, tls=self.tls))

    def _end_session(self, form: SignInForm) -> None:
        self.session = -1  # events of the old session are ignored from now on
        self.stage = SIGN_IN
        self.conversations.clear()
        self._outgoing.clear()
        self.people, self.switcher_people, self.presence = [], [], {}
        self._watched = frozenset()
        self._shown_key, self._shown_rows, self._row_cache = None, [], {}
        self._previews = {}
        self._shown_list = self._shown_status = self._shown_header = self._shown_people = None
        self._shown_jump = None
        self._shown_typing = ""
        self._shown_composer = None  # the next session shows it afresh
        self.members_of = None
        self.settings_of = None
        self._replying, self._editing, self._deleting = {}, None, None
        self._scroll_to = self._highlight = self._pending_jump = None
        self._search_hits, self._search_next, self._search_status = [], None, ""
        self._shown_context = None
        self.connection = ConnectionState.OFFLINE
        self.form = form
        self.view.show_sign_in(form)
        self.view.set_title(_("beseda"))
        self._shown_title = ""

    def close(self) -> None:
        """The window is closing."""
        if self.stage == CHAT:
            self._save_reads()

    # -- events from the network ---------------------------------------------------------------

    def handle(self, session: int, event: events.Event) -> None:
        """Apply one event; call :meth:`render` after a batch of them."""
        if session != self.session:
            return
        if isinstance(event, events.SignedIn):
            self._signed_in(event)
        elif isinstance(event, events.SignInFailed):
            self._sign_in_failed(event)
        elif isinstance(event, events.FingerprintFetched):
            self._fingerprint_fetched(event)
        elif isinstance(event, events.CertificateChanged):
            if self.stage == SIGNING_IN:
                self._certificate_changed(event.address, event.expected, event.fingerprint)
        elif self.stage != CHAT:
            return
        elif isinstance(event, MessageReceived):
            self._received(event.message)
        elif isinstance(event, PresenceChanged):
            self.presence[event.user.casefold()] = event.online
        elif isinstance(event, StateChanged):
            self._state_changed(event)
        elif isinstance(event, events.HistoryLoaded):
            self._history_loaded(event)
        elif isinstance(event, events.HistoryFailed):
            conversation = self.conversations.get(event.key)
            if conversation is not None:
                conversation.loading = False
        elif isinstance(event, events.Sent):
            key = self._outgoing.pop(event.local_id, None)
            if key is not None:
                self._received(event.message)
        elif isinstance(event, events.SendFailed):
            self._send_failed(event)
        elif isinstance(event, events.UsersFound):
            self._users_found(event)
        elif isinstance(event, EntryReceived):
            self._received(event.entry)
        elif isinstance(event, ReadMarker):
            self._read_elsewhere(event.conversation, event.seq)
        elif isinstance(event, TypingStarted):
            self._typing_started(event.conversation, event.user)
        elif isinstance(event, events.ConversationOpened):
            self._conversation_opened(event.info, select=event.select)
        elif isinstance(event, events.ConversationLeft):
            self._conversation_left(event.conversation)
        elif isinstance(event, events.ChannelsFound):
            if event.request == self._channels_request:
                self.view.show_channels(
                    [
                        ChannelRow(
                            c.conversation,
                            sanitize_name(c.name),
                            sanitize(c.topic),
                            c.members,
                            c.joined,
                            c.public,
                        )
                        for c in event.result.channels
                    ]
                )
        elif isinstance(event, events.MembersLoaded):
            self._members_loaded(event)
        elif isinstance(event, events.SearchFound):
            self._search_found(event)
        elif isinstance(event, events.SearchFailed):
            if event.request == self._search_request:
                self._search_status = (
                    _("Search is switched off on this server.")
                    if event.code == errors.SEARCH_OFF
                    else _("The search failed: {reason}").format(reason=sanitize_name(event.detail))
                )
                self._show_search()
        elif isinstance(event, events.ActionFailed):
            self.view.show_error(
                _("The server refused: {reason}").format(reason=sanitize_name(event.detail))
            )

    def _signed_in(self, event: events.SignedIn) -> None:
        self.stage = CHAT
        self.user, self.token = event.user, event.token
        if self.remember:
            self.preferences.save_session(SavedSession(self.server, event.user, event.token))
        else:
            self.preferences.forget_session()
        self.connection = ConnectionState.CONNECTED
        saved = self.preferences.read_positions(self.server, self.user)
        self.conversations = {
            GENERAL_KEY: Conversation(GENERAL_KEY, None, schema.GENERAL, kind="general")
        }
        for entry in event.conversations:
            if isinstance(entry, schema.ConversationInfo):
                if entry.member or entry.conversation == schema.GENERAL:
                    self._conversation_opened(entry, select=False)
                continue
            key = GENERAL_KEY if entry.peer is None else dm_key(entry.peer)
            conversation = self.conversations.setdefault(key, Conversation(key, entry.peer))
            conversation.conversation_id = entry.conversation
            conversation.last_seq = entry.last_seq
            conversation.last_activity = (entry.last_ts or 0) / 1000
            # First run here: what is old is read. Later: what came since we last looked.
            conversation.read_seq = (
                entry.last_seq if saved is None else saved.get(entry.conversation, 0)
            )
            conversation.has_older = entry.last_seq > 0
        self.presence = {name.casefold(): online for name, online in event.online.items()}
        # The network watched these peers while signing in.
        self._watched = frozenset(name.casefold() for name in self._watch_list())
        self.selected = GENERAL_KEY
        self.view.show_chat(event.user)
        self._open(self.conversations[GENERAL_KEY])
        self.search_people("")
        self._fetch_previews()

    def _fetch_previews(self) -> None:
        """The last message of the most recent conversations, for the list's previews."""
        recent = [c for c in self._ordered() if c.key != self.selected and c.last_seq > 0]
        for conversation in recent[:PREVIEWS_AT_SIGN_IN]:
            if conversation.timeline.messages or conversation.loading:
                continue
            conversation.loading = True
            known = conversation.conversation_id
            self.backend.history(
                conversation.key,
                conversation=known,
                peer=None if known else conversation.peer,
                before=None,
                limit=1,
            )

    def _sign_in_failed(self, event: events.SignInFailed) -> None:
        self._awaiting = None
        if self.using_token and event.code == errors.BAD_CREDENTIALS:
            self.preferences.forget_session()
            self._sign_in_error(_("Your session has ended. Sign in again."))
        else:
            self._sign_in_error(self._explain(event))

    def _explain(self, event: events.SignInFailed) -> str:
        code = event.code
        if code == events.UNREACHABLE:
            return _("Cannot reach a server at {server}. Is it running?").format(server=self.server)
        if code == events.GONE:
            return _("The server closed the connection. Try again in a moment.")
        if code == events.TLS_FAILED:
            return _(
                "Cannot set up a secure connection to {server}. Does it use TLS? ({reason})"
            ).format(server=self.server, reason=sanitize_name(event.detail))
        if code == errors.BAD_CREDENTIALS:
            return _("Wrong username or password.")
        if code == errors.NAME_TAKEN:
            return _("The name “{name}” is taken. Choose another, or sign in.").format(
                name=sanitize_name(self.form.username)
            )
        if code == errors.INVALID_USERNAME:
            return _("A username has 1 to 32 letters (of one alphabet), digits, “_”, “-” or “.”.")
        if code == errors.INVALID_PASSWORD:
            return _("A password has 8 to 256 characters.")
        if code == errors.RATE_LIMITED:
            seconds = math.ceil(event.retry_after or 1)
            return ngettext(
                "Too many attempts. Try again in {n} second.",
                "Too many attempts. Try again in {n} seconds.",
                seconds,
            ).format(n=seconds)
        if code == errors.TOO_MANY_CONNECTIONS:
            return _("Too many connections from your address.")
        if code in (errors.SERVER_SHUTDOWN, errors.STORAGE_UNAVAILABLE):
            return _("The server is not available right now. Try again in a moment.")
        return _("The server refused: {reason}").format(reason=sanitize_name(event.detail))

    def _key_of(self, message: schema.Message) -> tuple[str, str | None]:
        if message.conversation == schema.GENERAL:
            return GENERAL_KEY, None
        if message.conversation.startswith("c:"):
            return message.conversation, None
        own = message.sender.casefold() == self.user.casefold()
        if own and not message.to:
            # One's own entry posted by conversation id (a reply): it names no peer.
            known = self._by_id(message.conversation)
            if known is not None:
                return known.key, known.peer
        peer = (message.to or message.sender) if own else message.sender
        return dm_key(peer), peer

    def _received(self, message: schema.Message) -> None:
        if message.conversation in self._left:
            return
        if message.kind in schema.CHANGE_KINDS:
            self._change_received(message)
            return
        key, peer = self._key_of(message)
        conversation = self.conversations.get(key)
        if conversation is None:
            kind = "channel" if key.startswith("c:") else "direct"
            conversation = self.conversations[key] = Conversation(key, peer, kind=kind)
            conversation.has_older = message.seq > 1
            if kind == "channel":
                # A channel or group one was just added to: its name, kind and members.
                conversation.counted_unread = 0
                self.backend.lookup(message.conversation)
        conversation.conversation_id = message.conversation
        if not (conversation.live or conversation.timeline).add(message):
            return
        self._outgoing.pop(message.client_id, None)
        if message.seq > conversation.last_seq:
            conversation.last_seq = message.seq
        conversation.last_activity = max(conversation.last_activity, message.ts / 1000)
        conversation.typing.pop(message.sender, None)
        if message.kind != "message":
            self._entry_applied(conversation, message)
            if message.seq <= conversation.read_seq + 1 and conversation.unread == 0:
                conversation.read_seq = max(conversation.read_seq, message.seq)
            return
        if message.sender.casefold() == self.user.casefold():
            self._mark_read(conversation, message.seq)
            return
        if message.seq > conversation.read_seq and conversation.counted_unread is not None:
            conversation.counted_unread += 1
            if self._mentions_me(message):
                conversation.mentions += 1
        timeline = conversation.timeline
        if key == self.selected and not (timeline.at_bottom and timeline.attached):
            # Out of sight: the line marks where the new ones start, the button counts them.
            if conversation.unseen == 0:
                conversation.marker_seq = message.seq
            conversation.unseen += 1
        if message.seq > conversation.read_seq:
            seen = conversation.counted_unread is None or (timeline.at_bottom and timeline.attached)
            if key == self.selected and self.focused and seen:
                self._mark_read(conversation, message.seq)
            else:
                self._ring = True

    def _mark_read(self, conversation: Conversation, seq: int | None = None) -> None:
        seq = conversation.last_seq if seq is None else seq
        if seq > conversation.read_seq:
            conversation.read_seq = seq
            self._reads_dirty = True
            if conversation.counted_unread is not None:
                if seq >= conversation.last_seq:
                    conversation.counted_unread = conversation.mentions = 0
                # The server keeps the marker: every device of the user clears its badge.
                if conversation.conversation_id is not None:
                    self.backend.read(conversation.conversation_id, seq)

    def _read_elsewhere(self, conversation_id: str, seq: int) -> None:
        conversation = self._by_id(conversation_id)
        if conversation is None or seq <= conversation.read_seq:
            return
        conversation.read_seq = seq
        if seq >= conversation.last_seq:
            conversation.counted_unread = conversation.mentions = 0
            conversation.marker_seq = None

    def _by_id(self, conversation_id: str) -> Conversation | None:
        for conversation in self.conversations.values():
            if conversation.conversation_id == conversation_id:
                return conversation
        return None

    def _mentions_me(self, message: schema.Message) -> bool:
        me = self.user.casefold()
        if message.sender.casefold() == me:
            return False
        return message.mention_all or any(name.casefold() == me for name in message.mentions)

    def _entry_applied(self, conversation: Conversation, entry: schema.Entry) -> None:
        """What a change entry changes in the conversation itself."""
        if entry.kind == "renamed" and entry.name:
            conversation.name = entry.name
        elif entry.kind == "topic":
            conversation.topic = entry.topic or ""
        elif entry.kind == "archived":
            conversation.archived = True
        elif entry.kind == "role" and (entry.target or "").casefold() == self.user.casefold():
            conversation.role = entry.role
        elif conversation.kind == "group" and entry.target:
            people = [p for p in conversation.people if p.casefold() != entry.target.casefold()]
            if entry.kind == "added" and entry.target.casefold() != self.user.casefold():
                people.append(entry.target)
            conversation.people = people
        if entry.kind in ("removed", "left"):
            who = entry.target if entry.kind == "removed" else entry.sender
            if who and who.casefold() == self.user.casefold():
                conversation.member = False
        watched = self.members_of
        membership = entry.kind in ("joined", "left", "added", "removed", "role")
        if membership and watched is not None and watched == conversation.conversation_id:
            self.backend.members(watched)
        if self.settings_of is not None and self.settings_of == conversation.conversation_id:
            self._show_settings(conversation)

    def _conversation_opened(self, info: schema.ConversationInfo, *, select: bool) -> None:
        self._left.discard(info.conversation)
        if info.conversation == schema.GENERAL:
            key = GENERAL_KEY
        elif info.kind == "direct" and info.peer:
            key = dm_key(info.peer)
        else:
            key = info.conversation
        conversation = self.conversations.get(key)
        if conversation is None:
            conversation = self.conversations[key] = Conversation(key, info.peer)
            conversation.last_activity = (info.last_ts or 0) / 1000 or self.wall()
            conversation.has_older = info.last_seq > 0
        conversation.conversation_id = info.conversation
        conversation.kind = "general" if key == GENERAL_KEY else info.kind
        conversation.name = info.name or ""
        conversation.topic = info.topic
        conversation.role = info.role
        conversation.member = info.member
        conversation.archived = info.archived
        conversation.last_seq = max(conversation.last_seq, info.last_seq)
        conversation.read_seq = max(conversation.read_seq, info.read_seq)
        conversation.counted_unread = info.unread
        conversation.mentions = info.mentions
        if info.kind == "group" and not conversation.people:
            self.backend.members(info.conversation)
        if select:
            self.select(key)
        if self._pending_jump is not None and self._pending_jump[0] == info.conversation:
            seq = self._pending_jump[1]
            self._pending_jump = None
            self.jump_to(seq, key)

    def _conversation_left(self, conversation_id: str) -> None:
        self._left.add(conversation_id)
        conversation = self._by_id(conversation_id)
        if conversation is None or conversation.key == GENERAL_KEY:
            return
        del self.conversations[conversation.key]
        if self.members_of == conversation_id:
            self.members_of = None
        if self.settings_of == conversation_id:
            self.settings_of = None
            self.view.show_settings(None)
        if self.selected == conversation.key:
            self.select(GENERAL_KEY)

    def _members_loaded(self, event: events.MembersLoaded) -> None:
        conversation = self._by_id(event.conversation)
        if conversation is None:
            return
        for member in event.result.members:
            self.presence[member.name.casefold()] = member.online
        me = self.user.casefold()
        if conversation.kind == "group":
            conversation.people = [m.name for m in event.result.members if m.name.casefold() != me]
        for member in event.result.members:
            if member.name.casefold() == me:
                conversation.role = member.role
        if self.members_of == event.conversation:
            self._members = list(event.result.members)
            self._show_members(conversation)

    def _show_members(self, conversation: Conversation) -> None:
        manager = conversation.role in ("owner", "admin")
        me = self.user.casefold()
        roles = {"owner": _("owner"), "admin": _("admin"), "member": _("member")}
        rows = tuple(
            MemberRow(
                sanitize_name(m.name),
                roles.get(m.role, sanitize_name(m.role)),
                m.online,
                removable=manager and m.name.casefold() != me and m.role != "owner",
                roles=self._roles_for(conversation, m),
            )
            for m in self._members
        )
        title = _("Members of {name}").format(name=self._title(conversation))
        can_leave = conversation.kind in ("channel", "group") and conversation.member
        can_invite = manager or (conversation.kind == "group" and conversation.member)
        self.view.show_members(MembersPanel(title, rows, can_invite, can_leave))

    def _roles_for(self, conversation: Conversation, member: schema.MemberEntry) -> tuple[str, ...]:
        """The roles the user may give ``member``: owners and admins of a channel change
        roles; only an owner makes or unmakes owners (the server keeps one at least)."""
        mine = conversation.role
        if conversation.kind != "channel" or mine not in ("owner", "admin"):
            return ()
        if member.name.casefold() == self.user.casefold():
            return ()
        if member.role == "owner" and mine != "owner":
            return ()
        order = ("owner", "admin", "member") if mine == "owner" else ("admin", "member")
        return tuple(role for role in order if role != member.role)

    def _typing_started(self, conversation_id: str, user: str) -> None:
        conversation = self._by_id(conversation_id)
        if conversation is None or user.casefold() == self.user.casefold():
            return
        conversation.typing[user] = self.clock() + schema.TYPING_EXPIRY

    def _state_changed(self, event: StateChanged) -> None:
        if event.state is ConnectionState.OFFLINE:
            if event.reason == errors.BAD_CREDENTIALS:
                self.preferences.forget_session()
                text = _("Your session has ended. Sign in again.")
            elif isinstance(event.error, CertificateChangedError):
                changed = event.error
                self._save_reads()
                self._end_session(SignInForm(self.server, self.user, self.remember, tls=self.tls))
                self._certificate_changed(changed.address, changed.expected, changed.fingerprint)
                return
            else:
                text = _("Disconnected: {reason}").format(reason=sanitize_name(event.reason or ""))
            self._save_reads()
            self._end_session(SignInForm(self.server, self.user, self.remember, text, tls=self.tls))
            return
        was = self.connection
        self.connection = event.state
        self.retry_at = (
            self.clock() + event.retry_in
            if event.state is ConnectionState.RECONNECTING and event.retry_in is not None
            else None
        )
        if event.state is ConnectionState.CONNECTED and was is not ConnectionState.CONNECTED:
            # Presence changes were missed while away: look again.
            self.search_people(self.people_query)

    def _history_loaded(self, event: events.HistoryLoaded) -> None:
        conversation = self.conversations.get(event.key)
        if conversation is None:
            return
        conversation.loading = False
        timeline = conversation.timeline
        # A page for a timeline no longer shown (the reader jumped, or went back) is dropped.
        if event.around is not None:
            if conversation.opening_at != event.around:
                return
            conversation.opening_at = None
        elif event.after is not None:
            if not timeline.has_newer or timeline.newest_seq != event.after:
                return
        elif event.before is not None and timeline.oldest_seq != event.before:
            return
        conversation.conversation_id = event.result.conversation or conversation.conversation_id
        messages = [
            m
            for m in event.result.messages
            if m.kind not in schema.CHANGE_KINDS and m.seq not in conversation.deleted
        ]
        if event.after is None:
            conversation.has_older = event.result.more
        if event.after is not None or event.around is not None:
            result = event.result
            timeline.has_newer = isinstance(result, schema.EntriesResult) and result.newer
        timeline.add_page(messages)
        if messages:
            newest = messages[-1].seq
            if newest > conversation.last_seq:
                conversation.last_seq = conversation.read_seq = newest
        if conversation.live is not None and not timeline.has_newer:
            self._merge_live(conversation)
        if event.around is not None:
            timeline.show_around(event.around)
            self._scroll_to = (conversation.key, event.around)
            return
        if timeline.at_top:
            timeline.extend_up()
        if (
            event.key == self.selected
            and conversation.has_older
            and not timeline.has_newer
            and len(timeline.messages) < schema.DEFAULT_PAGE
        ):
            # Only the list's preview had been fetched: the reader wants a page.
            self._load_older(conversation)

    def _merge_live(self, conversation: Conversation) -> None:
        """The page opened at an older message now reaches the newest: the newest messages
        kept meanwhile join it, and it is the conversation's timeline again."""
        live, timeline = conversation.live, conversation.timeline
        if live is None:
            return
        conversation.live = None
        timeline.has_newer = False
        timeline.add_page([m for m in live.messages if m.seq > timeline.newest_seq])
        for outgoing in live.outgoing:
            timeline.add_outgoing(outgoing)

    def _attach(self, conversation: Conversation) -> None:
        """Back to the newest messages from a page opened at an older one."""
        if conversation.live is None:
            return
        conversation.timeline = conversation.live
        conversation.has_older = conversation.live_has_older
        conversation.live = None
        conversation.opening_at = None
        conversation.loading = False
        self._shown_key = None  # a new list

    # -- changes to messages (protocol 4) ------------------------------------------------------

    def _change_received(self, change: schema.Entry) -> None:
        """An edit, a delete or a reaction: the message it names changes where it is shown,
        and so do the quotes of the replies to it."""
        conversation = self._by_id(change.conversation)
        if conversation is None or change.ref is None:
            return
        ref = change.ref
        # A change is nothing new to read: a reader who was up to date stays so.
        caught_up = conversation.unread == 0 and change.seq <= conversation.read_seq + 1
        conversation.last_seq = max(conversation.last_seq, change.seq)
        if caught_up:
            conversation.read_seq = max(conversation.read_seq, change.seq)
        if change.kind == "deleted":
            conversation.deleted.add(ref)
        for timeline in (conversation.timeline, conversation.live):
            if timeline is None:
                continue
            current = timeline.find(ref)
            if current is not None:
                changed = apply_change(current, change, me=self.user)
                if changed is None:
                    timeline.remove(ref)
                else:
                    timeline.replace(changed)
            if change.kind in ("edited", "deleted"):
                self._requote(conversation, timeline, change)
        self._forget_row(conversation, ref)
        key = conversation.key
        if change.kind == "deleted":
            if self._replying.get(key) == ref:
                del self._replying[key]
            if self._editing == (key, ref):
                self._editing = None
                self.view.set_composer_text("")
            if self._deleting == (key, ref):
                self._deleting = None
                self.view.show_confirm("")

    def _requote(
        self, conversation: Conversation, timeline: Timeline, change: schema.Entry
    ) -> None:
        """Replies to an edited or deleted message quote it as it is now."""
        ref = change.ref
        for index, message in enumerate(timeline.messages):
            reply = message.reply
            if reply is None or reply.seq != ref:
                continue
            if change.kind == "deleted":
                timeline.messages[index] = quote_deleted(message, ref)
            else:
                quote = schema.Quote(
                    seq=ref, sender=reply.sender, text=change.text[: schema.REPLY_PREVIEW_CHARS]
                )
                timeline.messages[index] = msgspec.structs.replace(message, reply=quote)
            self._forget_row(conversation, message.seq)

    def _forget_row(self, conversation: Conversation, seq: int) -> None:
        if conversation.conversation_id is not None:
            for continued in (False, True):
                self._row_cache.pop((conversation.conversation_id, seq, continued), None)

    def _send_failed(self, event: events.SendFailed) -> None:
        key = self._outgoing.get(event.local_id)
        conversation = self.conversations.get(key) if key else None
        outgoing = conversation.timeline.find_outgoing(event.local_id) if conversation else None
        if outgoing is None:
            return
        reasons = {
            errors.RATE_LIMITED: _("too many messages, wait a little"),
            errors.MESSAGE_TOO_LONG: _("too long"),
            errors.UNKNOWN_USER: _("no such user"),
            errors.STORAGE_UNAVAILABLE: _("the server cannot store it now"),
            errors.NOT_A_MEMBER: _("you are not a member of this conversation"),
            errors.UNKNOWN_CONVERSATION: _("you are not a member of this conversation"),
            errors.ARCHIVED: _("the channel is archived"),
            events.GONE: _("not connected"),
        }
        outgoing.failed = reasons.get(event.code, sanitize_name(event.detail))
        outgoing.final = event.code in _FINAL_REFUSALS
        outgoing.version += 1

    def _users_found(self, event: events.UsersFound) -> None:
        for user in event.result.users:
            self.presence[user.name.casefold()] = user.online
        if event.request == self._people_request:
            self.people = (
                [*self.people, *event.result.users] if event.appended else list(event.result.users)
            )
            self.people_next = event.result.next
        elif event.request == self._switcher_request:
            self.switcher_people = list(event.result.users)
            self._show_switcher()

    # -- the user's actions --------------------------------------------------------------------

    def select(self, key: str) -> None:
        """Show a conversation."""
        conversation = self.conversations.get(key)
        if conversation is None or self.stage != CHAT:
            return
        if key == self.selected and self._shown_key == key:
            return  # already on screen (a double click): keep its place and its line
        if self._editing is not None:
            self._editing = None
            self.view.set_composer_text("")
        self.selected = key
        self._open(conversation)
        self.render()

    def _open(self, conversation: Conversation) -> None:
        # The line above the first unread message, placed before reading marks it read.
        conversation.marker_seq = conversation.read_seq + 1 if conversation.unread else None
        conversation.unseen = 0
        self._attach(conversation)
        conversation.timeline.show_newest()
        conversation.timeline.at_top = True
        self._shown_key = None  # a new list, scrolled to its end
        if self.focused:
            self._mark_read(conversation)
        if conversation.has_older and len(conversation.timeline.messages) < schema.DEFAULT_PAGE:
            self._load_older(conversation)

    def _load_older(self, conversation: Conversation) -> None:
        if conversation.loading or not conversation.has_older:
            return
        if conversation.timeline.has_newer and conversation.timeline.oldest_seq is None:
            return  # the page around a message is on its way
        conversation.loading = True
        known = conversation.conversation_id
        self.backend.history(
            conversation.key,
            conversation=known,
            peer=None if known else conversation.peer,
            before=conversation.timeline.oldest_seq,
        )

    def _load_newer(self, conversation: Conversation) -> None:
        timeline = conversation.timeline
        if conversation.loading or not timeline.has_newer or timeline.oldest_seq is None:
            return
        conversation.loading = True
        self.backend.history(
            conversation.key,
            conversation=conversation.conversation_id,
            peer=None,
            before=None,
            after=timeline.newest_seq,
        )

    def open_dm(self, name: str) -> None:
        """Open (or start) the direct conversation with ``name``, its history loaded."""
        if self.stage != CHAT or name.casefold() == self.user.casefold():
            return
        key = dm_key(name)
        if key not in self.conversations:
            conversation = self.conversations[key] = Conversation(key, name)
            conversation.last_activity = self.wall()
        self.select(key)

    def send(self, text: str) -> bool:
        """Send the composer's text to the conversation on screen; True when it was taken."""
        text = text.strip()
        conversation = self.conversations.get(self.selected)
        if not text or conversation is None or self.stage != CHAT:
            return False
        if conversation.archived:
            return False
        if len(text) > schema.MAX_TEXT_CHARS:
            self.view.show_composer_error(
                _("A message may have at most {limit} characters; this one has {n}.").format(
                    limit=schema.MAX_TEXT_CHARS, n=len(text)
                )
            )
            return False
        self.view.show_composer_error("")
        if self._editing is not None and self._editing[0] == conversation.key:
            return self._send_edit(conversation, self._editing[1], text)
        self._attach(conversation)
        outgoing = Outgoing(new_client_id(), text, self.wall())
        reply_to = self._replying.pop(conversation.key, None)
        answered = conversation.timeline.find(reply_to) if reply_to is not None else None
        if answered is not None and conversation.conversation_id is not None:
            outgoing.reply_to = answered.seq
            outgoing.quote = schema.Quote(
                seq=answered.seq,
                sender=answered.sender,
                text=answered.text[: schema.REPLY_PREVIEW_CHARS],
            )
        conversation.timeline.add_outgoing(outgoing)
        conversation.last_activity = max(conversation.last_activity, outgoing.sent_at)
        self._outgoing[outgoing.local_id] = conversation.key
        self._deliver(conversation, outgoing.local_id, text, outgoing.reply_to)
        # One's own message is always brought into view, however far up the reader was.
        self._reveal_newest(conversation)
        return True

    def _deliver(
        self, conversation: Conversation, local_id: str, text: str, reply_to: int | None = None
    ) -> None:
        if reply_to is not None and conversation.conversation_id:
            self.backend.post(local_id, conversation.conversation_id, text, reply_to=reply_to)
        elif conversation.kind in ("channel", "group") and conversation.conversation_id:
            self.backend.post(local_id, conversation.conversation_id, text)
        else:
            self.backend.send(local_id, conversation.peer, text)

    def _send_edit(self, conversation: Conversation, seq: int, text: str) -> bool:
        self._editing = None
        message = conversation.timeline.find(seq)
        if message is not None and text != message.text and conversation.conversation_id:
            self.backend.edit(conversation.conversation_id, seq, text)
        self.render()
        return True

    def composer_changed(self) -> None:
        """The composer's text changed: tell the others, at most every few seconds."""
        conversation = self.conversations.get(self.selected)
        if self.stage != CHAT or conversation is None or conversation.counted_unread is None:
            return
        if conversation.conversation_id is None:
            return
        now = self.clock()
        if self._typing_sent_at is not None and now - self._typing_sent_at < (
            schema.TYPING_INTERVAL
        ):
            return
        self._typing_sent_at = now
        self.backend.typing(conversation.conversation_id)

    # -- conversations (protocol 3) ------------------------------------------------------------

    def create_channel(self, name: str, *, public: bool, topic: str = "") -> bool:
        """The New channel dialog; False (and nothing sent) when the name is empty."""
        name = name.strip().lstrip("#").strip()
        if self.stage != CHAT or not name:
            return False
        self.backend.create_channel(name, public=public, topic=topic.strip())
        return True

    def browse_channels(self, query: str = "") -> None:
        """The Browse channels dialog's search (its list comes with :meth:`View.show_channels`)."""
        if self.stage != CHAT:
            return
        self._requests += 1
        self._channels_request = self._requests
        self.backend.channels(self._channels_request, query.strip())

    def join(self, conversation_id: str) -> None:
        """Join a channel (or open it, when already a member)."""
        if self.stage != CHAT:
            return
        known = self._by_id(conversation_id)
        if known is not None and known.member:
            self.select(known.key)
            return
        self.backend.join(conversation_id)

    def create_group(self, names: Sequence[str]) -> bool:
        """A group of the user and these people (at least two of them); False if too few."""
        me = self.user.casefold()
        people = list({n.casefold(): n for n in names if n.casefold() != me}.values())
        if self.stage != CHAT or len(people) < 2:
            return False
        self.backend.create_group(people)
        return True

    def open_members(self) -> None:
        """The Members panel of the conversation on screen."""
        conversation = self.conversations.get(self.selected)
        if self.stage != CHAT or conversation is None or conversation.conversation_id is None:
            return
        if conversation.kind not in ("channel", "group"):
            return
        self.members_of = conversation.conversation_id
        self._members = []
        self.backend.members(conversation.conversation_id)

    def close_members(self) -> None:
        self.members_of = None

    def invite(self, names: str | Sequence[str]) -> None:
        """Add people (names separated by spaces or commas) to the open Members panel's
        conversation."""
        if isinstance(names, str):
            names = names.replace(",", " ").split()
        wanted = [n.lstrip("@") for n in names if n.lstrip("@")]
        if self.stage == CHAT and self.members_of is not None and wanted:
            self.backend.invite(self.members_of, wanted)

    def remove_member(self, name: str) -> None:
        if self.stage == CHAT and self.members_of is not None:
            self.backend.remove(self.members_of, name)

    def set_role(self, name: str, role: str) -> None:
        """Make a member of the open Members panel's channel owner, admin or member."""
        if self.stage != CHAT or self.members_of is None:
            return
        conversation = self._by_id(self.members_of)
        member = next((m for m in self._members if m.name == name), None)
        if conversation is None or member is None:
            return
        if role in self._roles_for(conversation, member):
            self.backend.set_role(self.members_of, name, role)

    # -- channel settings ------------------------------------------------------------------------

    def _may_manage(self, conversation: Conversation) -> bool:
        return (
            conversation.kind == "channel"
            and conversation.key != GENERAL_KEY
            and conversation.conversation_id is not None
            and conversation.member
            and not conversation.archived
            and conversation.role in ("owner", "admin")
        )

    def open_settings(self) -> None:
        """The header's Channel settings button: the dialog of the channel on screen."""
        conversation = self.conversations.get(self.selected)
        if self.stage != CHAT or conversation is None or not self._may_manage(conversation):
            return
        self.settings_of = conversation.conversation_id
        self._confirming = False
        self._show_settings(conversation)

    def close_settings(self) -> None:
        self.settings_of = None
        self._confirming = False

    def _settings_target(self) -> Conversation | None:
        if self.stage != CHAT or self.settings_of is None:
            return None
        conversation = self._by_id(self.settings_of)
        if conversation is None or not self._may_manage(conversation):
            return None
        return conversation

    def _show_settings(self, conversation: Conversation) -> None:
        if not self._may_manage(conversation):
            self.settings_of = None
            self._confirming = False
            self.view.show_settings(None)
            return
        title = self._title(conversation)
        confirm = (
            _(
                "Archive {name}? No one will be able to post in it any more; "
                "its history stays readable."
            ).format(name=title)
            if self._confirming
            else ""
        )
        self.view.show_settings(
            ChannelSettings(
                _("Settings of {name}").format(name=title),
                sanitize_name(conversation.name),
                sanitize(conversation.topic),
                confirm,
            )
        )

    def save_settings(self, name: str, topic: str) -> bool:
        """The dialog's Save button: rename and set the topic, whichever changed. False (and
        nothing sent) when the name is empty."""
        conversation = self._settings_target()
        if conversation is None or conversation.conversation_id is None:
            return False
        name = name.strip().lstrip("#").strip()
        topic = topic.strip()
        if not name:
            return False
        if name != conversation.name:
            self.backend.rename(conversation.conversation_id, name)
        if topic != conversation.topic:
            self.backend.set_topic(conversation.conversation_id, topic)
        return True

    def ask_archive(self) -> None:
        """The dialog's Archive button: ask first."""
        conversation = self._settings_target()
        if conversation is not None:
            self._confirming = True
            self._show_settings(conversation)

    def cancel_archive(self) -> None:
        conversation = self._settings_target()
        if conversation is not None:
            self._confirming = False
            self._show_settings(conversation)

    def archive(self) -> bool:
        """The confirmation's Archive button; True when it was sent."""
        conversation = self._settings_target()
        if conversation is None or conversation.conversation_id is None or not self._confirming:
            return False
        self._confirming = False
        self.backend.archive(conversation.conversation_id)
        return True

    def leave(self) -> None:
        """Leave the conversation on screen (a channel or group)."""
        conversation = self.conversations.get(self.selected)
        if self.stage != CHAT or conversation is None or conversation.conversation_id is None:
            return
        if conversation.kind in ("channel", "group"):
            self.backend.leave(conversation.conversation_id)

    # -- replies, edits, deletes, reactions (protocol 4) ----------------------------------------

    def _message_of(self, row_id: str) -> tuple[Conversation, schema.Message] | None:
        """The conversation on screen and its message shown as ``row_id``."""
        conversation = self.conversations.get(self.selected)
        if self.stage != CHAT or conversation is None or not row_id.startswith("seq:"):
            return None
        message = conversation.timeline.find(int(row_id.removeprefix("seq:")))
        if message is None or message.kind != "message":
            return None
        return conversation, message

    def _may_write(self, conversation: Conversation) -> bool:
        return (
            conversation.member
            and not conversation.archived
            and conversation.conversation_id is not None
        )

    def _may_delete(self, conversation: Conversation, message: schema.Message) -> bool:
        # An archived channel is read-only, but what was posted there may still be deleted.
        if not conversation.member or conversation.conversation_id is None:
            return False
        if message.sender.casefold() == self.user.casefold():
            return True
        return conversation.kind == "channel" and conversation.role in ("owner", "admin")

    def message_menu(self, row_id: str) -> MessageMenu | None:
        """What the menu of the message shown as ``row_id`` offers (None: no menu)."""
        conversation = self.conversations.get(self.selected)
        if conversation is not None and row_id.startswith("out:"):
            outgoing = conversation.timeline.find_outgoing(row_id.removeprefix("out:"))
            if outgoing is not None:
                return MessageMenu(row_id, outgoing.text, False, False, False, False)
        found = self._message_of(row_id)
        if found is None:
            return None
        conversation, message = found
        writable = self._may_write(conversation)
        own = message.sender.casefold() == self.user.casefold()
        return MessageMenu(
            row_id,
            message.text,
            reply=writable,
            edit=writable and own,
            delete=self._may_delete(conversation, message),
            react=writable,
            mine=frozenset(r.emoji for r in message.reactions if r.me),
        )

    def reply(self, row_id: str) -> None:
        """Answer this message: its quote goes above the composer until sent or cancelled."""
        found = self._message_of(row_id)
        if found is None or not self._may_write(found[0]):
            return
        conversation, message = found
        if self._editing is not None:
            self._editing = None
            self.view.set_composer_text("")
        self._replying[conversation.key] = message.seq
        self.render()

    def start_edit(self, row_id: str) -> bool:
        """Edit one's own message in the composer; True when it is there."""
        found = self._message_of(row_id)
        if found is None:
            return False
        conversation, message = found
        own = message.sender.casefold() == self.user.casefold()
        if not own or not self._may_write(conversation):
            return False
        self._replying.pop(conversation.key, None)
        self._editing = (conversation.key, message.seq)
        self.view.set_composer_text(message.text)
        self.render()
        return True

    def edit_last(self) -> bool:
        """Up in an empty composer: edit the user's last message here (False: none)."""
        conversation = self.conversations.get(self.selected)
        if self.stage != CHAT or conversation is None:
            return False
        me = self.user.casefold()
        for message in reversed(conversation.timeline.messages):
            if message.kind == "message" and message.sender.casefold() == me:
                return self.start_edit(f"seq:{message.seq}")
        return False

    def cancel_composer_context(self) -> bool:
        """Escape in the composer: stop editing (the composer empties) or replying; False
        when there was neither."""
        if self._editing is not None:
            self._editing = None
            self.view.set_composer_text("")
            self.render()
            return True
        if self._replying.pop(self.selected, None) is not None:
            self.render()
            return True
        return False

    def ask_delete(self, row_id: str) -> None:
        """The menu's Delete: ask first."""
        found = self._message_of(row_id)
        if found is None or not self._may_delete(*found):
            return
        conversation, message = found
        self._deleting = (conversation.key, message.seq)
        if message.sender.casefold() == self.user.casefold():
            text = _("Delete this message? It is deleted for everyone.")
        else:
            text = _("Delete this message of {name}? It is deleted for everyone.").format(
                name=sanitize_name(message.sender)
            )
        self.view.show_confirm(text)

    def confirm_delete(self) -> None:
        deleting, self._deleting = self._deleting, None
        self.view.show_confirm("")
        if deleting is None or self.stage != CHAT:
            return
        conversation = self.conversations.get(deleting[0])
        if conversation is not None and conversation.conversation_id is not None:
            self.backend.delete(conversation.conversation_id, deleting[1])

    def cancel_delete(self) -> None:
        self._deleting = None
        self.view.show_confirm("")

    def toggle_reaction(self, row_id: str, emoji: str) -> None:
        """Add the emoji to the message, or take it away if the user had added it."""
        found = self._message_of(row_id)
        if found is None or not self._may_write(found[0]):
            return
        conversation, message = found
        assert conversation.conversation_id is not None
        if any(r.emoji == emoji and r.me for r in message.reactions):
            self.backend.unreact(conversation.conversation_id, message.seq, emoji)
        else:
            self.backend.react(conversation.conversation_id, message.seq, emoji)

    def jump_to(self, seq: int, key: str | None = None) -> None:
        """Show the message with this seq in context (a quote's or a search hit's click),
        fetching the page around it when it is not loaded."""
        key = key or self.selected
        conversation = self.conversations.get(key)
        if self.stage != CHAT or conversation is None:
            return
        if key != self.selected:
            self.select(key)
        self._highlight = (key, seq, self.clock() + HIGHLIGHT_SECONDS)
        self._scroll_to = (key, seq)
        if conversation.live is not None and conversation.live.find(seq) is not None:
            self._attach(conversation)
        if conversation.timeline.show_around(seq):
            conversation.unseen = 0
            self.render()
            return
        if conversation.conversation_id is None:
            return
        if conversation.live is None:
            conversation.live = conversation.timeline
            conversation.live_has_older = conversation.has_older
        detached = Timeline()
        detached.has_newer = True
        detached.at_bottom = False
        conversation.timeline = detached
        conversation.opening_at = seq
        conversation.loading = True
        self._shown_key = None
        self.backend.history(
            key, conversation=conversation.conversation_id, peer=None, before=None, around=seq
        )
        self.render()

    # -- search (protocol 4) -------------------------------------------------------------------

    def search_messages(self, query: str) -> None:
        """The search window's box: messages of every conversation the user may read."""
        if self.stage != CHAT:
            return
        self.search_query = query
        self._search_hits, self._search_next = [], None
        self._requests += 1
        self._search_request = self._requests
        if not query.strip():
            self._search_status = ""
        else:
            self._search_status = _("Searching…")
            self.backend.search(self._search_request, query.strip())
        self._show_search()

    def more_search(self) -> None:
        if self._search_next is not None and self.stage == CHAT:
            self.backend.search(
                self._search_request, self.search_query.strip(), cursor=self._search_next
            )
            self._search_next = None

    def _search_found(self, event: events.SearchFound) -> None:
        if event.request != self._search_request:
            return
        hits = list(event.result.results)
        self._search_hits = [*self._search_hits, *hits] if event.appended else hits
        self._search_next = event.result.next
        self._search_status = "" if self._search_hits else _("No messages found.")
        self._show_search()

    def _show_search(self) -> None:
        rows = []
        for hit in self._search_hits:
            conversation = self._by_id(hit.conversation)
            title = self._title(conversation) if conversation else sanitize_name(hit.conversation)
            snippet, spans = sanitize_spans(hit.snippet, hit.highlights)
            rows.append(
                SearchRow(
                    title,
                    sanitize_name(hit.sender),
                    format_time(hit.ts, self.wall()),
                    snippet,
                    spans,
                )
            )
        self.view.show_search(
            SearchPanel(tuple(rows), self._search_status, self._search_next is not None)
        )

    def search_choose(self, index: int) -> None:
        """A search result's click: its conversation, opened at the message."""
        if not 0 <= index < len(self._search_hits) or self.stage != CHAT:
            return
        hit = self._search_hits[index]
        conversation = self._by_id(hit.conversation)
        if conversation is None:
            # A channel the user is not in the list of: ask for it, then jump.
            self._pending_jump = (hit.conversation, hit.seq)
            self.backend.lookup(hit.conversation)
            return
        self.jump_to(hit.seq, conversation.key)

    def jump_to_latest(self) -> None:
        """The "jump to latest" button: show the newest messages."""
        conversation = self.conversations.get(self.selected)
        if conversation is not None and self.stage == CHAT:
            self._reveal_newest(conversation)

    def _reveal_newest(self, conversation: Conversation) -> None:
        self._attach(conversation)
        timeline = conversation.timeline
        if not timeline.attached:
            timeline.show_newest()
            self._shown_key = None  # a new list, scrolled to its end
        timeline.at_bottom = True
        conversation.unseen = 0
        self.render()
        self.view.scroll_to_bottom()

    def retry(self, row_id: str) -> None:
        """The Retry link of a message that failed: send it again, same client id."""
        local_id = row_id.removeprefix("out:")
        key = self._outgoing.get(local_id)
        conversation = self.conversations.get(key) if key else None
        outgoing = conversation.timeline.find_outgoing(local_id) if conversation else None
        if conversation is None or outgoing is None or outgoing.failed is None:
            return
        outgoing.failed = None
        outgoing.version += 1
        self._deliver(conversation, local_id, outgoing.text, outgoing.reply_to)
        self.render()

    def scrolled(self, first: float, last: float) -> None:
        """The message view's scroll position changed (fractions of its content)."""
        conversation = self.conversations.get(self.selected)
        if conversation is None or self.stage != CHAT:
            return
        timeline = conversation.timeline
        timeline.at_top = first <= 0.0
        timeline.at_bottom = last >= 1.0
        if timeline.at_top and not timeline.extend_up():
            self._load_older(conversation)
        if timeline.at_bottom:
            if not timeline.extend_down() and timeline.has_newer:
                self._load_newer(conversation)
            if timeline.attached:
                conversation.unseen = 0
                if self.focused and conversation.counted_unread is not None:
                    self._mark_read(conversation)
        self.render()

    def focus_changed(self, focused: bool) -> None:
        self.focused = focused
        conversation = self.conversations.get(self.selected)
        if focused and conversation is not None:
            self._mark_read(conversation)
        self.render()

    def search_people(self, query: str) -> None:
        """The directory's search box (the server searches)."""
        if self.stage != CHAT:
            return
        self.people_query = query
        self._requests += 1
        self._people_request = self._requests
        self.backend.users(self._people_request, query.strip())

    def more_people(self) -> None:
        if self.people_next is not None and self.stage == CHAT:
            self.backend.users(self._people_request, self.people_query, after=self.people_next)
            self.people_next = None

    def switcher_search(self, query: str) -> None:
        """The quick switcher (Ctrl+K): conversations at once, people as the server answers."""
        if self.stage != CHAT:
            return
        self.switcher_query = query
        self._requests += 1
        self._switcher_request = self._requests
        self.backend.users(self._switcher_request, query.strip())
        self._show_switcher()

    def switcher_choose(self, key: str) -> None:
        self.switcher_query = None
        if key in self.conversations:
            self.select(key)
            return
        for user in self.switcher_people:
            if dm_key(user.name) == key:
                self.open_dm(user.name)
                return

    def _show_switcher(self) -> None:
        if self.switcher_query is None:
            return
        query = self.switcher_query.strip().casefold()
        rows = [
            SwitcherRow(c.key, self._title(c), self._presence_text(c))
            for c in self._ordered()
            if query in self._title(c).casefold()
        ]
        keys = {row.key for row in rows}
        for user in self.switcher_people:
            key = dm_key(user.name)
            if key not in keys and user.name.casefold() != self.user.casefold():
                detail = _("online") if user.online else _("offline")
                rows.append(SwitcherRow(key, sanitize_name(user.name), detail))
        self.view.show_switcher(rows)

    def tick(self) -> None:
        """Called every second or so: countdowns, saving read positions."""
        if self.stage != CHAT:
            return
        if self._reads_dirty and self.clock() - self._reads_saved_at > READ_SAVE_INTERVAL:
            self._save_reads()
        if self._highlight is not None and self._highlight[2] <= self.clock():
            self._highlight = None
        self.render()

    def _save_reads(self) -> None:
        if not self.user:
            return
        positions = self.preferences.read_positions(self.server, self.user) or {}
        for conversation in self.conversations.values():
            if conversation.conversation_id is not None:
                positions[conversation.conversation_id] = conversation.read_seq
        self.preferences.save_read_positions(self.server, self.user, positions)
        self._reads_dirty = False
        self._reads_saved_at = self.clock()

    # -- rendering -----------------------------------------------------------------------------

    def render(self) -> None:
        """Show what changed since the last call."""
        if self.stage != CHAT:
            return
        self._watch()
        now = self.wall()
        rows = [
            ConversationRow(
                c.key,
                self._title(c),
                c.unread,
                self._online(c),
                CHANNELS if c.kind in ("general", "channel") else DIRECT,
                c.mentions,
                *self._last_line(c, now),
            )
            for c in self._ordered()
        ]
        rows.sort(key=lambda row: row.section != CHANNELS)  # stable: recent first in each
        if (rows, self.selected) != self._shown_list:
            self._shown_list = (rows, self.selected)
            self.view.show_conversations(rows, self.selected)
        self._render_messages()
        conversation = self.conversations[self.selected]
        header = Header(
            self._title(conversation),
            self._subtitle(conversation),
            shared=conversation.kind in ("channel", "group") and conversation.member,
            settings=self._may_manage(conversation),
            note=_("archived") if conversation.archived else "",
        )
        if header != self._shown_header:
            self._shown_header = header
            self.view.show_header(header)
        context = self._composer_context(conversation)
        if context != self._shown_context:
            self._shown_context = context
            self.view.show_composer_context(context)
        if self._scroll_to is not None and self._scroll_to[0] == self.selected:
            row_id = f"seq:{self._scroll_to[1]}"
            if any(row.id == row_id for row in self._shown_rows):
                self._scroll_to = None
                self.view.scroll_to_row(row_id)
        composer = _("This channel is archived: it is read-only.") if conversation.archived else ""
        if composer != self._shown_composer:
            self._shown_composer = composer
            self.view.show_composer(composer)
        status = self._status()
        if status != self._shown_status:
            self._shown_status = status
            self.view.show_status(status)
        typing = self._typing_text(conversation)
        if typing != self._shown_typing:
            self._shown_typing = typing
            self.view.show_typing(typing)
        jump = self._jump(conversation)
        if jump != self._shown_jump:
            self._shown_jump = jump
            self.view.show_jump(jump)
        people = (
            [
                PersonRow(sanitize_name(u.name), self._is_online(u.name), u.name == self.user)
                for u in self.people
            ],
            self.people_next is not None,
        )
        if people != self._shown_people:
            self._shown_people = people
            self.view.show_people(*people)
        unread = sum(c.unread for c in self.conversations.values())
        title = (
            _("({n}) {user} — beseda").format(n=unread, user=self.user)
            if unread
            else _("{user} — beseda").format(user=self.user)
        )
        if title != self._shown_title:
            self._shown_title = title
            self.view.set_title(title)
        if self._ring:
            self._ring = False
            self.view.bell()

    def _render_messages(self) -> None:
        conversation = self.conversations[self.selected]
        rows = self._message_rows(conversation)
        old = self._shown_rows
        if self._shown_key != self.selected:
            self._shown_key, self._shown_rows = self.selected, rows
            self._row_cache = {}
            self.view.edit_messages(0, len(old), rows, reset=True)
            return
        if rows == old:
            return
        start = 0
        limit = min(len(old), len(rows))
        while start < limit and old[start] == rows[start]:
            start += 1
        end = 0
        while end < limit - start and old[-1 - end] == rows[-1 - end]:
            end += 1
        self._shown_rows = rows
        self.view.edit_messages(
            start,
            len(old) - start - end,
            rows[start : len(rows) - end],
            reset=False,
            # Reaching the bottom of an older part of the window is not reaching the newest:
            # following there would page on by itself.
            follow=conversation.timeline.attached,
        )

    def _message_rows(self, conversation: Conversation) -> list[MessageRow]:
        """The window's rows: a line above each day, the "new messages" line, and the
        messages, a sender's run of them grouped under one header."""
        rows: list[MessageRow] = []
        now = self.wall()
        day: tuple[int, int, int] | None = None
        item_day = (0, 0, 0)
        day_start = day_end = 0
        """The local day of the item, and its bounds (ms): a local time only when it ends."""
        group: tuple[str, int] | None = None
        """The sender (case-folded) and time (ms) of the header the next message may join."""
        marked = self._highlight
        marker = conversation.marker_seq
        highlight = marked[1] if marked is not None and marked[0] == conversation.key else None
        for item in conversation.timeline.visible():
            if isinstance(item, Outgoing):
                sender, ts, is_message = self.user, int(item.sent_at * 1000), True
            else:
                sender, ts, is_message = item.sender, item.ts, item.kind == "message"
            if not day_start <= ts < day_end:
                item_day = local_day(ts)
                day_start, day_end = day_bounds(item_day)
            if item_day != day:
                day, group = item_day, None
                label = day_label(item_day, now)
                year, month, date = item_day
                row_id = f"day:{year:04d}-{month:02d}-{date:02d}"
                rows.append(MessageRow(row_id, "", "", label, False, day=True))
            if marker is not None and isinstance(item, schema.Message) and item.seq >= marker:
                # Above the first unread one (change entries leave gaps in the seqs).
                rows.append(MessageRow("marker", "", "", _("New messages"), False, marker=True))
                marker, group = None, None
            folded = sender.casefold()
            continued = (
                is_message
                and group is not None
                and group[0] == folded
                and 0 <= ts - group[1] < GROUP_SECONDS * 1000
            )
            row = self._row(item, continued)
            if highlight is not None and isinstance(item, schema.Message) and item.seq == highlight:
                row = dataclasses.replace(row, highlight=True)
            rows.append(row)
            if not is_message:
                group = None
            elif not continued:
                group = (folded, ts)
        return rows

    def _row(self, item: Item, continued: bool = False) -> MessageRow:
        if isinstance(item, Outgoing):
            if item.failed is not None:
                note = _("not sent: {reason}").format(reason=item.failed)
            elif self.connection is ConnectionState.CONNECTED:
                note = _("sending…")
            else:
                note = _("waiting for connection…")
            return MessageRow(
                "out:" + item.local_id,
                sanitize_name(self.user),
                clock_time(int(item.sent_at * 1000)),
                sanitize(item.text),
                own=True,
                note=note,
                failed=item.failed is not None and not item.final,
                continued=continued,
                avatar=initials(self.user),
                colour=colour_of(self.user),
                quote=self._quote_text(item.quote),
                quote_seq=item.quote.seq if item.quote is not None else 0,
            )
        cache_key = (item.conversation, item.seq, continued)
        row = self._row_cache.get(cache_key)
        if row is None and item.kind != "message":
            row = MessageRow(
                f"seq:{item.seq}",
                sanitize_name(item.sender),
                clock_time(item.ts),
                describe_entry(item),
                own=False,
                event=True,
            )
            self._row_cache[cache_key] = row
        if row is None:
            own = item.sender.casefold() == self.user.casefold()
            row = MessageRow(
                f"seq:{item.seq}",
                sanitize_name(item.sender),
                clock_time(item.ts),
                sanitize(item.text),
                own=own,
                note="✓" if own else "",
                mention=self._mentions_me(item),
                continued=continued,
                avatar=initials(item.sender),
                colour=colour_of(item.sender),
                quote=self._quote_text(item.reply) if item.reply_to is not None else "",
                quote_seq=item.reply_to or 0,
                edited=item.edited is not None,
                reactions=tuple(ReactionChip(r.emoji, r.count, r.me) for r in item.reactions),
            )
            self._row_cache[cache_key] = row
        return row

    def _composer_context(self, conversation: Conversation) -> ComposerContext | None:
        key = conversation.key
        if self._editing is not None and self._editing[0] == key:
            message = conversation.timeline.find(self._editing[1])
            text = preview(message.text) if message is not None else ""
            return ComposerContext("edit", _("Edit message"), text)
        seq = self._replying.get(key)
        if seq is None:
            return None
        message = conversation.timeline.find(seq)
        if message is None:
            return ComposerContext("reply", _("Reply"), "")
        title = _("Reply to {name}").format(name=sanitize_name(message.sender))
        return ComposerContext("reply", title, preview(message.text))

    def _last_line(self, conversation: Conversation, now: float) -> tuple[str, str]:
        """The conversation list's preview of the last message, and when it came."""
        timeline = conversation.live or conversation.timeline
        item: Item | None = None
        if timeline.outgoing:
            item = timeline.outgoing[-1]
        elif timeline.messages:
            item = timeline.messages[-1]
        if item is None:
            last = conversation.last_activity if conversation.last_seq else 0
            return "", list_time(int(last * 1000), now) if last else ""
        ts = int(item.sent_at * 1000) if isinstance(item, Outgoing) else item.ts
        cached = self._previews.get(conversation.key)
        if cached is not None and cached[0] is item:
            text = cached[1]
        else:
            text = self._preview_of(conversation, item)
            self._previews[conversation.key] = (item, text)
        return text, list_time(ts, now)

    def _preview_of(self, conversation: Conversation, item: Item) -> str:
        if isinstance(item, Outgoing):
            return _("You: {text}").format(text=preview(item.text))
        if item.kind != "message":
            return preview(describe_entry(item))
        if item.sender.casefold() == self.user.casefold():
            return _("You: {text}").format(text=preview(item.text))
        if conversation.kind == "direct":
            return preview(item.text)
        return f"{sanitize_name(item.sender)}: {preview(item.text)}"

    @staticmethod
    def _quote_text(quote: schema.Quote | None) -> str:
        if quote is None:
            return _("A message not loaded")
        if quote.deleted:
            return _("A deleted message")
        return f"{sanitize_name(quote.sender)}: {preview(quote.text)}"

    def _watch_list(self) -> list[str]:
        """Whose presence the window shows: the people on the directory page, then the peers
        of the conversations, most recent first; each once, within the server's limit."""
        me = self.user.casefold()
        conversations: Iterable[Conversation] = self.conversations.values()
        if len(self.people) + len(self.conversations) > schema.MAX_WATCH:
            conversations = self._ordered()  # only then does the order matter
        names: dict[str, str] = {}
        for name in (
            *(user.name for user in self.people),
            *(c.peer for c in conversations if c.peer is not None),
        ):
            if name.casefold() != me:
                names.setdefault(name.casefold(), name)
        return list(names.values())[: schema.MAX_WATCH]

    def _watch(self) -> None:
        """Ask for the presence of exactly what is shown, when that changed: the server sends
        changes only for watched users."""
        names = self._watch_list()
        keys = frozenset(name.casefold() for name in names)
        if keys != self._watched:
            self._watched = keys
            self.backend.watch(names)

    def _ordered(self) -> list[Conversation]:
        return sorted(
            self.conversations.values(),
            key=lambda c: (-c.last_activity, c.key != GENERAL_KEY, c.key),
        )

    def _title(self, conversation: Conversation) -> str:
        if conversation.kind == "channel":
            return "# " + sanitize_name(conversation.name or conversation.key)
        if conversation.kind == "group":
            if not conversation.people:
                return _("Group")
            return ", ".join(sanitize_name(name) for name in conversation.people)
        if conversation.peer is None:
            return _("General")
        return sanitize_name(conversation.peer)

    def _is_online(self, name: str) -> bool:
        return self.presence.get(name.casefold(), False)

    def _online(self, conversation: Conversation) -> bool | None:
        return (
            None
            if conversation.peer is None or conversation.kind != "direct"
            else self._is_online(conversation.peer)
        )

    def _presence_text(self, conversation: Conversation) -> str:
        if conversation.kind in ("channel", "group"):
            return sanitize(conversation.topic)
        if conversation.peer is None:
            return _("everyone on this server")
        return _("online") if self._is_online(conversation.peer) else _("offline")

    def _subtitle(self, conversation: Conversation) -> str:
        if conversation.topic:
            return sanitize(conversation.topic)
        if conversation.kind == "channel":
            return ""
        if conversation.kind == "group":
            size = len(conversation.people) + 1
            return ngettext("{n} member", "{n} members", size).format(n=size)
        return self._presence_text(conversation)

    def _typing_text(self, conversation: Conversation) -> str:
        now = self.clock()
        for name, until in list(conversation.typing.items()):
            if until <= now:
                del conversation.typing[name]
        names = [sanitize_name(name) for name in conversation.typing]
        if not names:
            return ""
        if len(names) == 1:
            return _("{name} is typing…").format(name=names[0])
        if len(names) == 2:
            return _("{first} and {second} are typing…").format(first=names[0], second=names[1])
        return _("Several people are typing…")

    def _jump(self, conversation: Conversation) -> str:
        timeline = conversation.timeline
        if timeline.at_bottom and timeline.attached:
            return ""
        if conversation.unseen:
            return ngettext("{n} new message ↓", "{n} new messages ↓", conversation.unseen).format(
                n=conversation.unseen
            )
        return _("Jump to latest ↓")

    def _status(self) -> Status:
        waiting = len(self._outgoing)
        if self.connection is ConnectionState.CONNECTED:
            return Status("connected", "")  # all is well: nothing to read
        if self.connection is ConnectionState.RECONNECTING:
            seconds = math.ceil(self.retry_at - self.clock()) if self.retry_at else 0
            if seconds > 0:
                text = ngettext(
                    "Reconnecting in {n} second…", "Reconnecting in {n} seconds…", seconds
                ).format(n=seconds)
            else:
                text = _("Reconnecting…")
            if waiting:
                text += " " + ngettext(
                    "{n} message waits to be sent.", "{n} messages wait to be sent.", waiting
                ).format(n=waiting)
            return Status("reconnecting", text)
        if self.connection is ConnectionState.CONNECTING:
            return Status("connecting", _("Connecting…"))
        return Status("offline", _("Offline"))


def describe_entry(entry: schema.Entry) -> str:
    """The grey line of a change in a conversation ("Anna added Boris")."""
    who = sanitize_name(entry.sender)
    target = sanitize_name(entry.target or "")
    kind = entry.kind
    if kind == "created":
        return _("{who} created the conversation").format(who=who)
    if kind == "joined":
        return _("{who} joined").format(who=who)
    if kind == "left":
        return _("{who} left").format(who=who)
    if kind == "added":
        return _("{who} added {target}").format(who=who, target=target)
    if kind == "removed":
        return _("{who} removed {target}").format(who=who, target=target)
    if kind == "renamed":
        return _("{who} renamed the channel to {name}").format(
            who=who, name=sanitize_name(entry.name or "")
        )
    if kind == "topic":
        return _("{who} set the topic: {topic}").format(who=who, topic=sanitize(entry.topic or ""))
    if kind == "archived":
        return _("{who} archived the channel").format(who=who)
    if kind == "role":
        roles = {"owner": _("owner"), "admin": _("admin"), "member": _("member")}
        role = roles.get(entry.role or "", sanitize_name(entry.role or ""))
        return _("{who} made {target} {role}").format(who=who, target=target, role=role)
    return _("{who} changed the conversation").format(who=who)
