"""The connection's caps and deadlines over real loopback sockets (hardening items 5 and 10).

A logged-in connection cannot pin memory with an unfinished line: the line must arrive within
``line_timeout``, all unfinished lines share one server-wide budget, and connections are capped
server-wide and per user. A byte that is not UTF-8 is refused wherever it is in the line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from newcomer import PASSWORD, Newcomer

from beseda.protocol import errors
from beseda.server.app import Server


async def test_a_line_left_unfinished_closes_even_a_logged_in_connection(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(line_timeout=0.5)
    await server.start()
    conn = await Newcomer.user(server.port, "alice")
    conn.writer.write(b'{"id":1,"type":"ping"' + b" " * 200_000)  # and never the newline
    await conn.writer.drain()
    seen = await conn.closing(timeout=5)
    assert seen == [
        {"type": "bye", "code": "line_timeout", "message": errors.MESSAGES[errors.LINE_TIMEOUT]}
    ]
    await conn.close()


async def test_a_line_sent_in_pieces_within_the_timeout_is_read(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(line_timeout=1.0)
    await server.start()
    conn = await Newcomer.user(server.port, "alice")
    for _ in range(3):  # 1.2 s in all, but each line within its second
        conn.writer.write(b'{"id":"p","type":')
        await asyncio.sleep(0.2)
        conn.writer.write(b'"ping"}\n')
        assert (await conn.reply("p"))["type"] == "result"
        await asyncio.sleep(0.2)
    await conn.close()


async def test_unfinished_lines_are_bounded_server_wide(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(input_buffer_bytes=300_000)
    await server.start()
    first = await Newcomer.user(server.port, "alice")
    second = await Newcomer.user(server.port, "bob")
    first.writer.write(b"x" * 200_000)
    await first.writer.drain()
    await asyncio.sleep(0.2)
    second.writer.write(b"y" * 200_000)
    await second.writer.drain()
    seen = await second.closing(timeout=5)
    assert [m["code"] for m in seen] == ["server_busy"]
    # The first keeps its place: its line completes and is answered.
    first.writer.write(b"\n")
    assert (await first.read())["code"] == "bad_json"  # type: ignore[index]
    assert await first.call("ping") == {}
    await first.close()
    await second.close()


async def test_connections_over_the_server_cap_are_told_and_closed(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(max_connections=2)
    await server.start()
    held = [await Newcomer.open(server.port), await Newcomer.open(server.port)]
    refused = await Newcomer.open(server.port, hello=False)
    assert await refused.closing() == [
        {"type": "bye", "code": "server_full", "message": errors.MESSAGES[errors.SERVER_FULL]}
    ]
    await refused.close()
    await held.pop().close()
    await asyncio.sleep(0.2)
    again = await Newcomer.open(server.port)  # a place came free
    assert await again.call("ping") == {}
    for conn in (*held, again):
        await conn.close()


async def test_logins_over_the_users_cap_are_refused(make_server: Callable[..., Server]) -> None:
    server = make_server(max_connections_per_user=2)
    await server.start()
    first = await Newcomer.user(server.port, "alice")
    second = await Newcomer.user(server.port, "alice")
    third = await Newcomer.open(server.port)
    reply = await third.request("login", username="alice", password=PASSWORD)
    assert (reply["type"], reply["code"]) == ("error", "too_many_sessions")
    # Still open and anonymous: it may log in as someone else, or once a place is free.
    assert (await third.request("history", conversation="general"))["code"] == "not_authenticated"
    await second.close()
    await asyncio.sleep(0.2)
    assert (await third.call("login", username="alice", password=PASSWORD))["user"] == "alice"
    await first.close()
    await third.close()


async def test_a_byte_that_is_not_utf8_in_an_ignored_field_is_bad_json(server: Server) -> None:
    conn = await Newcomer.user(server.port, "alice")
    conn.send_line(b'{"id":4,"type":"ping","x":"\xff"}')
    reply = await conn.read()
    assert reply is not None
    assert (reply["id"], reply["code"]) == (None, "bad_json")
    conn.send_line(b'{"id":5,"type":"send","client_id":"a","text":"hi","x":"\xc3\x28"}')
    reply = await conn.read()
    assert reply is not None
    assert reply["code"] == "bad_json"
    page = await conn.call("history", conversation="general")
    assert page["messages"] == []  # nothing was stored
    await conn.close()
