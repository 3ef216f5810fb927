"""Server settings: defaults, environment variables (``BESEDA_*``) and command-line flags.

Every limit is declared once, in :class:`Limits`, with its default, help and whether ``hello``
advertises it; its flag, variable and help text are derived from that declaration.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, cast

import platformdirs

from ..protocol.schema import MAX_LINE_BYTES, MAX_REPLY_BYTES, MAX_TEXT_CHARS

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7878
DEFAULT_HTTP_PORT = 7879
"""The web app and its WebSocket (``/ws``), beside the TCP port."""
HTTP_OFF = "off"
"""``--http-port off``: no HTTP listener (TCP only)."""
SEARCH_INDEX_DEFAULT = True
"""``--search-index on``: every message is indexed as it is written, and ``search`` answers."""


def default_node_name() -> str:
    """``HOSTNAME-PID``: unique among the nodes of a cluster as long as no two share a host
    name and a process id; name nodes yourself (``--node-name``) to keep a name across
    restarts."""
    return f"{socket.gethostname()}-{os.getpid()}"


def default_db_path() -> Path:
    """``beseda.db`` in the user's data directory (e.g. ``~/.local/share/beseda``)."""
    return platformdirs.user_data_path("beseda") / "beseda.db"


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(db: Path | str) -> bool:
    """Whether ``db`` names a PostgreSQL database (a URL) rather than a SQLite file."""
    return isinstance(db, str) and db.startswith(POSTGRES_SCHEMES)


def parse_db(text: str) -> Path | str:
    """``--db`` / ``BESEDA_DB``: a ``postgresql://`` URL stays text, anything else is the path
    of a SQLite file."""
    return text if is_postgres_url(text) else Path(text)


T = TypeVar("T")


def whole_number(text: str) -> int:
    """A whole number, 0 or more (for flags and variables)."""
    value = int(text)
    if value < 0:
        raise ValueError(f"must be 0 or more, not {value}")
    return value


@dataclass(frozen=True, slots=True)
class Limit:
    """How one limit is set and shown. Its name and default are those of its ``Limits`` field;
    the flag (``--name``), the variable (``BESEDA_NAME``), their help and the ``hello``
    advertisement are all derived from this one declaration."""

    help: str
    unit: str = ""
    """Shown after the default in help (``s``, ``bytes``)."""
    advertised: bool = False
    """Sent to clients in the ``limits`` object of ``hello``."""
    configurable: bool = True
    """False for a limit fixed in code (no flag, no variable)."""
    option: str = ""
    """The flag's and variable's name when it is not the field's (then ``convert`` maps)."""
    parse: Callable[[str], Any] | None = None
    """Text of a flag or variable → value; by default the type of the default."""
    convert: Callable[[Any], Any] | None = None
    """The parsed value → the field's value, for an option that is not the field itself."""
    shown_default: str = ""
    """The default as help shows it, when not simply the field's default."""


def limit(default: T, help: str, **declaration: Any) -> T:
    """Declare a field of :class:`Limits` with its :class:`Limit`."""
    declared: T = field(default=default, metadata={"limit": Limit(help, **declaration)})
    return declared


