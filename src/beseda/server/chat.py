"""The chat core: typed requests in, typed results and bus events out.

It knows nothing of sockets, bytes or SQL. A transport hands it a :class:`Session` per
connection and each decoded request; storage, bus, delivery hub and hasher are handed in by the
composition root (``app.py``).

The order of work for a message is the promise of the protocol: validate, persist (commit),
publish to the bus (delivery), and only then return the acknowledgement.

A request is carried out in two parts. :meth:`Chat.begin` does everything that must happen in
the connection's order (validation, the rate limit, queueing the write) and returns either the
reply data or a future of it. For a message the future resolves after the commit, from the
storage's commit callback, which publishes first. So a connection can hand the store a run of
messages without waiting for each commit: they are committed together, published in commit
order, and acknowledged in request order by the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import unicodedata
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import emoji as emoji_data
import msgspec

from ..bus import (
    Bus,
    EntryPosted,
    Origin,
    PresenceChanged,
    ReadMoved,
    Registered,
    TokenRevoked,
    TypingStarted,
)
from ..protocol import codec, errors, schema
from ..protocol.errors import ProtocolError
from ..protocol.schema import GENERAL
from ..storage import (
    ConversationState,
    LookAlikeNameError,
    MemberChange,
    MessageDeletion,
    MessageEdit,
    NameTakenError,
    NewConversation,
    NewEntry,
    NewMessage,
    NoSuchMessageError,
    NotAuthorError,
    ReactionChange,
    SearchRequest,
    Storage,
    StorageError,
    TooManyReactionsError,
    UserRecord,
)
from . import accounts, search
from .accounts import NameKind
from .config import Limits
from .conversations import (
    ADMIN,
    CHANNEL,
    DIRECT,
    GROUP,
    MEMBER,
    OWNER,
    Conversation,
    Index,
    Membership,
    dm_conversation,
    dm_members,
    is_canonical_id,
    mentioned_names,
    unknown,
)
from .limits import Limiters

log = logging.getLogger(__name__)


class Peer(Protocol):
    """The core's view of a connection: an id, an address, a way to push typed events, and a
    way to close it with a reason."""

    conn_id: int
    address: str

    def send_event(self, event: codec.Outgoing) -> None:
        """Queue an event for sending, encoded by the connection (once per wire format for
        all connections, see ``codec.Outgoing``); never blocks."""

    def close(self, code: str, message: str | None = None) -> None:
        """Say why in a ``bye``, then close."""


@dataclass(eq=False, slots=True)
class Session:
    """Per-connection state of the core: who is logged in and with which token."""

    peer: Peer
    user: UserRecord | None = None
    token_hash: bytes | None = None
    last_write: asyncio.Future[msgspec.Struct] | None = None
    """The reply of the newest message in flight (queued, not yet committed), if any."""
    protocol: int = 2
    """The protocol version the client said it speaks at login (2 when it said nothing)."""

    @property
    def user_id(self) -> int | None:
        return None if self.user is None else self.user.id


class Hub(Protocol):
    """Where authenticated sessions are registered for live delivery (``delivery.py``)."""

    def attach(self, session: Session) -> None: ...

    def detach(self, session: Session) -> None:
        """Forget the session, its watch set included."""

    def watch(self, session: Session, user_ids: Iterable[int]) -> None:
        """Replace the session's watch set: it gets the presence changes of these users."""

    def sessions_of_token(self, user_id: int, token_hash: bytes) -> list[Session]:
        """The attached sessions of ``user_id`` logged in with this token."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


Outcome = msgspec.Struct | asyncio.Future[msgspec.Struct]
"""What :meth:`Chat.begin` returns: the reply data, or a future of it (a message in flight)."""

CHANNEL_NAME = NameKind("channel name", errors.INVALID_NAME)

_PIPELINED = (schema.Send, schema.DirectMessage, schema.Post, schema.Typing)
"""Requests that do not wait for the connection's messages in flight to commit."""

USER_CACHE_SIZE = 65_536
"""Users kept in memory by canonical name, so a direct message needs no database read. Names
never change and accounts are never deleted, so an entry cannot go stale in a way that matters:
only ``id`` and ``name`` are used from it (logins read the password hash from the store)."""


