"""Account rules: names, passwords, tokens, rate limits and password hashing (no I/O)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import argon2
import pytest

from beseda import cli
from beseda.protocol import errors
from beseda.protocol.errors import ProtocolError
from beseda.server import accounts, config
from beseda.server.accounts import LoginThrottle, PasswordHasher, TokenBucket
from beseda.server.app import Server
from conftest import wait_for
from hashing import gated

# -- usernames --------------------------------------------------------------------------------


def test_case_and_width_variants_share_one_key() -> None:
    keys = {accounts.check_username(name)[1] for name in ["Admin", "ＡＤＭＩＮ", "admin", "ADMIN"]}
    assert keys == {"admin"}


def test_the_display_name_keeps_its_case_but_not_its_width() -> None:
    assert accounts.check_username("Admin") == ("Admin", "admin")
    assert accounts.check_username("ＡＤＭＩＮ") == ("ADMIN", "admin")


def test_canonical_name_matches_the_key_of_check_username() -> None:
    for name in ["Admin", "Straße", "Алиса", "ΣΊΣΥΦΟΣ", "ﬁlm"]:
        assert accounts.canonical_name(name) == accounts.check_username(name)[1]
    assert accounts.canonical_name("STRASSE") == accounts.canonical_name("straße")


@pytest.mark.parametrize(
    "name",
    ["alice", "Алиса", "Щука_99", "用户名", "김철수", "Ελένη", "jean-luc.picard", "ümit", "123"],
)
def test_names_in_one_script_are_allowed(name: str) -> None:
    display, key = accounts.check_username(name)
    assert display == name
    assert key == name.casefold()


@pytest.mark.parametrize(
    "name",
    [
        "ali ce",
        "ali\u00a0ce",
        "ali\x00ce",
        "ali\nce",
        "alice\x7f",
        "ali\u200bce",  # zero-width space
        "ali\u200dce",  # zero-width joiner
        "\ufeffalice",  # byte-order mark
        "\u202eecila",  # right-to-left override
        "ali\u2067ce",  # right-to-left isolate
        "alice\u200f",  # right-to-left mark
        "a$b",
        "a+b",
        "a@b",
        "a/b",
        "alice😀",
        "a<b>",
        "a'b",
    ],
)
def test_spaces_controls_invisibles_and_symbols_are_refused(name: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        accounts.check_username(name)
    assert caught.value.code == errors.INVALID_USERNAME


@pytest.mark.parametrize(
    "name",
    [
        "p\u0430ypal",  # Cyrillic а among Latin letters
        "alic\u0435",  # Cyrillic е
        "b\u03bfb",  # Greek ο
        "привет" + "a",  # Latin a among Cyrillic letters
    ],
)
def test_look_alike_mixed_scripts_are_refused(name: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        accounts.check_username(name)
    assert caught.value.code == errors.INVALID_USERNAME
    assert "script" in caught.value.message


LOOK_ALIKES_OF_ADMIN = {
    "Latin alpha": "\u0251dmin",  # ɑdmin
    "Cyrillic а, whole-script": "\u0430dmin"[:1] + "dmin",  # refused as mixed anyway
    "rn for m": "adrnin",
    "upper case and rn": "ADRNIN",
}


@pytest.mark.parametrize("label", list(LOOK_ALIKES_OF_ADMIN))
def test_look_alikes_share_the_skeleton(label: str) -> None:
    assert accounts.name_skeleton(LOOK_ALIKES_OF_ADMIN[label]) == accounts.name_skeleton("admin")


def test_whole_script_look_alikes_share_the_skeleton() -> None:
    # Each name is valid alone (one script); as skeletons they are one name.
    assert accounts.check_display_name("\u0430\u0441\u0435").skeleton == (
        accounts.check_display_name("ace").skeleton
    )
    assert accounts.name_skeleton("paypal") == accounts.name_skeleton("PayPal")
    assert accounts.name_skeleton("alice") != accounts.name_skeleton("alicia")


@pytest.mark.parametrize(
    "name",
    [
        "\u1d00dmin",  # ᴀdmin: small capital A, not in the identifier profile
        "admin\u0966",  # admin०: a Devanagari digit in a Latin name
        "g\u09e6\u09e6gle",  # g০০gle: Bengali zeros
        "\u0430\u0441\u0435\u0967",  # a Devanagari digit in a Cyrillic name
        "1\u0967",  # two systems of digits
    ],
)
def test_restricted_characters_and_foreign_digits_are_refused(name: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        accounts.check_display_name(name)
    assert caught.value.code == errors.INVALID_USERNAME


@pytest.mark.parametrize(
    "name",
    [
        "\u0915\u092e\u0932\u0967",
        "\u0967\u0968\u0969",
        "user_42",
        "\u0645\u062d\u0645\u062f\u0661",
    ],
)
def test_digits_of_the_names_own_script_are_allowed(name: str) -> None:
    assert accounts.check_display_name(name).name == name


def test_check_display_name_returns_name_key_and_skeleton() -> None:
    checked = accounts.check_display_name("ＡＤＭＩＮ")
    assert checked == ("ADMIN", "admin", accounts.name_skeleton("admin"))
    other = accounts.NameKind("channel name", errors.BAD_REQUEST)
    with pytest.raises(ProtocolError) as caught:
        accounts.check_display_name("a b", other)
    assert caught.value.code == errors.BAD_REQUEST
    assert caught.value.message.startswith("A channel name may contain")


def test_name_length_bounds() -> None:
    assert accounts.check_username("a")[0] == "a"
    assert accounts.check_username("я" * accounts.MAX_NAME)[0] == "я" * accounts.MAX_NAME
    for name in ["", "a" * (accounts.MAX_NAME + 1), "я" * (accounts.MAX_NAME + 1)]:
        with pytest.raises(ProtocolError) as caught:
            accounts.check_username(name)
        assert caught.value.code == errors.INVALID_USERNAME


def test_name_length_is_counted_after_normalisation() -> None:
    # U+FDFA is one character that NFKC expands to eighteen.
    with pytest.raises(ProtocolError):
        accounts.check_username("a" * 20 + "\ufdfa")


# -- passwords and tokens ---------------------------------------------------------------------


def test_password_length_bounds() -> None:
    accounts.check_password("p" * accounts.MIN_PASSWORD)
    accounts.check_password("п" * accounts.MAX_PASSWORD)
    for password in ["", "p" * (accounts.MIN_PASSWORD - 1), "p" * (accounts.MAX_PASSWORD + 1)]:
        with pytest.raises(ProtocolError) as caught:
            accounts.check_password(password)
        assert caught.value.code == errors.INVALID_PASSWORD


def test_tokens_are_long_random_and_stored_hashed() -> None:
    token, stored = accounts.new_token()
    # URL-safe base64 carries 6 bits per character.
    assert len(token) * 6 >= 128
    assert stored == accounts.hash_token(token)
    assert stored != token.encode()
    assert token.encode() not in stored
    assert len({accounts.new_token()[0] for _ in range(1000)}) == 1000


def test_hash_token_is_deterministic_and_tolerates_any_string() -> None:
    assert accounts.hash_token("abc") == accounts.hash_token("abc")
    assert accounts.hash_token("abc") != accounts.hash_token("abd")
    assert len(accounts.hash_token("\ud800")) == 32  # a lone surrogate must not crash


# -- rate limits ------------------------------------------------------------------------------


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.take("k", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("k", 0.0) == pytest.approx(0.5)
    assert bucket.take("k", 0.25) == pytest.approx(0.25)
    assert bucket.take("k", 0.5) == 0.0
    assert bucket.take("k", 0.5) == pytest.approx(0.5)


def test_token_bucket_refills_up_to_the_burst_only() -> None:
    bucket = TokenBucket(rate=1.0, burst=2)
    bucket.take("k", 0.0)
    bucket.take("k", 0.0)
    allowed = [bucket.take("k", 1000.0) == 0.0 for _ in range(3)]
    assert allowed == [True, True, False]


def test_token_bucket_keys_are_independent() -> None:
    bucket = TokenBucket(rate=1.0, burst=1)
    assert bucket.take("a", 0.0) == 0.0
    assert bucket.take("a", 0.0) > 0
    assert bucket.take("b", 0.0) == 0.0


def test_token_bucket_peek_and_refund() -> None:
    bucket = TokenBucket(rate=1.0, burst=1)
    assert bucket.peek("k", 0.0) == 0.0
    bucket.take("k", 0.0)
    assert bucket.peek("k", 0.0) == pytest.approx(1.0)
    assert bucket.peek("k", 0.0) == pytest.approx(1.0)  # peeking spends nothing
    bucket.refund("k")
    assert bucket.peek("k", 0.0) == 0.0
    bucket.refund("k")
    bucket.refund("k")
    assert bucket.take("k", 0.0) == 0.0
    assert bucket.take("k", 0.0) > 0  # refunds never exceed the burst


def test_a_limiter_forgets_refilled_buckets_and_never_scans_them_all() -> None:
    # 100,000 keys, each used once a millisecond apart: every call looks at no more than
    # PRUNED_PER_CALL buckets, and the buckets that have refilled are forgotten.
    bucket = TokenBucket(rate=1.0, burst=2)  # refilled 2 s after its last use
    calls = 100_000
    most = 0
    for i in range(calls):
        before = bucket.examined
        bucket.take(("10.0.0.1", i), i / 1000)
        most = max(most, bucket.examined - before)
    assert most <= accounts.PRUNED_PER_CALL
    assert bucket.examined <= accounts.PRUNED_PER_CALL * calls
    # Only the keys of the last 2 s (2,000 of them) can still hold information.
    assert len(bucket) <= 2_000 + accounts.PRUNED_PER_CALL
    # Later, each call forgets up to two old keys, so the table shrinks as it is used.
    for i in range(2_000):
        bucket.take("steady", 1000.0 + i / 1000)
    assert len(bucket) <= 2


def test_a_forgotten_bucket_behaves_as_a_full_one() -> None:
    bucket = TokenBucket(rate=1.0, burst=2)
    bucket.take("a", 0.0)
    bucket.take("a", 0.0)
    assert bucket.take("a", 0.0) > 0
    for i in range(10):
        bucket.take(f"other{i}", 10.0)  # prunes "a", now refilled
    assert len(bucket) == 10  # "a" was forgotten
    assert [bucket.take("a", 10.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]


def test_throttle_buckets_are_pruned_in_constant_work_too() -> None:
    limiter = throttle(account=(1.0, 2), address=(1.0, 2))
    for i in range(20_000):
        limiter.attempt(f"name{i}", f"10.0.{i // 250}.{i % 250}", i / 100)
        limiter.failed(f"name{i}", f"10.0.{i // 250}.{i % 250}", i / 100)
    for limiter_bucket in limiter.limiters:
        assert limiter_bucket.examined <= accounts.PRUNED_PER_CALL * 20_000
        assert len(limiter_bucket) <= 1_000


def throttle(
    account: tuple[float, float] = (1 / 60, 3), address: tuple[float, float] = (1 / 60, 100)
) -> LoginThrottle:
    return LoginThrottle(per_account=account, per_address=address)


def test_failed_logins_are_limited_per_account() -> None:
    limiter = throttle()
    for _ in range(3):
        limiter.attempt("alice", "10.0.0.1", 0.0)
    with pytest.raises(ProtocolError) as caught:
        limiter.attempt("alice", "10.0.0.2", 0.0)
    assert caught.value.code == errors.RATE_LIMITED
    assert caught.value.retry_after == pytest.approx(60.0)
    limiter.attempt("bob", "10.0.0.1", 0.0)  # another account is not affected
    limiter.attempt("alice", "10.0.0.1", 60.0)  # and the account recovers with time


def test_failed_logins_are_limited_per_address() -> None:
    limiter = throttle(account=(1 / 60, 100), address=(1 / 60, 3))
    for name in ["a", "b", "c"]:
        limiter.attempt(name, "10.0.0.1", 0.0)
        limiter.failed(name, "10.0.0.1", 0.0)
    with pytest.raises(ProtocolError) as caught:
        limiter.attempt("d", "10.0.0.1", 0.0)
    assert caught.value.code == errors.RATE_LIMITED
    assert caught.value.retry_after is not None
    assert caught.value.retry_after > 0
    limiter.attempt("d", "10.0.0.2", 0.0)


def test_bad_tokens_are_charged_to_the_address_only() -> None:
    limiter = throttle(account=(1 / 60, 1), address=(1 / 60, 3))
    for _ in range(3):
        limiter.attempt(None, "10.0.0.1", 0.0)
        limiter.failed(None, "10.0.0.1", 0.0)
    with pytest.raises(ProtocolError):
        limiter.attempt(None, "10.0.0.1", 0.0)
    limiter.attempt("alice", "10.0.0.2", 0.0)


def test_logins_in_flight_together_cost_a_clean_address_nothing() -> None:
    # 50 token logins (or right passwords for 50 accounts) from one NAT address, all begun
    # before any is answered: none is refused, and succeeding costs nothing.
    limiter = throttle(account=(1 / 60, 3), address=(1 / 60, 30))
    for i in range(50):
        limiter.attempt(None, "10.0.0.1", 0.0)
        limiter.attempt(f"user{i}", "10.0.0.1", 0.0)
    for i in range(50):
        limiter.succeeded(None, "10.0.0.1")
        limiter.succeeded(f"user{i}", "10.0.0.1")
    for _ in range(1000):
        limiter.attempt(None, "10.0.0.1", 1.0)
        limiter.succeeded(None, "10.0.0.1")


def test_failures_in_flight_together_are_all_charged() -> None:
    # 40 guesses begun together from a clean address all pass the check; once they have
    # failed, the address owes for all 40: 10 more than its burst, 10 minutes at 1/min.
    limiter = throttle(account=(1 / 60, 100), address=(1 / 60, 30))
    for i in range(40):
        limiter.attempt(f"name{i}", "10.0.0.1", 0.0)
    for i in range(40):
        limiter.failed(f"name{i}", "10.0.0.1", 0.0)
    with pytest.raises(ProtocolError) as caught:
        limiter.attempt(None, "10.0.0.1", 0.0)
    assert caught.value.retry_after == pytest.approx(11 * 60)
    limiter.attempt(None, "10.0.0.1", 11 * 60)


def test_only_failures_count() -> None:
    limiter = throttle(account=(1 / 60, 2), address=(1 / 60, 2))
    for _ in range(50):
        limiter.attempt("alice", "10.0.0.1", 0.0)
        limiter.succeeded("alice", "10.0.0.1")
    limiter.attempt("alice", "10.0.0.1", 0.0)
    limiter.attempt("alice", "10.0.0.1", 0.0)
    with pytest.raises(ProtocolError):
        limiter.attempt("alice", "10.0.0.1", 0.0)


def test_a_refused_attempt_reserves_nothing() -> None:
    limiter = throttle(account=(1.0, 1), address=(1.0, 5))
    limiter.attempt("alice", "10.0.0.1", 0.0)
    for _ in range(10):
        with pytest.raises(ProtocolError):
            limiter.attempt("alice", "10.0.0.1", 0.0)
    # The refused attempts spent nothing from the address bucket.
    for name in ["b", "c", "d", "e"]:
        limiter.attempt(name, "10.0.0.1", 0.0)


# -- password hashing -------------------------------------------------------------------------


@pytest.fixture
def production_hasher() -> Iterator[PasswordHasher]:
    hasher = PasswordHasher()
    yield hasher
    hasher.close()


async def test_default_parameters_are_argon2id_at_owasp_strength(
    production_hasher: PasswordHasher,
) -> None:
    encoded = await production_hasher.hash("correct horse battery")
    assert encoded.startswith("$argon2id$")
    params = argon2.extract_parameters(encoded)
    assert params.type is argon2.Type.ID
    assert params.memory_cost >= 19456
    assert params.time_cost >= 2
    # The same, read from the encoded string itself: $argon2id$v=19$m=…,t=…,p=…$salt$hash
    fields = dict(part.split("=") for part in encoded.split("$")[3].split(","))
    assert int(fields["m"]) >= 19456
    assert int(fields["t"]) >= 2


async def test_hashes_are_salted(hasher: PasswordHasher) -> None:
    first, second = await hasher.hash("same password"), await hasher.hash("same password")
    assert first != second
    assert "same password" not in first


async def test_verify(hasher: PasswordHasher) -> None:
    encoded = await hasher.hash("correct horse")
    assert await hasher.verify(encoded, "correct horse")
    assert not await hasher.verify(encoded, "correct horsE")
    assert not await hasher.verify(encoded, "")
    assert not await hasher.verify("not a hash", "correct horse")


async def test_verify_without_a_hash_fails(hasher: PasswordHasher) -> None:
    assert not await hasher.verify(None, "anything")
    assert not await hasher.verify(None, "")


async def test_needs_rehash_when_the_parameters_change(hasher: PasswordHasher) -> None:
    encoded = await hasher.hash("correct horse")
    assert not hasher.needs_rehash(encoded)
    stronger = PasswordHasher(time_cost=2, memory_cost=1024)
    try:
        assert stronger.needs_rehash(encoded)
        assert await stronger.verify(encoded, "correct horse")  # old hashes still verify
        assert not stronger.needs_rehash(await stronger.hash("correct horse"))
    finally:
        stronger.close()


# -- password hashing under load: bounded, queued, at the lowest priority ----------------------


FAST = {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}


@pytest.mark.parametrize("workers", [1, 2, 3])
async def test_never_more_than_workers_hashes_at_once(workers: int) -> None:
    hasher = PasswordHasher(**FAST, workers=workers, queue=50)
    wrapper = gated(hasher)
    try:
        encoded = await hasher.hash("correct horse")
        wrapper.gate.clear()
        calls = [asyncio.ensure_future(hasher.verify(encoded, "correct horse")) for _ in range(20)]
        calls += [asyncio.ensure_future(hasher.hash(f"password {i}")) for i in range(10)]
        await wait_for(lambda: wrapper.running == workers)
        assert hasher.pending == 30
        wrapper.gate.set()
        results = await asyncio.gather(*calls)
    finally:
        wrapper.gate.set()
        hasher.close()
    assert results[:20] == [True] * 20
    assert wrapper.most == workers
    assert wrapper.started == 31
    assert hasher.pending == 0


async def test_waiting_hashes_run_in_arrival_order() -> None:
    hasher = PasswordHasher(**FAST, workers=1, queue=10)
    wrapper = gated(hasher)
    order: list[int] = []
    try:
        wrapper.gate.clear()

        async def one(i: int) -> None:
            await hasher.hash(f"password {i}")
            order.append(i)

        calls = [asyncio.ensure_future(one(i)) for i in range(8)]
        await wait_for(lambda: wrapper.running == 1)
        wrapper.gate.set()
        await asyncio.gather(*calls)
    finally:
        wrapper.gate.set()
        hasher.close()
    assert order == list(range(8))


async def test_a_full_queue_refuses_with_rate_limited() -> None:
    hasher = PasswordHasher(**FAST, workers=1, queue=2)
    wrapper = gated(hasher)
    try:
        encoded = await hasher.hash("correct horse")
        wrapper.gate.clear()
        admitted = [
            asyncio.ensure_future(hasher.verify(encoded, "correct horse")) for _ in range(3)
        ]
        await wait_for(lambda: wrapper.running == 1 and hasher.pending == 3)
        # One running, two waiting: the next is refused at once, and so is a registration's
        # hash or an unknown user's check.
        for refused in (
            hasher.verify(encoded, "correct horse"),
            hasher.verify(None, "correct horse"),
            hasher.hash("correct horse"),
        ):
            with pytest.raises(ProtocolError) as caught:
                await refused
            assert caught.value.code == errors.RATE_LIMITED
            assert caught.value.retry_after is not None
            assert caught.value.retry_after > 0
        assert hasher.pending == 3
        wrapper.gate.set()
        assert await asyncio.gather(*admitted) == [True, True, True]
        # The queue drained: new work is taken again.
        assert await hasher.verify(encoded, "correct horse")
    finally:
        wrapper.gate.set()
        hasher.close()
    assert wrapper.started == 5  # the refused calls never reached argon2


async def test_a_hash_that_fails_frees_its_place() -> None:
    hasher = PasswordHasher(**FAST, workers=1, queue=0)
    wrapper = gated(hasher)

    def fail() -> None:
        raise MemoryError("argon2 could not allocate")

    wrapper.probe = fail
    try:
        with pytest.raises(MemoryError):
            await hasher.hash("correct horse")
        assert hasher.pending == 0
        wrapper.probe = None
        assert await hasher.verify(await hasher.hash("correct horse"), "correct horse")
    finally:
        hasher.close()


async def test_places_are_kept_for_accounts_that_exist() -> None:
    """With 1 worker, a queue of 4 and 2 places reserved, unknown names (and registrations)
    get 3 places at most: the fourth is refused, while a real account's check still queues."""
    hasher = PasswordHasher(**FAST, workers=1, queue=4, reserved=2)
    wrapper = gated(hasher)
    try:
        encoded = await hasher.hash("correct horse")
        wrapper.gate.clear()
        unknown = [asyncio.ensure_future(hasher.verify(None, "guess")) for _ in range(3)]
        await wait_for(lambda: hasher.pending == 3)
        for refused in (hasher.verify(None, "guess"), hasher.hash("new account")):
            with pytest.raises(ProtocolError) as caught:
                await refused
            assert caught.value.code == errors.RATE_LIMITED
        known = [asyncio.ensure_future(hasher.verify(encoded, "correct horse")) for _ in range(2)]
        await wait_for(lambda: hasher.pending == 5)
        with pytest.raises(ProtocolError):  # the whole queue is full now
            await hasher.verify(encoded, "correct horse")
        wrapper.gate.set()
        assert await asyncio.gather(*known) == [True, True]
        assert await asyncio.gather(*unknown) == [False, False, False]
    finally:
        wrapper.gate.set()
        hasher.close()


