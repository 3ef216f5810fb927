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
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import msgspec

from ..bus import Bus, MessagePosted, PresenceChanged
from ..protocol import errors, schema
from ..protocol.errors import ProtocolError
from ..protocol.schema import GENERAL
from ..storage import LookAlikeNameError, NameTakenError, NewMessage, Storage, UserRecord
from . import accounts
from .config import Limits

log = logging.getLogger(__name__)


class Peer(Protocol):
    """The core's view of a connection: an id, an address, and a way to push bytes."""

    conn_id: int
    address: str

    def deliver(self, data: bytes) -> None:
        """Queue already-encoded lines for sending; never blocks."""


@dataclass(eq=False, slots=True)
class Session:
    """Per-connection state of the core: who is logged in and with which token."""

    peer: Peer
    user: UserRecord | None = None
    token_hash: bytes | None = None
    last_write: asyncio.Future[msgspec.Struct] | None = None
    """The reply of the newest message in flight (queued, not yet committed), if any."""


class Hub(Protocol):
    """Where authenticated sessions are registered for live delivery (``delivery.py``)."""

    def attach(self, session: Session) -> None: ...

    def detach(self, session: Session) -> None:
        """Forget the session, its watch set included."""

    def watch(self, session: Session, user_ids: Iterable[int]) -> None:
        """Replace the session's watch set: it gets the presence changes of these users."""


def dm_conversation(a: int, b: int) -> str:
    """The id of the direct conversation between two user ids (order does not matter)."""
    low, high = sorted((a, b))
    return f"dm:{low}:{high}"


def dm_members(conversation: str) -> tuple[int, int] | None:
    """The two user ids of a direct conversation id, or None when it is not one."""
    parts = conversation.split(":")
    if len(parts) != 3 or parts[0] != "dm" or not all(p.isdigit() for p in parts[1:]):
        return None
    return int(parts[1]), int(parts[2])


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