class Chat:
    """Accounts, general room, direct messages, history, sync, directory and presence."""

    def __init__(
        self,
        *,
        storage: Storage,
        bus: Bus,
        hub: Hub,
        hasher: accounts.PasswordHasher,
        limits: Limits,
        clock: Callable[[], int] = _now_ms,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        limiters: Limiters | None = None,
        search_index: bool = True,
    ) -> None:
        self._storage = storage
        self._search_index = search_index
        """False with ``--search-index off``: nothing is indexed, so ``search`` is refused."""
        self._bus = bus
        self._hub = hub
        self._hasher = hasher
        self._limits = limits
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        limiters = limiters or Limiters.in_memory(limits)
        self._throttle = limiters.logins
        self._message_rate = limiters.messages
        # Plain dicts, least recently used first (an OrderedDict's links cost another 40
        # bytes an entry, and a signed-in user has an entry in both).
        self._user_cache: dict[str, UserRecord] = {}
        self._users_by_id: dict[int, UserRecord] = {}
        self._registrations = limiters.registrations
        self._channel_creations = limiters.channels
        self._invitations = limiters.invitations
        self._typing: OrderedDict[tuple[int, str], float] = OrderedDict()
        """(user, conversation) → when its last typing event was passed on, oldest first."""
        self._reads = _ReadSlots(limits.reads_per_user)
        # A reply larger than a connection may hold unsent would get its reader dropped as a
        # slow consumer, and the same reply, and drop, at every retry.
        self._reply_bytes = min(limits.max_reply_bytes, limits.send_buffer_bytes // 2)
        self.index = Index()
        """Every conversation and membership (see ``conversations.py``)."""
        self._handlers: dict[type[schema.Request], Callable[..., Awaitable[Outcome]]] = {
            schema.Register: self._register,
            schema.Login: self._login,
            schema.Logout: self._logout,
            schema.Send: self._send,
            schema.DirectMessage: self._direct_message,
            schema.History: self._history,
            schema.Sync: self._sync,
            schema.Users: self._users,
            schema.Conversations: self._conversations,
            schema.Ping: self._ping,
            schema.Watch: self._watch,
            schema.Post: self._post_request,
            schema.CreateChannel: self._create_channel,
            schema.CreateGroup: self._create_group,
            schema.Join: self._join,
            schema.Leave: self._leave,
            schema.Invite: self._invite,
            schema.Remove: self._remove,
            schema.SetRole: self._set_role,
            schema.Rename: self._rename,
            schema.SetTopic: self._set_topic,
            schema.Archive: self._archive,
            schema.ConversationRequest: self._conversation,
            schema.Members: self._members,
            schema.Channels: self._channels,
            schema.Read: self._read,
            schema.Typing: self._typing_request,
            schema.Edit: self._edit,
            schema.Delete: self._delete,
            schema.React: self._react,
            schema.Unreact: self._react,
            schema.Search: self._search,
        }

    async def open(self) -> None:
        """Load the conversation index from storage (once, after the storage opened)."""
        self.index.load(
            await self._storage.load_conversations(), await self._storage.load_members()
        )

    async def handle(self, session: Session, request: schema.AnyRequest) -> msgspec.Struct:
        """Carry out one request; returns the reply data or raises ``ProtocolError``."""
        outcome = await self.begin(session, request)
        if isinstance(outcome, asyncio.Future):
            return await outcome
        return outcome

    async def begin(self, session: Session, request: schema.AnyRequest) -> Outcome:
        """Start one request: the part that must happen in the connection's order.

        Returns the reply data, or (for a message, once its write is queued) a future of it;
        raises ``ProtocolError`` for a request refused at once. Requests of one connection
        must be begun one after another, each after the previous ``begin`` returned.
        """
        handler = self._handlers[type(request)]
        if session.user is None and not isinstance(
            request, schema.Register | schema.Login | schema.Ping
        ):
            raise ProtocolError(errors.NOT_AUTHENTICATED)
        pending = session.last_write
        if pending is not None and not isinstance(request, _PIPELINED):
            # Anything else sees this connection's messages: a history or sync asked right
            # after a send includes it, and a logout comes after it.
            await asyncio.wait((pending,))
        return await handler(session, request)

    async def disconnect(self, session: Session) -> None:
        """The connection is gone: forget it and announce presence if it was the last."""
        await self._sign_out(session)

    # -- accounts ------------------------------------------------------------------------------

    async def _register(self, session: Session, request: schema.Register) -> schema.AuthResult:
        self._require_anonymous(session)
        name, key, skeleton = accounts.check_display_name(request.username, accounts.USERNAME)
        accounts.check_password(request.password)
        # Each registration costs a password hash: limit them per address.
        wait = await self._registrations.take(session.peer.address, self._monotonic())
        if wait:
            raise ProtocolError(
                errors.RATE_LIMITED,
                "Too many new accounts from your address; wait before trying again.",
                retry_after=round(wait, 3),
            )
        password_hash = await self._hasher.hash(request.password)
        try:
            user = await self._storage.create_user(
                name, key, password_hash, self._clock(), skeleton=skeleton
            )
        except LookAlikeNameError:
            # Which name it resembles is not said: the directory can be searched for it.
            raise ProtocolError(
                errors.NAME_TAKEN, f"The name {name!r} looks too much like a name that is taken."
            ) from None
        except NameTakenError:
            raise ProtocolError(errors.NAME_TAKEN, f"The name {name!r} is taken.") from None
        self._remember(user)
        # Everyone is in General, from its first entry.
        general = self.index.conversations[GENERAL]
        self.index.join(general, user.id, MEMBER, 1)
        await self._storage.set_members(GENERAL, [MemberChange(user.id)])
        self._bus.publish(Registered(user.id, self._origin(session)))
        session.protocol = request.protocol
        return await self._start_session(session, user)

    async def _login(self, session: Session, request: schema.Login) -> schema.AuthResult:
        self._require_anonymous(session)
        address = session.peer.address
        now = self._monotonic()
        if request.token is not None:
            await self._throttle.attempt(None, address, now)
            token_hash = accounts.hash_token(request.token)
            user = await self._storage.user_by_token(token_hash)
            if user is None:
                await self._throttle.failed(None, address, self._monotonic())
                raise ProtocolError(errors.BAD_CREDENTIALS, "The session token is not valid.")
            session.protocol = request.protocol
            return await self._authenticate(session, user, request.token, token_hash)
        if request.username is None or request.password is None:
            raise ProtocolError(
                errors.BAD_REQUEST, "login needs a username and password, or a token."
            )
        key = accounts.canonical_name(request.username)
        await self._throttle.attempt(key, address, now)
        try:
            user = await self._storage.user_by_key(key)
            right = await self._hasher.verify(
                user.password_hash if user else None, request.password
            )
        except BaseException:
            # Not a wrong guess (the hashing queue was full, the store failed): the password
            # was never checked, so the attempt must not count against the account.
            await self._throttle.succeeded(key, address)
            raise
        if not right:
            await self._throttle.failed(key, address, self._monotonic())
            raise ProtocolError(errors.BAD_CREDENTIALS)
        assert user is not None
        await self._throttle.succeeded(key, address)
        if self._hasher.needs_rehash(user.password_hash):
            try:
                new_hash = await self._hasher.hash(request.password)
            except ProtocolError:
                # The hashing queue is full: the password was right, so log in now and
                # upgrade the stored hash at a later login.
                log.info("conn %d: hash upgrade postponed", session.peer.conn_id)
            else:
                await self._storage.set_password_hash(user.id, new_hash)
        session.protocol = request.protocol
        return await self._start_session(session, user)

    async def _logout(self, session: Session, request: schema.Logout) -> schema.Empty:
        token_hash = session.token_hash
        if token_hash is not None:
            await self._storage.delete_token(token_hash)
            # The token is dead: so is every other connection that logged in with it.
            user_id = session.user_id
            if user_id is not None:
                for other in self._hub.sessions_of_token(user_id, token_hash):
                    if other is not session:
                        other.peer.close(errors.SESSION_ENDED)
                self._bus.publish(TokenRevoked(user_id, token_hash, self._origin(session)))
        await self._sign_out(session)
        return schema.Empty()

    def _origin(self, session: Session) -> Origin:
        return Origin(self._bus.node, session.peer.conn_id)

    def _require_anonymous(self, session: Session) -> None:
        if session.user is not None:
            raise ProtocolError(
                errors.ALREADY_AUTHENTICATED,
                f"This connection is logged in as {session.user.name!r}; log out first.",
            )

    async def _start_session(self, session: Session, user: UserRecord) -> schema.AuthResult:
        token, token_hash = accounts.new_token()
        await self._storage.add_token(token_hash, user.id, self._clock())
        return await self._authenticate(session, user, token, token_hash)

    async def _authenticate(
        self, session: Session, user: UserRecord, token: str, token_hash: bytes
    ) -> schema.AuthResult:
        if session.user is not None:  # a concurrent login on this connection won the race
            raise ProtocolError(errors.ALREADY_AUTHENTICATED)
        user = self._remember(user)
        session.user = user
        session.token_hash = token_hash
        self._hub.attach(session)
        if await self._bus.user_connected(user.id, user.name):
            self._bus.publish(PresenceChanged(user.id, user.name, online=True))
        log.info("conn %d: logged in as %s", session.peer.conn_id, user.name)
        return schema.AuthResult(user=user.name, token=token)

    async def _sign_out(self, session: Session) -> None:
        user = session.user
        if user is None:
            return
        self._hub.detach(session)
        session.user = session.token_hash = None
        if await self._bus.user_disconnected(user.id, user.name):
            self._bus.publish(PresenceChanged(user.id, user.name, online=False))

    # -- messages ------------------------------------------------------------------------------

    async def _send(self, session: Session, request: schema.Send) -> Outcome:
        assert session.user is not None
        general = self.index.conversations[GENERAL]
        return await self._post(session, general, None, request.client_id, request.text)

    async def _direct_message(self, session: Session, request: schema.DirectMessage) -> Outcome:
        assert session.user is not None
        recipient = await self._user_named(request.to)
        conversation = self._direct_with(session.user, recipient)
        return await self._post(session, conversation, recipient, request.client_id, request.text)

    async def _post_request(self, session: Session, request: schema.Post) -> Outcome:
        user = session.user
        assert user is not None
        conversation_id = self._conversation_id(session, request.conversation)
        recipient = None
        pair = dm_members(conversation_id)
        if pair is not None and self.index.get(conversation_id) is None and user.id in pair:
            # The first message of a direct conversation creates it, as ``dm`` does.
            other = pair[1] if pair[0] == user.id else pair[0]
            found = await self._user_by_id(other)
            if found is None:
                raise unknown(conversation_id)
            recipient = found
            conversation = self._direct_with(user, recipient)
        else:
            conversation = self.index.require_member(user.id, conversation_id)
            if pair is not None:
                other = pair[1] if pair[0] == user.id else pair[0]
                recipient = await self._user_by_id(other)
        if request.reply_to is not None:
            self._require_readable_seq(user.id, conversation, request.reply_to)
        return await self._post(
            session,
            conversation,
            recipient,
            request.client_id,
            request.text,
            v3=True,
            reply_to=request.reply_to,
        )

    def _direct_with(self, user: UserRecord, other: UserRecord) -> Conversation:
        """The direct conversation of two users, made in the index when it is new (its row is
        created with its first message)."""
        conversation_id = dm_conversation(user.id, other.id)
        conversation = self.index.get(conversation_id)
        if conversation is None:
            conversation = Conversation(conversation_id, DIRECT)
            self.index.add_conversation(conversation)
            self.index.join(conversation, user.id, MEMBER, 1)
            if other.id != user.id:
                self.index.join(conversation, other.id, MEMBER, 1)
        return conversation

    async def _post(
        self,
        session: Session,
        conversation: Conversation,
        recipient: UserRecord | None,
        client_id: str,
        text: str,
        *,
        v3: bool = False,
        reply_to: int | None = None,
    ) -> Outcome:
        sender = session.user
        assert sender is not None
        _check_text(text)
        if conversation.archived:
            raise ProtocolError(errors.ARCHIVED)
        mentions, mention_all = await self._mentions(sender, conversation, text)
        await self._pace(sender, conversation)
        conversation_id = conversation.id
        appended = self._storage.append_message(
            NewMessage(
                conversation_id,
                sender,
                recipient,
                client_id,
                text,
                self._clock(),
                mentions=mentions,
                mention_all=mention_all,
                reply_to=reply_to,
            )
        )
        result: asyncio.Future[msgspec.Struct] = asyncio.get_running_loop().create_future()
        # The members now, at the message's place in the stream (the set is never mutated).
        recipients = None if conversation.everyone else conversation.members
        legacy = conversation.everyone or conversation.kind == DIRECT
        origin = self._origin(session)

        def committed(appended: asyncio.Future[tuple[schema.Entry, bool]]) -> None:
            # Runs from the commit, in commit order, before anything else can run: so the
            # bus gets messages in commit order, and before the sender's acknowledgement.
            if session.last_write is result:
                session.last_write = None
            if appended.cancelled():
                result.cancel()
                return
            error = appended.exception()
            if error is not None:
                result.set_exception(_message_error(error))
                return
            stored, duplicate = appended.result()
            if duplicate:
                if stored.conversation != conversation_id or stored.text != text:
                    result.set_exception(ProtocolError(errors.CLIENT_ID_REUSED))
                    return
            else:
                if stored.seq > conversation.last_seq:
                    conversation.last_seq, conversation.last_ts = stored.seq, stored.ts
                self._bus.publish(EntryPosted(stored, recipients, origin, legacy))
            if v3:
                result.set_result(schema.PostResult(entry=stored, duplicate=duplicate))
            else:
                result.set_result(schema.SendResult(message=stored, duplicate=duplicate))

        appended.add_done_callback(committed)
        session.last_write = result
        return result

    async def _pace(self, sender: UserRecord, conversation: Conversation) -> None:
        """The message rate, for messages and the changes of them alike (edits, deletes,
        reactions: each is an entry every member receives).

        Over the rate, hold the request instead of refusing it while the backlog is short:
        a connection's requests are handled in order, so a fast sender is paced at the rate,
        keeps its order and needs no retries. Only a longer backlog is refused."""
        now = self._monotonic()
        wait = await self._message_rate.reserve(sender.id, now, self._limits.message_max_delay)
        if wait is None:
            retry = await self._message_rate.peek(sender.id, now) - self._limits.message_max_delay
            raise ProtocolError(errors.RATE_LIMITED, retry_after=round(max(retry, 0.001), 3))
        if wait > 0:
            await self._sleep(wait)
            if not conversation.is_member(sender.id):  # removed while the request was held
                raise unknown(conversation.id)

    async def _mentions(
        self, sender: UserRecord, conversation: Conversation, text: str
    ) -> tuple[tuple[UserRecord, ...], bool]:
        """The members a message mentions (by ``@name``; not the sender), and whether it
        mentions everyone (only where the sender may, see ``Index.may_mention_all``)."""
        if "@" not in text:
            return (), False
        names, everyone = mentioned_names(text, schema.MAX_MENTIONS)
        found: dict[int, UserRecord] = {}
        for name in names:
            key = accounts.canonical_name(name)
            user = self._user_cache.get(key)
            if user is None:
                user = await self._storage.user_by_key(key)
                if user is None:
                    continue
                self._remember(user)
            if user.id != sender.id and conversation.is_member(user.id):
                found[user.id] = user
        everyone = everyone and self.index.may_mention_all(sender.id, conversation)
        return tuple(found.values()), everyone

    async def _user_named(self, name: str) -> UserRecord:
        key = accounts.canonical_name(name)
        user = self._user_cache.get(key)
        if user is None:
            user = await self._storage.user_by_key(key)
            if user is None:
                raise ProtocolError(errors.UNKNOWN_USER, f"No user is named {name[:64]!r}.")
            self._remember(user)
        return user

    def _remember(self, user: UserRecord) -> UserRecord:
        """Keep ``user`` in the bounded caches by name and by id, as the most recently used;
        the record kept, which a session holds too. It is kept without the password hash (a
        password login reads the hash from the store, never from here) and with one string
        for name and key when they are equal: with the sockets, this record is most of what
        an idle signed-in connection holds (docs/architecture.md, "Lean sockets")."""
        cached = self._users_by_id.get(user.id)
        if cached is not None and cached.name == user.name and cached.key == user.key:
            user = cached
        else:
            key = user.name if user.key == user.name else user.key
            user = dataclasses.replace(user, key=key, password_hash="")
        users = self._user_cache
        users.pop(user.key, None)  # then in again: the most recently used is the last
        users[user.key] = user
        if len(users) > USER_CACHE_SIZE:
            del users[next(iter(users))]
        by_id = self._users_by_id
        by_id.pop(user.id, None)
        by_id[user.id] = user
        if len(by_id) > USER_CACHE_SIZE:
            del by_id[next(iter(by_id))]
        return user

    async def _user_by_id(self, user_id: int) -> UserRecord | None:
        """The user with this id, from the cache (a direct message needs no database read)."""
        user = self._users_by_id.get(user_id)
        if user is None:
            found = await self._storage.users_by_ids([user_id])
            if not found:
                return None
            user = found[0]
            self._remember(user)
        return user

    # -- reading -------------------------------------------------------------------------------

    def _conversation_id(self, session: Session, raw: str) -> str:
        """``raw`` if it is a conversation id in its exact canonical form (and, for a
        version-2 client, one of General or a direct conversation)."""
        if not is_canonical_id(raw) or (session.protocol < 3 and raw.startswith("c:")):
            raise unknown(raw)
        return raw

    async def _history(self, session: Session, request: schema.History) -> msgspec.Struct:
        user = session.user
        assert user is not None
        if (request.conversation is None) == (request.peer is None):
            raise ProtocolError(
                errors.BAD_REQUEST, "history needs exactly one of conversation or peer."
            )
        if request.peer is not None:
            peer = await self._user_named(request.peer)
            conversation_id = dm_conversation(user.id, peer.id)
            conversation = self.index.get(conversation_id)
        else:
            assert request.conversation is not None
            conversation_id = self._conversation_id(session, request.conversation)
            pair = dm_members(conversation_id)
            if pair is not None and user.id in pair:
                conversation = self.index.get(conversation_id)  # empty until its first message
            else:
                conversation = self.index.require_readable(user.id, conversation_id)
        if sum(x is not None for x in (request.before, request.after, request.around)) > 1:
            raise ProtocolError(
                errors.BAD_REQUEST, "history takes at most one of before, after and around."
            )
        readable = None if conversation is None else self.index.readable(user.id, conversation)
        newer = False
        if readable is None:
            entries: list[schema.Entry] = []
            more = False
        else:
            floor, ceiling = readable
            storage = self._storage
            async with self._reads.slot(user.id):
                if request.after is None and request.around is None:
                    entries, more = await storage.history(
                        conversation_id,
                        request.before,
                        request.limit,
                        floor=floor,
                        ceiling=ceiling,
                        max_bytes=self._reply_bytes,
                        reader=user.id,
                    )
                elif request.after is not None:
                    entries, newer = await storage.history_after(
                        conversation_id,
                        max(request.after, floor),
                        request.limit,
                        ceiling=ceiling,
                        reader=user.id,
                        max_bytes=self._reply_bytes,
                    )
                    more = request.after > floor  # the entries up to ``after`` are older
                else:
                    assert request.around is not None
                    # The message and the older half up to it, then the newer half.
                    older = max(1, (request.limit + 1) // 2)
                    entries, more = await storage.history(
                        conversation_id,
                        request.around + 1,
                        older,
                        floor=floor,
                        ceiling=ceiling,
                        max_bytes=self._reply_bytes // 2,
                        reader=user.id,
                    )
                    start = entries[-1].seq if entries else max(floor, request.around)
                    later, newer = (
                        await storage.history_after(
                            conversation_id,
                            start,
                            request.limit - len(entries),
                            ceiling=ceiling,
                            reader=user.id,
                            max_bytes=self._reply_bytes // 2,
                        )
                        if request.limit > len(entries)
                        else ([], start < ceiling)  # a page of one: is anything after it?
                    )
                    entries = entries + later
        if session.protocol < 3:
            return schema.HistoryResult(conversation=conversation_id, messages=entries, more=more)
        return schema.EntriesResult(
            conversation=conversation_id, entries=entries, more=more, newer=newer
        )

    async def _sync(self, session: Session, request: schema.Sync) -> msgspec.Struct:
        user = session.user
        assert user is not None
        cursors = request.cursors
        ranges: dict[str, tuple[int, int | None]] = {}
        legacy = session.protocol < 3
        seen_general = False
        for conversation, membership in self.index.of_user(user.id):
            seen_general = seen_general or conversation.everyone
            if legacy and not (conversation.everyone or conversation.kind == DIRECT):
                continue
            if not membership.active and conversation.id not in cursors:
                continue  # left before this client knew it: nothing to catch up on
            self._add_range(ranges, user.id, conversation, cursors.get(conversation.id, 0))
        if not seen_general:
            general = self.index.conversations[GENERAL]
            self._add_range(ranges, user.id, general, cursors.get(GENERAL, 0))
        if ranges:
            async with self._reads.slot(user.id):
                entries, more = await self._storage.entries_after(
                    ranges,
                    request.limit,
                    max_bytes=self._reply_bytes,
                    reader=user.id,
                    messages_only=legacy,
                )
        else:
            entries, more = [], False
        if legacy:
            return schema.SyncResult(messages=entries, more=more)
        return schema.EntriesResult(entries=entries, more=more)

    def _add_range(
        self,
        ranges: dict[str, tuple[int, int | None]],
        user_id: int,
        conversation: Conversation,
        cursor: int,
    ) -> None:
        readable = self.index.readable(user_id, conversation)
        if readable is None:
            return
        floor, ceiling = readable
        after = max(cursor, floor)
        if ceiling > after:
            ranges[conversation.id] = (after, ceiling)

    async def _users(self, session: Session, request: schema.Users) -> schema.UsersResult:
        # Without diacritics, as the directory's folded keys: "zoe" finds Zoë.
        query = search.fold(accounts.canonical_name(request.query.strip()))
        after = accounts.canonical_name(request.after) if request.after else None
        assert session.user is not None
        async with self._reads.slot(session.user.id):
            records = await self._storage.list_users(query, after, request.limit + 1)
        page = records[: request.limit]
        online = await self._bus.online([record.id for record in page])
        return schema.UsersResult(
            users=[schema.UserEntry(name=r.name, online=r.id in online) for r in page],
            next=page[-1].key if len(records) > request.limit else None,
        )

    async def _watch(self, session: Session, request: schema.Watch) -> schema.WatchResult:
        # Each name once (by its key), in the order asked; names nobody has are reported.
        wanted: dict[str, str] = {}
        for name in request.users:
            wanted.setdefault(accounts.canonical_name(name), name)
        by_key = {r.key: r for r in await self._storage.users_by_keys(list(wanted))}
        found = [by_key[key] for key in wanted if key in by_key]
        # Watch first, then read the state: a change after the read is an event after the
        # reply, so no change can fall between the two.
        self._hub.watch(session, [record.id for record in found])
        online = await self._bus.online([record.id for record in found])
        return schema.WatchResult(
            users=[schema.UserEntry(name=r.name, online=r.id in online) for r in found],
            unknown=[name for key, name in wanted.items() if key not in by_key],
        )

    async def _conversations(
        self, session: Session, request: schema.Conversations
    ) -> msgspec.Struct:
        user = session.user
        assert user is not None
        mine = sorted(
            self.index.of_user(user.id),
            key=lambda item: (-(item[0].last_ts or 0), item[0].id),
        )
        if not any(conversation.everyone for conversation, _ in mine):
            general = self.index.conversations[GENERAL]
            mine.append((general, Membership(MEMBER, 1)))
        if session.protocol < 3:
            # Version 2 knew General and direct conversations only, in one reply: the most
            # recent ones that fit one page of the largest size.
            legacy = [c for c, _ in mine if c.everyone or c.kind == DIRECT][: schema.MAX_PAGE * 5]
            peers = await self._peers(user.id, legacy)
            return schema.ConversationsResult(
                conversations=[
                    schema.ConversationEntry(
                        conversation=c.id,
                        peer=peers.get(c.id),
                        last_seq=c.last_seq,
                        last_ts=c.last_ts,
                    )
                    for c in legacy
                ]
            )
        start = 0
        if request.after is not None:
            marker = _page_marker_key(request.after)
            start = next(
                (i for i, (c, _) in enumerate(mine) if (-(c.last_ts or 0), c.id) > marker),
                len(mine),
            )
        page = mine[start : start + request.limit]
        infos = await self._infos(user.id, page)
        following = None
        if start + request.limit < len(mine) and page:
            last = page[-1][0]
            following = f"{last.last_ts or 0}:{last.id}"
        return schema.ConversationsPage(conversations=infos, next=following)

    async def _peers(self, user_id: int, conversations: Iterable[Conversation]) -> dict[str, str]:
        """The other party's name of each direct conversation."""
        wanted: dict[int, list[str]] = {}
        for conversation in conversations:
            pair = dm_members(conversation.id)
            if pair is not None:
                other = pair[1] if pair[0] == user_id else pair[0]
                wanted.setdefault(other, []).append(conversation.id)
        if not wanted:
            return {}
        known = self._users_by_id
        names = {uid: known[uid].name for uid in wanted if uid in known}
        missing = [uid for uid in wanted if uid not in names]
        if missing:
            for user in await self._storage.users_by_ids(missing):
                self._remember(user)
                names[user.id] = user.name
        return {cid: names[uid] for uid, cids in wanted.items() if uid in names for cid in cids}

    async def _infos(
        self, user_id: int, items: list[tuple[Conversation, Membership]]
    ) -> list[schema.ConversationInfo]:
        peers = await self._peers(user_id, (c for c, _ in items))
        # Unread starts at what the member may read: a group member added late has nothing
        # unread from before the entry that added them.
        markers = [
            (c.id, max(m.read_seq, m.from_seq - 1))
            for c, m in items
            if m.active and m.from_seq is not None and c.last_seq > max(m.read_seq, m.from_seq - 1)
        ]
        async with self._reads.slot(user_id):
            counts = await self._storage.unread_counts(user_id, markers, schema.MAX_UNREAD_COUNT)
        infos = []
        for conversation, membership in items:
            unread, mentions = counts.get(conversation.id, (0, 0))
            infos.append(
                schema.ConversationInfo(
                    conversation=conversation.id,
                    kind=conversation.kind,
                    name=conversation.name,
                    peer=peers.get(conversation.id),
                    topic=conversation.topic,
                    public=conversation.public,
                    archived=conversation.archived,
                    role=membership.role if membership.active else None,
                    member=membership.active,
                    members=(
                        self.index.everyone if conversation.everyone else len(conversation.members)
                    ),
                    last_seq=conversation.last_seq,
                    last_ts=conversation.last_ts,
                    read_seq=membership.read_seq,
                    unread=unread,
                    mentions=mentions,
                )
            )
        return infos

    async def _conversation(
        self, session: Session, request: schema.ConversationRequest
    ) -> schema.ConversationResult:
        user = session.user
        assert user is not None
        conversation_id = self._conversation_id(session, request.conversation)
        conversation = self.index.require_readable(user.id, conversation_id)
        membership = self.index.membership(user.id, conversation_id) or Membership(MEMBER, 1)
        (info,) = await self._infos(user.id, [(conversation, membership)])
        return schema.ConversationResult(conversation=info)

    async def _members(self, session: Session, request: schema.Members) -> schema.MembersResult:
        user = session.user
        assert user is not None
        conversation_id = self._conversation_id(session, request.conversation)
        conversation = self.index.require_readable(user.id, conversation_id)
        if conversation.everyone:
            # Everyone is in General: its member list is the directory.
            after = accounts.canonical_name(request.after) if request.after else None
            async with self._reads.slot(user.id):
                records = await self._storage.list_users("", after, request.limit + 1)
            page = records[: request.limit]
            roles: dict[int, str] = {}
        else:
            roles = conversation.roles
            async with self._reads.slot(user.id):
                records = await self._storage.users_by_ids(list(conversation.members))
            records.sort(key=lambda r: r.key)
            if request.after is not None:
                after = accounts.canonical_name(request.after)
                records = [r for r in records if r.key > after]
            page = records[: request.limit]
        online = await self._bus.online([r.id for r in page])
        return schema.MembersResult(
            members=[
                schema.MemberEntry(name=r.name, role=roles.get(r.id, MEMBER), online=r.id in online)
                for r in page
            ],
            next=page[-1].key if len(records) > request.limit else None,
        )

    async def _channels(self, session: Session, request: schema.Channels) -> schema.ChannelsResult:
        user = session.user
        assert user is not None
        # Without diacritics, as the user directory ("cafe" finds "Café").
        query = search.fold(accounts.canonical_name(request.query.strip()))
        after = accounts.canonical_name(request.after) if request.after else ""
        # Channels only (by their keys), not every direct conversation of the server.
        conversations = self.index.conversations
        channels = [conversations[GENERAL]] + [
            conversations[cid]
            for cid in self.index.by_key.values()
            if cid  # "": queued
        ]
        found = sorted(
            (
                c
                for c in channels
                if c.key is not None
                and c.key > after
                and query in search.fold(c.key)
                and (c.public or c.is_member(user.id))
            ),
            key=lambda c: c.key or "",
        )
        page = found[: request.limit]
        return schema.ChannelsResult(
            channels=[
                schema.ChannelEntry(
                    conversation=c.id,
                    name=c.name or "",
                    topic=c.topic,
                    public=c.public,
                    archived=c.archived,
                    members=self.index.everyone if c.everyone else len(c.members),
                    joined=c.is_member(user.id),
                )
                for c in page
            ],
            next=page[-1].key if len(found) > request.limit else None,
        )

    async def _read(self, session: Session, request: schema.Read) -> schema.ReadResult:
        user = session.user
        assert user is not None
        conversation_id = self._conversation_id(session, request.conversation)
        conversation = self.index.require_readable(user.id, conversation_id)
        membership = self.index.membership(user.id, conversation_id)
        readable = self.index.readable(user.id, conversation)
        if membership is None or readable is None:
            raise unknown(conversation_id)
        seq = min(request.seq, readable[1])
        if seq > membership.read_seq:
            membership.read_seq = seq
            await self._storage.set_read(user.id, conversation_id, seq)
            self._bus.publish(ReadMoved(user.id, conversation_id, seq, self._origin(session)))
        return schema.ReadResult(conversation=conversation_id, seq=membership.read_seq)

    async def _typing_request(self, session: Session, request: schema.Typing) -> schema.Empty:
        user = session.user
        assert user is not None
        conversation_id = self._conversation_id(session, request.conversation)
        conversation = self.index.require_member(user.id, conversation_id)
        if conversation.archived:
            raise ProtocolError(errors.ARCHIVED)
        now = self._monotonic()
        typing = self._typing
        # Forget stamps older than the interval, oldest first: O(1) amortised per request.
        while typing:
            oldest, stamp = next(iter(typing.items()))
            if now - stamp < schema.TYPING_INTERVAL:
                break
            del typing[oldest]
        key = (user.id, conversation_id)
        if key not in typing:
            typing[key] = now
            recipients = None if conversation.everyone else conversation.members
            self._bus.publish(TypingStarted(conversation_id, user.id, user.name, recipients))
        return schema.Empty()

    async def _ping(self, session: Session, request: schema.Ping) -> schema.Empty:
        return schema.Empty()

    # -- conversations -------------------------------------------------------------------------

    def _check_channel_name(self, raw: str, renaming: str | None = None) -> tuple[str, str, str]:
        """``(name, key, skeleton)`` of a new channel name (or ``renaming`` that channel):
        the username rules, unique after case folding and among look-alikes."""
        checked = accounts.check_display_name(raw, CHANNEL_NAME)
        name, key, skeleton = checked.name, checked.key, checked.skeleton
        holder = self.index.by_key.get(key)
        if key == GENERAL or (holder is not None and holder != renaming):
            raise ProtocolError(errors.NAME_TAKEN, f"A channel is named {name!r} already.")
        holder = self.index.by_skeleton.get(skeleton)
        if holder is not None and holder != renaming:
            raise ProtocolError(
                errors.NAME_TAKEN,
                f"The name {name!r} looks too much like a channel's that exists.",
            )
        return name, key, skeleton

    @staticmethod
    def _check_topic(topic: str) -> str:
        topic = topic.strip()
        if len(topic) > schema.MAX_TOPIC_CHARS:
            raise ProtocolError(
                errors.TOPIC_TOO_LONG,
                f"A topic has at most {schema.MAX_TOPIC_CHARS} characters.",
            )
        if any(unicodedata.category(c) in ("Cc", "Cf") for c in topic):
            raise ProtocolError(errors.BAD_REQUEST, "A topic may not hold control characters.")
        return topic

    def _require_room_for(self, user_id: int, name: str | None = None) -> None:
        if self.index.counted.get(user_id, 0) >= schema.MAX_MEMBERSHIPS:
            who = "You are" if name is None else f"{name} is"
            raise ProtocolError(
                errors.TOO_MANY_CONVERSATIONS,
                f"{who} in {schema.MAX_MEMBERSHIPS} channels and groups, the most there may be.",
            )

    async def _spend_creation(self, user: UserRecord) -> None:
        """One of the channels and groups a user may create per hour (both kinds count)."""
        wait = await self._channel_creations.take(user.id, self._monotonic())
        if wait:
            raise ProtocolError(
                errors.RATE_LIMITED,
                "You have created too many channels and groups recently; wait before "
                "creating more.",
                retry_after=round(wait, 3),
            )

    async def _spend_invitations(self, user: UserRecord, count: int) -> None:
        now = self._monotonic()
        for _ in range(count):
            wait = await self._invitations.take(user.id, now)
            if wait:
                raise ProtocolError(
                    errors.RATE_LIMITED,
                    "You have added too many people recently; wait before adding more.",
                    retry_after=round(wait, 3),
                )

    async def _people(self, names: Iterable[str], exclude: int) -> list[UserRecord]:
        """The users with these names (each once, not ``exclude``); unknown_user if any is
        nobody's."""
        wanted: dict[str, str] = {}
        for name in names:
            wanted.setdefault(accounts.canonical_name(name), name)
        by_key = {r.key: r for r in await self._storage.users_by_keys(list(wanted))}
        missing = [name for key, name in wanted.items() if key not in by_key]
        if missing:
            raise ProtocolError(
                errors.UNKNOWN_USER, f"No user is named {', '.join(n[:64] for n in missing)}."
            )
        return [by_key[key] for key in wanted if by_key[key].id != exclude]

    async def _create_channel(
        self, session: Session, request: schema.CreateChannel
    ) -> schema.ConversationResult:
        user = session.user
        assert user is not None
        name, key, skeleton = self._check_channel_name(request.name)
        topic = self._check_topic(request.topic)
        self._require_room_for(user.id)
        people = await self._people(request.members, user.id)
        for person in people:
            self._require_room_for(person.id, person.name)
        await self._spend_creation(user)
        await self._spend_invitations(user, len(people))
        members = (
            MemberChange(user.id, OWNER, join=True),
            *(MemberChange(p.id, MEMBER, join=True) for p in people),
        )
        # Hold the name while its creation is queued: a look-alike asked for meanwhile (no
        # database constraint knows skeletons) is refused too.
        self.index.by_key[key] = self.index.by_skeleton[skeleton] = ""
        try:
            return await self._create(
                session,
                NewConversation(
                    kind=CHANNEL,
                    creator=user,
                    ts=self._clock(),
                    name=name,
                    key=key,
                    topic=topic,
                    public=request.public,
                    members=members,
                ),
            )
        finally:
            if self.index.by_key.get(key) == "":
                del self.index.by_key[key]
            if self.index.by_skeleton.get(skeleton) == "":
                del self.index.by_skeleton[skeleton]

    async def _create_group(
        self, session: Session, request: schema.CreateGroup
    ) -> schema.ConversationResult:
        user = session.user
        assert user is not None
        people = await self._people(request.members, user.id)
        if not schema.MIN_GROUP_MEMBERS <= len(people) + 1 <= schema.MAX_GROUP_MEMBERS:
            raise ProtocolError(
                errors.GROUP_SIZE,
                f"A group has {schema.MIN_GROUP_MEMBERS} to {schema.MAX_GROUP_MEMBERS} "
                f"members, you included; this one would have {len(people) + 1}.",
            )
        for person_id, person_name in [(user.id, None)] + [(p.id, p.name) for p in people]:
            self._require_room_for(person_id, person_name)
        await self._spend_creation(user)
        await self._spend_invitations(user, len(people))
        members = (
            MemberChange(user.id, MEMBER, join=True),
            *(MemberChange(p.id, MEMBER, join=True) for p in people),
        )
        return await self._create(
            session, NewConversation(kind=GROUP, creator=user, ts=self._clock(), members=members)
        )

    async def _create(self, session: Session, new: NewConversation) -> schema.ConversationResult:
        try:
            state, entry = await self._storage.create_conversation(new)
        except NameTakenError:
            raise ProtocolError(
                errors.NAME_TAKEN, f"A channel is named {new.name!r} already."
            ) from None
        assert entry is not None
        assert session.user is not None
        conversation = Conversation.from_state(state)
        self.index.add_conversation(conversation)
        for change in new.members:
            self.index.join(conversation, change.user_id, change.role, 1)
        self._bus.publish(
            EntryPosted(
                entry,
                conversation.members,
                self._origin(session),
                state=_state_of(conversation),
                changes=new.members,
            )
        )
        membership = self.index.membership(session.user.id, conversation.id)
        assert membership is not None
        (info,) = await self._infos(session.user.id, [(conversation, membership)])
        return schema.ConversationResult(conversation=info)

    async def _change(
        self,
        session: Session,
        conversation: Conversation,
        new: NewEntry,
        *,
        joining: tuple[MemberChange, ...] = (),
        leaving: tuple[int, ...] = (),
        undo: Callable[[], None] | None = None,
    ) -> schema.Entry:
        """Store one change of ``conversation`` as its next entry and deliver it.

        The index is changed first (so every request after this one sees the change) and
        put back if the write fails; the entry goes to the members before the change and
        after it, so the one who left or was removed gets it, and nothing after it."""
        index = self.index
        before = conversation.members
        memberships: list[tuple[int, Membership | None, str | None]] = []
        for change in joining:
            memberships.append(
                (
                    change.user_id,
                    index.membership(change.user_id, conversation.id),
                    conversation.roles.get(change.user_id),
                )
            )
            index.join(conversation, change.user_id, change.role, 1 if change.from_start else None)
        for user_id in leaving:
            memberships.append(
                (
                    user_id,
                    index.membership(user_id, conversation.id),
                    conversation.roles.get(user_id),
                )
            )
            index.leave(conversation, user_id)
        recipients = before | conversation.members
        try:
            entry = await self._storage.append_entry(new)
        except BaseException:
            self._undo(conversation, before, memberships)
            if undo is not None:
                undo()  # the caller's own change of the conversation, made before the write
            raise
        for change in joining:
            membership = index.membership(change.user_id, conversation.id)
            if membership is not None and membership.from_seq is None:
                membership.from_seq = entry.seq
        for user_id in leaving:
            membership = index.membership(user_id, conversation.id)
            if membership is not None and not membership.active:
                membership.until_seq = entry.seq
        if entry.seq > conversation.last_seq:
            conversation.last_seq, conversation.last_ts = entry.seq, entry.ts
        self._bus.publish(
            EntryPosted(
                entry,
                recipients,
                self._origin(session),
                state=_state_of(conversation),
                changes=new.members,
            )
        )
        return entry

    def _undo(
        self,
        conversation: Conversation,
        before: frozenset[int],
        undo: list[tuple[int, Membership | None, str | None]],
    ) -> None:
        index = self.index
        for user_id, membership, role in reversed(undo):
            was_counted = user_id in conversation.members
            memberships = index.memberships.setdefault(user_id, {})
            if membership is None:
                memberships.pop(conversation.id, None)
            else:
                memberships[conversation.id] = membership
                membership.active = user_id in before
            if role is None:
                conversation.roles.pop(user_id, None)
            else:
                conversation.roles[user_id] = role
            if conversation.kind != DIRECT and was_counted != (user_id in before):
                index.counted[user_id] = index.counted.get(user_id, 0) + (
                    1 if user_id in before else -1
                )
        conversation.members = before

    def _managed(self, session: Session, raw: str) -> tuple[UserRecord, Conversation]:
        user = session.user
        assert user is not None
        conversation = self.index.require_member(user.id, self._conversation_id(session, raw))
        self.index.require_manager(user.id, conversation)
        return user, conversation

    async def _join(self, session: Session, request: schema.Join) -> schema.ConversationResult:
        user = session.user
        assert user is not None
        conversation_id = self._conversation_id(session, request.conversation)
        conversation = self.index.get(conversation_id)
        if conversation is None or not (conversation.kind == CHANNEL and conversation.public):
            if conversation is None or not conversation.is_member(user.id):
                raise unknown(conversation_id)  # a private channel does not exist for you
        elif not conversation.is_member(user.id):
            if conversation.archived:
                raise ProtocolError(errors.ARCHIVED)
            self._require_room_for(user.id)
            change = MemberChange(user.id, MEMBER, join=True)
            await self._change(
                session,
                conversation,
                NewEntry(conversation_id, "joined", user, self._clock(), members=(change,)),
                joining=(change,),
            )
        return await self._conversation(
            session, schema.ConversationRequest(id=request.id, conversation=conversation_id)
        )

    async def _leave(self, session: Session, request: schema.Leave) -> schema.Empty:
        user = session.user
        assert user is not None
        conversation = self.index.require_member(
            user.id, self._conversation_id(session, request.conversation)
        )
        if conversation.everyone or conversation.kind == DIRECT:
            raise ProtocolError(
                errors.NOT_ALLOWED,
                "Everyone is in General."
                if conversation.everyone
                else "A direct conversation cannot be left.",
            )
        if conversation.roles.get(user.id) == OWNER and len(conversation.members) > 1:
            owners = [u for u, r in conversation.roles.items() if r == OWNER]
            if owners == [user.id]:
                raise ProtocolError(
                    errors.NOT_ALLOWED,
                    "You are the channel's only owner: make another member an owner first.",
                )
        await self._change(
            session,
            conversation,
            NewEntry(
                conversation.id,
                "left",
                user,
                self._clock(),
                members=(MemberChange(user.id, leave=True),),
            ),
            leaving=(user.id,),
        )
        return schema.Empty()

    async def _invite(self, session: Session, request: schema.Invite) -> schema.EntriesResult:
        user = session.user
        assert user is not None
        conversation = self.index.require_member(
            user.id, self._conversation_id(session, request.conversation)
        )
        if conversation.everyone or conversation.kind == DIRECT:
            raise ProtocolError(errors.NOT_ALLOWED, "Nobody is added to General or a direct chat.")
        self.index.may_add(user.id, conversation)
        if conversation.archived:
            raise ProtocolError(errors.ARCHIVED)
        people = [
            p
            for p in await self._people(request.users, user.id)
            if not conversation.is_member(p.id)
        ]
        if (
            conversation.kind == GROUP
            and len(conversation.members) + len(people) > schema.MAX_GROUP_MEMBERS
        ):
            raise ProtocolError(
                errors.GROUP_SIZE, f"A group has at most {schema.MAX_GROUP_MEMBERS} members."
            )
        for person in people:
            self._require_room_for(person.id, person.name)
        await self._spend_invitations(user, len(people))
        from_start = conversation.kind == CHANNEL
        entries = []
        for person in people:
            change = MemberChange(person.id, MEMBER, join=True, from_start=from_start)
            entries.append(
                await self._change(
                    session,
                    conversation,
                    NewEntry(
                        conversation.id,
                        "added",
                        user,
                        self._clock(),
                        target=person,
                        members=(change,),
                    ),
                    joining=(change,),
                )
            )
        return schema.EntriesResult(conversation=conversation.id, entries=entries, more=False)

    async def _member_named(self, conversation: Conversation, name: str) -> UserRecord:
        target = await self._user_named(name)
        if not conversation.is_member(target.id):
            raise ProtocolError(errors.NOT_A_MEMBER, f"{target.name} is not a member.")
        return target

    async def _remove(self, session: Session, request: schema.Remove) -> schema.Entry:
        user, conversation = self._managed(session, request.conversation)
        target = await self._member_named(conversation, request.user)
        if target.id == user.id:
            raise ProtocolError(errors.NOT_ALLOWED, "Use leave to leave a channel.")
        if conversation.roles.get(target.id) == OWNER and conversation.roles.get(user.id) != OWNER:
            raise ProtocolError(errors.NOT_ALLOWED, "Only an owner may remove an owner.")
        return await self._change(
            session,
            conversation,
            NewEntry(
                conversation.id,
                "removed",
                user,
                self._clock(),
                target=target,
                members=(MemberChange(target.id, leave=True),),
            ),
            leaving=(target.id,),
        )

    async def _set_role(self, session: Session, request: schema.SetRole) -> schema.Entry:
        user, conversation = self._managed(session, request.conversation)
        if request.role not in (OWNER, ADMIN, MEMBER):
            raise ProtocolError(errors.BAD_REQUEST, "A role is owner, admin or member.")
        target = await self._member_named(conversation, request.user)
        mine = conversation.roles.get(user.id)
        theirs = conversation.roles.get(target.id)
        if OWNER in (request.role, theirs) and mine != OWNER:
            raise ProtocolError(errors.NOT_ALLOWED, "Only an owner may make or unmake owners.")
        if theirs == OWNER and request.role != OWNER:
            owners = [u for u, r in conversation.roles.items() if r == OWNER]
            if owners == [target.id]:
                raise ProtocolError(errors.NOT_ALLOWED, "A channel keeps at least one owner.")
        self.index.set_role(conversation, target.id, request.role)
        return await self._change(
            session,
            conversation,
            NewEntry(
                conversation.id,
                "role",
                user,
                self._clock(),
                target=target,
                role=request.role,
                members=(MemberChange(target.id, request.role),),
            ),
            undo=lambda: self.index.set_role(conversation, target.id, theirs or MEMBER),
        )

    async def _rename(self, session: Session, request: schema.Rename) -> schema.Entry:
        user, conversation = self._managed(session, request.conversation)
        if conversation.everyone:
            raise ProtocolError(errors.NOT_ALLOWED)
        name, key, _ = self._check_channel_name(request.name, renaming=conversation.id)
        old_name, old_key = conversation.name, conversation.key
        assert old_name is not None
        assert old_key is not None  # a channel has a name
        self.index.rename(conversation, name, key)
        return await self._change(
            session,
            conversation,
            NewEntry(conversation.id, "renamed", user, self._clock(), name=name, key=key),
            undo=lambda: self.index.rename(conversation, old_name, old_key),
        )

    async def _set_topic(self, session: Session, request: schema.SetTopic) -> schema.Entry:
        user, conversation = self._managed(session, request.conversation)
        topic = self._check_topic(request.topic)
        old = conversation.topic
        conversation.topic = topic

        def undo() -> None:
            conversation.topic = old

        return await self._change(
            session,
            conversation,
            NewEntry(conversation.id, "topic", user, self._clock(), topic=topic),
            undo=undo,
        )

    async def _archive(self, session: Session, request: schema.Archive) -> schema.Entry:
        user, conversation = self._managed(session, request.conversation)
        if conversation.archived:
            raise ProtocolError(errors.ARCHIVED)
        conversation.archived = True

        def undo() -> None:
            conversation.archived = False

        return await self._change(
            session,
            conversation,
            NewEntry(conversation.id, "archived", user, self._clock(), archived=True),
            undo=undo,
        )

    # -- replies, edits, deletes, reactions (version 4) ----------------------------------------

    def _require_readable_seq(self, user_id: int, conversation: Conversation, seq: int) -> None:
        """``unknown_message`` unless the user may read the entry at ``seq``."""
        readable = self.index.readable(user_id, conversation)
        if readable is None or not readable[0] < seq <= readable[1]:
            raise ProtocolError(errors.UNKNOWN_MESSAGE, f"No message {seq} here.")

    def _message_target(
        self, session: Session, raw: str, seq: int
    ) -> tuple[UserRecord, Conversation]:
        user = session.user
        assert user is not None
        conversation = self.index.require_member(user.id, self._conversation_id(session, raw))
        self._require_readable_seq(user.id, conversation, seq)
        return user, conversation

    async def _deliver_change(
        self, session: Session, conversation: Conversation, write: asyncio.Future[schema.Entry]
    ) -> schema.Entry:
        """Await a change's commit, then publish its entry to the members."""
        try:
            entry = await write
        except StorageError as exc:
            raise _message_error(exc) from None
        self._publish_change(session, conversation, entry)
        return entry

    def _publish_change(
        self, session: Session, conversation: Conversation, entry: schema.Entry
    ) -> None:
        if entry.seq > conversation.last_seq:
            conversation.last_seq, conversation.last_ts = entry.seq, entry.ts
        recipients = None if conversation.everyone else conversation.members
        self._bus.publish(EntryPosted(entry, recipients, self._origin(session)))

    async def _edit(self, session: Session, request: schema.Edit) -> schema.Entry:
        user, conversation = self._message_target(session, request.conversation, request.seq)
        _check_text(request.text)
        if conversation.archived:
            raise ProtocolError(errors.ARCHIVED)
        await self._pace(user, conversation)
        edit = MessageEdit(conversation.id, request.seq, user, request.text, self._clock())
        return await self._deliver_change(session, conversation, self._storage.edit_message(edit))

    async def _delete(self, session: Session, request: schema.Delete) -> schema.Entry:
        user, conversation = self._message_target(session, request.conversation, request.seq)
        # A channel's owners and admins delete anyone's messages; everyone else their own.
        manager = conversation.kind == CHANNEL and conversation.roles.get(user.id) in (
            OWNER,
            ADMIN,
        )
        await self._pace(user, conversation)
        deletion = MessageDeletion(
            conversation.id, request.seq, user, self._clock(), author_only=not manager
        )
        return await self._deliver_change(
            session, conversation, self._storage.delete_message(deletion)
        )

    async def _react(
        self, session: Session, request: schema.React | schema.Unreact
    ) -> schema.ReactionResult:
        user, conversation = self._message_target(session, request.conversation, request.seq)
        emoji = check_emoji(request.emoji)
        if conversation.archived:
            raise ProtocolError(errors.ARCHIVED)
        await self._pace(user, conversation)
        change = ReactionChange(
            conversation.id,
            request.seq,
            user,
            emoji,
            add=isinstance(request, schema.React),
            ts=self._clock(),
            max_distinct=schema.MAX_REACTIONS,
        )
        try:
            entry, reactions = await self._storage.set_reaction(change)
        except StorageError as exc:
            raise _message_error(exc) from None
        if entry is not None:
            self._publish_change(session, conversation, entry)
        return schema.ReactionResult(
            conversation=conversation.id, seq=request.seq, reactions=reactions, entry=entry
        )

    # -- search --------------------------------------------------------------------------------

    async def _search(self, session: Session, request: schema.Search) -> schema.SearchResult:
        user = session.user
        assert user is not None
        if not self._search_index:
            raise ProtocolError(errors.SEARCH_OFF)
        if request.order not in schema.SEARCH_ORDERS:
            raise ProtocolError(errors.BAD_REQUEST, "order is newest or best.")
        query = search.parse_query(request.query)
        best = request.order == "best" and query.terms != []
        cursor = _search_cursor(request.cursor, best)
        readable = self._readable_everywhere(user.id)
        wanted = list(query.conversations)
        if request.conversation is not None:
            wanted.append(request.conversation)
        for raw in wanted:
            # Each in: narrows the search to that conversation (two different ones: nothing).
            named = await self._named_conversation(user, raw)
            window = readable.get(named) if named is not None else None
            readable = {named: window} if named is not None and window is not None else {}
        senders: tuple[int, ...] = ()
        if query.senders:
            keys = [accounts.canonical_name(name) for name in query.senders]
            found = await self._storage.users_by_keys(keys)
            if len({r.key for r in found}) < len(set(keys)):
                readable = {}  # from: someone nobody is: nothing matches
            senders = tuple(r.id for r in found)
        if len(senders) > 1:
            readable = {}  # one sender at a time: from:a from:b matches no message
        async with self._reads.slot(user.id):
            entries, following = await self._storage.search(
                SearchRequest(
                    match=query.fts(),
                    readable=readable,
                    reader=user.id,
                    senders=senders,
                    before=query.before,
                    after=query.after,
                    best=best,
                    cursor=cursor,
                    limit=request.limit,
                )
            )
        hits = []
        for entry in entries:
            text, spans = search.snippet(entry.text, query.terms)
            hits.append(
                schema.SearchHit(
                    conversation=entry.conversation,
                    seq=entry.seq,
                    id=entry.id,
                    sender=entry.sender,
                    ts=entry.ts,
                    snippet=text,
                    highlights=spans,
                    edited=entry.edited,
                    reply_to=entry.reply_to,
                )
            )
        next_cursor = None
        if following is not None:
            next_cursor = f"{'b' if best else 'n'}:{following}"
        return schema.SearchResult(results=hits, next=next_cursor)

    def _readable_everywhere(self, user_id: int) -> dict[str, tuple[int, int]]:
        """Every conversation the user may read, with the seqs they may read of it."""
        windows: dict[str, tuple[int, int]] = {}
        for conversation, _ in self.index.of_user(user_id):
            window = self.index.readable(user_id, conversation)
            if window is not None and window[1] > window[0]:
                windows[conversation.id] = window
        general = self.index.conversations[GENERAL]
        if GENERAL not in windows:
            window = self.index.readable(user_id, general)
            if window is not None:
                windows[GENERAL] = window
        return windows

    async def _named_conversation(self, user: UserRecord, raw: str) -> str | None:
        """The conversation an ``in:`` names: an id, ``@name`` (the direct conversation with
        them) or a channel's name; None when it names none."""
        if raw.startswith("@"):
            key = accounts.canonical_name(raw[1:])
            found = await self._storage.users_by_keys([key])
            return dm_conversation(user.id, found[0].id) if found else None
        if is_canonical_id(raw) and self.index.get(raw) is not None:
            return raw
        channel = self.index.by_key.get(accounts.canonical_name(raw.removeprefix("#")))
        if channel is None and accounts.canonical_name(raw.removeprefix("#")) == GENERAL:
            return GENERAL
        return channel or None


def _check_text(text: str) -> None:
    """The rules of a message's text (posted or edited)."""
    if not text.strip():
        raise ProtocolError(errors.EMPTY_MESSAGE)
    if len(text) > schema.MAX_TEXT_CHARS:
        raise ProtocolError(
            errors.MESSAGE_TOO_LONG,
            f"A message may have at most {schema.MAX_TEXT_CHARS} characters; "
            f"this one has {len(text)}.",
        )
    if "\x00" in text:
        # No store can be asked to keep it (PostgreSQL's text cannot), and no person types it.
        raise ProtocolError(errors.BAD_REQUEST, "A message may not hold the character U+0000.")


def check_emoji(raw: str) -> str:
    """A reaction: exactly one emoji as the Unicode emoji data (the ``emoji`` package) knows
    them, a ZWJ, flag, keycap or skin-tone sequence included; at most
    :data:`~beseda.protocol.schema.MAX_EMOJI_CHARS` code points. ``invalid_emoji`` else."""
    if not (0 < len(raw) <= schema.MAX_EMOJI_CHARS) or not emoji_data.is_emoji(raw):
        raise ProtocolError(errors.INVALID_EMOJI, "A reaction is one emoji, such as 👍.")
    return raw


def _message_error(error: BaseException) -> BaseException:
    """The wire error of a storage refusal about a message (others unchanged)."""
    if isinstance(error, NoSuchMessageError):
        return ProtocolError(errors.UNKNOWN_MESSAGE)
    if isinstance(error, NotAuthorError):
        return ProtocolError(
            errors.NOT_ALLOWED, "Only its author (or a channel's owner or admin) may do that."
        )
    if isinstance(error, TooManyReactionsError):
        return ProtocolError(
            errors.TOO_MANY_REACTIONS,
            f"A message has at most {schema.MAX_REACTIONS} different reactions.",
        )
    return error


def _search_cursor(raw: str | None, best: bool) -> int | None:
    """The position a ``search`` cursor (``n:ID`` newest first, ``b:OFFSET`` best first)
    stands for; ``bad_request`` for anything else."""
    if raw is None:
        return None
    kind, _, number = raw.partition(":")
    if kind != ("b" if best else "n") or not (number.isascii() and number.isdigit()):
        raise ProtocolError(errors.BAD_REQUEST, "cursor is not the next of this search.")
    if len(number) > 19:
        raise ProtocolError(errors.BAD_REQUEST, "cursor is not the next of this search.")
    return int(number)


def _state_of(conversation: Conversation) -> ConversationState:
    """The conversation's own data as it is now (carried by a change's bus event)."""
    return ConversationState(
        id=conversation.id,
        kind=conversation.kind,
        name=conversation.name,
        key=conversation.key,
        topic=conversation.topic,
        public=conversation.public,
        archived=conversation.archived,
        last_seq=conversation.last_seq,
        last_ts=conversation.last_ts,
    )


def _page_marker_key(marker: str) -> tuple[int, str]:
    """The sort key of a ``conversations`` page marker (``"LAST_TS:ID"``)."""
    ts, _, conversation_id = marker.partition(":")
    if not (ts.isascii() and ts.isdigit() and len(ts) <= 19) or not is_canonical_id(
        conversation_id
    ):
        raise ProtocolError(errors.BAD_REQUEST, "after is not a page marker of this list.")
    return -int(ts), conversation_id


class _ReadSlots:
    """At most ``per_user`` reads of one user at the database at once, so that one user's
    many connections make that user slower, not everyone (the reader threads are few)."""

    def __init__(self, per_user: int) -> None:
        self._per_user = max(1, per_user)
        self._slots: dict[int, tuple[asyncio.Semaphore, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def slot(self, user_id: int) -> AsyncIterator[None]:
        entry = self._slots.get(user_id)
        if entry is None:
            entry = self._slots[user_id] = (asyncio.Semaphore(self._per_user), [0])
        semaphore, users = entry
        users[0] += 1
        try:
            async with semaphore:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._slots[user_id]