async def test_a_burst_within_the_wait_is_queued_however_large() -> None:
    """Within ``max_wait`` of hashing, a burst of logins waits its turn: none is refused,
    however many more there are than the old fixed queue of 64."""
    hasher = PasswordHasher(**FAST, workers=1, queue=1000, max_wait=60.0)
    wrapper = gated(hasher)
    try:
        encoded = await hasher.hash("correct horse")  # times one hash (about a millisecond)
        wrapper.gate.clear()
        burst = [asyncio.ensure_future(hasher.verify(encoded, "correct horse")) for _ in range(300)]
        await wait_for(lambda: hasher.pending == 300)
        wrapper.gate.set()
        assert await asyncio.gather(*burst) == [True] * 300
    finally:
        wrapper.gate.set()
        hasher.close()


async def test_a_login_that_would_wait_past_max_wait_is_refused_at_once() -> None:
    """A hash measured at 0.2 s and a 1.1 s bound: with one worker, five may wait behind the
    running one (1 s of work ahead of the last); the next is refused with a retry_after of
    about the work ahead. Unknown names and registrations get three quarters of the bound."""
    hasher = PasswordHasher(**FAST, workers=1, queue=1000, max_wait=1.1)
    wrapper = gated(hasher)
    wrapper.probe = lambda: time.sleep(0.2)
    try:
        encoded = await hasher.hash("correct horse")  # measured: about 0.2 s per hash
        wrapper.probe = None
        wrapper.gate.clear()
        admitted = [
            asyncio.ensure_future(hasher.verify(encoded, "correct horse")) for _ in range(6)
        ]
        await wait_for(lambda: hasher.pending == 6)
        with pytest.raises(ProtocolError) as caught:
            await hasher.verify(encoded, "correct horse")
        assert caught.value.code == errors.RATE_LIMITED
        assert caught.value.retry_after is not None
        assert caught.value.retry_after >= 1.0
        for unknown in (hasher.verify(None, "guess"), hasher.hash("new account")):
            with pytest.raises(ProtocolError):
                await unknown
        wrapper.gate.set()
        assert await asyncio.gather(*admitted) == [True] * 6
    finally:
        wrapper.gate.set()
        hasher.close()


