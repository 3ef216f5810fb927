"""Limits enforced at the edge, shared by every transport, and the core's rate limiters."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .accounts import LoginThrottle, TokenBucket
from .config import Limits


@dataclass(frozen=True, slots=True)
class Limiters:
    """The core's rate limiters, chosen by the composition root and handed to ``Chat``.

    In one process they are in memory; a cluster replaces them with shared ones (the limits
    that protect accounts must hold across nodes) without touching the core."""

    logins: LoginThrottle
    messages: TokenBucket
    """Messages per user."""
    registrations: TokenBucket
    """New accounts per address."""
    channels: TokenBucket
    """New channels and groups per user."""
    invitations: TokenBucket
    """People added per user."""

    @classmethod
    def in_memory(cls, limits: Limits) -> Limiters:
        return cls(
            logins=LoginThrottle(
                per_account=limits.login_failures_per_account,
                per_address=limits.login_failures_per_address,
            ),
            messages=TokenBucket(limits.message_rate, limits.message_burst),
            registrations=TokenBucket(*limits.registrations_per_address),
            channels=TokenBucket(
                limits.channels_per_hour / 3600, max(1.0, limits.channels_per_hour)
            ),
            invitations=TokenBucket(
                limits.invitations_per_minute / 60, max(1.0, limits.invitations_per_minute)
            ),
        )


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
