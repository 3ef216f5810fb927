"""The name a thread shows the operating system: ``top -H``, ``ps -L``, ``perf`` and py-spy.

Python (before 3.14) keeps a thread's name to itself, so every thread of ``beseda serve``
shows the kernel the process's name, and an operator looking at a busy server cannot tell
the event loop (the first thread) from the SQLite writer or a password-hashing thread. On
Linux a thread may rename itself by writing its ``comm`` file; elsewhere nothing is done.
"""

from __future__ import annotations

import sys
import threading

LIMIT = 15
"""Bytes of a name the kernel keeps (``TASK_COMM_LEN`` less the terminating zero)."""


def name_this_thread(name: str) -> bool:
    """Give the calling thread ``name`` (cut to :data:`LIMIT` bytes) as the kernel knows it;
    True when done."""
    if not sys.platform.startswith("linux"):
        return False
    encoded = name.encode()[:LIMIT]
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "wb") as comm:
            comm.write(encoded)
    except OSError:
        return False
    return True