def test_a_quarter_of_the_queue_is_reserved_by_default() -> None:
    hasher = PasswordHasher(**FAST, queue=64)
    try:
        assert hasher.reserved == 16
    finally:
        hasher.close()


def test_bad_hasher_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="workers"):
        PasswordHasher(**FAST, workers=0)
    with pytest.raises(ValueError, match="queue"):
        PasswordHasher(**FAST, queue=-1)
    with pytest.raises(ValueError, match="reserved"):
        PasswordHasher(**FAST, queue=2, reserved=3)
    with pytest.raises(ValueError, match="max_wait"):
        PasswordHasher(**FAST, max_wait=-1.0)


def test_one_worker_per_available_core_by_default() -> None:
    hasher = PasswordHasher(**FAST)
    try:
        assert hasher.workers == accounts.available_cores()
    finally:
        hasher.close()
    if hasattr(os, "sched_getaffinity"):
        assert accounts.available_cores() == len(os.sched_getaffinity(0))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is a Linux feature")
def test_the_default_follows_the_cpu_affinity() -> None:
    # As under `taskset -c 0 beseda serve`: pid 0 is this thread, restored below.
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        hasher = PasswordHasher(**FAST)
        hasher.close()
    finally:
        os.sched_setaffinity(0, cores)
    assert hasher.workers == 1


