"""Accounts: username rules, password hashing, session tokens and login throttling.

Username rules (docs/protocol.md repeats them):

* 1 to 32 characters after NFKC normalisation;
* letters and digits of any script, plus ``_ - .``; no spaces, control, format (zero-width,
  bidi) or symbol characters;
* letters from one script only (``pаypal`` with a Cyrillic ``а`` is refused), so that a name
  cannot pose as another; Han, hiragana, katakana and hangul count as one, as they are
  written together;
* unique after NFKC and case folding: ``Admin``, ``ＡＤＭＩＮ`` and ``admin`` are one name;
* only characters of Unicode's identifier profile (UTS #39 ``Identifier_Status=Allowed``):
  ``ᴀdmin`` with a small capital ``ᴀ`` is refused;
* digits are ASCII, or of the script of the name's letters (Devanagari digits in a Devanagari
  name), all from one decimal system: ``admin०`` and ``g০০gle`` are refused;
* not confusable with an existing name: two names with the same UTS #39 skeleton
  (:func:`name_skeleton`: ``ɑdmin`` and ``admin``, ``асе`` in Cyrillic and ``ace``) are one.

:func:`check_display_name` applies these rules to any kind of name (users now, channels
later); the storage keeps each name's skeleton under a unique index.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import sys
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

import argon2
import icu

from ..protocol import errors
from ..protocol.errors import ProtocolError
from ..threadname import name_this_thread
from .config import Limits

MIN_NAME = 1
MAX_NAME = 32
MIN_PASSWORD = 8
MAX_PASSWORD = 256
_NAME_PUNCTUATION = frozenset("_-.")
_T = TypeVar("_T")


def canonical_name(raw: str) -> str:
    """The look-up key of a name: NFKC, case-folded, NFKC again (folding can denormalise)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", raw).casefold())


# Scripts that are written together: a Japanese name mixes kanji, hiragana and katakana, a
# Korean one may mix hangul and hanja.
_SCRIPT_GROUPS = {
    "CJK": "CJK",
    "HIRAGANA": "CJK",
    "KATAKANA": "CJK",
    "KATAKANA-HIRAGANA": "CJK",
    "HALFWIDTH": "CJK",
    "HANGUL": "CJK",
}


def _script(char: str) -> str:
    # The first word of a character's Unicode name is its script for the letters we accept
    # ("LATIN SMALL LETTER A", "CYRILLIC SMALL LETTER A", "CJK UNIFIED IDEOGRAPH-4E00" …).
    first = unicodedata.name(char, "UNKNOWN").split(" ", 1)[0]
    return _SCRIPT_GROUPS.get(first, first)


@dataclass(frozen=True, slots=True)
class NameKind:
    """What a name names, for the messages and the error code of a refusal."""

    noun: str
    code: str


USERNAME = NameKind("username", errors.INVALID_USERNAME)


class CheckedName(NamedTuple):
    name: str
    """As shown to others (NFKC)."""
    key: str
    """The look-up key (:func:`canonical_name`): unique."""
    skeleton: str
    """The confusable skeleton (:func:`name_skeleton`): unique too."""


# ICU's spoof checker carries the Unicode security data (UTS #39: confusables.txt and the
# identifier profile). Its skeleton and set look-ups are thread-safe once built.
_SPOOF = icu.SpoofChecker()
_ALLOWED = icu.UnicodeSet(icu.SpoofChecker.getRecommendedUnicodeSet())
_ALLOWED.freeze()


def name_skeleton(name: str) -> str:
    """The UTS #39 confusable skeleton of a name's key: equal for names that look alike.

    ``admin``, ``ɑdmin`` (Latin alpha), ``аdmin`` (Cyrillic а) and ``adrnin`` have one
    skeleton. Taken of the case-folded key so that case variants share it, and folded again
    because the prototypes of confusables.txt may be capitals (Bengali zero → ``O``).
    """
    skeleton = str(_SPOOF.getSkeleton(0, canonical_name(name)))
    return canonical_name(skeleton)


# The first word of a digit's name is its script but for these: "DIGIT ZERO" is ASCII, and
# Arabic letters go with "ARABIC-INDIC" and "EXTENDED ARABIC-INDIC" digits.
_DIGIT_SCRIPTS = {"DIGIT": "ASCII", "ARABIC-INDIC": "ARABIC", "EXTENDED": "ARABIC"}


def _digit_system(char: str) -> str:
    first = unicodedata.name(char, "UNKNOWN").split(" ", 1)[0]
    return _DIGIT_SCRIPTS.get(first, _SCRIPT_GROUPS.get(first, first))


