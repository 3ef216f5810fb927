"""A virtual X display (Xvfb) for running the client without a screen: tests, screenshots,
speed measurements."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path


def start_xvfb(
    numbers: range, *, size: str = "1280x800", timeout: float = 10.0
) -> tuple[subprocess.Popen[bytes], str] | None:
    """Start Xvfb on the first free display number in ``numbers``.

    Returns the process and its ``DISPLAY`` value (``":N"``), or None when Xvfb is not
    installed or did not start. The caller stops the process.
    """
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        return None
    for number in numbers:
        socket = Path(f"/tmp/.X11-unix/X{number}")
        if Path(f"/tmp/.X{number}-lock").exists() or socket.exists():
            continue
        proc = subprocess.Popen(
            [xvfb, f":{number}", "-screen", "0", f"{size}x24", "-nolisten", "tcp"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if socket.exists():
                return proc, f":{number}"
            time.sleep(0.05)
        proc.kill()
        proc.wait()
    return None
