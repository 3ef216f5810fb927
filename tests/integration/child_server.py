"""``beseda serve`` as a child process that can be killed and started again.

Like the suite's ``ServerProcess``, but ``start`` closes its handle on the log (an unclosed
file is an error under ``filterwarnings = error``) and, after a restart, waits for the new
process's "listening" line instead of finding the previous one.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from conftest import TIMEOUT_FACTOR, ServerProcess, free_port


class ChildServer(ServerProcess):  # type: ignore[misc]
    def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        command = [sys.executable, "-m", "beseda", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--db", str(self.db)]
        command += ["--registrations-per-minute", "100000", *self.extra]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=log)
        pattern = re.compile(rf"listening on 127\.0\.0\.1:{self.port}\b".encode())
        deadline = time.monotonic() + 30 * TIMEOUT_FACTOR
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()}")
            with self.log.open("rb") as log:
                log.seek(offset)
                if pattern.search(log.read()):
                    return
            time.sleep(0.02)
        raise TimeoutError("server did not start")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return int(self.proc.pid)

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections stay open but nothing is answered."""
        os.kill(self.pid, signal.SIGSTOP)


def child_servers(tmp_path: Path) -> Iterator[Callable[..., ChildServer]]:
    """The body of a ``child_server`` fixture (``yield from child_servers(tmp_path)``):
    ``child_server(*flags)`` starts a server; all are killed at the end."""
    procs: list[ChildServer] = []

    def start(*extra: str) -> ChildServer:
        proc = ChildServer(tmp_path / "beseda.db", free_port(), list(extra))
        proc.start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()