Outcome = msgspec.Struct | asyncio.Future[msgspec.Struct]
"""What :meth:`Chat.begin` returns: the reply data, or a future of it (a message in flight)."""

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
    ) -> None:
        self._storage = storage
        self._bus = bus
        self._hub = hub
        self._hasher = hasher
        self._limits = limits
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._throttle = accounts.LoginThrottle(
            per_account=limits.login_failures_per_account,
            per_address=limits.login_failures_per_address,
        )
        self._message_rate = accounts.TokenBucket(limits.message_rate, limits.message_burst)
        self._user_cache: OrderedDict[str, UserRecord] = OrderedDict()
        self._registrations = accounts.TokenBucket(*limits.registrations_per_address)
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
        }

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
        if pending is not None and not isinstance(request, schema.Send | schema.DirectMessage):
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
        wait = self._registrations.take(session.peer.address, self._monotonic())
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
        return await self._start_session(session, user)

    async def _login(self, session: Session, request: schema.Login) -> schema.AuthResult:
        self._require_anonymous(session)
        address = session.peer.address
        now = self._monotonic()
        if request.token is not None:
            self._throttle.attempt(None, address, now)
            token_hash = accounts.hash_token(request.token)
            user = await self._storage.user_by_token(token_hash)
            if user is None:
                self._throttle.failed(None, address, self._monotonic())
                raise ProtocolError(errors.BAD_CREDENTIALS, "The session token is not valid.")
            return await self._authenticate(session, user, request.token, token_hash)
        if request.username is None or request.password is None:
            raise ProtocolError(
                errors.BAD_REQUEST, "login needs a username and password, or a token."
            )
        key = accounts.canonical_name(request.username)
        self._throttle.attempt(key, address, now)
        try:
            user = await self._storage.user_by_key(key)
            right = await self._hasher.verify(
                user.password_hash if user else None, request.password
            )
        except BaseException:
            # Not a wrong guess (the hashing queue was full, the store failed): the password
            # was never checked, so the attempt must not count against the account.
            self._throttle.succeeded(key, address)
            raise
        if not right:
            self._throttle.failed(key, address, self._monotonic())
            raise ProtocolError(errors.BAD_CREDENTIALS)
        assert user is not None
        self._throttle.succeeded(key, address)
        if self._hasher.needs_rehash(user.password_hash):
            try:
                new_hash = await self._hasher.hash(request.password)
            except ProtocolError:
                # The hashing queue is full: the password was right, so log in now and
                # upgrade the stored hash at a later login.
                log.info("conn %d: hash upgrade postponed", session.peer.conn_id)
            else:
                await self._storage.set_password_hash(user.id, new_hash)
        return await self._start_session(session, user)

    async def _logout(self, session: Session, request: schema.Logout) -> schema.Empty:
        if session.token_hash is not None:
            await self._storage.delete_token(session.token_hash)
        await self._sign_out(session)
        return schema.Empty()

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
        session.user = user
        session.token_hash = token_hash
        self._hub.attach(session)
        self._remember(user)
        if await self._bus.user_connected(user.id):
            self._bus.publish(PresenceChanged(user.id, user.name, online=True))
        log.info("conn %d: logged in as %s", session.peer.conn_id, user.name)
        return schema.AuthResult(user=user.name, token=token)

    async def _sign_out(self, session: Session) -> None:
        user = session.user
        if user is None:
            return
        self._hub.detach(session)
        session.user = session.token_hash = None
        if await self._bus.user_disconnected(user.id):
            self._bus.publish(PresenceChanged(user.id, user.name, online=False))

    # -- messages ------------------------------------------------------------------------------

    async def _send(self, session: Session, request: schema.Send) -> Outcome:
        assert session.user is not None
        return await self._post(session, session.user, None, request.client_id, request.text)

    async def _direct_message(self, session: Session, request: schema.DirectMessage) -> Outcome:
        assert session.user is not None
        recipient = await self._user_named(request.to)
        return await self._post(session, session.user, recipient, request.client_id, request.text)

    async def _post(
        self,
        session: Session,
        sender: UserRecord,
        recipient: UserRecord | None,
        client_id: str,
        text: str,
    ) -> Outcome:
        if not text.strip():
            raise ProtocolError(errors.EMPTY_MESSAGE)
        if len(text) > schema.MAX_TEXT_CHARS:
            raise ProtocolError(
                errors.MESSAGE_TOO_LONG,
                f"A message may have at most {schema.MAX_TEXT_CHARS} characters; "
                f"this one has {len(text)}.",
            )
        # Over the rate, hold the message instead of refusing it while the backlog is short:
        # a connection's requests are handled in order, so a fast sender is paced at the
        # rate, keeps its order and needs no retries. Only a longer backlog is refused.
        now = self._monotonic()
        wait = self._message_rate.reserve(sender.id, now, self._limits.message_max_delay)
        if wait is None:
            retry = self._message_rate.peek(sender.id, now) - self._limits.message_max_delay
            raise ProtocolError(errors.RATE_LIMITED, retry_after=round(max(retry, 0.001), 3))
        if wait > 0:
            await self._sleep(wait)
        conversation = GENERAL if recipient is None else dm_conversation(sender.id, recipient.id)
        appended = self._storage.append_message(
            NewMessage(conversation, sender, recipient, client_id, text, self._clock())
        )
        result: asyncio.Future[msgspec.Struct] = asyncio.get_running_loop().create_future()
        recipients = None if recipient is None else (sender.id, recipient.id)
        origin = session.peer.conn_id

        def committed(appended: asyncio.Future[tuple[schema.Message, bool]]) -> None:
            # Runs from the commit, in commit order, before anything else can run: so the
            # bus gets messages in commit order, and before the sender's acknowledgement.
            if session.last_write is result:
                session.last_write = None
            if appended.cancelled():
                result.cancel()
                return
            error = appended.exception()
            if error is not None:
                result.set_exception(error)
                return
            stored, duplicate = appended.result()
            if duplicate:
                if stored.conversation != conversation or stored.text != text:
                    result.set_exception(ProtocolError(errors.CLIENT_ID_REUSED))
                    return
            else:
                self._bus.publish(MessagePosted(stored, recipients, origin))
            result.set_result(schema.SendResult(message=stored, duplicate=duplicate))

        appended.add_done_callback(committed)
        session.last_write = result
        return result

    async def _user_named(self, name: str) -> UserRecord:
        key = accounts.canonical_name(name)
        user = self._user_cache.get(key)
        if user is None:
            user = await self._storage.user_by_key(key)
            if user is None:
                raise ProtocolError(errors.UNKNOWN_USER, f"No user is named {name!r}.")
            self._remember(user)
        return user

    def _remember(self, user: UserRecord) -> None:
        """Keep ``user`` in the bounded cache by name, as the most recently used."""
        users = self._user_cache
        users[user.key] = user
        users.move_to_end(user.key)
        if len(users) > USER_CACHE_SIZE:
            users.popitem(last=False)

    # -- reading -------------------------------------------------------------------------------

    async def _history(self, session: Session, request: schema.History) -> schema.HistoryResult:
        assert session.user is not None
        if (request.conversation is None) == (request.peer is None):
            raise ProtocolError(
                errors.BAD_REQUEST, "history needs exactly one of conversation or peer."
            )
        if request.peer is not None:
            peer = await self._user_named(request.peer)
            conversation = dm_conversation(session.user.id, peer.id)
        else:
            assert request.conversation is not None
            conversation = request.conversation
            self._require_member(session.user, conversation)
        messages, more = await self._storage.history(conversation, request.before, request.limit)
        # Keep the newest messages that fit; the client pages back for the rest.
        kept = self._fitting(reversed(messages))
        if kept < len(messages):
            messages, more = messages[len(messages) - kept :], True
        return schema.HistoryResult(conversation=conversation, messages=messages, more=more)

    def _fitting(self, messages: Iterable[schema.Message]) -> int:
        """How many of ``messages`` (at least one) fit in one reply.

        A reply larger than a connection's send buffer would get its reader dropped as a slow
        consumer, and it would get the same reply, and be dropped, every time it asked again.
        """
        budget = self._limits.send_buffer_bytes // 2
        chars = size = count = 0
        for message in messages:
            chars += len(message.text)
            size += len(msgspec.json.encode(message)) + 1
            if count and (chars > schema.MAX_SYNC_CHARS or size > budget):
                break
            count += 1
        return count

    def _require_member(self, user: UserRecord, conversation: str) -> None:
        if conversation == GENERAL:
            return
        members = dm_members(conversation)
        if members is None or user.id not in members:
            # The same answer whether it does not exist or is someone else's.
            raise ProtocolError(
                errors.UNKNOWN_CONVERSATION, f"No conversation {conversation!r} is yours."
            )

    async def _sync(self, session: Session, request: schema.Sync) -> schema.SyncResult:
        assert session.user is not None
        conversations = await self._storage.conversations_of(session.user.id)
        cursors = {}
        for record in conversations:
            after = request.cursors.get(record.conversation, 0)
            if record.last_seq > after:
                cursors[record.conversation] = after
        if not cursors:
            return schema.SyncResult(messages=[], more=False)
        messages, more = await self._storage.messages_after(cursors, request.limit)
        # Bound the reply's size too: a prefix (by id) keeps every conversation contiguous.
        kept = self._fitting(messages)
        if kept < len(messages):
            return schema.SyncResult(messages=messages[:kept], more=True)
        return schema.SyncResult(messages=messages, more=more)

    async def _users(self, session: Session, request: schema.Users) -> schema.UsersResult:
        query = accounts.canonical_name(request.query.strip())
        after = accounts.canonical_name(request.after) if request.after else None
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
    ) -> schema.ConversationsResult:
        assert session.user is not None
        records = await self._storage.conversations_of(session.user.id)
        return schema.ConversationsResult(
            conversations=[
                schema.ConversationEntry(
                    conversation=r.conversation, peer=r.peer, last_seq=r.last_seq, last_ts=r.last_ts
                )
                for r in records
            ]
        )

    async def _ping(self, session: Session, request: schema.Ping) -> schema.Empty:
        return schema.Empty()