def _thread_priority() -> tuple[int, int, int]:
    tid = threading.get_native_id()
    return tid, os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, tid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priority: Linux")
async def test_hashes_run_at_the_lowest_priority_on_their_own_threads_only() -> None:
    before = _thread_priority()
    hasher = PasswordHasher(**FAST, workers=2)
    wrapper = gated(hasher)
    wrapper.probe = _thread_priority
    try:
        encoded = await hasher.hash("correct horse")
        assert await hasher.verify(encoded, "correct horse")
        assert not await hasher.verify(None, "correct horse")
    finally:
        hasher.close()
    assert hasher.lowered
    assert len(wrapper.seen) == 3
    for tid, policy, nice in wrapper.seen:  # type: ignore[misc]
        assert tid != before[0]
        assert nice == 19
        assert policy == os.SCHED_OTHER
    # The calling thread (the event loop's) and so the process keep their priority.
    assert _thread_priority() == before
    assert os.getpriority(os.PRIO_PROCESS, 0) == before[2]


async def test_low_priority_can_be_turned_off() -> None:
    hasher = PasswordHasher(**FAST, workers=1, low_priority=False)
    wrapper = gated(hasher)
    wrapper.probe = _thread_priority
    try:
        await hasher.hash("correct horse")
    finally:
        hasher.close()
    assert not hasher.lowered
    if sys.platform.startswith("linux"):
        ((_, _, nice),) = wrapper.seen  # type: ignore[misc]
        assert nice == os.getpriority(os.PRIO_PROCESS, 0)


