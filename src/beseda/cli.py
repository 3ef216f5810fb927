"""Command line: ``beseda serve`` and ``beseda client``. Argument parsing only."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
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
        type=config.parse_db,
        help=f"SQLite database file, created on first start, or a postgresql:// URL "
        f"(BESEDA_DB, default {config.default_db_path()})",
    )
    serve.add_argument(
        "--bus",
        help="redis://HOST:PORT/DB: the bus shared by several nodes on one database, for "
        "delivery, presence and rate limits across them (BESEDA_BUS; default: none, this "
        "process alone)",
    )
    serve.add_argument(
        "--node-name",
        help="this node's name among the nodes on one bus (BESEDA_NODE_NAME, default HOSTNAME-PID)",
    )
    serve.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log verbosity (BESEDA_LOG_LEVEL, default INFO)",
    )
    serve.add_argument(
        "--http-port",
        type=_argument(config.http_port),
        help="port of the web app and its WebSocket (/ws), on the same --host; 0: any free "
        f"port; off: none (BESEDA_HTTP_PORT, default {config.DEFAULT_HTTP_PORT})",
    )
    serve.add_argument(
        "--allowed-origins",
        type=_argument(config.origin_list),
        help="comma-separated origins (https://chat.example.org) whose pages may open the "
        "WebSocket, besides the server's own (BESEDA_ALLOWED_ORIGINS)",
    )
    serve.add_argument(
        "--search-index",
        type=_argument(config.on_off),
        help="on: index messages for search as they are written; off: do not (search then "
        "answers search_off; for measuring the index's cost) (BESEDA_SEARCH_INDEX, default on)",
    )
    serve.add_argument(
        "--web-root",
        type=Path,
        help="serve the web app from this directory instead of the one built in (BESEDA_WEB_ROOT)",
    )
    for option in config.limit_options():  # each declared once, in config.Limits
        serve.add_argument(option.flag, type=_typed(option), dest=option.name, help=option.help)
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

    copy = commands.add_parser(
        "migrate-db",
        help="copy a SQLite server's data into PostgreSQL",
        description="Copy users, tokens, conversations, members, entries and read markers "
        "from a SQLite database into a PostgreSQL one, then verify both hold the same (row "
        "counts and checksums). Stop the server first. Resumable: run it again after an "
        "interruption, and it goes on where it stopped.",
    )
    copy.add_argument(
        "--from", dest="source", required=True, metavar="sqlite:FILE", help="the SQLite file"
    )
    copy.add_argument(
        "--to", dest="target", required=True, metavar="postgresql://…", help="the target URL"
    )

    client = commands.add_parser("client", help="open the desktop client")
    client.add_argument("--server", help="server address, HOST:PORT")
    client.add_argument("--lang", help="interface language (en, ru)")
    return parser


def _argument(parse: Callable[[str], object]) -> Callable[[str], object]:
    """``parse`` as an argparse type, so a bad value is a clear usage error."""

    def checked(text: str) -> object:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None

    return checked


def _typed(option: config.LimitOption) -> Callable[[str], object]:
    """The option's parser as an argparse type, so a bad value is a clear usage error."""

    def parse(text: str) -> object:
        try:
            return option.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "migrate-db":
        return _migrate_db(args)
    return _client(args)


def _migrate_db(args: argparse.Namespace) -> int:
    if not config.is_postgres_url(args.target):
        print(f"beseda: --to must be a postgresql:// URL, not {args.target!r}", file=sys.stderr)
        return 2
    from .storage import StorageError
    from .storage.transfer import copy_database, describe, parse_source

    source = parse_source(args.source)
    print(f"copying {source} to {describe(args.target)}")
    try:
        reports = asyncio.run(copy_database(source, args.target, say=print))
    except StorageError as exc:
        print(f"beseda: {exc}", file=sys.stderr)
        return 2
    width = max(len(report.name) for report in reports)
    for report in reports:
        verdict = "ok" if report.equal else "DIFFERENT"
        print(
            f"{report.name:<{width}}  source {report.source_rows:>9} rows  "
            f"target {report.target_rows:>9} rows  checksum {report.target_checksum[:16]}  "
            f"{verdict}"
        )
    if all(report.equal for report in reports):
        print("verified: every table holds the same rows on both sides")
        return 0
    print(
        "beseda: the databases differ (was the server still writing?); run migrate-db again",
        file=sys.stderr,
    )
    return 1


def _serve(args: argparse.Namespace) -> int:
    from .server.app import StartupError, serve

    settings = config.from_environment(
        host=args.host,
        port=args.port,
        db=args.db,
        log_level=args.log_level,
        bus=args.bus,
        node_name=args.node_name,
        **{option.name: getattr(args, option.name) for option in config.limit_options()},
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_auto=True if args.tls == "auto" else None,
        allow_plaintext=args.allow_plaintext,
        http_port=args.http_port,
        allowed_origins=args.allowed_origins,
        web_root=args.web_root,
        search_index=args.search_index,
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
