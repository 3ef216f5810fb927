"""What the web scripts share: a real ``beseda serve`` in a temporary directory and Debian's
Chromium under Playwright (scripts/web_screenshots.py, scripts/web_speed.py)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


@dataclass
class RunningServer:
    url: str
    """The web app, ``http://127.0.0.1:PORT/``."""
    port: int
    """The TCP protocol's port (for client-library users)."""


@contextmanager
def server(directory: Path, *flags: str) -> Iterator[RunningServer]:
    """``beseda serve`` on free ports with a fresh database in ``directory``."""
    log_path = directory / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "beseda",
                "serve",
                "--port",
                "0",
                "--http-port",
                "0",
                "--db",
                str(directory / "beseda.db"),
                *flags,
            ],
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            text = log_path.read_text(errors="replace")
            web = re.search(r"web app on (http://[0-9.]+:\d+/)", text)
            tcp = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
            if web and tcp:
                yield RunningServer(web.group(1), int(tcp.group(1)))
                return
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the server did not start:\n{text}")
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
