"""The servers under test: beseda (over TCP, over WebSocket, and without its search index),
the two Python reference servers, and ngIRCd.

Each starts as a child process pinned to the server core, on a free loopback port, with its
own files in the run's work directory.
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .system import LOOPBACK, Placement, Service, free_port


@dataclass(frozen=True)
class Contender:
    """A server the scenarios can run against, and the wire the generator speaks to it."""

    name: str
    wire: str
    label: str


BESEDA = Contender("beseda", "beseda", "beseda")
BESEDA_WS = Contender("beseda-ws", "beseda-ws", "beseda over WebSocket")
"""The same server, its clients on the HTTP port's ``/ws`` instead of the TCP port."""
BESEDA_NO_INDEX = Contender("beseda-no-index", "beseda", "beseda, search index off")
"""The same server started with ``--search-index off``: what the search index costs."""
BESEDAS = (BESEDA, BESEDA_WS, BESEDA_NO_INDEX)
"""Contenders that are a ``beseda serve`` (a prepared database, stats in the log)."""
FLOOR = Contender("asyncio", "reference", "asyncio floor (one write per recipient)")
COALESCED = Contender("asyncio-coalesced", "reference", "asyncio floor, writes coalesced")
NGIRCD = Contender("ngircd", "irc", "ngIRCd (C)")
CONTENDERS = (BESEDA, BESEDA_WS, BESEDA_NO_INDEX, FLOOR, COALESCED, NGIRCD)
DEFAULT_CONTENDERS = (BESEDA, BESEDA_WS, BESEDA_NO_INDEX, FLOOR, NGIRCD)
"""Run unless ``--contender`` says otherwise (the coalescing floor only when asked)."""


def ngircd_path() -> str | None:
    return shutil.which("ngircd") or (
        "/usr/sbin/ngircd" if Path("/usr/sbin/ngircd").exists() else None
    )


def unavailable(contender: Contender) -> str | None:
    """Why this contender cannot run here, or None."""
    if contender is NGIRCD and ngircd_path() is None:
        return "ngircd is not installed (apt-get install ngircd): the C reference is skipped"
    return None


NGIRCD_CONFIG = """\
[Global]
Name = bench.invalid
Info = beseda benchmark peer
AdminInfo1 = benchmark
AdminInfo2 = loopback only
AdminEMail = bench@bench.invalid
Listen = {host}
Ports = {port}
MotdPhrase = bench
[Limits]
MaxConnections = 0
MaxConnectionsIP = 0
MaxJoins = 0
MaxNickLength = 30
MaxPenaltyTime = 0
PingTimeout = 3600
PongTimeout = 3600
[Options]
DNS = no
Ident = no
PAM = no
"""
"""Flood protection off (``MaxPenaltyTime = 0``), no limits per address, no DNS/ident/PAM."""


def start(contender: Contender, workdir: Path, placement: Placement, **options: Any) -> Service:
    """Start ``contender``; for beseda pass ``db`` (a prepared database file)."""
    port = free_port()
    log = workdir / f"{contender.name}-{port}.log"
    if contender in BESEDAS:
        # The generator's port (``port``): the TCP one, or for WebSocket the HTTP one.
        tcp, http = (free_port(), str(port)) if contender is BESEDA_WS else (port, "off")
        command = [sys.executable, "-m", "beseda", "serve", "--host", LOOPBACK, "--port"]
        command += [str(tcp), "--http-port", http, "--db", str(options["db"]), *BESEDA_FLAGS]
        if contender is BESEDA_NO_INDEX:
            command += ["--search-index", "off"]
        if options.get("bus"):  # one node of several (bench/cluster.py)
            command += ["--bus", options["bus"], "--node-name", options.get("node", "bench")]
    elif contender in (FLOOR, COALESCED):
        command = [sys.executable, "-m", "bench.reference", "--port", str(port)]
        if contender is COALESCED:
            command.append("--coalesce")
    elif contender is NGIRCD:
        binary = ngircd_path()
        assert binary is not None
        config = workdir / f"ngircd-{port}.conf"
        config.write_text(NGIRCD_CONFIG.format(host=LOOPBACK, port=port))
        command = [binary, "--nodaemon", "--config", str(config)]
    else:
        raise ValueError(contender)
    service = Service(contender.name, command, port, log, placement)
    service.wait_ready()
    return service


BESEDA_FLAGS = (
    "--max-connections",
    "100000",
    "--message-rate",
    "1000000",
    "--message-burst",
    "1000000",
)
"""``beseda serve`` as an operator starts it, with the flags this load needs: more than
the default 10,000 connections, and a per-user message rate that lets one sender feed the
whole fan-out (the defaults allow 20/s per user). The HTTP port is off (its default, 7879,
is a fixed port) but for ``beseda-ws``, which takes a free one. Everything else (log level INFO, the
per-address limits, argon2 parameters, ``synchronous=FULL``) is the default; the generator
connects from many loopback addresses, so the per-address limits hold as they would."""

_STOPPED = re.compile(rb"stopped: (\d+) writes in (\d+) commits, (\d+) deliveries")


def beseda_stats(service: Service, workdir: Path) -> dict[str, int]:
    """Group-commit and delivery counts from a stopped beseda server's last log line."""
    if service.proc.poll() is None:
        service.stop()
    found = _STOPPED.findall(service.log.read_bytes()) if service.log.exists() else []
    if not found:
        return {}
    writes, batches, delivered = (int(v) for v in found[-1])
    return {"writes": writes, "batches": batches, "delivered": delivered}
