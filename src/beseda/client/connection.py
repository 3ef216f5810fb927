"""The client: one logical session over a succession of TCP connections."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import random
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import msgspec

from .. import tls as tlslib
from ..protocol import codec, errors, schema
from ..protocol.errors import BesedaError, ProtocolError

log = logging.getLogger(__name__)

T = TypeVar("T", bound=msgspec.Struct)
P = TypeVar("P", bound=msgspec.Struct)
"""A page of a list."""
Item = TypeVar("Item")
"""An item of a list."""

READ_LIMIT = 64 * 1024 * 1024
"""Largest line the client accepts from a server."""


class ConnectionLostError(BesedaError):
    """The connection dropped and the request cannot be retried (or reconnecting is off)."""


class ServerRefusedError(ConnectionRefusedError):
    """The server answered the connection with an error or ``bye`` instead of ``hello``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        """The wire error code (``too_many_connections``, ``server_shutdown``, ...)."""
        self.message = message


class ConnectionState(enum.Enum):
    OFFLINE = "offline"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A message new to this client (its own acknowledged messages included), exactly once."""

    message: schema.Message


@dataclass(frozen=True, slots=True)
class EntryReceived:
    """An entry other than a message (``created``, ``joined``, ``added``, ``removed``, ...),
    new to this client, exactly once and in order with the messages of its conversation."""

    entry: schema.Entry


@dataclass(frozen=True, slots=True)
class ReadMarker:
    """The user's read marker of ``conversation`` moved to ``seq`` (on another connection)."""

    conversation: str
    seq: int


@dataclass(frozen=True, slots=True)
class TypingStarted:
    """``user`` is typing in ``conversation`` (show it for ``schema.TYPING_EXPIRY`` s)."""

    conversation: str
    user: str


@dataclass(frozen=True, slots=True)
class PresenceChanged:
    user: str
    online: bool


@dataclass(frozen=True, slots=True)
class StateChanged:
    state: ConnectionState
    retry_in: float | None = None
    """While reconnecting: seconds until the next attempt."""
    reason: str | None = None
    """Why the connection went down or could not resume (an error code or text)."""
    error: BesedaError | None = None
    """When the client went offline for good because of a typed error (a changed
    certificate: :class:`~beseda.tls.CertificateChangedError`), that error."""


ClientEvent = (
    MessageReceived | EntryReceived | ReadMarker | TypingStarted | PresenceChanged | StateChanged
)

PROTOCOL: Final = 4
"""The protocol version this library speaks (sent at every login)."""


@dataclass(eq=False)
class _Pending:
    request: schema.Request
    result_type: type[msgspec.Struct]
    future: asyncio.Future[Any]
    retry: bool
    """Resent after a reconnect (reads, and sends: the client id makes them idempotent)."""
    attempts: int = 0


@dataclass
class _Conversation:
    cursor: int = 0
    held: dict[int, schema.Entry] = field(default_factory=dict)


