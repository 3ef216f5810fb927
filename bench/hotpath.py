"""``python -m bench.hotpath``: nanoseconds of the per-recipient output path, in-process.

Every delivery of a message to a connection goes through ``ServerConnection.deliver`` (queue
the line) and, at the end of the loop iteration, ``data_to_send`` (take it for the one
write). In the paced fan-out each message is alone in its iteration, so this pair runs once
per recipient per message. This times the pair on a real ``ServerConnection`` (no socket: the
write itself is the kernel's, and the fan-out scenario measures the whole); the best of
``--rounds`` rounds. Run it pinned (``taskset -c 0``) and compare two versions of the code.
"""

from __future__ import annotations

import argparse
import time

from beseda.server.config import Limits
from beseda.server.connection import Capacity, ServerConnection

LINE = b"x" * 200
"""About the size of an encoded chat entry."""


def deliver_and_take(calls: int) -> float:
    connection = ServerConnection(
        None,  # type: ignore[arg-type]  # no request is handled: no chat needed
        Capacity(Limits()),
        b"hello\n",
        clock=time.monotonic,
        on_output=lambda: None,
    )
    connection.data_to_send()  # the hello
    deliver, take = connection.deliver, connection.data_to_send
    began = time.perf_counter_ns()
    for _ in range(calls):
        deliver(LINE)
        take()
    return (time.perf_counter_ns() - began) / calls


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    best = min(deliver_and_take(args.calls) for _ in range(args.rounds))
    print(f"deliver + data_to_send: {best:.1f} ns per recipient (best of {args.rounds})")


if __name__ == "__main__":
    main()