def check_display_name(raw: str, kind: NameKind = USERNAME) -> CheckedName:
    """Validate a requested name; returns its display form, key and skeleton, or raises
    ``ProtocolError`` with ``kind.code``. Uniqueness (of key and skeleton) is the store's."""
    noun = kind.noun
    name = unicodedata.normalize("NFKC", raw)
    if not MIN_NAME <= len(name) <= MAX_NAME:
        raise ProtocolError(kind.code, f"A {noun} has {MIN_NAME} to {MAX_NAME} characters.")
    scripts = set()
    digits = set()
    for char in name:
        category = unicodedata.category(char)
        if category.startswith("L"):
            scripts.add(_script(char))
        elif category == "Nd":
            digits.add(_digit_system(char))
        elif char not in _NAME_PUNCTUATION:
            raise ProtocolError(
                kind.code,
                f"A {noun} may contain letters, digits, '_', '-' and '.', not {char!r}.",
            )
        if char not in _NAME_PUNCTUATION and not _ALLOWED.contains(char):
            raise ProtocolError(
                kind.code,
                f"A {noun} may not contain {char!r}: Unicode does not recommend it in names "
                "(UTS #39 identifier profile).",
            )
    if len(scripts) > 1:
        raise ProtocolError(
            kind.code,
            f"A {noun} may not mix letters of different scripts "
            f"({', '.join(sorted(scripts)).lower()}).",
        )
    # Digits: ASCII with any script; others only with letters of their own script (a
    # Devanagari digit in a Devanagari name), and one decimal system per name.
    foreign = digits - {"ASCII"} - scripts if scripts else set()
    if len(digits) > 1 or foreign:
        raise ProtocolError(
            kind.code,
            f"A {noun}'s digits must be ASCII or of the script of its letters, "
            "from one system of digits.",
        )
    return CheckedName(name, canonical_name(name), name_skeleton(name))


def check_username(raw: str) -> tuple[str, str]:
    """Validate a requested username; returns ``(display name, key)`` or raises."""
    checked = check_display_name(raw, USERNAME)
    return checked.name, checked.key


