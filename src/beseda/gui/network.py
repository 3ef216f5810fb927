"""The network side of the desktop client: the client library on a background asyncio loop.

Every method is called from the Tk thread and returns at once; the work runs on the loop
(``asyncio.run_coroutine_threadsafe``) and its outcome comes back through ``post`` as an
:mod:`.events` event tagged with the session it belongs to. Nothing here touches Tk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from .. import tls
from ..client import Client, ConnectionLostError, ServerRefusedError
from ..protocol import schema
from ..protocol.errors import BesedaError, ProtocolError
from . import events

log = logging.getLogger(__name__)

Post = Callable[[int, events.Event], None]
"""Thread-safe: queue an event of a session for the Tk thread."""

DEFAULT_PORT = 7878


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (or ``host``, or ``[v6]:port``) → ``(host, port)``; ValueError if bad."""
    address = address.strip()
    if not address:
        raise ValueError("empty address")
    if address.startswith("["):
        host, _bracket, rest = address[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif address.count(":") == 1:
        host, _colon, port_text = address.partition(":")
    else:
        host, port_text = address, ""
    port = int(port_text) if port_text else DEFAULT_PORT
    if not host or not 0 < port < 65536:
        raise ValueError(f"bad address {address!r}")
    return host, port


class Network:
    """One background thread running an asyncio loop, and at most one signed-in Client."""

    def __init__(self, post: Post, *, client_options: dict[str, Any] | None = None) -> None:
        self._post = post
        self._client_options = client_options or {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="beseda-network", daemon=True)
        self._sessions = 0
        # Touched on the loop thread only:
        self._client: Client | None = None
        self._session = 0
        self._forwarder: asyncio.Task[None] | None = None
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def _submit(self, coroutine: Coroutine[Any, Any, None]) -> None:
        if self._loop.is_closed() or not self._thread.is_alive():
            coroutine.close()
            return
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        future.add_done_callback(_log_failure)

    # -- actions (called from the Tk thread) ---------------------------------------------------

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
    ) -> int:
        """Start signing in; returns the number of the new session its events carry.
        With ``fingerprint``, over TLS to a server presenting that certificate only."""
        self._sessions += 1
        session = self._sessions
        self._submit(
            self._sign_in(session, host, port, username, password, create, token, fingerprint)
        )
        return session

    def fetch_fingerprint(self, host: str, port: int) -> int:
        """Start fetching the fingerprint of the server's certificate (a
        :class:`~.events.FingerprintFetched` comes back); returns the session number."""
        self._sessions += 1
        session = self._sessions
        self._submit(self._fetch_fingerprint(session, host, port))
        return session

    def sign_out(self) -> None:
        """Revoke the session's token and disconnect."""
        self._submit(self._sign_out())

    def send(self, local_id: str, peer: str | None, text: str) -> None:
        """Post ``text`` to General (``peer`` None) or to ``peer``; ``local_id`` is the client
        id, so a retry never stores the message twice."""
        self._submit(self._send(local_id, peer, text))

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
    ) -> None:
        """A page of history: the newest, or the one before ``before``, after ``after`` or
        around ``around``; a :class:`~.events.HistoryLoaded` comes back."""
        self._submit(self._history(key, conversation, peer, before, limit, after, around))

    def users(self, request: int, query: str, *, after: str | None = None) -> None:
        self._submit(self._users(request, query, after))

    def watch(self, names: list[str]) -> None:
        """Get presence changes of these users (replacing the previous set); their states
        now, and every change, come back as :class:`~beseda.client.PresenceChanged`."""
        self._submit(self._watch(list(names)))

    # -- protocol 3: conversations ------------------------------------------------------------

    def post(
        self, local_id: str, conversation: str, text: str, *, reply_to: int | None = None
    ) -> None:
        """Post ``text`` to a conversation (answering the message ``reply_to``, if given);
        ``local_id`` is the client id."""
        self._submit(self._post_entry(local_id, conversation, text, reply_to))

    # -- protocol 4: messages -------------------------------------------------------------------
    # The entries these make come back through the client's events, like everyone else's.

    def edit(self, conversation: str, seq: int, text: str) -> None:
        self._act(_changed(lambda c: c.edit(conversation, seq, text)))

    def delete(self, conversation: str, seq: int) -> None:
        self._act(_changed(lambda c: c.delete(conversation, seq)))

    def react(self, conversation: str, seq: int, emoji: str) -> None:
        self._act(_changed(lambda c: c.react(conversation, seq, emoji)))

    def unreact(self, conversation: str, seq: int, emoji: str) -> None:
        self._act(_changed(lambda c: c.unreact(conversation, seq, emoji)))

    def search(self, request: int, query: str, *, cursor: str | None = None) -> None:
        """A page of messages matching ``query``; a :class:`~.events.SearchFound` (or
        :class:`~.events.SearchFailed`) comes back."""
        self._submit(self._search(request, query, cursor))

    async def _search(self, request: int, query: str, cursor: str | None) -> None:
        client, session = self._client, self._session
        if client is None:
            return
        try:
            result = await client.search(query, cursor=cursor)
        except ProtocolError as exc:
            self._post(session, events.SearchFailed(request, exc.code, exc.message))
        except (BesedaError, OSError) as exc:
            self._post(session, events.SearchFailed(request, events.GONE, str(exc)))
        else:
            self._post(session, events.SearchFound(request, result, cursor is not None))

    def create_channel(self, name: str, *, public: bool, topic: str) -> None:
        self._act(_opened(lambda c: c.create_channel(name, public=public, topic=topic)))

    def create_group(self, members: list[str]) -> None:
        self._act(_opened(lambda c: c.create_group(list(members))))

    def join(self, conversation: str) -> None:
        self._act(_opened(lambda c: c.join(conversation)))

    def lookup(self, conversation: str) -> None:
        """Ask for a conversation's info; it comes back unselected."""
        self._act(_opened(lambda c: c.conversation(conversation), select=False))

    def leave(self, conversation: str) -> None:
        async def work(client: Client) -> list[events.Event]:
            await client.leave(conversation)
            return [events.ConversationLeft(conversation)]

        self._act(work)

    def invite(self, conversation: str, names: list[str]) -> None:
        async def work(client: Client) -> list[events.Event]:
            await client.invite(conversation, list(names))
            return [await _members_of(client, conversation)]

        self._act(work)

    def remove(self, conversation: str, name: str) -> None:
        async def work(client: Client) -> list[events.Event]:
            await client.remove(conversation, name)
            return [await _members_of(client, conversation)]

        self._act(work)

    def set_role(self, conversation: str, name: str, role: str) -> None:
        self._act(_changed(lambda c: c.set_role(conversation, name, role)))

    def rename(self, conversation: str, name: str) -> None:
        self._act(_changed(lambda c: c.rename(conversation, name)))

    def set_topic(self, conversation: str, topic: str) -> None:
        self._act(_changed(lambda c: c.set_topic(conversation, topic)))

    def archive(self, conversation: str) -> None:
        self._act(_changed(lambda c: c.archive(conversation)))

    def members(self, conversation: str) -> None:
        async def work(client: Client) -> list[events.Event]:
            return [await _members_of(client, conversation)]

        self._act(work)

    def channels(self, request: int, query: str) -> None:
        async def work(client: Client) -> list[events.Event]:
            found = await client.channels(query)
            return [events.ChannelsFound(request, schema.ChannelsResult(channels=found))]

        self._act(work)

    def read(self, conversation: str, seq: int) -> None:
        self._submit(self._quietly(lambda c: c.read(conversation, seq)))

    def typing(self, conversation: str) -> None:
        self._submit(self._quietly(lambda c: c.typing(conversation)))

    def close(self, timeout: float = 2.0) -> None:
        """Disconnect and stop the thread (waits at most ``timeout`` seconds, at exit)."""
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._drop_client(), self._loop)
        with contextlib.suppress(Exception):
            future.result(timeout)
        self._loop.call_soon_threadsafe(self._stop_loop)
        self._thread.join(timeout)

    def _stop_loop(self) -> None:
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.stop()

    # -- on the loop ---------------------------------------------------------------------------

    async def _sign_in(
        self,
        session: int,
        host: str,
        port: int,
        username: str,
        password: str,
        create: bool,
        token: str | None,
        fingerprint: str | None,
    ) -> None:
        await self._drop_client()
        options = dict(self._client_options)
        if fingerprint is not None:
            options["fingerprint"] = fingerprint
        client = Client(host, port, **options)
        try:
            await client.connect()
        except tls.CertificateChangedError as exc:
            self._post(
                session, events.CertificateChanged(exc.address, exc.expected, exc.fingerprint)
            )
            return
        except (tls.TLSError, ssl.SSLError) as exc:
            self._post(session, events.SignInFailed(events.TLS_FAILED, str(exc)))
            return
        except ServerRefusedError as exc:  # a bye instead of hello: too many connections, say
            self._post(session, events.SignInFailed(exc.code, exc.message))
            return
        except (OSError, TimeoutError) as exc:
            self._post(session, events.SignInFailed(events.UNREACHABLE, str(exc) or repr(exc)))
            return
        except BesedaError as exc:
            self._post(session, events.SignInFailed(events.GONE, str(exc)))
            return
        try:
            if create:
                result = await client.register(username, password, backlog=False)
            elif token is not None:
                result = await client.login(token=token, backlog=False)
            else:
                result = await client.login(username, password, backlog=False)
            entries = await client.conversations()
            # Watch the peers (most recently active first, within the limit): their state now
            # comes back with the reply, their changes as events.
            peers = [e.peer for e in entries if e.peer][: schema.MAX_WATCH]
            watched = await client.watch(peers)
            online = {user.name: user.online for user in watched.users}
        except ProtocolError as exc:
            await client.close()
            self._post(session, events.SignInFailed(exc.code, exc.message, exc.retry_after))
            return
        except (ConnectionLostError, OSError, BesedaError) as exc:
            await client.close()
            self._post(session, events.SignInFailed(events.GONE, str(exc)))
            return
        self._client, self._session = client, session
        self._post(session, events.SignedIn(result.user, result.token, entries, online))
        self._forwarder = asyncio.create_task(self._forward(client, session))

    async def _fetch_fingerprint(self, session: int, host: str, port: int) -> None:
        timeout = float(self._client_options.get("connect_timeout", 10.0))
        try:
            fingerprint = await asyncio.to_thread(tls.fetch_fingerprint, host, port, timeout)
        except (tls.TLSError, ssl.SSLError) as exc:
            self._post(session, events.SignInFailed(events.TLS_FAILED, str(exc)))
        except (OSError, TimeoutError) as exc:
            self._post(session, events.SignInFailed(events.UNREACHABLE, str(exc) or repr(exc)))
        else:
            self._post(session, events.FingerprintFetched(f"{host}:{port}", fingerprint))

    async def _forward(self, client: Client, session: int) -> None:
        async for event in client.events():
            self._post(session, event)

    async def _sign_out(self) -> None:
        client, session = self._client, self._session
        if client is not None:
            with contextlib.suppress(BesedaError, OSError):
                await asyncio.wait_for(client.logout(), 5.0)
        await self._drop_client()
        self._post(session, events.SignedOut())

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        forwarder, self._forwarder = self._forwarder, None
        if forwarder is not None:
            forwarder.cancel()
        if client is not None:
            await client.close()

    async def _send(self, local_id: str, peer: str | None, text: str) -> None:
        client, session = self._client, self._session
        if client is None:
            self._post(session, events.SendFailed(local_id, events.GONE, "not signed in"))
            return
        try:
            if peer is None:
                message = await client.send(text, client_id=local_id)
            else:
                message = await client.dm(peer, text, client_id=local_id)
        except ProtocolError as exc:
            self._post(session, events.SendFailed(local_id, exc.code, exc.message))
        except (BesedaError, OSError) as exc:
            self._post(session, events.SendFailed(local_id, events.GONE, str(exc)))
        else:
            self._post(session, events.Sent(local_id, message))

    async def _history(
        self,
        key: str,
        conversation: str | None,
        peer: str | None,
        before: int | None,
        limit: int,
        after: int | None,
        around: int | None,
    ) -> None:
        client, session = self._client, self._session
        if client is None:
            return
        try:
            result = await client.history(
                conversation, peer=peer, before=before, after=after, around=around, limit=limit
            )
        except (BesedaError, OSError) as exc:
            self._post(session, events.HistoryFailed(key, str(exc)))
        else:
            self._post(session, events.HistoryLoaded(key, result, before, after, around))

    # -- protocol 3 on the loop: a refusal comes back as ActionFailed ---------------------------

    def _act(self, work: Work) -> None:
        self._submit(self._reporting(work))

    async def _reporting(self, work: Work) -> None:
        client, session = self._client, self._session
        if client is None:
            return
        try:
            outcome = await work(client)
        except ProtocolError as exc:
            self._post(session, events.ActionFailed(exc.code, exc.message))
        except (BesedaError, OSError) as exc:
            self._post(session, events.ActionFailed(events.GONE, str(exc)))
        else:
            for event in outcome:
                self._post(session, event)

    async def _quietly(self, work: Callable[[Client], Coroutine[Any, Any, object]]) -> None:
        # Read markers and typing: best effort (the next one, or the reconnect, repairs).
        client = self._client
        if client is not None:
            with contextlib.suppress(BesedaError, OSError):
                await work(client)

    async def _post_entry(
        self, local_id: str, conversation: str, text: str, reply_to: int | None
    ) -> None:
        client, session = self._client, self._session
        if client is None:
            self._post(session, events.SendFailed(local_id, events.GONE, "not signed in"))
            return
        try:
            entry = await client.post(conversation, text, client_id=local_id, reply_to=reply_to)
        except ProtocolError as exc:
            self._post(session, events.SendFailed(local_id, exc.code, exc.message))
        except (BesedaError, OSError) as exc:
            self._post(session, events.SendFailed(local_id, events.GONE, str(exc)))
        else:
            self._post(session, events.Sent(local_id, entry))

    async def _watch(self, names: list[str]) -> None:
        client = self._client
        if client is None:
            return
        with contextlib.suppress(BesedaError, OSError):
            await client.watch(names)  # the states arrive as PresenceChanged events

    async def _users(self, request: int, query: str, after: str | None) -> None:
        client, session = self._client, self._session
        if client is None:
            return
        with contextlib.suppress(BesedaError, OSError):
            result = await client.users(query, after=after, limit=100)
            self._post(session, events.UsersFound(request, result, after is not None))


Work = Callable[[Client], Coroutine[Any, Any, list[events.Event]]]
"""A conversation action on the loop: what to tell the Tk thread when it succeeds."""


def _opened(
    call: Callable[[Client], Coroutine[Any, Any, schema.ConversationInfo]], *, select: bool = True
) -> Work:
    async def work(client: Client) -> list[events.Event]:
        return [events.ConversationOpened(await call(client), select)]

    return work


def _changed(call: Callable[[Client], Coroutine[Any, Any, object]]) -> Work:
    # The entry the change makes comes back through the client's events (EntryReceived),
    # like everyone else's: nothing more to tell.
    async def work(client: Client) -> list[events.Event]:
        await call(client)
        return []

    return work


async def _members_of(client: Client, conversation: str) -> events.Event:
    members = await client.members(conversation)
    return events.MembersLoaded(conversation, schema.MembersResult(members=members))


def _log_failure(future: Any) -> None:
    if future.cancelled():
        return
    exc = future.exception()
    if exc is not None:
        log.error("network task failed", exc_info=exc)