@dataclass(frozen=True)
class Limits:
    """Per-connection, per-user and server-wide limits (see docs/protocol.md, "Limits").

    Each limit is declared here once; flags, variables, help and ``hello`` derive from it.
    """

    max_line_bytes: int = limit(
        MAX_LINE_BYTES, "bytes a request line may have, newline not counted", advertised=True
    )
    auth_timeout: float = limit(
        10.0, "seconds a connection may stay without logging in", unit=" s", advertised=True
    )
    line_timeout: float = limit(
        30.0,
        "seconds from the first byte of a line to its newline; a line still unfinished then "
        "closes the connection with bye line_timeout",
        unit=" s",
    )
    max_connections: int = limit(
        10_000, "connections the server holds at once; more are refused with bye server_full"
    )
    max_connections_per_address: int = limit(
        64, "connections allowed from one address; more get bye too_many_connections"
    )
    max_connections_per_user: int = limit(
        32, "connections logged in as one user; another login gets error too_many_sessions"
    )
    input_buffer_bytes: int = limit(
        64 * 1024 * 1024,
        "bytes of unfinished lines held for all connections together; a connection that "
        "would go over is closed with bye server_busy",
    )
    message_rate: float = limit(20.0, "messages per second per user, sustained", advertised=True)
    message_burst: int = limit(100, "messages a user may send at once", advertised=True)
    message_max_delay: float = limit(
        2.0,
        "seconds of backlog over the rate that a user's messages are held rather than refused",
        unit=" s",
    )
    """A message over the rate is held (its reply comes later) while the user's backlog is
    at most this many seconds; beyond that it is refused with ``rate_limited``."""
    send_buffer_bytes: int = limit(
        2 * 1024 * 1024, "unsent bytes per connection before it is dropped as a slow consumer"
    )
    max_reply_bytes: int = limit(
        MAX_REPLY_BYTES,
        "encoded entries in one history or sync reply before it stops early (more = true); "
        "keep it at most half of send_buffer_bytes",
        advertised=True,
    )
    max_pending_requests: int = limit(
        64, "requests read but not yet handled on one connection before reading pauses"
    )
    max_in_flight: int = limit(
        256,
        "messages of one connection waiting for their commit before it waits for the oldest",
    )
    """Large enough that a burst shares a few commits (and a few writes per recipient), small
    enough to bound what one connection holds."""
    login_failures_per_account: tuple[float, float] = limit(
        (5 / 60, 10),
        "(refill per second, burst) of failed logins per account name",
        configurable=False,
    )
    login_failures_per_address: tuple[float, float] = limit(
        (20 / 60, 30),
        "(refill per second, burst) of failed logins per address",
        configurable=False,
    )
    registrations_per_address: tuple[float, float] = limit(
        (10 / 60, 30),
        "new accounts per minute from one address, bursts of 3× that (at least 30)",
        option="registrations_per_minute",
        parse=float,
        convert=lambda per_minute: (per_minute / 60, max(30.0, 3 * per_minute)),
        shown_default="10",
    )
    channels_per_hour: float = limit(
        10.0, "channels and groups one user may create per hour (bursts up to as many)"
    )
    invitations_per_minute: float = limit(
        60.0, "people one user may add to channels and groups per minute (bursts up to as many)"
    )
    reads_per_user: int = limit(
        1,
        "reads of one user at the database at once (history, sync, lists), so that one "
        "user's many connections slow that user, not everyone",
    )
    hash_workers: int = limit(
        0,
        "password hashes computed at once, on threads of the lowest CPU priority",
        parse=whole_number,
        shown_default="0: one per core the server may run on",
    )
    node_expiry: float = limit(
        10.0,
        "seconds after which the other nodes show the users of a node that stopped its "
        "heartbeat (killed, cut off) offline; heartbeats go every third of it (with --bus)",
        unit=" s",
    )
    hash_queue: int = limit(
        1024,
        "password hashes that may wait for a worker; more logins at once are refused with "
        "rate_limited",
        parse=whole_number,
    )
    hash_max_wait: float = limit(
        5.0,
        "seconds a password login or registration may expect to wait for the hashes ahead "
        "of it (at the measured time per hash); one that would wait longer is refused with "
        "rate_limited",
        unit=" s",
    )
    """What bounds a burst of sign-ins: within it (the server's hashing capacity over that
    many seconds) every login waits its turn; beyond it the server refuses at once with a
    ``retry_after`` rather than let logins wait past the client's patience. Keep it well
    under ``auth_timeout``."""


@dataclass(frozen=True, slots=True)
class LimitOption:
    """A configurable limit as a flag and a variable: derived from its declaration."""

    name: str
    """Of the flag (``--name`` with dashes) and the variable (``BESEDA_NAME``)."""
    field: str
    """The ``Limits`` field it sets."""
    declaration: Limit
    default: object

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def variable(self) -> str:
        return "BESEDA_" + self.name.upper()

    def parse(self, text: str) -> Any:
        parse: Callable[[str], Any] = self.declaration.parse or cast(Any, type(self.default))
        return parse(text)

    def value(self, parsed: Any) -> Any:
        """The field's value for a parsed flag or variable."""
        convert = self.declaration.convert
        return parsed if convert is None else convert(parsed)

    @property
    def help(self) -> str:
        shown = self.declaration.shown_default or _plain(self.default)
        return f"{self.declaration.help} ({self.variable}, default {shown}{self.declaration.unit})"