def check_password(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ProtocolError(
            errors.INVALID_PASSWORD,
            f"A password has {MIN_PASSWORD} to {MAX_PASSWORD} characters.",
        )


def new_token() -> tuple[str, bytes]:
    """A session token (256 random bits) and the hash under which it is stored."""
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def available_cores() -> int:
    """How many cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


HASHING_THREAD = "beseda-argon2"
"""The hashing threads' name, in Python and for the kernel (docs/operations.md, "Threads")."""


def lower_thread_priority() -> bool:
    """Give the calling thread the lowest CPU priority (nice 19); True when done.

    Linux only: there a thread is a task of its own and ``setpriority(PRIO_PROCESS, tid, …)``
    changes that thread alone. Elsewhere the same call would renice the whole process, the
    event loop included, so nothing is done.

    Nice 19 rather than ``SCHED_IDLE``: both keep the chat's latency during a sign-in storm
    (the storm benchmark), but a ``SCHED_IDLE`` thread gets almost nothing while any other
    thread on its core is busy, and when that happens while it holds the GIL the event loop
    waits for it; the with-storm p99 varied more from run to run with it (docs/operations.md).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except OSError:
        return False
    return True


class PasswordHasher:
    """argon2id hashing on worker threads, never on the event loop, and never in its way.

    The defaults are OWASP's minimum for argon2id (19 MiB, 2 passes, 1 lane).

    A hash costs tens of milliseconds of CPU; a burst of sign-ins must not take the event
    loop's core. So:

    * at most ``workers`` hashes run at once (default: one per core the process may run on),
      on threads of their own; the others wait in order (FIFO);
    * a hash waits its turn when the work ahead of it is expected to take at most
      ``max_wait`` seconds (the hashes running and waiting, at the measured mean time per
      hash, shared by the workers), and at most ``queue`` wait: beyond either, ``hash`` and
      ``verify`` refuse at once with ``rate_limited`` and a ``retry_after`` (the time the
      work ahead is expected to take), rather than let the wait grow without end. So a
      burst of sign-ins within the server's hashing capacity over ``max_wait`` is never
      refused, whatever its size, and one beyond it is refused at once;
    * ``reserved`` of those places are kept for checking the passwords of accounts that
      exist (default: a quarter of the queue, and likewise a quarter of ``max_wait``): a
      login for an unknown name (checked against a dummy hash) and a registration's hash are
      refused once only the reserved places (or time) are left, so a flood of guesses at
      made-up names cannot keep real users out. Both kinds take the same time to check;
      only a full queue answers them differently
      (docs/reliability.md, "Known limits");
    * on Linux the hashing threads run at the lowest CPU priority (nice 19), so the event
      loop takes the core whenever it has work and the hashes use what the chat leaves idle.
      Elsewhere setting a thread's priority would change the whole process's, so it is left
      alone.
    """

    def __init__(
        self,
        *,
        time_cost: int = 2,
        memory_cost: int = 19 * 1024,
        parallelism: int = 1,
        workers: int | None = None,
        queue: int = Limits.hash_queue,
        max_wait: float = Limits.hash_max_wait,
        reserved: int | None = None,
        low_priority: bool = True,
    ) -> None:
        if workers is None:
            workers = available_cores()
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        if queue < 0:
            raise ValueError(f"queue must be at least 0, not {queue}")
        if reserved is None:
            reserved = queue // 4
        if max_wait < 0:
            raise ValueError(f"max_wait must be at least 0, not {max_wait}")
        if not 0 <= reserved <= queue:
            raise ValueError(f"reserved must be from 0 to the queue ({queue}), not {reserved}")
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_cost,
            parallelism=parallelism,
            type=argon2.Type.ID,
        )
        self.workers = workers
        self.queue = queue
        self.max_wait = max_wait
        self.reserved = reserved
        self.lowered = False
        """True once a hashing thread has lowered its priority (Linux only)."""
        self._lock = threading.Lock()
        self._pending = 0  # submitted and not finished: running + waiting
        self._seconds = 0.0  # mean wall time of one hash (moving average), for retry_after
        self._pool = ThreadPoolExecutor(
            workers,
            thread_name_prefix=HASHING_THREAD,
            initializer=self._start_thread,
            initargs=(low_priority,),
        )
        # Verifying against this when the user does not exist makes both cases cost the same.
        self._dummy = self._hasher.hash(secrets.token_hex(16))

    @property
    def pending(self) -> int:
        """Hashes running or waiting now."""
        return self._pending

    async def hash(self, password: str) -> str:
        """A new hash (a registration, an upgrade): from the unreserved places only."""
        return await self._run(self.reserved, self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True when ``password`` matches; with ``None`` it burns the same time and fails.

        With a hash it may use the places reserved for accounts that exist; without, not.
        """
        return await self._run(
            0 if password_hash else self.reserved,
            self._verify,
            password_hash or self._dummy,
            password,
            password_hash,
        )

    async def _run(self, kept: int, function: Callable[..., _T], *args: object) -> _T:
        with self._lock:
            ahead = self._pending
            # The wait this hash can expect: the work ahead shared by the workers. Before the
            # first hash is timed nothing is known, and only the count bounds the queue.
            expected = ahead * self._seconds / self.workers
            allowed = self.max_wait * (1 - kept / self.queue if self.queue else 1)
            if ahead >= self.workers + self.queue - kept or (
                ahead >= self.workers and expected > allowed
            ):
                raise ProtocolError(
                    errors.RATE_LIMITED,
                    "The server is busy checking passwords; try again shortly.",
                    retry_after=round(max(0.1, ahead * self._seconds / self.workers), 3),
                )
            self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, self._timed, function, *args)
        finally:
            with self._lock:
                self._pending -= 1

    def _timed(self, function: Callable[..., _T], *args: object) -> _T:
        began = time.monotonic()
        try:
            return function(*args)
        finally:
            seconds = time.monotonic() - began
            with self._lock:
                self._seconds = (
                    seconds if not self._seconds else 0.8 * self._seconds + 0.2 * seconds
                )

    def _verify(self, password_hash: str, password: str, real: str | None) -> bool:
        try:
            self._hasher.verify(password_hash, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False
        return real is not None

    def _start_thread(self, low_priority: bool) -> None:
        # Runs in each hashing thread as it starts, so it affects that thread only.
        name_this_thread(HASHING_THREAD)
        if low_priority:
            self.lowered = lower_thread_priority()

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.check_needs_rehash(password_hash)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@dataclass
class _Bucket:
    tokens: float
    stamp: float


PRUNED_PER_CALL = 2
"""Buckets a limiter looks at, at most, to forget old ones on each call: O(1) per request
whatever the number of keys. More than one, so that the dict shrinks after a burst of keys."""


@dataclass
class TokenBucket:
    """Rate limits keyed by anything: ``rate`` per second, bursts up to ``burst``.

    The buckets are kept in order of last use. Each call that spends looks at up to
    :data:`PRUNED_PER_CALL` of the least recently used and forgets those that have refilled
    completely (they hold no information), stopping at the first that has not: no call scans
    the whole table (that was 7.7 ms per new key with 100,000 keys, on the event loop).
    """

    rate: float
    burst: float
    _buckets: OrderedDict[object, _Bucket] = field(default_factory=OrderedDict)
    examined: int = 0
    """Buckets looked at by pruning, all calls together (for the test of its cost)."""

    def __len__(self) -> int:
        """Keys remembered now."""
        return len(self._buckets)

    def take(self, key: object, now: float) -> float:
        """Spend one token; returns 0 when allowed, else the seconds until one is available."""
        return 0.0 if self.reserve(key, now, 0.0) is not None else self.peek(key, now)

    def reserve(self, key: object, now: float, max_wait: float) -> float | None:
        """Spend one token now or in the future: returns the seconds to wait before using it
        (0 when one is free), or None, spending nothing, when that would exceed ``max_wait``.

        Reserving lets the bucket go into debt, so concurrent waiters queue up behind one
        another at the bucket's rate instead of all waking at once.
        """
        bucket = self._refilled(key, now)
        wait = max(0.0, (1 - bucket.tokens) / self.rate)
        if wait > max_wait:
            return None
        bucket.tokens -= 1
        return wait

    def charge(self, key: object, now: float) -> None:
        """Spend one token whether or not one is left: the bucket may go into debt, and
        ``peek`` then answers how long until it is out of it."""
        self._refilled(key, now).tokens -= 1

    def peek(self, key: object, now: float) -> float:
        """Seconds until ``key`` may take a token (0 when it may now), spending nothing."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def refund(self, key: object) -> None:
        """Give back one token taken earlier."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.tokens = min(self.burst, bucket.tokens + 1)

    def _refilled(self, key: object, now: float) -> _Bucket:
        # Prune first: a new bucket is full, and must not be forgotten before it is spent.
        self._prune(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
            self._buckets.move_to_end(key)
        return bucket

    def _prune(self, now: float) -> None:
        buckets = self._buckets
        for _ in range(PRUNED_PER_CALL):
            if not buckets:
                return
            key, bucket = next(iter(buckets.items()))
            self.examined += 1
            if bucket.tokens + (now - bucket.stamp) * self.rate < self.burst:
                return  # the least recently used is not full yet; the newer ones may wait
            del buckets[key]


class LoginThrottle:
    """Failed logins are limited per account name and per address.

    Per account, each password attempt reserves a token before the password is checked (so
    many concurrent guesses at one account cannot all slip past one check) and gets it back
    when the password was right, or was never checked. Per address, only failures are
    charged, after the fact: a right password or a valid token costs the address nothing, and
    an address is refused only once its own failures have emptied its bucket, so an office
    behind one NAT address, or a hundred clients reconnecting after a restart, all get in.
    Failures that were in flight together are all charged (the bucket goes into debt), so
    the long-run rate per address holds. The account key is the canonical name whether or not
    the account exists, so the throttle does not reveal which names exist. Token logins have
    no name: a bad token is charged to the address only.
    """

    def __init__(
        self,
        *,
        per_account: tuple[float, float] = (5 / 60, 10),
        per_address: tuple[float, float] = (20 / 60, 30),
    ) -> None:
        self._accounts = TokenBucket(*per_account)
        self._addresses = TokenBucket(*per_address)

    @property
    def limiters(self) -> tuple[TokenBucket, TokenBucket]:
        """The per-account and per-address buckets (for tests of their cost)."""
        return self._accounts, self._addresses

    def attempt(self, key: str | None, address: str, now: float) -> None:
        """Reserve an attempt, or raise ``rate_limited`` when the address's failures or the
        account's attempts have used up their allowance."""
        wait = self._addresses.peek(address, now)
        if key is not None:
            wait = max(wait, self._accounts.peek(key, now))
        if wait > 0:
            raise ProtocolError(
                errors.RATE_LIMITED,
                "Too many failed logins; wait before trying again.",
                retry_after=round(wait, 3),
            )
        if key is not None:
            self._accounts.take(key, now)

    def succeeded(self, key: str | None, address: str) -> None:
        """The attempt succeeded, or was never checked: give back its reservation."""
        if key is not None:
            self._accounts.refund(key)

    def failed(self, key: str | None, address: str, now: float) -> None:
        """The attempt failed: the account keeps its reservation, the address is charged."""
        self._addresses.charge(address, now)
