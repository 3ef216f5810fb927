"""Server settings: defaults, environment variables (``BESEDA_*``) and command-line flags.

Every limit the protocol documents lives here with its default.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import platformdirs

from ..protocol.schema import MAX_LINE_BYTES

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7878


def default_db_path() -> Path:
    """``beseda.db`` in the user's data directory (e.g. ``~/.local/share/beseda``)."""
    return platformdirs.user_data_path("beseda") / "beseda.db"


@dataclass(frozen=True)
class Limits:
    """Per-connection and per-user limits (see docs/protocol.md, "Limits")."""

    max_line_bytes: int = MAX_LINE_BYTES
    auth_timeout: float = 10.0
    """Seconds a connection may stay without logging in."""
    max_connections_per_address: int = 64
    message_rate: float = 20.0
    """Messages (general and direct) per second per user, sustained."""
    message_burst: int = 100
    """Messages a user may send at once before the rate applies."""
    message_max_delay: float = 2.0
    """A message over the rate is held (its reply comes later) while the user's backlog is
    at most this many seconds; beyond that it is refused with ``rate_limited``."""
    send_buffer_bytes: int = 2 * 1024 * 1024
    """Outbound bytes queued for one connection before it is dropped as a slow consumer."""
    max_pending_requests: int = 64
    """Requests read but not yet handled on one connection before reading pauses."""
    max_in_flight: int = 256
    """Messages of one connection queued for the disk and not yet committed; beyond that the
    connection waits for the oldest. Large enough that a burst shares a few commits (and a
    few writes per recipient), small enough to bound what one connection holds."""
    login_failures_per_account: tuple[float, float] = (5 / 60, 10)
    """(refill per second, burst) of failed logins per account name."""
    login_failures_per_address: tuple[float, float] = (20 / 60, 30)
    registrations_per_address: tuple[float, float] = (10 / 60, 30)
    """(refill per second, burst) of new accounts per address."""
    hash_workers: int = 0
    """Password hashes (argon2id) computed at once; 0: one per core the server may run on."""
    hash_queue: int = 64
    """Password hashes that may wait for a worker; a login or registration beyond that is
    refused with ``rate_limited`` (and ``retry_after``) instead of waiting."""


@dataclass(frozen=True)
class Settings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    db: Path = field(default_factory=default_db_path)
    log_level: str = "INFO"
    limits: Limits = field(default_factory=Limits)
    db_busy_timeout: float = 5.0
    """Seconds a write waits for a database locked by another process before failing."""
    shutdown_grace: float = 5.0
    """Seconds to let in-flight requests finish on SIGINT/SIGTERM."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_auto: bool = False
    """Create a self-signed certificate beside the database on first start, and use it."""
    allow_plaintext: bool = False
    """Listen without TLS on an address other than loopback (an explicit choice)."""

    @property
    def tls(self) -> bool:
        return self.tls_auto or self.tls_cert is not None


_ENV: dict[str, tuple[str, Callable[[str], object]]] = {
    "host": ("BESEDA_HOST", str),
    "port": ("BESEDA_PORT", int),
    "db": ("BESEDA_DB", Path),
    "log_level": ("BESEDA_LOG_LEVEL", str),
    "tls_cert": ("BESEDA_TLS_CERT", Path),
    "tls_key": ("BESEDA_TLS_KEY", Path),
    "tls_auto": ("BESEDA_TLS", lambda value: value.strip().lower() == "auto"),
    "allow_plaintext": (
        "BESEDA_ALLOW_PLAINTEXT",
        lambda value: value.strip() in ("1", "yes", "true"),
    ),
}
_LIMIT_ENV: dict[str, Callable[[str], object]] = {
    "auth_timeout": float,
    "max_connections_per_address": int,
    "message_rate": float,
    "message_burst": int,
    "message_max_delay": float,
    "send_buffer_bytes": int,
    "hash_workers": int,
    "hash_queue": int,
}


def from_environment(environ: dict[str, str] | None = None, **overrides: object) -> Settings:
    """Settings from ``BESEDA_*`` variables, then explicit overrides (flags) on top."""
    env = dict(os.environ if environ is None else environ)
    values: dict[str, object] = {}
    for name, (variable, convert) in _ENV.items():
        if variable in env:
            values[name] = convert(env[variable])
    limits: dict[str, object] = {}
    for name, convert in _LIMIT_ENV.items():
        variable = f"BESEDA_{name.upper()}"
        if variable in env:
            limits[name] = convert(env[variable])
    per_minute = overrides.pop("registrations_per_minute", None)
    if per_minute is None and "BESEDA_REGISTRATIONS_PER_MINUTE" in env:
        per_minute = float(env["BESEDA_REGISTRATIONS_PER_MINUTE"])
    if per_minute is not None:
        rate = float(per_minute)  # type: ignore[arg-type]
        limits["registrations_per_address"] = (rate / 60, max(30.0, 3 * rate))
    known = {f.name for f in fields(Settings)}
    known_limits = {f.name for f in fields(Limits)}
    for name, value in overrides.items():
        if value is None:
            continue
        if name in known:
            values[name] = value
        elif name in known_limits:
            limits[name] = value
        else:
            raise TypeError(f"unknown setting {name}")
    if limits:
        values["limits"] = Limits(**limits)  # type: ignore[arg-type]
    return Settings(**values)  # type: ignore[arg-type]
