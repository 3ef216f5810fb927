"""``python -m bench``: run the scenarios, write results/latest.json and docs/performance.md."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from . import cluster as _cluster  # noqa: F401  (registers the cluster scenario)
from . import postgres as _postgres  # noqa: F401  (registers the postgres scenario)
from . import profile, report, scenarios, servers
from . import search as _search  # noqa: F401  (registers the search scenario)
from .scenarios import FOREIGN_RERUN, FULL, SMOKE, Bench
from .system import ForeignLoad, cpu_source, pin_self, placement, raise_fd_limit

ROOT = Path(__file__).resolve().parent.parent
FOREIGN_NOTE = 0.15
"""Cores kept busy by other processes above which a scenario's figures are flagged."""
ANALYSIS = Path(__file__).resolve().parent / "analysis.md"
"""Hand-written findings, placed under the targets table in docs/performance.md."""


def _machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores{f' ({model})' if model else ''}, Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}"
    )


def merged(old: dict[str, Any], new: dict[str, Any], chosen: tuple[str, ...]) -> dict[str, Any]:
    """``old`` with the scenarios in ``chosen`` (and their notes) taken from ``new``."""
    result = dict(old)
    result["scenarios"] = {**old["scenarios"], **new["scenarios"]}
    result["meta"] = dict(old["meta"])
    result["meta"]["foreign_cores"] = {
        **old["meta"].get("foreign_cores", {}),
        **new["meta"]["foreign_cores"],
    }
    result["meta"]["rerun"] = {
        **old["meta"].get("rerun", {}),
        **{name: new["meta"]["date"] for name in chosen},
    }
    kept = [n for n in old.get("notes", []) if n.split(":", 1)[0] not in chosen]
    result["notes"] = kept + [n for n in new["notes"] if n not in kept]
    return result


def wait_quiet(limit: float, window: float = 3.0) -> None:
    """Wait (at most ``limit`` seconds) for a window in which other processes are nearly idle."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        sample = ForeignLoad()
        time.sleep(window)
        if sample.cores_busy() < FOREIGN_NOTE:
            return


def _disturbed(data: Any) -> int:
    """Rows in a scenario's data whose kept run had more foreign load than the re-run bar."""
    if isinstance(data, dict):
        foreign = data.get("foreign_cores", 0)
        own = 1 if isinstance(foreign, int | float) and foreign > FOREIGN_RERUN else 0
        return own + sum(
            _disturbed(v) for k, v in data.items() if k != "runs" and isinstance(v, dict | list)
        )
    if isinstance(data, list):
        return sum(_disturbed(v) for v in data)
    return 0


