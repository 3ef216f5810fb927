"""The machine: cores, pinning, file-descriptor limits, and what /proc says about a process."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Placement:
    """Which core the server runs on and which the load generator runs on."""

    server_core: int | None
    generator_cores: tuple[int, ...] | None
    note: str

    def server_prefix(self) -> list[str]:
        if self.server_core is None:
            return []
        return ["taskset", "-c", str(self.server_core)]


def placement() -> Placement:
    """Server on the first core, generator on the rest, when the machine allows it."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = []
    if len(cores) < 2:
        return Placement(None, None, "fewer than 2 cores: server and generator share them")
    if shutil.which("taskset") is None:
        return Placement(None, None, "taskset not found: the server is not pinned")
    return Placement(
        cores[0], tuple(cores[1:]), f"server on core {cores[0]}, generator on {cores[1:]}"
    )


def pin_self(cores: tuple[int, ...] | None) -> None:
    """Pin the calling process (a generator worker) to ``cores``."""
    if cores:
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setaffinity(0, cores)


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to the hard limit; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def tick_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included, in clock ticks."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def thread_cpu_ns(pid: int) -> dict[str, int] | None:
    """CPU time of each live thread of ``pid`` in ns, by thread name (names summed; the
    process's first thread is ``main``), from
    ``/proc/<pid>/task/*/schedstat`` (the scheduler's own count, not 10 ms ticks); None where
    the kernel does not give it."""
    threads: dict[str, int] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            ran = int((task / "schedstat").read_text().split()[0])
            name = "main" if task.name == str(pid) else (task / "comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
        threads[name] = threads.get(name, 0) + ran
    return threads or None


def cpu_seconds(pid: int) -> float:
    """CPU time of a process, all its live threads included: schedstat (ns) where the kernel
    gives it, else /proc/<pid>/stat in ticks. A thread that ended takes its schedstat time
    with it, so the larger of the two is returned when ticks run more than a tick ahead."""
    ticks = tick_seconds(pid)
    threads = thread_cpu_ns(pid)
    if threads is None:
        return ticks
    precise = sum(threads.values()) / 1e9
    return ticks if ticks > precise + 2 / CLOCK_TICKS else precise


def cpu_source() -> str:
    """Where :func:`cpu_seconds` reads from on this machine."""
    return "schedstat (ns)" if thread_cpu_ns(os.getpid()) else f"ticks (1/{CLOCK_TICKS} s)"


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent in user, nice and system mode since boot (/proc/stat).

    Interrupt and softirq time (much of it the loopback traffic of the run, charged to no
    process) and steal are left out."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    return (int(fields[0]) + int(fields[1]) + int(fields[2])) / CLOCK_TICKS


def own_seconds() -> float:
    """CPU seconds of this process (the harness) itself."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_bytes(pid: int) -> int:
    """Resident memory of a process."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE


class ForeignLoad:
    """CPU time that processes other than this harness and its children used meanwhile.

    Other work on the machine disturbs every figure; this says how much there was.
    """

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return (0.0, 0.0, time.monotonic())
        values = [int(v) for v in fields]
        # user + nice + system only: interrupt and softirq time (much of it our own loopback
        # traffic, charged to no process) and steal are left out.
        busy = values[0] + values[1] + values[2]
        own = sum(
            getattr(resource.getrusage(who), name)
            for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
            for name in ("ru_utime", "ru_stime")
        )
        return (busy / CLOCK_TICKS, own, time.monotonic())

    def cores_busy(self) -> float:
        """Average number of cores other processes kept busy since construction."""
        busy0, own0, t0 = self._start
        busy1, own1, t1 = self._sample()
        if t1 <= t0:
            return 0.0
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / (t1 - t0))


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until something accepts on ``port``; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


class Service:
    """A server under test running as a child process, pinned where possible."""

    def __init__(self, name: str, command: list[str], port: int, log: Path, pin: Placement):
        self.name = name
        self.port = port
        self.log = log
        env = dict(os.environ)
        # ``python -m bench.…`` must find this package wherever the harness was started.
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        with log.open("ab") as output:
            self.proc = subprocess.Popen(
                pin.server_prefix() + command,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        try:
            wait_for_port(self.port, self.proc, timeout)
        except Exception as exc:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} did not start: {exc}\n{tail}") from exc

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def threads(self) -> dict[str, float]:
        """CPU seconds of each live thread by name (empty where the kernel does not say)."""
        return {name: ns / 1e9 for name, ns in (thread_cpu_ns(self.pid) or {}).items()}

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
