"""Several ``beseda serve`` processes on one PostgreSQL and one Redis behave as one server.

Every node is a real child process on loopback; PostgreSQL and Redis are real servers the
tests start (``pg_server.py``, ``redis_service.py``). What is proved, as docs/operations.md
promises it:

* three nodes, users spread over them: every entry reaches every member on every node, in
  order, exactly once; presence and typing cross nodes;
* a node killed (SIGKILL) under 100 senders: its clients reconnect (through a load balancer)
  to another node and lose nothing; its users go offline within the documented time;
* Redis stopped for 10 s under load, then started: every entry still reaches every member
  (from the database), none twice;
* PostgreSQL restarted under load: ``storage_unavailable`` meanwhile, every acknowledged
  message stored exactly once afterwards;
* the throttles hold across nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from newcomer import PASSWORD, Newcomer

from beseda.client import Client
from beseda.protocol import schema
from conftest import TIMEOUT_FACTOR, ServerProcess, free_port
from pg_server import PostgresServer, available, postgres_server
from redis_service import RedisServer

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not available(), reason="PostgreSQL is not installed"),
]

NODE_EXPIRY = 2.0
"""--node-expiry of the test nodes: a dead node's users are offline within 2 s + 2/3 s."""


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


class Cluster:
    """Nodes of one database and one Redis; ``start(name)`` adds a running node."""

    def __init__(self, directory: Path, db: str, redis: RedisServer) -> None:
        self.directory = directory
        self.db = db
        self.redis = redis
        self.nodes: dict[str, ServerProcess] = {}

    def start(self, name: str, *flags: str) -> ServerProcess:
        node = ServerProcess(
            self.directory / f"{name}.db",  # names the log file; --db below wins
            free_port(),
            [
                "--db",
                self.db,
                "--bus",
                self.redis.url,
                "--node-name",
                name,
                "--node-expiry",
                str(NODE_EXPIRY),
                "--message-rate",
                "1000",
                "--message-burst",
                "1000",
                "--max-connections-per-address",
                "1000",
                *flags,
            ],
        )
        node.start()
        self.nodes[name] = node
        return node

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


@pytest.fixture
def cluster(tmp_path: Path, pg: PostgresServer, own_redis: RedisServer) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path, pg.create_database(), own_redis)
    try:
        yield cluster
    finally:
        cluster.stop()
        with contextlib.suppress(RuntimeError):
            pg.drop_database(cluster.db)


@pytest.fixture
async def raw() -> AsyncIterator[Callable[..., Any]]:
    """``await raw(port, name)`` → a raw protocol-3 connection registered (or logged in)."""
    conns: list[Newcomer] = []

    async def make(port: int, name: str) -> Newcomer:
        conn = await Newcomer.open(port)
        conns.append(conn)
        reply = await conn.request("register", username=name, password=PASSWORD, protocol=3)
        if reply["type"] == "error" and reply["code"] == "name_taken":
            reply = await conn.request("login", username=name, password=PASSWORD, protocol=3)
        assert reply["type"] == "result", reply
        return conn

    yield make
    for conn in conns:
        await conn.close()


async def entries_until(
    conn: Newcomer, want: Callable[[dict[str, list[int]]], bool], timeout: float = 60.0
) -> dict[str, list[int]]:
    """Read ``entry`` events until ``want`` holds of the seqs seen per conversation (in the
    order they came, duplicates kept); keeps other events in ``conn.events``."""
    seen: dict[str, list[int]] = defaultdict(list)
    kept = []
    for event in conn.events:
        if event["type"] == "entry":
            seen[event["entry"]["conversation"]].append(event["entry"]["seq"])
        else:
            kept.append(event)
    conn.events = kept
    deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
    while not want(seen):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; seen {dict((k, len(v)) for k, v in seen.items())}"
        message = await conn.read(left)
        assert message is not None, "connection closed"
        if message["type"] == "entry":
            seen[message["entry"]["conversation"]].append(message["entry"]["seq"])
        else:
            conn.events.append(message)
    return seen


