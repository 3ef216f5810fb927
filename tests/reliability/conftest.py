"""Proofs of reliability and security (issue 4), each in two sizes.

Every test here is parametrised with a ``fast`` size, which runs in ``make test``, and a
``soak`` size, marked ``soak`` and skipped unless ``BESEDA_SOAK=1`` (``make soak``). Each test
prints what it measured; docs/reliability.md keeps the latest figures.

Shared helpers live here. The suite's top-level ``conftest.py`` is re-exported, because
pytest imports every ``conftest.py`` under the one module name ``conftest``: a test module in
this directory that says ``from conftest import free_port`` gets this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import socket
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from beseda.protocol import codec, schema

_top_spec = importlib.util.spec_from_file_location(
    "beseda_tests_top_conftest", Path(__file__).resolve().parent.parent / "conftest.py"
)
assert _top_spec is not None
assert _top_spec.loader is not None
_top = importlib.util.module_from_spec(_top_spec)
sys.modules[_top_spec.name] = _top
_top_spec.loader.exec_module(_top)

TIMEOUT_FACTOR: float = _top.TIMEOUT_FACTOR
FAST_HASHER_ARGS: dict[str, int] = _top.FAST_HASHER_ARGS

NO_RATE_LIMITS: tuple[str, ...] = (
    "--message-rate",
    "100000",
    "--message-burst",
    "100000",
    "--max-connections-per-address",
    "100000",
)
"""``beseda serve`` flags that take the per-user and per-address limits out of a proof's way
(the load comes from one address and a few users)."""
free_port = _top.free_port
test_settings = _top.test_settings
wait_for = _top.wait_for

SOAK = os.environ.get("BESEDA_SOAK", "") not in ("", "0")
"""``BESEDA_SOAK=1`` runs the long versions (``make soak``)."""

PASSWORD = "correct horse battery"


def pytest_configure(config: pytest.Config) -> None:
    # Until pyproject.toml registers it.
    config.addinivalue_line("markers", "soak: long reliability proofs, run by `make soak`")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SOAK:
        return
    skip = pytest.mark.skip(reason="soak test: set BESEDA_SOAK=1 (make soak)")
    for item in items:
        if item.get_closest_marker("soak") is not None:
            item.add_marker(skip)


def sizes(fast: Any, soak: Any, *, fast_timeout: float, soak_timeout: float) -> list[Any]:
    """Parameters for a test that runs ``fast`` in ``make test`` and ``soak`` in ``make soak``."""
    return [
        pytest.param(fast, id="fast", marks=pytest.mark.timeout(fast_timeout * TIMEOUT_FACTOR)),
        pytest.param(
            soak,
            id="soak",
            marks=[pytest.mark.soak, pytest.mark.timeout(soak_timeout * TIMEOUT_FACTOR)],
        ),
    ]


ServerProcess = _top.ServerProcess
"""The suite's child-process server (the ``server_process`` fixture makes them)."""


def connectable(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# -- measuring -----------------------------------------------------------------------------------


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory (``VmRSS``) or its peak (``VmHWM``), in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None, status
    return int(match.group(1))


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def report(title: str, figures: dict[str, object]) -> None:
    """Print the figures a test measured, one per line (``pytest -s`` shows them)."""
    print(f"\n[{title}]")
    for name, value in figures.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        print(f"  {name}: {value}")


def unhandled_errors(log: str) -> list[str]:
    """Lines of a server log that show an unhandled exception or an ERROR record."""
    return [
        line
        for line in log.splitlines()
        if "Traceback" in line or re.search(r"\b(ERROR|CRITICAL)\b", line)
    ]


# -- talking the protocol without the client library ---------------------------------------------


class RawConnection:
    """A bare protocol connection: for clients that misbehave or must not read."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._ids = 0

    @classmethod
    async def open(
        cls, port: int, *, local: str | None = None, hello: bool = True
    ) -> RawConnection:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(local, 0) if local else None, limit=2**20
        )
        conn = cls(reader, writer)
        if hello:
            first = await conn.receive()
            assert isinstance(first, schema.Hello), first
        return conn

    def send(self, request: schema.Request) -> int | str:
        self._ids += 1
        request.id = self._ids
        self.writer.write(codec.encode(request))
        return request.id

    async def receive(self, timeout: float = 10.0) -> schema.AnyServerMessage:
        line = await asyncio.wait_for(self.reader.readline(), timeout * TIMEOUT_FACTOR)
        if not line:
            raise ConnectionResetError("closed")
        return codec.decode_server_message(line)

    async def reply(self, request_id: int | str, timeout: float = 10.0) -> Any:
        """The reply to ``request_id`` (a Result or an Error), skipping events."""
        while True:
            message = await self.receive(timeout)
            if isinstance(message, schema.Result | schema.Error) and message.id == request_id:
                return message

    async def call(self, request: schema.Request, result_type: type[Any]) -> Any:
        reply = await self.reply(self.send(request))
        if isinstance(reply, schema.Error):
            raise AssertionError(f"{request!r} failed: {reply.code} {reply.message}")
        return msgspec.json.decode(reply.data, type=result_type)

    async def close(self) -> None:
        with contextlib.suppress(OSError):  # the server may have reset it already
            self.writer.close()
            await self.writer.wait_closed()


async def register_all(
    port: int, names: Iterable[str], password: str = PASSWORD, *, parallel: int = 8
) -> dict[str, str]:
    """Register users (argon2 runs on the server's two workers); returns name → token."""
    tokens: dict[str, str] = {}
    gate = asyncio.Semaphore(parallel)

    async def one(name: str) -> None:
        async with gate:
            conn = await RawConnection.open(port)
            try:
                result = await conn.call(
                    schema.Register(id=0, username=name, password=password), schema.AuthResult
                )
                tokens[name] = result.token
            finally:
                await conn.close()

    await asyncio.gather(*(one(name) for name in names))
    return tokens
