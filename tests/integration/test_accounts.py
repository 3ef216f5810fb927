"""Accounts over the wire (issue 2, item 3): register, log in, log out, names, passwords,
tokens, throttling, several connections per user, and no ghost after a second login."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from newcomer import PASSWORD, Newcomer

from beseda.server.accounts import PasswordHasher
from beseda.server.app import Server
from conftest import FAST_HASHER_ARGS, test_settings, wait_for
from hashing import gated


async def test_register_login_logout_over_the_wire(server: Server) -> None:
    first = await Newcomer.open(server.port)
    registered = await first.call("register", username="alice", password=PASSWORD)
    assert registered["user"] == "alice"
    assert len(registered["token"]) >= 22  # ≥ 128 random bits, url-safe base64
    assert (await first.call("send", client_id="c1", text="hi"))["message"]["sender"] == "alice"
    assert await first.call("logout") == {}
    # Logged out, the connection stays open but may do nothing but log in again.
    refused = await first.request("send", client_id="c2", text="after logout")
    assert refused["code"] == "not_authenticated"
    again = await first.call("login", username="alice", password=PASSWORD)
    assert again["user"] == "alice"
    assert again["token"] != registered["token"]

    second = await Newcomer.open(server.port)
    logged_in = await second.call("login", username="alice", password=PASSWORD)
    assert logged_in["user"] == "alice"
    page = await second.call("history", conversation="general")
    assert [m["text"] for m in page["messages"]] == ["hi"]
    await first.close()
    await second.close()


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a" * 33,
        "al ice",
        "alice!",
        "a\x00b",
        "tab\there",
        "\u202eecila",  # right-to-left override
        "ali\u200bce",  # zero-width space
        "pаypal",  # a Cyrillic "а" among Latin letters
        "smile🙂",
    ],
    ids=[
        "empty",
        "too-long",
        "space",
        "symbol",
        "nul",
        "tab",
        "bidi",
        "zero-width",
        "mixed-script",
        "emoji",
    ],
)
async def test_names_breaking_the_rules_are_refused(server: Server, name: str) -> None:
    conn = await Newcomer.open(server.port)
    reply = await conn.request("register", username=name, password=PASSWORD)
    assert reply["type"] == "error"
    assert reply["code"] == "invalid_username"
    assert reply["message"]
    # Nothing was created: the connection is still anonymous and can register a good name.
    assert (await conn.request("users"))["code"] == "not_authenticated"
    await conn.call("register", username="fine", password=PASSWORD)
    users = await conn.call("users")
    assert [u["name"] for u in users["users"]] == ["fine"]
    await conn.close()


@pytest.mark.parametrize("name", ["Вася", "user_1.x-y", "a" * 32, "李小龍", "Ölaf"])
async def test_names_within_the_rules_are_accepted(server: Server, name: str) -> None:
    conn = await Newcomer.open(server.port)
    assert (await conn.call("register", username=name, password=PASSWORD))["user"] == name
    await conn.close()


async def test_names_equal_after_normalisation_and_case_folding_collide(server: Server) -> None:
    conn = await Newcomer.open(server.port)
    assert (await conn.call("register", username="Admin", password=PASSWORD))["user"] == "Admin"
    await conn.close()
    for other in ("admin", "ＡＤＭＩＮ", "ADMIN", "aDmIn"):
        conn = await Newcomer.open(server.port)
        reply = await conn.request("register", username=other, password="another password")
        assert reply["code"] == "name_taken", other
        # Any spelling logs in to the one account, shown as registered.
        assert (await conn.call("login", username=other, password=PASSWORD))["user"] == "Admin"
        await conn.close()
    conn = await Newcomer.user(server.port, "observer")
    users = await conn.call("users", query="admin")
    assert [u["name"] for u in users["users"]] == ["Admin"]
    await conn.close()


@pytest.mark.parametrize(
    ("password", "accepted"),
    [("", False), ("x" * 7, False), ("x" * 8, True), ("п" * 256, True), ("x" * 257, False)],
    ids=["empty", "7", "8", "256-cyrillic", "257"],
)
async def test_password_length_bounds(server: Server, password: str, accepted: bool) -> None:
    conn = await Newcomer.open(server.port)
    reply = await conn.request("register", username="alice", password=password)
    if accepted:
        assert reply["type"] == "result", reply
        other = await Newcomer.open(server.port)
        await other.call("login", username="alice", password=password)
        await other.close()
    else:
        assert reply["code"] == "invalid_password"
        again = await conn.request("login", username="alice", password=password)
        assert again["code"] == "bad_credentials"  # no account was created
    await conn.close()


async def test_token_login_works_until_logout(server: Server) -> None:
    conn = await Newcomer.open(server.port)
    token = (await conn.call("register", username="alice", password=PASSWORD))["token"]
    await conn.close()

    resumed = await Newcomer.open(server.port)
    assert (await resumed.call("login", token=token))["user"] == "alice"
    await resumed.call("send", client_id="c1", text="via token")
    # The token stays valid for other connections until this session logs out.
    parallel = await Newcomer.open(server.port)
    assert (await parallel.call("login", token=token))["user"] == "alice"
    await parallel.close()
    await resumed.call("logout")
    await resumed.close()

    late = await Newcomer.open(server.port)
    refused = await late.request("login", token=token)
    assert refused["code"] == "bad_credentials"
    assert (await late.request("login", token="not-a-token-at-all"))["code"] == "bad_credentials"
    # The password still works, and gives a fresh token.
    fresh = await late.call("login", username="alice", password=PASSWORD)
    assert fresh["token"] != token
    await late.close()


async def test_unknown_user_and_wrong_password_get_the_same_bytes(server: Server) -> None:
    owner = await Newcomer.open(server.port)
    await owner.call("register", username="alice", password=PASSWORD)
    await owner.close()

    answers = []
    for username, password in [("alice", "wrong password"), ("nobody", "wrong password")]:
        conn = await Newcomer.open(server.port)
        # The same request id, so that the whole line must be byte-identical.
        conn.send_line(json.dumps({"id": 7, "type": "login", "username": username,
                                   "password": password}).encode())  # fmt: skip
        answers.append(await conn.read_line())
        await conn.close()
    assert answers[0] == answers[1]
    assert json.loads(answers[0])["code"] == "bad_credentials"


async def test_failed_logins_are_throttled_per_account(server: Server) -> None:
    owner = await Newcomer.open(server.port)
    await owner.call("register", username="alice", password=PASSWORD)
    await owner.close()
    bob = await Newcomer.open(server.port)
    await bob.call("register", username="bob", password=PASSWORD)
    await bob.close()

    attacker = await Newcomer.open(server.port)
    codes = []
    for attempt in range(20):
        reply = await attacker.request("login", username="alice", password=f"guess {attempt}")
        codes.append(reply["code"])
        if reply["code"] == "rate_limited":
            assert reply["retry_after"] > 0
            break
    assert codes[-1] == "rate_limited"
    assert set(codes[:-1]) == {"bad_credentials"}
    assert len(codes) > 3  # a user who mistypes a few times is not locked out
    # While throttled, even the right password is refused for this account …
    blocked = await attacker.request("login", username="ALICE", password=PASSWORD)
    assert blocked["code"] == "rate_limited"
    # … but another account is not affected.
    assert (await attacker.call("login", username="bob", password=PASSWORD))["user"] == "bob"
    await attacker.close()


async def test_one_user_on_two_connections_at_once(server: Server) -> None:
    laptop = await Newcomer.user(server.port, "alice")
    observer = await Newcomer.user(server.port, "observer")
    watched = await observer.call("watch", users=["alice"])
    assert watched == {"users": [{"name": "alice", "online": True}]}
    phone = await Newcomer.open(server.port)
    await phone.call("login", username="alice", password=PASSWORD)

    await laptop.call("send", client_id="from-laptop", text="sent from the laptop")
    for conn in (phone, observer):
        event = await conn.event("message")
        assert event["message"]["text"] == "sent from the laptop"
    await phone.call("send", client_id="from-phone", text="sent from the phone")
    assert (await laptop.event("message"))["message"]["text"] == "sent from the phone"

    users = await observer.call("users")
    assert {u["name"]: u["online"] for u in users["users"]} == {"alice": True, "observer": True}
    # No presence event for alice's second connection: she was online already.
    assert [e for e in observer.events if e["type"] == "presence"] == []
    for conn in (observer, laptop, phone):
        await conn.close()


async def test_second_login_on_one_connection_is_refused_and_leaves_no_ghost(
    server: Server,
) -> None:
    observer = await Newcomer.user(server.port, "observer")
    bob = await Newcomer.user(server.port, "bob")
    await observer.call("watch", users=["bob"])
    await bob.close()
    await observer.event("presence", user="bob", online=False)
    conn = await Newcomer.user(server.port, "alice")
    watched = await observer.call("watch", users=["bob", "alice"])
    assert watched == {
        "users": [{"name": "bob", "online": False}, {"name": "alice", "online": True}]
    }

    for request in (
        {"username": "bob", "password": PASSWORD},
        {"username": "alice", "password": PASSWORD},
    ):
        reply = await conn.request("login", **request)
        assert reply["code"] == "already_authenticated"
    reply = await conn.request("register", username="carol", password=PASSWORD)
    assert reply["code"] == "already_authenticated"
    # Still alice, still usable.
    sent = await conn.call("send", client_id="c1", text="still me")
    assert sent["message"]["sender"] == "alice"

    users = await observer.call("users")
    assert {u["name"]: u["online"] for u in users["users"]} == {
        "alice": True,
        "bob": False,
        "observer": True,
    }
    await conn.close()
    offline = await observer.event("presence", user="alice")
    assert offline["online"] is False
    await wait_for(lambda: server.hub.sessions == 1)
    users = await observer.call("users")
    assert {u["name"]: u["online"] for u in users["users"]} == {
        "alice": False,
        "bob": False,
        "observer": True,
    }
    await observer.close()


async def test_logins_beyond_the_hash_queue_are_refused_with_retry_after(tmp_path: Path) -> None:
    """One hash at a time, one waiting: a third login at that moment is refused with
    ``rate_limited`` and ``retry_after``, whether or not its user exists, and the admitted
    logins complete in order once the hash worker is free."""
    hasher = PasswordHasher(**FAST_HASHER_ARGS, workers=1, queue=1)  # type: ignore[arg-type]
    try:
        async with Server(test_settings(tmp_path), hasher=hasher) as server:
            await (await Newcomer.user(server.port, "alice")).close()
            wrapper = gated(hasher)
            wrapper.gate.clear()
            running, waiting, refused, unknown = [
                await Newcomer.open(server.port) for _ in range(4)
            ]
            first = running.send("login", username="alice", password=PASSWORD)
            await wait_for(lambda: wrapper.running == 1)
            second = waiting.send("login", username="alice", password="wrong password")
            await wait_for(lambda: hasher.pending == 2)
            for conn, username in ((refused, "alice"), (unknown, "nobody")):
                reply = await conn.request("login", username=username, password=PASSWORD)
                assert reply["code"] == "rate_limited", reply
                assert reply["retry_after"] > 0
            wrapper.gate.set()
            assert (await running.reply(first))["data"]["user"] == "alice"
            assert (await waiting.reply(second))["code"] == "bad_credentials"
            # The queue is free again: the refused connection logs in when it retries.
            assert (await refused.call("login", username="alice", password=PASSWORD))[
                "user"
            ] == "alice"
            for conn in (running, waiting, refused, unknown):
                await conn.close()
    finally:
        hasher.close()


async def test_a_login_refused_for_a_full_hash_queue_is_not_a_failed_attempt(
    tmp_path: Path,
) -> None:
    """The password of a login refused because the hashing queue is full was never checked,
    so it must not spend the account's allowance of failed logins (here: one per hour)."""
    hasher = PasswordHasher(**FAST_HASHER_ARGS, workers=1, queue=0)  # type: ignore[arg-type]
    settings = test_settings(tmp_path, login_failures_per_account=(1 / 3600, 1))
    try:
        async with Server(settings, hasher=hasher) as server:
            await (await Newcomer.user(server.port, "alice")).close()
            wrapper = gated(hasher)
            wrapper.gate.clear()
            busy, retrying = await Newcomer.open(server.port), await Newcomer.open(server.port)
            held = busy.send("login", username="nobody", password=PASSWORD)
            await wait_for(lambda: wrapper.running == 1)
            for _ in range(3):
                reply = await retrying.request("login", username="alice", password=PASSWORD)
                assert reply["code"] == "rate_limited", reply
            wrapper.gate.set()
            assert (await busy.reply(held))["code"] == "bad_credentials"
            logged_in = await retrying.call("login", username="alice", password=PASSWORD)
            assert logged_in["user"] == "alice"
            for conn in (busy, retrying):
                await conn.close()
    finally:
        hasher.close()