def assert_once_in_order(seqs: list[int], expected: set[int]) -> None:
    assert seqs == sorted(seqs), "out of order"
    assert len(seqs) == len(set(seqs)), "delivered twice"
    assert set(seqs) == expected


# -- three nodes ----------------------------------------------------------------------------------


async def test_three_nodes_deliver_every_entry_to_every_member_in_order_exactly_once(
    cluster: Cluster, raw: Callable[..., Any]
) -> None:
    nodes = [cluster.start(name) for name in ("n1", "n2", "n3")]
    names = [f"user{i}" for i in range(9)]
    users: list[Newcomer] = []
    for i, name in enumerate(names):
        users.append(await raw(nodes[i % 3].port, name))  # user i on node i mod 3
    created = await users[0].call("create_channel", name="team", members=names[1:])
    channel = created["conversation"]["conversation"]
    per_user = 15
    sent: dict[str, dict[int, set[int]]] = {channel: {}, "general": {}}
    requests = []
    for i, user in enumerate(users):
        for k in range(per_user):
            for conversation in (channel, "general"):
                requests.append(
                    (
                        i,
                        user,
                        user.send(
                            "post",
                            conversation=conversation,
                            client_id=f"{i}-{k}-{conversation}",
                            text=f"{names[i]} says {k}",
                        ),
                    )
                )
    own: dict[int, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for i, user, request_id in requests:
        reply = await user.reply(request_id)
        assert reply["type"] == "result", reply
        stored = reply["data"]["entry"]
        own[i][stored["conversation"]].add(stored["seq"])
    del sent
    channel_seqs = set(range(1, 1 + 1 + 9 * per_user))  # "created", then the messages
    general_seqs = set(range(1, 1 + 9 * per_user))
    for i, user in enumerate(users):
        want_channel = channel_seqs - own[i][channel] - ({1} if i == 0 else set())
        want_general = general_seqs - own[i]["general"]
        seen = await entries_until(
            user,
            lambda s, wc=want_channel, wg=want_general: (
                set(s[channel]) >= wc and set(s["general"]) >= wg
            ),
        )
        assert_once_in_order(seen[channel], want_channel)
        assert_once_in_order(seen["general"], want_general)
    # Nothing more arrives late (a duplicate from a gap read, say).
    await asyncio.sleep(0.5)
    for user in users:
        user.send("ping")
    for user in users:
        while (message := await user.read()) is not None and message["type"] != "result":
            assert message["type"] != "entry", message


async def test_presence_and_typing_cross_nodes(cluster: Cluster, raw: Callable[..., Any]) -> None:
    a, b = cluster.start("n1"), cluster.start("n2")
    ann = await raw(a.port, "ann")
    bob = await raw(b.port, "bob")
    zoe = await raw(b.port, "zoe")
    await zoe.close()
    # Her node takes her offline once it has seen the close, a moment after it: wait for it.
    deadline = time.monotonic() + 10 * TIMEOUT_FACTOR
    while (await ann.call("users", query="zoe"))["users"] != [{"name": "zoe", "online": False}]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    watched = await ann.call("watch", users=["zoe", "bob"])
    assert {u["name"]: u["online"] for u in watched["users"]} == {"zoe": False, "bob": True}
    zoe = await raw(b.port, "zoe")
    await ann.event("presence", user="zoe", online=True)
    await zoe.close()
    await ann.event("presence", user="zoe", online=False)
    # Typing goes to the members on the other node.
    await bob.call("typing", conversation="general")
    typing = await ann.event("typing")
    assert (typing["user"], typing["conversation"]) == ("bob", "general")
    # The directory of either node shows who is online anywhere.
    listed = await ann.call("users", query="bob")
    assert listed["users"] == [{"name": "bob", "online": True}]


async def test_a_channel_made_on_one_node_is_known_to_the_others(
    cluster: Cluster, raw: Callable[..., Any]
) -> None:
    a, b = cluster.start("n1"), cluster.start("n2")
    ann = await raw(a.port, "ann")
    bob = await raw(b.port, "bob")
    created = await ann.call("create_channel", name="ops", public=True)
    channel = created["conversation"]["conversation"]
    # Node 2 learnt of it from the bus: bob can find it, join it and post into it there.
    deadline = time.monotonic() + 10 * TIMEOUT_FACTOR
    while True:
        found = await bob.call("channels", query="ops")
        if found["channels"]:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await bob.call("join", conversation=channel)
    await ann.event("entry")
    posted = await bob.call("post", conversation=channel, client_id="b1", text="hi from n2")
    event = await ann.event("entry")
    assert event["entry"] == posted["entry"]
    members = await ann.call("members", conversation=channel)
    assert {m["name"] for m in members["members"]} == {"ann", "bob"}


async def test_an_account_made_on_one_node_is_in_general_on_the_others(
    cluster: Cluster, raw: Callable[..., Any]
) -> None:
    a, b = cluster.start("n1"), cluster.start("n2")
    bob = await raw(b.port, "bob")
    await (await raw(a.port, "ann")).close()  # registered on node 1
    posted = await bob.call("post", conversation="general", client_id="b1", text="hi")
    ann = await raw(b.port, "ann")  # and back on node 2
    read = await ann.call("read", conversation="general", seq=posted["entry"]["seq"])
    assert read["seq"] == posted["entry"]["seq"]
    info = await ann.call("conversation", conversation="general")
    assert info["conversation"]["members"] == 2


async def test_a_logout_on_one_node_ends_the_tokens_sessions_on_the_others(
    cluster: Cluster,
) -> None:
    a, b = cluster.start("n1"), cluster.start("n2")
    here = await Newcomer.open(a.port)
    there = await Newcomer.open(b.port)
    try:
        registered = await here.call("register", username="ann", password=PASSWORD, protocol=3)
        await there.call("login", token=registered["token"], protocol=3)
        await here.call("logout")
        bye = await there.event("bye")
        assert bye["code"] == "session_ended"
    finally:
        await here.close()
        await there.close()


# -- faults ---------------------------------------------------------------------------------------


class Balancer:
    """A TCP load balancer in front of the nodes (round-robin, skipping nodes that refuse),
    as an operator would run one; a connection to a node that dies is closed."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self._next = itertools.count()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        for _ in range(len(self.ports)):
            port = self.ports[next(self._next) % len(self.ports)]
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            self._writers.add(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            return
        writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()


async def test_a_killed_node_loses_nothing_and_its_users_go_offline(
    cluster: Cluster, raw: Callable[..., Any]
) -> None:
    nodes = [cluster.start(name) for name in ("n1", "n2", "n3")]
    balancer = Balancer([node.port for node in nodes])
    port = await balancer.start()
    senders: list[Client] = []
    groups = 10
    try:
        # 100 senders through the balancer (so spread over the nodes), in 10 channels of 10.
        for i in range(100):
            client = Client("127.0.0.1", port, min_backoff=0.05, max_backoff=0.5)
            await client.connect()
            senders.append(client)
            await client.register(f"s{i}", PASSWORD)
        channels = []
        for g in range(groups):
            members = [f"s{i}" for i in range(g, 100, groups) if i != g]
            info = await senders[g].create_channel(f"room{g}", members=members)
            channels.append(info.conversation)
        # Users that stay on node 3 and do not reconnect, watched from node 1.
        idle = [await raw(nodes[2].port, f"idle{i}") for i in range(3)]
        watcher = await raw(nodes[0].port, "watcher")
        watched = await watcher.call("watch", users=[f"idle{i}" for i in range(3)])
        assert all(u["online"] for u in watched["users"])

        acknowledged: dict[str, set[str]] = defaultdict(set)
        stop = asyncio.Event()

        async def send(i: int, client: Client) -> None:
            conversation = channels[i % groups]
            for k in itertools.count():
                if stop.is_set():
                    return
                entry = await client.post(conversation, f"{i}:{k}", client_id=f"s{i}-{k}")
                acknowledged[conversation].add(entry.client_id)
                await asyncio.sleep(0.2)

        tasks = [asyncio.create_task(send(i, c)) for i, c in enumerate(senders)]
        await asyncio.sleep(2.0)
        nodes[2].kill()
        killed = time.monotonic()
        for i in range(3):
            await watcher.event("presence", timeout=30, user=f"idle{i}", online=False)
        took = time.monotonic() - killed
        assert took <= (NODE_EXPIRY * 4 / 3) * TIMEOUT_FACTOR + 1.0, took
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60 * TIMEOUT_FACTOR)
        for conn in idle:
            await conn.close()

        # Every acknowledged message is stored once, and every member received every one.
        for g, conversation in enumerate(channels):
            stored: list[schema.Entry] = []
            before = None
            while True:
                page = await senders[g].history(conversation, before=before, limit=200)
                stored = list(page.entries) + stored
                if not page.more or not page.entries:
                    break
                before = page.entries[0].seq
            ids = [e.client_id for e in stored if e.kind == "message"]
            assert len(ids) == len(set(ids)), "stored twice"
            assert set(ids) == acknowledged[conversation]
            assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
        received: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        deadline = time.monotonic() + 30 * TIMEOUT_FACTOR
        for i, client in enumerate(senders):
            conversation = channels[i % groups]
            expected = acknowledged[conversation]
            mine = received[client.user or ""][conversation]
            while mine != expected:
                assert time.monotonic() < deadline, (i, len(expected - mine))
                event = await client.next_event(timeout=30 * TIMEOUT_FACTOR)
                message = getattr(event, "message", None)
                if message is not None and message.conversation == conversation:
                    mine.add(message.client_id)
    finally:
        for client in senders:
            await client.close()
        await balancer.close()


async def test_redis_stopped_for_10_s_under_load_loses_and_doubles_nothing(
    cluster: Cluster, raw: Callable[..., Any]
) -> None:
    a, b = cluster.start("n1"), cluster.start("n2")
    senders = [await raw(a.port, "ann"), await raw(b.port, "bob")]
    readers = [await raw(a.port, "rita"), await raw(b.port, "rob")]
    sent = {0: 0, 1: 0}
    stop = asyncio.Event()

    async def send(i: int) -> None:
        conn = senders[i]
        for k in itertools.count():
            if stop.is_set():
                return
            reply = await conn.request(
                "post", conversation="general", client_id=f"{i}-{k}", text=f"{i}:{k}"
            )
            assert reply["type"] == "result", reply
            sent[i] += 1
            await asyncio.sleep(0.05)

    tasks = [asyncio.create_task(send(i)) for i in (0, 1)]
    await asyncio.sleep(1.0)
    cluster.redis.stop()
    await asyncio.sleep(10.0)
    cluster.redis.start()  # the same port
    await asyncio.sleep(3.0)
    stop.set()
    await asyncio.gather(*tasks)
    total = sent[0] + sent[1]
    assert total > 100
    expected = set(range(1, total + 1))
    for reader in readers:
        seen = await entries_until(reader, lambda s: set(s["general"]) >= expected, 60)
        assert_once_in_order(seen["general"], expected)
    # The senders too got every entry of the other, once.
    for i, sender in enumerate(senders):
        seen = await entries_until(sender, lambda s, n=sent[1 - i]: len(set(s["general"])) >= n)
        assert len(seen["general"]) == len(set(seen["general"])) == sent[1 - i]
        assert seen["general"] == sorted(seen["general"])


async def test_a_restarted_postgresql_stores_every_acknowledged_message_once(
    cluster: Cluster, pg: PostgresServer, raw: Callable[..., Any]
) -> None:
    a, b = cluster.start("n1"), cluster.start("n2")
    senders = [await raw(a.port, "ann"), await raw(b.port, "bob")]
    acknowledged: set[str] = set()
    refused: list[str] = []
    stop = asyncio.Event()

    async def send(i: int) -> None:
        conn = senders[i]
        for k in itertools.count():
            if stop.is_set():
                return
            client_id = f"{i}-{k}"
            while not stop.is_set():  # retried with the same id until acknowledged
                reply = await conn.request(
                    "post", conversation="general", client_id=client_id, text=client_id
                )
                if reply["type"] == "result":
                    acknowledged.add(client_id)
                    break
                refused.append(reply["code"])
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(send(i)) for i in (0, 1)]
    await asyncio.sleep(1.0)
    await asyncio.to_thread(pg.stop, "fast")
    await asyncio.sleep(3.0)
    await asyncio.to_thread(pg.start_on_same_port)
    await asyncio.sleep(3.0)
    stop.set()
    await asyncio.gather(*tasks)
    assert refused, "no message was refused while PostgreSQL was down"
    assert set(refused) == {"storage_unavailable"}
    stored: list[dict[str, Any]] = []
    before = None
    while True:
        page = await senders[0].call("history", conversation="general", before=before, limit=200)
        stored = page["entries"] + stored
        if not page["more"]:
            break
        before = page["entries"][0]["seq"]
    ids = [e["client_id"] for e in stored]
    assert len(ids) == len(set(ids))
    assert set(ids) == acknowledged
    assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))


async def test_throttles_hold_across_nodes(cluster: Cluster, raw: Callable[..., Any]) -> None:
    nodes = [cluster.start(name, "--registrations-per-minute", "10") for name in ("n1", "n2")]
    # Failed logins of one account, alternating between nodes: the account's allowance (10)
    # is one for the cluster.
    await (await raw(nodes[0].port, "target")).close()
    codes = []
    for attempt in range(14):
        conn = await Newcomer.open(nodes[attempt % 2].port)
        reply = await conn.request("login", username="target", password="wrong-password")
        codes.append(reply.get("code"))
        await conn.close()
    assert codes[:10] == ["bad_credentials"] * 10
    assert set(codes[10:]) == {"rate_limited"}
    # Registrations from one address: 30 at once (3 × 10 per minute, at least 30) for the
    # cluster, whichever node they go to (one was made above).
    results = []
    started = time.monotonic()
    for i in range(40):
        conn = await Newcomer.open(nodes[i % 2].port)
        reply = await conn.request("register", username=f"new{i}", password=PASSWORD)
        results.append(reply["type"] if reply["type"] == "result" else reply["code"])
        await conn.close()
    refilled = int((time.monotonic() - started) / 6) + 1  # one per 6 s comes back meanwhile
    # Per node it would have been 30 on each, and all 40 would have gone through.
    assert 29 <= results.count("result") <= 29 + refilled
    assert results[-1] == "rate_limited"
    assert set(results) == {"result", "rate_limited"}


async def test_the_message_rate_is_one_for_the_cluster(
    cluster: Cluster, raw: Callable[..., Any]
) -> None:
    flags = ("--message-rate", "1", "--message-burst", "10", "--message-max-delay", "0")
    nodes = [cluster.start(name, *flags) for name in ("n1", "n2")]
    here = await raw(nodes[0].port, "ann")
    there = await raw(nodes[1].port, "ann")
    results = []
    for k in range(16):
        conn = (here, there)[k % 2]
        reply = await conn.request("post", conversation="general", client_id=f"m{k}", text="x")
        results.append(reply["type"] if reply["type"] == "result" else reply["code"])
    # A burst of 10 for the user, not 10 per node.
    assert results.count("result") in (10, 11)  # one more may have refilled meanwhile
    assert "rate_limited" in results


async def test_a_node_that_cannot_reach_redis_exits_with_a_clear_error(
    tmp_path: Path, pg: PostgresServer
) -> None:
    import subprocess
    import sys

    db = pg.create_database()
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "beseda",
            "serve",
            "--port",
            str(free_port()),
            "--db",
            db,
            "--bus",
            f"redis://127.0.0.1:{free_port()}/0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Cannot reach Redis at redis://127.0.0.1:" in result.stderr
