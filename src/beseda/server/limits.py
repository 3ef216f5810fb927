"""Limits enforced at the edge, shared by every transport, and the core's rate limiters.

The core sees its rate limiters through two protocols, :class:`RateLimit` (a token bucket
per key) and :class:`Throttle` (failed logins), whose methods are coroutines: in one process
they answer at once from memory (:class:`LocalRateLimit`), across
nodes from Redis (``beseda.bus.redis.RedisRateLimit``), so that spreading requests over nodes
gains nobody anything.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..protocol import errors
from ..protocol.errors import ProtocolError
from .accounts import TokenBucket
from .config import Limits


class RateLimit(Protocol):
    """A token bucket per key: ``rate`` tokens per second, bursts up to ``burst``.

    ``now`` is this process's monotonic clock; a shared limiter may use its own clock."""

    rate: float
    burst: float

    async def take(self, key: str | int, now: float) -> float:
        """Spend one token; 0 when allowed, else the seconds until one is available."""

    async def reserve(self, key: str | int, now: float, max_wait: float) -> float | None:
        """Spend one token now or later: the seconds to wait before using it, or None
        (nothing spent) when that would be over ``max_wait`` (see ``TokenBucket.reserve``)."""

    async def peek(self, key: str | int, now: float) -> float:
        """Seconds until ``key`` may take a token, spending nothing."""

    async def charge(self, key: str | int, now: float) -> None:
        """Spend one token whether or not one is left (the bucket may go into debt)."""

    async def refund(self, key: str | int) -> None:
        """Give back one token taken earlier."""


class LocalRateLimit:
    """:class:`RateLimit` in this process's memory (a :class:`TokenBucket`)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.bucket = TokenBucket(rate, burst)
        self.rate, self.burst = rate, burst

    async def take(self, key: str | int, now: float) -> float:
        return self.bucket.take(key, now)

    async def reserve(self, key: str | int, now: float, max_wait: float) -> float | None:
        return self.bucket.reserve(key, now, max_wait)

    async def peek(self, key: str | int, now: float) -> float:
        return self.bucket.peek(key, now)

    async def charge(self, key: str | int, now: float) -> None:
        self.bucket.charge(key, now)

    async def refund(self, key: str | int) -> None:
        self.bucket.refund(key)


class Throttle:
    """Failed logins, limited per account name and per address (the rules are those of
    :class:`beseda.server.accounts.LoginThrottle`, here over two :class:`RateLimit` buckets,
    so that the same rules hold in memory and across nodes)."""

    def __init__(self, accounts: RateLimit, addresses: RateLimit) -> None:
        self._accounts = accounts
        self._addresses = addresses

    async def attempt(self, key: str | None, address: str, now: float) -> None:
        """Reserve an attempt, or raise ``rate_limited`` when the address's failures or the
        account's attempts have used up their allowance."""
        wait = await self._addresses.peek(address, now)
        if key is not None:
            wait = max(wait, await self._accounts.peek(key, now))
        if wait > 0:
            raise ProtocolError(
                errors.RATE_LIMITED,
                "Too many failed logins; wait before trying again.",
                retry_after=round(wait, 3),
            )
        if key is not None:
            await self._accounts.take(key, now)

    async def succeeded(self, key: str | None, address: str) -> None:
        """The attempt succeeded, or was never checked: give back its reservation."""
        if key is not None:
            await self._accounts.refund(key)

    async def failed(self, key: str | None, address: str, now: float) -> None:
        """The attempt failed: the account keeps its reservation, the address is charged."""
        await self._addresses.charge(address, now)


@dataclass(frozen=True, slots=True)
class Limiters:
    """The core's rate limiters, chosen by the composition root and handed to ``Chat``.

    In one process they are in memory; a cluster replaces them with shared ones (the limits
    that protect accounts must hold across nodes) without touching the core."""

    logins: Throttle
    messages: RateLimit
    """Messages per user."""
    registrations: RateLimit
    """New accounts per address."""
    channels: RateLimit
    """New channels and groups per user."""
    invitations: RateLimit
    """People added per user."""

    @classmethod
    def from_buckets(
        cls, limits: Limits, make: Callable[[str, float, float], RateLimit]
    ) -> Limiters:
        """The limiters of ``limits``, each bucket made by ``make(name, rate, burst)``."""
        return cls(
            logins=Throttle(
                make("login-account", *limits.login_failures_per_account),
                make("login-address", *limits.login_failures_per_address),
            ),
            messages=make("messages", limits.message_rate, limits.message_burst),
            registrations=make("registrations", *limits.registrations_per_address),
            channels=make(
                "channels", limits.channels_per_hour / 3600, max(1.0, limits.channels_per_hour)
            ),
            invitations=make(
                "invitations",
                limits.invitations_per_minute / 60,
                max(1.0, limits.invitations_per_minute),
            ),
        )

    @classmethod
    def in_memory(cls, limits: Limits) -> Limiters:
        """Limiters of this process alone."""
        return cls.from_buckets(limits, lambda _name, rate, burst: LocalRateLimit(rate, burst))


class AddressLimiter:
    """Caps the number of simultaneous connections from one address."""

    def __init__(self, per_address: int) -> None:
        self.per_address = per_address
        self._counts: Counter[str] = Counter()

    def acquire(self, address: str) -> bool:
        """Count a new connection; False (and nothing counted) when over the cap."""
        if self._counts[address] >= self.per_address:
            return False
        self._counts[address] += 1
        return True

    def release(self, address: str) -> None:
        self._counts[address] -= 1
        if self._counts[address] <= 0:
            del self._counts[address]