def test_hash_limits_come_from_variables_and_flags(tmp_path: Path) -> None:
    settings = config.from_environment(
        {"BESEDA_HASH_WORKERS": "3", "BESEDA_HASH_QUEUE": "8"}, db=tmp_path / "beseda.db"
    )
    assert (settings.limits.hash_workers, settings.limits.hash_queue) == (3, 8)
    args = cli._parser().parse_args(["serve", "--hash-workers", "2", "--hash-queue", "0"])
    assert (args.hash_workers, args.hash_queue) == (2, 0)
    server = Server(settings)
    try:
        assert (server.hasher.workers, server.hasher.queue) == (3, 8)
    finally:
        server.hasher.close()
    default = Server(config.from_environment({}, db=tmp_path / "beseda.db"))
    try:
        assert default.hasher.workers == accounts.available_cores()
        assert default.hasher.queue == config.Limits.hash_queue == 1024
        assert default.hasher.max_wait == config.Limits.hash_max_wait == 5.0
    finally:
        default.hasher.close()


@pytest.mark.parametrize("value", ["-1", "two"])
def test_bad_hash_limit_flags_are_clear_errors(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli._parser().parse_args(["serve", "--hash-queue", value])
    assert exited.value.code == 2
    assert "--hash-queue" in capsys.readouterr().err
