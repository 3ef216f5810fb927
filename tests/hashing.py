"""A window into PasswordHasher's worker threads, for the tests of its bounds and priority."""

from __future__ import annotations

import threading
from collections.abc import Callable

import argon2

from beseda.server.accounts import PasswordHasher


class GatedArgon2:
    """Wraps the argon2 hasher inside a PasswordHasher: counts the hashes running at once, can
    hold them at a gate, and runs an optional probe on the hashing thread."""

    def __init__(self, inner: argon2.PasswordHasher) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.started = 0
        self.probe: Callable[[], object] | None = None
        self.seen: list[object] = []

    def _enter(self) -> None:
        with self.lock:
            self.running += 1
            self.started += 1
            self.most = max(self.most, self.running)
        if self.probe is not None:
            self.seen.append(self.probe())
        self.gate.wait(30)

    def _leave(self) -> None:
        with self.lock:
            self.running -= 1

    def hash(self, password: str) -> str:
        self._enter()
        try:
            return self.inner.hash(password)
        finally:
            self._leave()

    def verify(self, password_hash: str, password: str) -> bool:
        self._enter()
        try:
            return self.inner.verify(password_hash, password)
        finally:
            self._leave()

    def check_needs_rehash(self, password_hash: str) -> bool:
        return self.inner.check_needs_rehash(password_hash)


def gated(hasher: PasswordHasher) -> GatedArgon2:
    wrapper = GatedArgon2(hasher._hasher)
    hasher._hasher = wrapper  # type: ignore[assignment]
    return wrapper
