"""Limits enforced at the edge, shared by every transport."""

from __future__ import annotations

from collections import Counter


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
