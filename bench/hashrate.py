"""``python -m bench.hashrate``: password checks per second on this process's core.

The server's own :class:`~beseda.server.accounts.PasswordHasher` (its argon2id parameters),
one worker at normal priority, one check after another for ``--seconds``; prints JSON. The
storm scenario runs it pinned to the server's core, so its figure is what that core can hash
when it does nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from beseda.server.accounts import PasswordHasher

PASSWORD = "bench-password"


async def measure(seconds: float) -> dict[str, float]:
    hasher = PasswordHasher(workers=1, low_priority=False)
    try:
        stored = await hasher.hash(PASSWORD)
        await hasher.verify(stored, PASSWORD)  # warm: the first check allocates the memory
        checks = 0
        cpu0, began = time.process_time(), time.monotonic()
        while time.monotonic() - began < seconds:
            if not await hasher.verify(stored, PASSWORD):
                raise RuntimeError("the benchmark password does not verify")
            checks += 1
        wall, cpu = time.monotonic() - began, time.process_time() - cpu0
    finally:
        hasher.close()
    return {
        "hashes_per_s": round(checks / wall, 2),
        "ms_per_hash": round(wall / checks * 1e3, 2),
        "cpu_ms_per_hash": round(cpu / checks * 1e3, 2),
        "checks": checks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hashrate", description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.seconds))))


if __name__ == "__main__":
    main()
