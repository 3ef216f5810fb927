"""``python -m bench --profile DIR``: where a server's CPU goes during the timed runs.

Every timed run of every server (``Bench._timed_run``) is recorded with Linux ``perf``
(``perf record -e cpu-clock -F 2000 -g -p PID``: the server's own threads, kernel stacks
included, for the timed part only). Each recording is then split by thread (the event loop is
the process's first thread; beseda's other threads carry names, docs/operations.md, "Threads")
and, within a thread, by where the sample fell: in a system call (by name, from the kernel
stack), elsewhere in the kernel (interrupts, page faults), or in user space by library (the
Python interpreter, SQLite, the C library, …). ``DIR/profile.md`` gets one table per run,
``DIR/profile.json`` the same figures, and the recordings stay in ``DIR`` for ``perf report``
(``python -m bench.profile DIR`` splits them again).

The figures of a profiled run include perf's own cost (about 1 % at 2,000 samples/s), so its
results go to ``DIR`` and never replace ``bench/results/latest.json``.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RATE = 2000
"""Samples per second per busy thread."""
TOP = 6
"""Places listed per thread in profile.md; the rest are summed as "other" (profile.json has
them all)."""

_SYSCALL = re.compile(r"^(?:__x64_sys_|__ia32_sys_|__do_sys_|__se_sys_|ksys_)(\w+)")
"""A system call's entry in a kernel stack (``ksys_write`` where ``__x64_sys_write`` is
inlined); the one nearest the stack's root counts."""
_MODULE = re.compile(r"^(\w+)\.cpython-\d+")
"""A compiled module of the standard library or a package (``_socket.cpython-311-….so``)."""
_USER = (
    ("libpython", "Python interpreter"),
    ("python3", "Python interpreter"),
    ("libsqlite3", "SQLite"),
    ("libc.so", "C library (malloc, memcpy, …)"),
    ("ld-linux", "dynamic loader"),
    ("libicu", "ICU"),
)


def available() -> str | None:
    """None when perf can record here, else why not."""
    if shutil.which("perf") is None:
        return "perf is not installed (Debian: apt-get install linux-perf)"
    probe = subprocess.run(
        ["perf", "stat", "-e", "cpu-clock", "--", "true"], capture_output=True, text=True
    )
    if probe.returncode:
        return f"perf cannot count here: {probe.stderr.strip()[:200]}"
    return None


@dataclass
class Recording:
    label: str
    pid: int
    path: Path
    seconds: float = 0.0


