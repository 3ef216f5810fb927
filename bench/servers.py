"""The servers under test: beseda, the two Python reference servers, and ngIRCd.

Each starts as a child process pinned to the server core, on a free loopback port, with its
own files in the run's work directory.
"""

from __future__ import annotations

import json
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
FLOOR = Contender("asyncio", "reference", "asyncio floor (one write per recipient)")
COALESCED = Contender("asyncio-coalesced", "reference", "asyncio floor, writes coalesced")
NGIRCD = Contender("ngircd", "irc", "ngIRCd (C)")
CONTENDERS = (BESEDA, FLOOR, COALESCED, NGIRCD)


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
    if contender is BESEDA:
        stats = workdir / f"beseda-{port}.stats.json"
        command = [sys.executable, "-m", "bench.besedad", "--port", str(port)]
        command += ["--db", str(options["db"]), "--stats", str(stats)]
        if options.get("bus"):
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


def beseda_stats(service: Service, workdir: Path) -> dict[str, int]:
    """Group-commit and delivery counts a stopped beseda server wrote."""
    path = workdir / f"beseda-{service.port}.stats.json"
    if not path.exists():
        return {}
    counts: dict[str, int] = json.loads(path.read_text())
    return counts