def _plain(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def declared_limits() -> list[tuple[str, Limit, object]]:
    """Every limit: its field name, declaration and default, in declaration order."""
    return [(f.name, f.metadata["limit"], f.default) for f in fields(Limits)]


def limit_options() -> list[LimitOption]:
    """The configurable limits as flags and variables."""
    return [
        LimitOption(declaration.option or name, name, declaration, default)
        for name, declaration, default in declared_limits()
        if declaration.configurable
    ]


def advertised_limits(limits: Limits) -> dict[str, int | float]:
    """The ``limits`` object of ``hello``: the advertised limits, and the protocol's text bound."""
    values: dict[str, int | float] = {
        name: getattr(limits, name)
        for name, declaration, _ in declared_limits()
        if declaration.advertised
    }
    values["max_text_chars"] = MAX_TEXT_CHARS
    return values


@dataclass(frozen=True)
class Settings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    db: Path | str = field(default_factory=default_db_path)
    """A SQLite file, or a ``postgresql://`` URL (see :func:`parse_db`)."""
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
    http_port: int | None = DEFAULT_HTTP_PORT
    """The web app, ``/health`` and the WebSocket ``/ws`` (0: any free port; None: off)."""
    allowed_origins: tuple[str, ...] = ()
    """Origins (``https://chat.example.org``) a browser's WebSocket may come from, besides
    the server's own (the page's origin matching the ``Host`` it asked)."""
    web_root: Path | None = None
    """The web app's built files; None: the ones shipped in the package."""
    search_index: bool = SEARCH_INDEX_DEFAULT
    """Index messages for ``search`` as they are written. Off (``--search-index off``) only
    to measure what the index costs: messages written meanwhile are never indexed (turning it
    on again does not add them), and ``search`` answers ``search_off``."""
    bus: str | None = None
    """``redis://…``: the bus shared by several nodes; None: this process alone."""
    node_name: str = field(default_factory=default_node_name)
    """This node's name among the nodes on one bus (see :func:`default_node_name`)."""

    @property
    def data_dir(self) -> Path:
        """Where files beside the database go (a self-signed certificate): the SQLite file's
        directory, or the user's data directory with PostgreSQL."""
        if is_postgres_url(self.db):
            return default_db_path().parent
        return Path(self.db).parent

    @property
    def tls(self) -> bool:
        return self.tls_auto or self.tls_cert is not None


_ENV: dict[str, tuple[str, Callable[[str], object]]] = {
    "host": ("BESEDA_HOST", str),
    "port": ("BESEDA_PORT", int),
    "db": ("BESEDA_DB", parse_db),
    "log_level": ("BESEDA_LOG_LEVEL", str),
    "tls_cert": ("BESEDA_TLS_CERT", Path),
    "tls_key": ("BESEDA_TLS_KEY", Path),
    "tls_auto": ("BESEDA_TLS", lambda value: value.strip().lower() == "auto"),
    "allow_plaintext": (
        "BESEDA_ALLOW_PLAINTEXT",
        lambda value: value.strip() in ("1", "yes", "true"),
    ),
    "http_port": ("BESEDA_HTTP_PORT", lambda value: http_port(value)),
    "allowed_origins": ("BESEDA_ALLOWED_ORIGINS", lambda value: origin_list(value)),
    "web_root": ("BESEDA_WEB_ROOT", Path),
    "search_index": ("BESEDA_SEARCH_INDEX", lambda value: on_off(value)),
    "bus": ("BESEDA_BUS", str),
    "node_name": ("BESEDA_NODE_NAME", str),
}


def on_off(text: str) -> bool:
    """``on`` or ``off`` (for ``--search-index``)."""
    word = text.strip().lower()
    if word not in ("on", "off"):
        raise ValueError(f"on or off, not {text!r}")
    return word == "on"


def http_port(text: str) -> int | str:
    """``--http-port``: a port (0: any free one), or ``off``."""
    if text.strip().lower() == HTTP_OFF:
        return HTTP_OFF
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"a port is 0 to 65535, not {port}")
    return port


def origin_list(text: str) -> tuple[str, ...]:
    """``--allowed-origins``: comma-separated origins, each ``scheme://host[:port]``."""
    origins = tuple(part.strip().rstrip("/") for part in text.split(",") if part.strip())
    for origin in origins:
        scheme, _, rest = origin.partition("://")
        if scheme not in ("http", "https") or not rest or "/" in rest:
            raise ValueError(f"{origin!r} is not an origin like https://chat.example.org")
    return origins


def from_environment(environ: dict[str, str] | None = None, **overrides: object) -> Settings:
    """Settings from ``BESEDA_*`` variables, then explicit overrides (flags) on top."""
    env = dict(os.environ if environ is None else environ)
    values: dict[str, object] = {}
    for name, (variable, convert) in _ENV.items():
        if variable in env:
            values[name] = convert(env[variable])
    limits: dict[str, object] = {}
    options = {option.name: option for option in limit_options()}
    for option in options.values():
        if option.variable in env:
            limits[option.field] = option.value(option.parse(env[option.variable]))
    known = {f.name for f in fields(Settings)}
    known_limits = {f.name for f in fields(Limits)}
    for name, value in overrides.items():
        if value is None:
            continue
        if name in known:
            values[name] = value
        elif name in options:
            limits[options[name].field] = options[name].value(value)
        elif name in known_limits:
            limits[name] = value
        else:
            raise TypeError(f"unknown setting {name}")
    if limits:
        values["limits"] = Limits(**limits)  # type: ignore[arg-type]
    if values.get("http_port") == HTTP_OFF:
        values["http_port"] = None
    return Settings(**values)  # type: ignore[arg-type]