@dataclass
class Profiler:
    """Records each timed run into ``directory`` and writes the summary at the end."""

    directory: Path
    recordings: list[Recording] = field(default_factory=list)
    scenario: str = ""
    """The scenario running now (set by the harness), for the file names."""
    step: str = ""
    """The harness's progress label of the step running now, for the labels."""
    _runs: Counter[str] = field(default_factory=Counter)

    @contextmanager
    def record(self, name: str, pid: int) -> Iterator[None]:
        """Record ``pid`` for the length of the ``with`` block."""
        key = f"{self.step or self.scenario}: {name}"
        self._runs[key] += 1
        label = f"{key}, run {self._runs[key]}"
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{len(self.recordings) + 1:03d}-{self.scenario}-{name}.perf"
        recording = Recording(label, pid, path)
        perf = subprocess.Popen(
            [
                *("perf", "record", "-q", "-e", "cpu-clock", "-F", str(RATE), "-g"),
                *("-p", str(pid), "-o", str(path)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.3)  # attached: perf opens the events before it writes its header
        start = time.monotonic()
        try:
            yield
        finally:
            recording.seconds = time.monotonic() - start
            perf.send_signal(signal.SIGINT)
            try:
                perf.wait(30)
            except subprocess.TimeoutExpired:
                perf.kill()
                perf.wait()
            self.recordings.append(recording)

    def write(self) -> Path:
        """Split every recording (after the runs: ``perf script`` takes seconds of CPU) and
        write profile.json and profile.md."""
        data = [
            {
                "label": r.label,
                "file": r.path.name,
                "pid": r.pid,
                "seconds": round(r.seconds, 3),
                **split(r.path, r.pid),
            }
            for r in self.recordings
        ]
        return _write(self.directory, data)


def _write(directory: Path, data: list[dict[str, Any]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "profile.json").write_text(json.dumps(data, indent=2) + "\n")
    out = directory / "profile.md"
    out.write_text(markdown(data))
    return out


def place(frames: list[tuple[str, str]]) -> str:
    """Where one sample fell; ``frames`` are (symbol, dso), the leaf first."""
    if not frames:
        return "unknown"
    dso = frames[0][1]
    if dso == "[kernel.kallsyms]":
        for sym, _ in reversed(frames):
            match = _SYSCALL.match(sym)
            if match:
                return f"syscall {match.group(1)}"
        names = {sym for sym, _ in frames}
        if any("page_fault" in sym for sym in names):
            return "kernel: page faults"
        if any(sym.startswith(("asm_sysvec", "asm_common_interrupt", "__irq")) for sym in names):
            return "kernel: interrupts"
        return "kernel: other"
    library = dso.lower().rsplit("/", 1)[-1]
    module = _MODULE.match(library)
    if module:
        package = dso.split("site-packages/", 1)[1].split("/")[0] if "site-packages/" in dso else ""
        return f"module {package + '.' if package else ''}{module.group(1)}"
    for key, name in _USER:
        if key in library:
            return name
    if "argon2" in dso.lower():  # argon2-cffi's library is a plain ``_ffi.abi3.so``
        return "argon2"
    return "unsymbolized" if library in ("[unknown]", "") else library


_HEADER = re.compile(r"^(?P<comm>.+?)\s+(?P<tid>\d+)\s+(?P<period>\d+)\s*$")
_FRAME = re.compile(r"^\s+[0-9a-f]+\s+(?P<sym>.*?)\s+\((?P<dso>[^()]*)\)\s*$")


def samples(path: Path) -> Iterator[tuple[str, int, int, list[tuple[str, str]]]]:
    """(thread name, tid, period, frames) of each sample of a recording."""
    script = subprocess.run(
        ["perf", "script", "-i", str(path), "-F", "comm,tid,period,ip,sym,dso"],
        capture_output=True,
        text=True,
        errors="replace",
    )
    head: tuple[str, int, int] | None = None
    frames: list[tuple[str, str]] = []
    for line in script.stdout.splitlines():
        if not line.strip():
            if head:
                yield (*head, frames)
            head, frames = None, []
            continue
        if head is None:
            match = _HEADER.match(line)
            if match:
                head = (match["comm"], int(match["tid"]), int(match["period"]))
            continue
        frame = _FRAME.match(line)
        if frame:
            frames.append((re.sub(r"\+0x[0-9a-f]+$", "", frame["sym"]), frame["dso"]))
    if head:
        yield (*head, frames)


def split(path: Path, pid: int) -> dict[str, Any]:
    """Shares of the recorded CPU (per cent of the process's samples) by thread and place."""
    by_thread: dict[str, Counter[str]] = defaultdict(Counter)
    total = 0
    for comm, tid, period, frames in samples(path):
        thread = "event loop (main)" if tid == pid else comm
        by_thread[thread][place(frames)] += period
        total += period
    threads = {}
    for thread, places in sorted(by_thread.items(), key=lambda kv: -sum(kv[1].values())):
        share = sum(places.values())
        listed = {name: _pct(v, total) for name, v in places.most_common()}
        kernel = sum(v for name, v in places.items() if name.startswith(("syscall", "kernel")))
        threads[thread] = {
            "share": _pct(share, total),
            "kernel": _pct(kernel, total),
            "places": listed,
        }
    return {"cpu_seconds_sampled": round(total / 1e9, 3), "threads": threads}


def _pct(part: int, whole: int) -> float:
    return round(100 * part / max(whole, 1), 1)


def markdown(data: list[dict[str, Any]]) -> str:
    lines = [
        "# Where the server's CPU went",
        "",
        f"Written by `python -m bench --profile DIR` (perf, cpu-clock at {RATE} samples/s, "
        "the timed runs only). Each figure is a per cent of all the samples of that server "
        "in that run.",
    ]
    for run in data:
        lines += [
            "",
            f"## {run['label']}",
            "",
            f"{run['cpu_seconds_sampled']} CPU s sampled over {run['seconds']} s "
            f"(`perf report -i {run['file']}`).",
            "",
            "| thread | share | in the kernel | where |",
            "|---|---|---|---|",
        ]
        for thread, figures in run["threads"].items():
            places = list(figures["places"].items())
            cells = [f"{name} {value} %" for name, value in places[:TOP]]
            if len(places) > TOP:
                cells.append(f"other {round(sum(v for _, v in places[TOP:]), 1)} %")
            where = ", ".join(cells)
            lines.append(f"| {thread} | {figures['share']} % | {figures['kernel']} % | {where} |")
    return "\n".join(lines) + "\n"


def resplit(directory: Path) -> Path:
    """Split the recordings of ``directory`` again (after a change to :func:`place`) and
    rewrite its profile.md; the labels and durations are kept from its profile.json."""
    data = json.loads((directory / "profile.json").read_text())
    for run in data:
        run.update(split(directory / run["file"], run["pid"]))
    return _write(directory, data)


if __name__ == "__main__":
    import sys

    print(resplit(Path(sys.argv[1])))
