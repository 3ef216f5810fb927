"""A throwaway Redis for tests: ``redis-server`` in a temporary directory, on a free port,
with no persistence; or the one ``BESEDA_TEST_REDIS_URL`` names (its database is flushed
before each test that uses ``redis_url``). Tests that stop and start Redis (``own_redis``,
``RedisServer``) always start their own.

Never the machine's own Redis on 6379: a test starts its own.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from conftest import TIMEOUT_FACTOR, free_port

REDIS_URL_VARIABLE = "BESEDA_TEST_REDIS_URL"


def redis_server_binary() -> str:
    """The path of ``redis-server``; the test is skipped when there is none (``.ci/run``
    installs it)."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return found


class RedisServer:
    """One ``redis-server`` process that a test may stop and start again on the same port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.binary = redis_server_binary()
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    [
                        self.binary,
                        "--port",
                        str(self.port),
                        "--bind",
                        "127.0.0.1",
                        "--dir",
                        str(self.directory),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--protected-mode",
                        "yes",
                        "--daemonize",
                        "no",
                    ],
                    stdout=log,
                    stderr=log,
                )
            if self._wait_ready():
                return
            self.stop()
            if attempt < 2:
                self.port = free_port()  # the port was taken meanwhile: another one
        raise RuntimeError(f"redis-server did not start: {self.log.read_text()[-2000:]}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + 10 * TIMEOUT_FACTOR
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        """Stop the server (SIGKILL: nothing is saved anyway)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def flush(url: str) -> None:
    with redis.Redis.from_url(url) as client:
        client.flushdb()


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's Redis URL: the environment's, or a server started for the session."""
    url = os.environ.get(REDIS_URL_VARIABLE)
    if url:
        yield url
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_url(shared_redis: str) -> str:
    """A Redis URL with an empty database, for one test."""
    flush(shared_redis)
    return shared_redis


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server of this test alone (it may stop and start it)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()