def write_report(results: dict[str, Any], docs: Path, *, with_analysis: bool) -> None:
    plot_path = docs.with_suffix(".png")
    plotted = report.plot(results, plot_path)
    analysis = ANALYSIS.read_text() if with_analysis and ANALYSIS.exists() else ""
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(report.markdown(results, plot_path.name if plotted else None, analysis))


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="every scenario at a tiny size")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=scenarios.scenarios(),
        help="run only this scenario (repeatable)",
    )
    parser.add_argument(
        "--contender",
        action="append",
        choices=[c.name for c in servers.CONTENDERS],
        help="run only against this server (repeatable; beseda-only scenarios still run; "
        "default: all but asyncio-coalesced)",
    )
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/…)")
    parser.add_argument("--docs", type=Path, help="performance.md to write (full runs)")
    parser.add_argument("--workdir", type=Path, help="keep databases and logs here")
    parser.add_argument("--idle", type=int, help="override the number of idle connections")
    parser.add_argument(
        "--fanout-n",
        type=int,
        action="append",
        help="override the fan-out receiver counts (repeatable; a labelled partial run)",
    )
    parser.add_argument("--fanout-messages", type=int, help="override messages per fan-out run")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each scenario wait up to this long for other processes to go quiet",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="replace only the scenarios run in an existing results file, keep the others",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record every timed run of every server with perf; the split by thread and by "
        "system call or library in DIR/profile.md (results and report go to DIR too, unless "
        "--out and --docs say otherwise)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite docs/performance.md and its plot from the results JSON, run nothing",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    sizes = SMOKE if args.smoke else FULL
    if args.idle:
        sizes = dataclasses.replace(sizes, idle=args.idle)
    if args.fanout_n:
        sizes = dataclasses.replace(sizes, fanout_n=tuple(args.fanout_n))
    if args.fanout_messages:
        sizes = dataclasses.replace(
            sizes, fanout_messages=args.fanout_messages, paced_messages=args.fanout_messages
        )
    chosen = tuple(args.scenario or scenarios.scenarios())
    contenders = tuple(
        c
        for c in servers.CONTENDERS
        if (c.name in args.contender if args.contender else c in servers.DEFAULT_CONTENDERS)
    )
    if servers.BESEDA not in contenders:
        contenders = (servers.BESEDA, *contenders)
    results_dir = ROOT / "bench" / "results"
    if args.profile:
        why = profile.available()
        if why:
            print(f"--profile: {why}", file=sys.stderr)
            return 1
        # A profiled run carries perf's cost: it never replaces the figures of record.
        args.out = args.out or args.profile / "results.json"
        args.docs = args.docs or args.profile / "performance.md"
    out = args.out or (
        results_dir
        / ("smoke" if args.smoke else "")
        / ("smoke.json" if args.smoke else "latest.json")
    )
    docs = args.docs or (out.with_suffix(".md") if args.smoke else ROOT / "docs/performance.md")
    if args.report_only:
        if not out.exists():
            print(f"no results at {out}: run the benchmark first", file=sys.stderr)
            return 1
        results = json.loads(out.read_text())
        write_report(results, docs, with_analysis=not args.smoke)
        print(f"report: {docs}")
        return 0
    fds = raise_fd_limit()
    where = placement()
    pin_self(where.generator_cores)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="beseda-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if where.server_core is None:
        notes.append(where.note)
    if fds < sizes.idle + 1000:
        notes.append(f"open-file limit is {fds}: idle connections may fail")
    total = scenarios.steps(sizes, contenders, chosen)
    results: dict[str, Any] = {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": _machine(),
            "placement": where.note,
            "processes": sizes.processes,
            "smoke": args.smoke,
            "size_note": "smoke (tiny)" if args.smoke else "full (as in issue 5)",
            "foreign_cores": {},
            "cpu_source": cpu_source(),
            "repeats": sizes.repeats,
            "foreign_rerun": FOREIGN_RERUN,
        },
        "sizes": dataclasses.asdict(sizes),
        "scenarios": {},
        "notes": notes,
    }
    started = time.monotonic()
    with tqdm(total=total, unit="run", disable=None, file=sys.stderr) as bar:
        done = [0]

        def progress(label: str) -> None:
            done[0] += 1
            if bar.disable:  # not a terminal: one line per step instead of a bar
                print(f"[{done[0]}/{total}] {label}", file=sys.stderr, flush=True)
            bar.set_description_str(label)
            bar.update(1)
            if bench.profiler:
                bench.profiler.step = label

        bench = Bench(sizes, where, workdir, contenders, progress, notes)
        if args.profile:
            bench.profiler = profile.Profiler(args.profile)
        try:
            for name in chosen:
                if bench.profiler:
                    bench.profiler.scenario = name
                if args.wait_quiet:
                    wait_quiet(args.wait_quiet)
                foreign = ForeignLoad()
                reruns = bench.reruns
                results["scenarios"][name] = scenarios.RUNNERS[name](bench)
                busy = round(foreign.cores_busy(), 2)
                results["meta"]["foreign_cores"][name] = busy
                if bench.reruns > reruns:
                    notes.append(
                        f"{name}: {bench.reruns - reruns} runs were done again because other "
                        f"processes kept more than {FOREIGN_RERUN} cores busy during them"
                    )
                disturbed = _disturbed(results["scenarios"][name])
                if disturbed:
                    notes.append(
                        f"{name}: {disturbed} kept rows were disturbed all the same (more than "
                        f"{FOREIGN_RERUN} cores of other work in every attempt; see "
                        "foreign_cores in the JSON)"
                    )
        finally:
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
    results["meta"]["seconds"] = round(time.monotonic() - started, 1)
    if args.merge and out.exists():
        results = merged(json.loads(out.read_text()), results, chosen)
    report.write_json(results, out)
    write_report(results, docs, with_analysis=not args.smoke)
    print(f"results: {out}\nreport: {docs}\n({results['meta']['seconds']} s)")
    if bench.profiler:
        print(f"profile: {bench.profiler.write()}")
    missing = [name for name in chosen if not results["scenarios"].get(name)]
    if missing:
        print(f"no figures for: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
