"""Command line: ``beseda serve`` and ``beseda client``. Argument parsing only."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .server import config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="beseda", description="A self-hosted chat messenger.")
    parser.add_argument("--version", action="version", version=f"beseda {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the chat server",
        description="Run the chat server. Every flag also reads a BESEDA_* environment variable.",
    )
    serve.add_argument(
        "--host", help=f"address to listen on (BESEDA_HOST, default {config.DEFAULT_HOST})"
    )
    serve.add_argument(
        "--port", type=int, help=f"TCP port (BESEDA_PORT, default {config.DEFAULT_PORT})"
    )
    serve.add_argument(
        "--db",
        type=Path,
        help=f"SQLite database file, created on first start (BESEDA_DB, default "
        f"{config.default_db_path()})",
    )
    serve.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log verbosity (BESEDA_LOG_LEVEL, default INFO)",
    )
    serve.add_argument(
        "--auth-timeout",
        type=float,
        help="seconds a connection may stay without logging in (BESEDA_AUTH_TIMEOUT, default 10)",
    )
    serve.add_argument(
        "--max-connections-per-address",
        type=int,
        help="connections allowed from one address (BESEDA_MAX_CONNECTIONS_PER_ADDRESS, "
        "default 64)",
    )
    serve.add_argument(
        "--message-rate",
        type=float,
        help="messages per second per user (BESEDA_MESSAGE_RATE, default 20)",
    )
    serve.add_argument(
        "--message-burst",
        type=int,
        help="messages a user may send at once (BESEDA_MESSAGE_BURST, default 100)",
    )

    serve.add_argument(
        "--message-max-delay",
        type=float,
        help="seconds of backlog over the rate that a user's messages are held rather than "
        "refused (BESEDA_MESSAGE_MAX_DELAY, default 2)",
    )
    serve.add_argument(
        "--send-buffer-bytes",
        type=int,
        help="unsent bytes per connection before it is dropped as a slow consumer "
        "(BESEDA_SEND_BUFFER_BYTES, default 2097152)",
    )
    serve.add_argument(
        "--registrations-per-minute",
        type=float,
        help="new accounts per minute from one address, bursts of 3× that (at least 30) "
        "(BESEDA_REGISTRATIONS_PER_MINUTE, default 10)",
    )
    serve.add_argument(
        "--hash-workers",
        type=_count,
        help="password hashes computed at once, on threads of the lowest CPU priority "
        "(BESEDA_HASH_WORKERS, default 0: one per core the server may run on)",
    )
    serve.add_argument(
        "--hash-queue",
        type=_count,
        help="password hashes that may wait for a worker; more logins at once are refused "
        "with rate_limited (BESEDA_HASH_QUEUE, default 64)",
    )
    serve.add_argument("--tls-cert", type=Path, help="TLS certificate chain, PEM (BESEDA_TLS_CERT)")
    serve.add_argument("--tls-key", type=Path, help="TLS private key, PEM (BESEDA_TLS_KEY)")
    serve.add_argument(
        "--tls",
        choices=["auto"],
        help="'auto': create a self-signed certificate beside the database on first start "
        "and use it (BESEDA_TLS=auto)",
    )
    serve.add_argument(
        "--allow-plaintext",
        action="store_true",
        default=None,
        help="allow listening without TLS on an address other than loopback "
        "(BESEDA_ALLOW_PLAINTEXT=1)",
    )

    client = commands.add_parser("client", help="open the desktop client")
    client.add_argument("--server", help="server address, HOST:PORT")
    client.add_argument("--lang", help="interface language (en, ru)")
    return parser


def _count(text: str) -> int:
    """A whole number, 0 or more (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    return _client(args)


def _serve(args: argparse.Namespace) -> int:
    from .server.app import StartupError, serve

    settings = config.from_environment(
        host=args.host,
        port=args.port,
        db=args.db,
        log_level=args.log_level,
        auth_timeout=args.auth_timeout,
        max_connections_per_address=args.max_connections_per_address,
        message_rate=args.message_rate,
        message_burst=args.message_burst,
        registrations_per_minute=args.registrations_per_minute,
        send_buffer_bytes=args.send_buffer_bytes,
        message_max_delay=args.message_max_delay,
        hash_workers=args.hash_workers,
        hash_queue=args.hash_queue,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_auto=True if args.tls == "auto" else None,
        allow_plaintext=args.allow_plaintext,
    )
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(serve(settings))
    except StartupError as exc:
        print(f"beseda: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def _client(args: argparse.Namespace) -> int:
    try:
        from .gui.app import run  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        print("beseda: the desktop client is not built yet.", file=sys.stderr)
        return 2
    return int(run(server=args.server, lang=args.lang))
