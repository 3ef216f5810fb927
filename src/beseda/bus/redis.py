"""The bus between several nodes, on Redis (redis-py's asyncio client).

Events
    This node's events go to its own subscribers at once, in :meth:`RedisBus.publish`, so
    local delivery never waits for Redis and goes on while Redis is lost. They are also queued
    for a sender task, which writes whatever is queued in one pipeline of ``PUBLISH`` commands
    to the channel ``beseda:events``; a subscriber task on its own connection hands other
    nodes' events to the subscribers. Pub/sub is at-most-once: what is published while a node
    is not subscribed is lost. So the bus is only a hint: while Redis cannot be reached, the
    sender keeps the *latest* entry of each conversation and publishes those when Redis is
    back (another node that sees one skip ahead reads the gap from the database), and every
    (re)subscription calls the ``on_resume`` handlers, which read from the database whatever
    was lost (``server/replication.py``). Typing and presence events of the outage are lost.

Presence
    Each node keeps the users it has connections of in a hash ``beseda:users:NODE`` (user id →
    name), and proves it is alive with a key ``beseda:alive:NODE`` that expires after
    ``node_expiry`` seconds and is renewed every third of that (the heartbeat). Every
    heartbeat also looks at the other nodes of the set ``beseda:nodes``: the first node to see
    one's alive key gone removes it from the set (``SREM`` decides who), deletes its users and
    publishes them offline, unless they are online elsewhere. So the users of a node that died
    (SIGKILL, power) are shown offline within ``node_expiry`` plus one heartbeat.

Limits
    :meth:`RedisBus.rate_limit` gives a token bucket kept in Redis (one Lua script, Redis's
    own clock), shared by every node. While Redis cannot be reached it falls back to a bucket
    in this process's memory, so a lost Redis weakens the limits to per node, not to none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..protocol.schema import Entry
from ..storage import ConversationState, MemberChange
from . import (
    BusError,
    BusEvent,
    EntryPosted,
    Origin,
    PresenceChanged,
    ReadMoved,
    Registered,
    TokenRevoked,
    TypingStarted,
)

log = logging.getLogger(__name__)

CHANNEL = "beseda:events"
NODES = "beseda:nodes"
MAX_QUEUED = 100_000
"""Events waiting for the sender; beyond it (Redis too slow or gone) entries are kept only
as the latest per conversation and other events are dropped."""
REDIS_CONNECTIONS = 16
"""Connections a node opens to Redis for commands (the subscriber has one more)."""
RECONNECT_DELAY = (0.05, 2.0)
"""First and longest wait between attempts to reach Redis again (doubling)."""


# -- the wire format between nodes ---------------------------------------------------------------


class _Posted(msgspec.Struct, tag="entry", array_like=True):
    node: str
    connection: int | None
    entry: Entry
    recipients: list[int] | None
    legacy: bool
    state: ConversationState | None
    changes: list[MemberChange]


class _Presence(msgspec.Struct, tag="presence", array_like=True):
    node: str
    user_id: int
    name: str
    online: bool


class _Read(msgspec.Struct, tag="read", array_like=True):
    node: str
    connection: int | None
    user_id: int
    conversation: str
    seq: int


class _Typing(msgspec.Struct, tag="typing", array_like=True):
    node: str
    conversation: str
    user_id: int
    name: str
    recipients: list[int] | None


class _Revoked(msgspec.Struct, tag="revoked", array_like=True):
    node: str
    user_id: int
    token_hash: bytes


class _Registered(msgspec.Struct, tag="registered", array_like=True):
    node: str
    user_id: int


_Wire = _Posted | _Presence | _Read | _Typing | _Revoked | _Registered
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(list[_Wire])

MAX_MESSAGE_BYTES = 256 * 1024
"""Events queued together go out as one pub/sub message (a JSON array) of at most about this
size: a receiver then parses one message per batch, not one per event, which is most of what
an event costs it (see docs/scaling.md)."""


def encode(node: str, event: BusEvent) -> bytes:
    """One event as the bytes published for other nodes."""
    wire: _Wire
    if isinstance(event, EntryPosted):
        origin = event.origin
        wire = _Posted(
            node,
            origin.connection if origin is not None and origin.node == node else None,
            event.entry,
            None if event.recipients is None else list(event.recipients),
            event.legacy,
            event.state,
            list(event.changes),
        )
    elif isinstance(event, PresenceChanged):
        wire = _Presence(node, event.user_id, event.name, event.online)
    elif isinstance(event, ReadMoved):
        origin = event.origin
        connection = origin.connection if origin is not None and origin.node == node else None
        wire = _Read(node, connection, event.user_id, event.conversation, event.seq)
    elif isinstance(event, TokenRevoked):
        wire = _Revoked(node, event.user_id, event.token_hash)
    elif isinstance(event, Registered):
        wire = _Registered(node, event.user_id)
    else:
        recipients = None if event.recipients is None else list(event.recipients)
        wire = _Typing(node, event.conversation, event.user_id, event.name, recipients)
    return _encoder.encode(wire)


def decode(data: str | bytes) -> list[tuple[str, BusEvent]]:
    """The events of one pub/sub message, each with the node that published it."""
    return [_event(wire) for wire in _decoder.decode(data)]


def batches(encoded: list[bytes]) -> list[bytes]:
    """Encoded events as pub/sub messages: JSON arrays of at most about
    :data:`MAX_MESSAGE_BYTES` each (an event larger than that goes alone)."""
    messages: list[bytes] = []
    run: list[bytes] = []
    size = 0
    for data in encoded:
        if run and size + len(data) > MAX_MESSAGE_BYTES:
            messages.append(b"[" + b",".join(run) + b"]")
            run, size = [], 0
        run.append(data)
        size += len(data) + 1
    if run:
        messages.append(b"[" + b",".join(run) + b"]")
    return messages


def _event(wire: _Wire) -> tuple[str, BusEvent]:
    if isinstance(wire, _Posted):
        origin = None if wire.connection is None else Origin(wire.node, wire.connection)
        recipients = None if wire.recipients is None else frozenset(wire.recipients)
        return wire.node, EntryPosted(
            wire.entry, recipients, origin, wire.legacy, wire.state, tuple(wire.changes)
        )
    if isinstance(wire, _Presence):
        return wire.node, PresenceChanged(wire.user_id, wire.name, wire.online)
    if isinstance(wire, _Read):
        origin = None if wire.connection is None else Origin(wire.node, wire.connection)
        return wire.node, ReadMoved(wire.user_id, wire.conversation, wire.seq, origin)
    if isinstance(wire, _Revoked):
        return wire.node, TokenRevoked(wire.user_id, wire.token_hash, Origin(wire.node, 0))
    if isinstance(wire, _Registered):
        return wire.node, Registered(wire.user_id, Origin(wire.node, 0))
    recipients = None if wire.recipients is None else frozenset(wire.recipients)
    return wire.node, TypingStarted(wire.conversation, wire.user_id, wire.name, recipients)


def _alive_key(node: str) -> str:
    return f"beseda:alive:{node}"


def _users_key(node: str) -> str:
    return f"beseda:users:{node}"


class RedisBus:
    """A bus shared by every node on one Redis (implements :class:`beseda.bus.Bus`)."""

    shared = True

    def __init__(self, url: str, node: str, *, node_expiry: float = 10.0) -> None:
        self.url = url
        self.node = node
        self.node_expiry = node_expiry
        # Typed as Any: redis-py's annotations differ between its releases.
        # A bounded pool that makes a command wait for a free connection: hundreds of logins
        # at once must not open hundreds of connections (Redis refuses past its maxclients).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=REDIS_CONNECTIONS,
            timeout=10,
            socket_connect_timeout=2.0,
            socket_keepalive=True,
            decode_responses=True,
        )
        self._pool: Any = pool
        self._redis: Any = aioredis.Redis(connection_pool=pool)
        self._handlers: list[Callable[[BusEvent], None]] = []
        self._resume_handlers: list[Callable[[], None]] = []
        self._local: Counter[int] = Counter()
        """This node's connections per user."""
        self._names: dict[int, str] = {}
        self._queue: deque[tuple[str | None, bytes]] = deque()
        """(conversation of an entry, or None; the encoded event) waiting for the sender."""
        self._missed: dict[str, bytes] = {}
        """The latest entry of each conversation that could not be published."""
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._up = False
        """Whether the last command to Redis worked."""
        self._online_script: Any = self._redis.register_script(_ONLINE)
        self.published = 0
        self.received = 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            await self._redis.ping()
            await self._register(fresh=True)
        except (RedisError, OSError) as exc:
            await self._redis.aclose()
            await self._pool.disconnect()
            raise BusError(f"Cannot reach Redis at {self._safe_url()}: {exc}") from exc
        self._up = True
        subscribed = asyncio.get_running_loop().create_future()
        self._tasks = [
            asyncio.create_task(self._send(), name="bus-sender"),
            asyncio.create_task(self._receive(subscribed), name="bus-receiver"),
            asyncio.create_task(self._heartbeat(), name="bus-heartbeat"),
        ]
        # Start delivering only once other nodes' events flow.
        await asyncio.wait_for(subscribed, timeout=10.0)

    async def close(self) -> None:
        # Let what is queued go out (the last entries of a clean shutdown), briefly.
        deadline = time.monotonic() + 1.0
        while self._queue and self._up and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._up:
            with contextlib.suppress(RedisError, OSError):
                # A clean stop: this node's users go offline now, not after the expiry.
                for user_id in list(self._local):
                    self._local.pop(user_id)
                    if not await self._online_elsewhere(user_id):
                        name = self._names.get(user_id, "")
                        event = PresenceChanged(user_id, name, online=False)
                        await self._redis.publish(CHANNEL, batches([encode(self.node, event)])[0])
                pipe = self._redis.pipeline(transaction=False)
                pipe.delete(_users_key(self.node), _alive_key(self.node))
                pipe.srem(NODES, self.node)
                await pipe.execute()
        self._handlers.clear()
        await self._redis.aclose()
        await self._pool.disconnect()

    def _safe_url(self) -> str:
        """The URL without its user and password (for messages)."""
        scheme, separator, rest = self.url.partition("://")
        if separator and "@" in rest.split("/", 1)[0]:
            return f"{scheme}://…@{rest.split('@', 1)[1]}"
        return self.url

    # -- events ---------------------------------------------------------------------------------

    def subscribe(self, handler: Callable[[BusEvent], None]) -> None:
        self._handlers.append(handler)

    def on_resume(self, handler: Callable[[], None]) -> None:
        self._resume_handlers.append(handler)

    def publish(self, event: BusEvent) -> None:
        self._hand_out(event)
        data = encode(self.node, event)
        conversation = event.entry.conversation if isinstance(event, EntryPosted) else None
        if not self._up or len(self._queue) >= MAX_QUEUED:
            if conversation is not None:
                self._missed[conversation] = data
            return
        self._queue.append((conversation, data))
        self._wakeup.set()

    def _hand_out(self, event: BusEvent) -> None:
        for handler in self._handlers:
            try:
                handler(event)
            except Exception:
                log.exception("bus subscriber failed on %r", event)

    async def _send(self) -> None:
        delay = RECONNECT_DELAY[0]
        while True:
            if not self._queue and not (self._missed and self._up):
                self._wakeup.clear()
                await self._wakeup.wait()
            if not self._up:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_DELAY[1])
                try:
                    await self._redis.ping()
                except (RedisError, OSError):
                    continue
                self._up = True
            delay = RECONNECT_DELAY[0]
            batch: list[tuple[str | None, bytes]] = list(self._missed.items())
            self._missed.clear()
            while self._queue and len(batch) < 4096:
                batch.append(self._queue.popleft())
            pipe = self._redis.pipeline(transaction=False)
            for message in batches([data for _, data in batch]):
                pipe.publish(CHANNEL, message)
            try:
                await pipe.execute()
                self.published += len(batch)
            except (RedisError, OSError) as exc:
                self._lost(exc)
                # Some may have gone out; the latest entry per conversation is published
                # again, and a receiver drops what it has already.
                for conversation, data in batch + list(self._queue):
                    if conversation is not None:
                        self._missed[conversation] = data
                self._queue.clear()

    async def _receive(self, subscribed: asyncio.Future[None]) -> None:
        delay = RECONNECT_DELAY[0]
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                async for message in pubsub.listen():
                    if message["type"] == "subscribe":
                        delay = RECONNECT_DELAY[0]
                        if not subscribed.done():
                            subscribed.set_result(None)
                        self._resumed()
                    elif message["type"] == "message":
                        self._received(message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._lost(exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_DELAY[1])

    def _received(self, data: str | bytes) -> None:
        try:
            events = decode(data)
        except msgspec.ValidationError:
            log.warning("undecodable bus message (%d bytes) ignored", len(data))
            return
        for node, event in events:
            if node == self.node:
                continue  # delivered here already, in publish()
            self.received += 1
            self._hand_out(event)

    def _resumed(self) -> None:
        if not self._up:
            log.warning("Redis is back; catching up from the database")
        self._up = True
        self._wakeup.set()
        for handler in self._resume_handlers:
            try:
                handler()
            except Exception:
                log.exception("bus resume handler failed")

    def _lost(self, exc: BaseException) -> None:
        if self._up:
            log.warning("lost Redis (%s); delivering on this node only until it is back", exc)
        self._up = False

    # -- presence -------------------------------------------------------------------------------

    async def _register(self, *, fresh: bool = False) -> None:
        """Join the set of nodes, alive; with ``fresh`` (at start) forget the users of an
        earlier life under this name, and say they are offline."""
        redis = self._redis
        if fresh:
            stale = await redis.hgetall(_users_key(self.node))
            await redis.delete(_users_key(self.node))
            await self._register(fresh=False)
            await self._refresh_others()
            for raw_id, raw_name in stale.items():
                user_id = int(raw_id)
                if not await self._online_elsewhere(user_id):
                    event = PresenceChanged(user_id, raw_name, online=False)
                    await redis.publish(CHANNEL, batches([encode(self.node, event)])[0])
            return
        pipe = redis.pipeline(transaction=False)
        pipe.set(_alive_key(self.node), b"1", px=int(self.node_expiry * 1000))
        pipe.sadd(NODES, self.node)
        added = (await pipe.execute())[1]
        if added and not fresh and self._local:
            # Redis lost our users (restarted), or another node declared us dead while we
            # could not reach it: write them again, and say they are online.
            names = {uid: self._names.get(uid, "") for uid in self._local}
            await redis.hset(_users_key(self.node), mapping={str(u): n for u, n in names.items()})
            for uid, name in names.items():
                event = PresenceChanged(uid, name, online=True)
                await redis.publish(CHANNEL, batches([encode(self.node, event)])[0])

    async def _refresh_others(self) -> None:
        """The other nodes alive now; the first node to see one dead reaps it."""
        redis = self._redis
        nodes = list(await redis.smembers(NODES))
        others = [n for n in nodes if n != self.node]
        if not others:
            return
        pipe = redis.pipeline(transaction=False)
        for node in others:
            pipe.exists(_alive_key(node))
        alive = await pipe.execute()
        for node, up in zip(others, alive, strict=True):
            if not up and await redis.srem(NODES, node):
                await self._reap(node)

    async def _reap(self, node: str) -> None:
        users = await self._redis.hgetall(_users_key(node))
        await self._redis.delete(_users_key(node))
        log.warning("node %s stopped its heartbeat; its %d user(s) go offline", node, len(users))
        for raw_id, raw_name in users.items():
            user_id = int(raw_id)
            if user_id in self._local or await self._online_elsewhere(user_id):
                continue
            self.publish(PresenceChanged(user_id, raw_name, online=False))

    async def _heartbeat(self) -> None:
        interval = self.node_expiry / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._register()
                await self._refresh_others()
                if not self._up:
                    self._up = True
                    self._wakeup.set()
            except (RedisError, OSError) as exc:
                self._lost(exc)

    async def _online_elsewhere(self, user_id: int) -> bool:
        return bool(await self._elsewhere([user_id]))

    async def _elsewhere(self, user_ids: list[int]) -> set[int]:
        """Which of these users have a connection on another node that is alive: one script,
        so a node that joined a moment ago counts at once."""
        found: set[int] = set()
        for start in range(0, len(user_ids), 1000):
            chunk = [str(user_id) for user_id in user_ids[start : start + 1000]]
            online = await self._online_script(keys=[NODES], args=[self.node, *chunk])
            found.update(int(user_id) for user_id in online)
        return found

    async def user_connected(self, user_id: int, name: str) -> bool:
        self._local[user_id] += 1
        self._names[user_id] = name
        if self._local[user_id] > 1:
            return False
        try:
            await self._redis.hset(_users_key(self.node), str(user_id), name)
            return not await self._online_elsewhere(user_id)
        except (RedisError, OSError) as exc:
            self._lost(exc)
            return True

    async def user_disconnected(self, user_id: int, name: str) -> bool:
        count = self._local[user_id] - 1
        if count > 0:
            self._local[user_id] = count
            return False
        self._local.pop(user_id, None)
        self._names.pop(user_id, None)
        try:
            await self._redis.hdel(_users_key(self.node), str(user_id))
            return not await self._online_elsewhere(user_id)
        except (RedisError, OSError) as exc:
            self._lost(exc)
            return True

    async def online(self, user_ids: list[int]) -> set[int]:
        found = {user_id for user_id in user_ids if user_id in self._local}
        rest = [user_id for user_id in user_ids if user_id not in found]
        if rest:
            try:
                found |= await self._elsewhere(rest)
            except (RedisError, OSError) as exc:
                self._lost(exc)
        return found

    # -- limits ---------------------------------------------------------------------------------

    def rate_limit(self, name: str, rate: float, burst: float) -> RedisRateLimit:
        """A token bucket per key shared by every node on this Redis; the message rate is
        leased a tenth of its burst at a time (see :class:`RedisRateLimit`)."""
        lease = int(min(max(1.0, burst / 10), 100.0)) if name == "messages" else 1
        return RedisRateLimit(self._redis, name, rate, burst, lease=lease)


_ONLINE = """
local found = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if node ~= ARGV[1] and redis.call('EXISTS', 'beseda:alive:' .. node) == 1 then
    local values = redis.call('HMGET', 'beseda:users:' .. node, unpack(ARGV, 2))
    for i, value in ipairs(values) do
      if value then found[#found + 1] = ARGV[i + 1] end
    end
  end
end
return found
"""
"""The users (ARGV 2…) with a connection on a live node other than ARGV 1."""

_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local op = ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local v = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(v[1])
local stamp = tonumber(v[2])
if tokens == nil then
  if op == 'peek' or op == 'refund' then return '0' end
  tokens = burst
  stamp = now
end
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local result = 0
if op == 'peek' then
  if tokens >= 1 then return '0' end
  return tostring((1 - tokens) / rate)
elseif op == 'take' then
  if tokens < 1 then return tostring((1 - tokens) / rate) end
  tokens = tokens - 1
elseif op == 'reserve' then
  local wait = math.max(0, (1 - tokens) / rate)
  if wait > tonumber(ARGV[4]) then return '-1' end
  tokens = tokens - 1
  result = wait
elseif op == 'lease' then
  tokens = math.min(burst, tokens + tonumber(ARGV[6]))
  if tokens >= 1 then
    local leased = math.min(tonumber(ARGV[5]), math.floor(tokens))
    tokens = tokens - leased
    result = 'L' .. leased
  else
    local wait = (1 - tokens) / rate
    if wait > tonumber(ARGV[4]) then
      result = '-1'
    else
      tokens = tokens - 1
      result = wait
    end
  end
elseif op == 'charge' then
  tokens = tokens - 1
elseif op == 'refund' then
  tokens = math.min(burst, tokens + 1)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return tostring(result)
"""


LEASE_SECONDS = 1.0
"""How long a node may spend tokens it leased before it gives the rest back."""


class RedisRateLimit:
    """A token bucket per key in Redis (implements ``server.limits.RateLimit``).

    One script does each operation atomically on Redis's clock, so every node spends from
    the same bucket. A bucket's key expires once it would be full again.

    With ``lease`` above 1, :meth:`reserve` takes up to that many tokens at once and spends
    them here for up to :data:`LEASE_SECONDS`, giving back what is left with its next call:
    the message rate costs one round trip to Redis per ``lease`` messages instead of one per
    message (a connection's requests are begun one after another, so each round trip would
    delay the next message). The bucket still holds for the cluster, because every token
    spent on any node came out of it; a node's unspent lease is only missing from the others
    for a second."""

    def __init__(self, redis: Any, name: str, rate: float, burst: float, *, lease: int = 1) -> None:
        from ..server.limits import LocalRateLimit

        self.rate, self.burst = rate, burst
        self._lease = max(1, lease)
        self._leases: dict[str | int, list[float]] = {}
        """key → [tokens leased and not spent, monotonic time the lease ends]."""
        self._name = name
        self._script: Any = redis.register_script(_BUCKET)
        self._fallback = LocalRateLimit(rate, burst)
        self._warned = 0.0

    async def _call(
        self, key: str | int, op: str, max_wait: float = 0.0, give_back: float = 0.0
    ) -> float | None:
        raw = await self._raw(key, op, max_wait, give_back)
        value = float(raw)
        return None if value < 0 else value

    async def _raw(self, key: str | int, op: str, max_wait: float, give_back: float) -> str:
        try:
            raw: str = await self._script(
                keys=[f"beseda:rate:{self._name}:{key}"],
                args=[
                    repr(self.rate),
                    repr(self.burst),
                    op,
                    repr(max_wait),
                    str(self._lease),
                    repr(give_back),
                ],
            )
        except (RedisError, OSError) as exc:
            now = time.monotonic()
            if now - self._warned > 10:
                self._warned = now
                log.warning("rate limit %s falls back to this node (%s)", self._name, exc)
            raise _Unreachable from exc
        return raw

    async def take(self, key: str | int, now: float) -> float:
        try:
            return await self._call(key, "take") or 0.0
        except _Unreachable:
            return await self._fallback.take(key, now)

    async def reserve(self, key: str | int, now: float, max_wait: float) -> float | None:
        if self._lease == 1:
            try:
                return await self._call(key, "reserve", max_wait)
            except _Unreachable:
                return await self._fallback.reserve(key, now, max_wait)
        lease = self._leases.get(key)
        give_back = 0.0
        if lease is not None:
            if lease[1] > now and lease[0] >= 1:
                lease[0] -= 1
                return 0.0
            if lease[1] <= now:
                give_back = lease[0]
            del self._leases[key]
        if len(self._leases) > 10_000:  # forget ended leases (their rest refills anyway)
            for old in [k for k, (_, until) in self._leases.items() if until <= now]:
                del self._leases[old]
        try:
            raw = await self._raw(key, "lease", max_wait, give_back)
        except _Unreachable:
            return await self._fallback.reserve(key, now, max_wait)
        if raw.startswith("L"):
            self._leases[key] = [float(raw[1:]) - 1, now + LEASE_SECONDS]
            return 0.0
        value = float(raw)
        return None if value < 0 else value

    async def peek(self, key: str | int, now: float) -> float:
        lease = self._leases.get(key)
        if lease is not None and lease[1] > now and lease[0] >= 1:
            return 0.0
        try:
            return await self._call(key, "peek") or 0.0
        except _Unreachable:
            return await self._fallback.peek(key, now)

    async def charge(self, key: str | int, now: float) -> None:
        try:
            await self._call(key, "charge")
        except _Unreachable:
            await self._fallback.charge(key, now)

    async def refund(self, key: str | int) -> None:
        try:
            await self._call(key, "refund")
        except _Unreachable:
            await self._fallback.refund(key)


class _Unreachable(Exception):
    """Redis did not answer a limiter (it falls back to memory)."""