class Client:
    """A beseda client with automatic reconnect and resume.

    ``cursors`` (conversation id → last seq seen) may be passed in to resume a previous run;
    :attr:`cursors` always holds the current ones.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 7878,
        *,
        reconnect: bool = True,
        min_backoff: float = 0.2,
        max_backoff: float = 15.0,
        connect_timeout: float = 10.0,
        cursors: dict[str, int] | None = None,
        max_rate_limit_retries: int = 50,
        tls: bool | ssl.SSLContext = False,
        fingerprint: str | None = None,
        heartbeat: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.heartbeat = heartbeat
        """Seconds of silence after which the client pings; no answer means a dead link."""
        self.fingerprint = fingerprint
        """When set, the server's certificate must have this SHA-256 fingerprint (pinning)."""
        self._tls: ssl.SSLContext | None
        if isinstance(tls, ssl.SSLContext):
            self._tls = tls
        elif fingerprint is not None:
            self._tls = tlslib.pinning_context()
        elif tls:
            self._tls = tlslib.verifying_context()
        else:
            self._tls = None
        self.reconnect = reconnect
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.connect_timeout = connect_timeout
        self.max_rate_limit_retries = max_rate_limit_retries
        self.user: str | None = None
        self.token: str | None = None
        self.hello: schema.Hello | None = None
        self.state = ConnectionState.OFFLINE
        self._conversations: dict[str, _Conversation] = {
            conversation: _Conversation(cursor) for conversation, cursor in (cursors or {}).items()
        }
        self._ids = itertools.count(1)
        self._pending: dict[int | str, _Pending] = {}
        self._events: asyncio.Queue[ClientEvent] = asyncio.Queue()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._last_seen = 0.0
        self._closed = False
        self._authenticated = asyncio.Event()
        self._priming = False
        """While true, gaps are not filled (the cursors are about to jump to the newest)."""
        self._watching: list[str] = []
        """The names of the last :meth:`watch`, sent again after every reconnect."""
        self._rewatch_task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection (raises ``OSError`` when the server cannot be reached)."""
        self._closed = False
        self._set_state(ConnectionState.CONNECTING)
        try:
            await self._open()
        except BaseException:
            self._set_state(ConnectionState.OFFLINE)
            raise
        self._set_state(ConnectionState.CONNECTED)

    async def close(self) -> None:
        """Close for good: no reconnect; pending requests fail with ConnectionLostError."""
        self._closed = True
        for task in (self._supervisor, self._sync_task, self._heartbeat_task, self._rewatch_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._drop_connection()
        self._fail_pending(lambda p: True, "The client was closed.")
        self._set_state(ConnectionState.OFFLINE)

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- requests ------------------------------------------------------------------------------

    async def register(
        self, username: str, password: str, *, backlog: bool = True
    ) -> schema.AuthResult:
        """Create an account and log in with it (``backlog`` as for :meth:`login`)."""
        result = await self._call(
            schema.Register(id=0, username=username, password=password, protocol=PROTOCOL),
            schema.AuthResult,
            retry=False,
        )
        await self._logged_in(result, backlog=backlog)
        return result

    async def login(
        self,
        username: str | None = None,
        password: str | None = None,
        *,
        token: str | None = None,
        backlog: bool = True,
    ) -> schema.AuthResult:
        """Log in with a password or a session token from an earlier login.

        With ``backlog=False`` only messages newer than the login are delivered: every
        conversation starts at its newest message (a UI loads older ones with :meth:`history`)
        instead of replaying its whole history through :meth:`sync`.
        """
        result = await self._call(
            schema.Login(
                id=0, username=username, password=password, token=token, protocol=PROTOCOL
            ),
            schema.AuthResult,
            retry=False,
        )
        await self._logged_in(result, backlog=backlog)
        return result

    async def logout(self) -> None:
        """Revoke this session's token; the connection stays open, logged out."""
        await self._call(schema.Logout(id=0), schema.Empty, retry=False)
        self.user = self.token = None
        self._watching = []  # the server forgot the watch set with the session
        self._authenticated.clear()

    async def send(self, text: str, *, client_id: str | None = None) -> schema.Message:
        """Post to the general room; returns the stored message once it is committed."""
        request = schema.Send(id=0, client_id=client_id or new_client_id(), text=text)
        result = await self._call(request, schema.SendResult)
        self._accept(result.message)
        return result.message

    async def dm(self, to: str, text: str, *, client_id: str | None = None) -> schema.Message:
        """Send a private message to ``to``."""
        request = schema.DirectMessage(
            id=0, to=to, client_id=client_id or new_client_id(), text=text
        )
        result = await self._call(request, schema.SendResult)
        self._accept(result.message)
        return result.message

    async def history(
        self,
        conversation: str | None = None,
        *,
        peer: str | None = None,
        before: int | None = None,
        after: int | None = None,
        around: int | None = None,
        limit: int = schema.DEFAULT_PAGE,
    ) -> schema.EntriesResult:
        """One page of history, oldest first, each message in its current state (text,
        ``edited``, ``reactions``, ``reply``); change entries are left out.

        ``before=result.entries[0].seq`` pages back (while ``result.more``);
        ``after=result.entries[-1].seq`` pages forward (while ``result.newer``); ``around``
        opens the page centred on one message. ``result.messages`` is the same list, by its
        version-2 name."""
        if conversation is None and peer is None:
            conversation = schema.GENERAL
        return await self._call(
            schema.History(
                id=0,
                conversation=conversation,
                peer=peer,
                before=before,
                after=after,
                around=around,
                limit=limit,
            ),
            schema.EntriesResult,
        )

    async def users(
        self, query: str = "", *, after: str | None = None, limit: int = schema.DEFAULT_PAGE
    ) -> schema.UsersResult:
        """A page of the user directory, filtered by ``query`` (server-side search)."""
        return await self._call(
            schema.Users(id=0, query=query, after=after, limit=limit), schema.UsersResult
        )

    async def watch(self, names: list[str]) -> schema.WatchResult:
        """Get presence changes for these users only (replacing the previous set; ``[]``
        stops them); at most ``schema.MAX_WATCH`` names.

        The reply's states (who is online now) are returned and also put on the event stream
        as :class:`PresenceChanged`, so an app that draws from the events needs nothing else.
        The set is remembered and sent again after every reconnect, whose reply's states
        likewise arrive as events: changes missed while away are covered.
        """
        names, previous = list(names), self._watching
        self._watching = names
        try:
            result = await self._call(schema.Watch(id=0, users=names), schema.WatchResult)
        except ProtocolError:
            if self._watching is names:  # refused: the server kept the previous set
                self._watching = previous
            raise
        self._watched(result)
        return result

    def _watched(self, result: schema.WatchResult) -> None:
        for user in result.users:
            self._events.put_nowait(PresenceChanged(user.name, user.online))

    async def _rewatch(self) -> None:
        names = self._watching
        if not names:
            return
        try:
            result = await self._call(schema.Watch(id=0, users=names), schema.WatchResult)
        except (BesedaError, OSError) as exc:
            log.info("watch after reconnect failed: %s", exc)  # the next resume tries again
            return
        if names is self._watching:  # else a newer watch() answers for itself
            self._watched(result)

    async def conversations(self) -> list[schema.ConversationInfo]:
        """Every conversation of the user, most recently active first (all pages)."""
        return await self._every_page(
            lambda after: schema.Conversations(id=0, after=after),
            schema.ConversationsPage,
            lambda page: page.conversations,
        )

    async def conversation(self, conversation: str) -> schema.ConversationInfo:
        """One conversation as the user sees it (unread and mention counts included)."""
        result = await self._call(
            schema.ConversationRequest(id=0, conversation=conversation),
            schema.ConversationResult,
        )
        return result.conversation

    # -- conversations (protocol 3) ------------------------------------------------------------

    async def post(
        self,
        conversation: str,
        text: str,
        client_id: str | None = None,
        *,
        reply_to: int | None = None,
    ) -> schema.Entry:
        """Post a message into any conversation one is a member of; returns the stored entry
        once it is committed (resent after a reconnect with the same client id).

        ``reply_to``: the seq of the message of the same conversation it answers; the
        entry's ``reply`` then quotes it."""
        request = schema.Post(
            id=0,
            conversation=conversation,
            client_id=client_id or new_client_id(),
            text=text,
            reply_to=reply_to,
        )
        result = await self._call(request, schema.PostResult)
        self._accept(result.entry)
        return result.entry

    # -- messages (protocol 4) -----------------------------------------------------------------

    async def edit(self, conversation: str, seq: int, text: str) -> schema.Entry:
        """Replace the text of one's own message; returns the ``edited`` entry (also
        delivered as :class:`EntryReceived`, exactly once)."""
        return await self._change(
            schema.Edit(id=0, conversation=conversation, seq=seq, text=text), retry=True
        )

    async def delete(self, conversation: str, seq: int) -> schema.Entry:
        """Delete a message (one's own; any, as a channel's owner or admin); returns the
        ``deleted`` entry. Its text is erased from the server."""
        return await self._change(
            schema.Delete(id=0, conversation=conversation, seq=seq), retry=True
        )

    async def react(self, conversation: str, seq: int, emoji: str) -> schema.ReactionResult:
        """Add an emoji reaction; the result has the message's reactions now and the
        ``reacted`` entry (None when the reaction was there already)."""
        return await self._reaction(
            schema.React(id=0, conversation=conversation, seq=seq, emoji=emoji)
        )

    async def unreact(self, conversation: str, seq: int, emoji: str) -> schema.ReactionResult:
        """Remove one's own emoji reaction (the entry is None when there was none)."""
        return await self._reaction(
            schema.Unreact(id=0, conversation=conversation, seq=seq, emoji=emoji)
        )

    async def _reaction(self, request: schema.Request) -> schema.ReactionResult:
        # Safe to resend after a reconnect: a second react or unreact changes nothing.
        result = await self._call(request, schema.ReactionResult)
        if result.entry is not None:
            self._accept(result.entry)
        return result

    async def search(
        self,
        query: str,
        *,
        conversation: str | None = None,
        order: str = "newest",
        cursor: str | None = None,
        limit: int = schema.DEFAULT_SEARCH_PAGE,
    ) -> schema.SearchResult:
        """One page of messages matching ``query`` (words, ``"phrases"``, ``from:``,
        ``in:``, ``before:``, ``after:``) in the conversations the user may read;
        ``cursor=result.next`` asks for the next page."""
        return await self._call(
            schema.Search(
                id=0,
                query=query,
                conversation=conversation,
                order=order,
                cursor=cursor,
                limit=limit,
            ),
            schema.SearchResult,
        )

    async def create_channel(
        self,
        name: str,
        *,
        public: bool = True,
        topic: str = "",
        members: Iterable[str] = (),
    ) -> schema.ConversationInfo:
        """Create a channel (its owner is the user); ``members`` are added at once."""
        request = schema.CreateChannel(
            id=0, name=name, public=public, topic=topic, members=list(members)
        )
        result = await self._call(request, schema.ConversationResult, retry=False)
        self._schedule_sync()  # its ``created`` entry
        return result.conversation

    async def create_group(self, members: Iterable[str]) -> schema.ConversationInfo:
        """Create a group of the user and ``members`` (3 to 32 people in all)."""
        request = schema.CreateGroup(id=0, members=list(members))
        result = await self._call(request, schema.ConversationResult, retry=False)
        self._schedule_sync()
        return result.conversation

    async def join(self, conversation: str) -> schema.ConversationInfo:
        """Join a public channel (a no-op when already a member)."""
        result = await self._call(
            schema.Join(id=0, conversation=conversation), schema.ConversationResult
        )
        self._schedule_sync()  # its ``joined`` entry and the history before it
        return result.conversation

    async def leave(self, conversation: str) -> None:
        await self._call(schema.Leave(id=0, conversation=conversation), schema.Empty, retry=False)
        self._schedule_sync()  # the ``left`` entry, the last one this user gets

    async def invite(self, conversation: str, names: Iterable[str]) -> list[schema.Entry]:
        """Add people to a channel (owners and admins) or a group (any member); returns the
        ``added`` entries (none for people who were members already)."""
        request = schema.Invite(id=0, conversation=conversation, users=list(names))
        result = await self._call(request, schema.EntriesResult, retry=False)
        for entry in result.entries:
            self._accept(entry)
        return result.entries

    async def remove(self, conversation: str, name: str) -> schema.Entry:
        return await self._change(schema.Remove(id=0, conversation=conversation, user=name))

    async def set_role(self, conversation: str, name: str, role: str) -> schema.Entry:
        return await self._change(
            schema.SetRole(id=0, conversation=conversation, user=name, role=role)
        )

    async def rename(self, conversation: str, name: str) -> schema.Entry:
        return await self._change(schema.Rename(id=0, conversation=conversation, name=name))

    async def set_topic(self, conversation: str, topic: str) -> schema.Entry:
        return await self._change(schema.SetTopic(id=0, conversation=conversation, topic=topic))

    async def archive(self, conversation: str) -> schema.Entry:
        return await self._change(schema.Archive(id=0, conversation=conversation))

    async def _change(self, request: schema.Request, *, retry: bool = False) -> schema.Entry:
        entry = await self._call(request, schema.Entry, retry=retry)
        self._accept(entry)
        return entry

    async def members(self, conversation: str) -> list[schema.MemberEntry]:
        """Every member of a conversation, by name (all pages)."""
        return await self._every_page(
            lambda after: schema.Members(
                id=0, conversation=conversation, after=after, limit=schema.MAX_PAGE
            ),
            schema.MembersResult,
            lambda page: page.members,
        )

    async def channels(self, query: str = "") -> list[schema.ChannelEntry]:
        """The channel directory (public channels and the private ones the user is in)."""
        return await self._every_page(
            lambda after: schema.Channels(id=0, query=query, after=after, limit=schema.MAX_PAGE),
            schema.ChannelsResult,
            lambda page: page.channels,
        )

    async def _every_page(
        self,
        request: Callable[[str | None], schema.Request],
        result_type: type[P],
        items: Callable[[P], list[Item]],
    ) -> list[Item]:
        """Ask for page after page (``next`` → ``after``) until the last; every item."""
        out: list[Item] = []
        after: str | None = None
        while True:
            page = await self._call(request(after), result_type)
            found = items(page)
            out.extend(found)
            following: str | None = getattr(page, "next", None)
            if following is None or not found:
                return out
            after = following

    async def read(self, conversation: str, seq: int) -> int:
        """Move the read marker forward to ``seq``; returns the marker now."""
        result = await self._call(
            schema.Read(id=0, conversation=conversation, seq=seq), schema.ReadResult
        )
        return result.seq

    async def typing(self, conversation: str) -> None:
        """Tell the other members the user is typing (the server passes it on at most once
        per ``schema.TYPING_INTERVAL`` seconds)."""
        await self._call(schema.Typing(id=0, conversation=conversation), schema.Empty, retry=False)

    async def ping(self) -> None:
        await self._call(schema.Ping(id=0), schema.Empty)

    async def sync(self) -> list[schema.Entry]:
        """Fetch everything after the cursors; returns the entries new to this client
        (messages and changes alike).

        They are also put on the event stream. Runs by itself after every (re)login.
        """
        new: list[schema.Entry] = []
        while True:
            cursors = {c: conv.cursor for c, conv in self._conversations.items()}
            result = await self._call(schema.Sync(id=0, cursors=cursors), schema.EntriesResult)
            first: set[str] = set()
            for entry in result.entries:
                if entry.conversation not in first:
                    first.add(entry.conversation)
                    # The server answers from the cursor or from the first entry this user
                    # may read (a group joined later, a return after a removal): nothing
                    # readable lies before the first entry of a conversation in the reply.
                    state = self._conversations.setdefault(entry.conversation, _Conversation())
                    if entry.seq > state.cursor + 1 and cursors.get(entry.conversation, 0) == (
                        state.cursor
                    ):
                        self.set_cursor(entry.conversation, entry.seq - 1)
                new.extend(self._accept(entry))
            if not result.more:
                return new

    @property
    def cursors(self) -> dict[str, int]:
        """Conversation id → seq of the last message delivered to this client."""
        return {c: conv.cursor for c, conv in self._conversations.items()}

    def set_cursor(self, conversation: str, seq: int) -> None:
        """Start delivering ``conversation`` after ``seq`` (e.g. after loading its history)."""
        state = self._conversations.setdefault(conversation, _Conversation())
        if seq > state.cursor:
            state.cursor = seq
            state.held = {s: m for s, m in state.held.items() if s > seq}

    async def events(self) -> AsyncIterator[ClientEvent]:
        """Messages, presence changes and connection state changes, as they happen."""
        while True:
            yield await self._events.get()

    def next_event_nowait(self) -> ClientEvent | None:
        try:
            return self._events.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def next_event(self, timeout: float | None = None) -> ClientEvent:
        return await asyncio.wait_for(self._events.get(), timeout)

    # -- the request machinery -----------------------------------------------------------------

    async def _call(
        self, request: schema.Request, result_type: type[T], *, retry: bool = True
    ) -> T:
        if self._closed:
            raise ConnectionLostError("The client is closed.")
        request.id = next(self._ids)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        pending = _Pending(request, result_type, future, retry)
        self._pending[request.id] = pending
        if self._writer is not None and (
            self._authenticated.is_set() or not retry or self.token is None
        ):
            self._write(request)
        elif self.state is not ConnectionState.RECONNECTING:
            del self._pending[request.id]
            raise ConnectionLostError("Not connected.")
        # else: queued; sent after the reconnect logs in again.
        try:
            return await future
        finally:
            self._pending.pop(request.id, None)

    def _write(self, request: schema.Request) -> None:
        assert self._writer is not None
        pending = self._pending.get(request.id)
        if pending is not None:
            pending.attempts += 1
        self._writer.write(codec.encode(request))

    async def _open(self) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                self.host,
                self.port,
                limit=READ_LIMIT,
                ssl=self._tls,
                server_hostname=self.host if self._tls else None,
            ),
            self.connect_timeout,
        )
        try:
            self._check_fingerprint(writer)
            line = await asyncio.wait_for(reader.readline(), self.connect_timeout)
            hello = codec.decode_server_message(line)
        except BaseException:
            writer.close()
            raise
        if isinstance(hello, schema.Bye | schema.Error):
            writer.close()
            raise ServerRefusedError(hello.code, hello.message)
        if not isinstance(hello, schema.Hello):
            writer.close()
            raise ProtocolError(errors.BAD_JSON, f"Expected hello, got {hello!r}")
        self.hello = hello
        self._writer = writer
        self._last_seen = asyncio.get_running_loop().time()
        self._reader_task = asyncio.create_task(self._read(reader), name="beseda-client-reader")
        if self._heartbeat_task is None or self._heartbeat_task.done():
            self._heartbeat_task = asyncio.create_task(self._keep_alive())

    async def _keep_alive(self) -> None:
        # A peer that vanished without closing (a cable pulled, a laptop asleep) sends no
        # FIN; without this the client would think itself connected forever.
        loop = asyncio.get_running_loop()
        while not self._closed:
            await asyncio.sleep(self.heartbeat / 2)
            writer = self._writer
            if writer is None or loop.time() - self._last_seen < self.heartbeat:
                continue
            try:
                await asyncio.wait_for(
                    self._call(schema.Ping(id=0), schema.Empty, retry=False), self.heartbeat / 2
                )
            except TimeoutError:
                log.info("no answer to a ping: the connection is dead")
                writer.transport.abort()
            except (BesedaError, OSError):
                pass

    def _check_fingerprint(self, writer: asyncio.StreamWriter) -> None:
        if self.fingerprint is None:
            return
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        actual = tlslib.certificate_fingerprint(der) if der else None
        if actual != self.fingerprint:
            raise tlslib.CertificateChangedError(
                f"{self.host}:{self.port}", self.fingerprint, actual
            )

    async def _read(self, reader: asyncio.StreamReader) -> None:
        reason: str | None = None
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                self._last_seen = asyncio.get_running_loop().time()
                message = codec.decode_server_message(line)
                if isinstance(message, schema.Bye):
                    reason = message.code
                else:
                    self._dispatch(message)
        except (OSError, ProtocolError, ValueError) as exc:
            reason = reason or str(exc)
        except asyncio.CancelledError:
            return
        self._connection_lost(reason or "connection closed")

    def _dispatch(self, message: schema.AnyServerMessage) -> None:
        if isinstance(message, schema.Result):
            pending = self._pending.get(message.id)
            if pending is not None and not pending.future.done():
                try:
                    data = codec.decode_data(message.data, pending.result_type)
                except msgspec.ValidationError as exc:
                    pending.future.set_exception(ProtocolError(errors.BAD_JSON, str(exc)))
                else:
                    pending.future.set_result(data)
        elif isinstance(message, schema.Error):
            pending = self._pending.get(message.id) if message.id is not None else None
            if pending is None:
                log.warning("server error: %s: %s", message.code, message.message)
                return
            if (
                message.code == errors.RATE_LIMITED
                and isinstance(pending.request, schema.Send | schema.DirectMessage | schema.Post)
                and pending.attempts <= self.max_rate_limit_retries
            ):
                # The message was not stored; send it again (same client id) when allowed.
                asyncio.get_running_loop().call_later(
                    message.retry_after or 1.0, self._resend, pending
                )
                return
            if not pending.future.done():
                pending.future.set_exception(
                    ProtocolError(
                        message.code,
                        message.message,
                        request_id=message.id,
                        retry_after=message.retry_after,
                    )
                )
        elif isinstance(message, schema.EntryEvent):
            self._accept(message.entry)
        elif isinstance(message, schema.MessageEvent):
            self._accept(message.message)
        elif isinstance(message, schema.ReadEvent):
            self._events.put_nowait(ReadMarker(message.conversation, message.seq))
        elif isinstance(message, schema.TypingEvent):
            self._events.put_nowait(TypingStarted(message.conversation, message.user))
        elif isinstance(message, schema.PresenceEvent):
            self._events.put_nowait(PresenceChanged(message.user, message.online))

    def _resend(self, pending: _Pending) -> None:
        if pending.future.done() or pending.request.id not in self._pending:
            return
        if self._writer is not None and self._authenticated.is_set():
            self._write(pending.request)
        # Otherwise the reconnect resends it.

    # -- exactly once, in order ----------------------------------------------------------------

    def _accept(self, message: schema.Entry) -> list[schema.Entry]:
        """Deliver ``message`` (an entry of any kind) if it is the next in its conversation;
        hold it if it is ahead (and fetch the gap); drop it if already delivered. Returns
        what was delivered."""
        state = self._conversations.setdefault(message.conversation, _Conversation())
        if message.seq <= state.cursor:
            return []
        if message.seq > state.cursor + 1:
            state.held[message.seq] = message
            self._schedule_sync()
            return []
        delivered = [message]
        state.cursor = message.seq
        while state.cursor + 1 in state.held:
            state.cursor += 1
            delivered.append(state.held.pop(state.cursor))
        for item in delivered:
            if item.kind == "message":
                self._events.put_nowait(MessageReceived(item))
            else:
                self._events.put_nowait(EntryReceived(item))
        return delivered

    def _schedule_sync(self) -> None:
        if self._priming:
            return
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = asyncio.create_task(self._background_sync())

    async def _background_sync(self) -> None:
        try:
            await self.sync()
        except (BesedaError, OSError) as exc:
            log.info("sync failed: %s", exc)

    # -- reconnecting --------------------------------------------------------------------------

    async def _logged_in(self, result: schema.AuthResult, *, backlog: bool = True) -> None:
        self.user = result.user
        self.token = result.token
        self._authenticated.set()
        if not backlog:
            # Messages arriving meanwhile are held, not gap-filled; the sync below delivers
            # whatever is newer than the cursors set here, exactly once.
            self._priming = True
            try:
                for entry in await self.conversations():
                    self.set_cursor(entry.conversation, entry.last_seq)
            finally:
                self._priming = False
        self._schedule_sync()

    def _connection_lost(self, reason: str) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            # The server closed its side (or the link broke): release the socket now, not
            # whenever the writer is collected.
            writer.close()
        self._authenticated.clear()
        if self._closed:
            return
        # Requests that cannot be repeated fail now; the rest wait for the reconnect.
        can_resume = self.reconnect and self.token is not None
        self._fail_pending(lambda p: not (p.retry and can_resume), f"Connection lost: {reason}")
        if not can_resume:
            self._set_state(ConnectionState.OFFLINE, reason=reason)
            return
        if self._supervisor is None or self._supervisor.done():
            # From now on requests queue for the reconnect instead of failing "not connected".
            self._set_state(ConnectionState.RECONNECTING, reason=reason)
            self._supervisor = asyncio.create_task(self._reconnect(reason))

    async def _reconnect(self, reason: str) -> None:
        delay = self.min_backoff
        while not self._closed:
            wait = delay * random.uniform(0.5, 1.0)
            self._set_state(ConnectionState.RECONNECTING, retry_in=wait, reason=reason)
            await asyncio.sleep(wait)
            delay = min(delay * 2, self.max_backoff)
            try:
                await self._open()
                await self._resume()
            except tlslib.TLSError as exc:
                # Never talk to an impostor; a person must decide.
                await self._drop_connection()
                self._fail_pending(lambda p: True, str(exc))
                self._set_state(ConnectionState.OFFLINE, reason=str(exc), error=exc)
                return
            except ProtocolError as exc:
                if exc.code == errors.BAD_CREDENTIALS:
                    # The token was revoked (logged out elsewhere): a person must log in.
                    self.token = None
                    await self._drop_connection()
                    self._fail_pending(lambda p: True, "The session ended; log in again.")
                    self._set_state(ConnectionState.OFFLINE, reason=exc.code)
                    return
                reason = exc.code
                await self._drop_connection()
            except (OSError, TimeoutError, ConnectionLostError) as exc:
                reason = str(exc) or type(exc).__name__
                await self._drop_connection()
            else:
                return

    async def _resume(self) -> None:
        token = self.token
        assert token is not None
        result = await self._call(
            schema.Login(id=0, token=token, protocol=PROTOCOL), schema.AuthResult, retry=False
        )
        self.user = result.user
        self._authenticated.set()
        self._set_state(ConnectionState.CONNECTED)
        # Unacknowledged requests go out again in their original order, same client ids.
        for pending in sorted(self._pending.values(), key=lambda p: int(p.request.id)):
            if pending.retry and not pending.future.done():
                self._write(pending.request)
        # A new connection watches nobody: send the set again (after the resent requests, so
        # it also outlasts a watch() that was waiting for the reconnect).
        if self._watching and (self._rewatch_task is None or self._rewatch_task.done()):
            self._rewatch_task = asyncio.create_task(self._rewatch())
        self._schedule_sync()

    async def _drop_connection(self) -> None:
        writer, self._writer = self._writer, None
        reader_task, self._reader_task = self._reader_task, None
        if reader_task is not None and reader_task is not asyncio.current_task():
            reader_task.cancel()
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    def _fail_pending(self, which: Any, text: str) -> None:
        for pending in list(self._pending.values()):
            if which(pending) and not pending.future.done():
                pending.future.set_exception(ConnectionLostError(text))

    def _set_state(
        self,
        state: ConnectionState,
        *,
        retry_in: float | None = None,
        reason: str | None = None,
        error: BesedaError | None = None,
    ) -> None:
        if state is self.state and state is not ConnectionState.RECONNECTING:
            return
        self.state = state
        self._events.put_nowait(StateChanged(state, retry_in, reason, error))


def new_client_id() -> str:
    """A fresh client message id (random, so retries after a restart stay unique)."""
    return uuid.uuid4().hex
