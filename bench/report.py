"""Results → ``results/latest.json``, the targets table, ``docs/performance.md`` and a plot."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

KIB = 1024


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(key) == value for key, value in match.items()):
            return row
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 2)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def spread(row: dict[str, Any] | None, key: str, digits: int = 2) -> str:
    """``min–max`` of ``key`` over the row's repeated runs, or '' for a single run."""
    values = [v for v in ((row or {}).get("runs") or {}).get(key, []) if v is not None]
    if len(values) < 2:
        return ""
    return f"{min(values):,.{digits}f}–{max(values):,.{digits}f}"


def _with_spread(row: dict[str, Any] | None, key: str, digits: int = 2) -> str:
    if row is None or row.get(key) is None:
        return "—"
    text = f"{row[key]:,.{digits}f}"
    extent = spread(row, key, digits)
    return f"{text} ({extent})" if extent else text


Target = dict[str, Any]
TARGETS: list[Callable[[dict[str, Any]], list[Target]]] = []
"""Functions of the results that each return target rows (target, beseda, reference, goal,
met, note); a scenario added elsewhere appends its own (see :func:`target`)."""


def target(function: Callable[[dict[str, Any]], list[Target]]) -> Callable[..., list[Target]]:
    """Register a function of the results that returns target rows."""
    TARGETS.append(function)
    return function


def row_(name: str, ours: Any, theirs: Any, goal: str, met: bool | None, note: str = "") -> Target:
    return {
        "target": name,
        "beseda": ours,
        "reference": theirs,
        "goal": goal,
        "met": met,
        "note": note,
    }


def targets(results: dict[str, Any]) -> list[Target]:
    """Every registered target's rows, in registration order."""
    rows: list[Target] = []
    for function in TARGETS:
        rows += function(results)
    return rows


def _n(results: dict[str, Any]) -> int | None:
    fan = results["scenarios"].get("fanout", [])
    wanted = results["sizes"].get("repeat_n", 500)
    return wanted if _find(fan, n=wanted) else max((r["n"] for r in fan), default=None)


@target
def _fanout_targets(results: dict[str, Any]) -> list[Target]:
    scen = results["scenarios"]
    fan = scen.get("fanout", [])
    n = _n(results)
    rows = []
    for mode in ("burst", "paced"):
        ours = _find(fan, contender="beseda", n=n, mode=mode)
        irc = _find(fan, contender="ngircd", n=n, mode=mode)
        if ours is None:
            continue
        ratio = _ratio(ours["cpu_us_per_unit"], irc["cpu_us_per_unit"] if irc else None)
        rows.append(
            row_(
                f"fan-out N={n} {mode}: server CPU µs per delivery",
                _with_spread(ours, "cpu_us_per_unit"),
                _with_spread(irc, "cpu_us_per_unit"),
                "≤ 1.0× ngIRCd",
                None if ratio is None else ratio <= 1,
                "" if ratio is None else f"{ratio}× ngIRCd",
            )
        )
    ours = _find(fan, contender="beseda", n=n, mode="paced")
    irc = _find(fan, contender="ngircd", n=n, mode="paced")
    commit = scen.get("commit")
    if ours is not None:
        allowed = (
            irc["p99_ms"] + commit["p99_ms"]
            if irc and irc.get("p99_ms") is not None and commit
            else None
        )
        met = None if allowed is None else ours["p99_ms"] <= allowed and ours["losses"] == 0
        rows.append(
            row_(
                f"paced {results['sizes']['paced_rate']:g}/s into N={n}: p99 at the socket, ms",
                f"{_with_spread(ours, 'p99_ms')}, {ours['losses']} lost",
                f"ngIRCd {_with_spread(irc, 'p99_ms')}; one raw commit p99 "
                f"{_fmt(commit['p99_ms'] if commit else None)}"
                if irc
                else None,
                "≤ ngIRCd + one raw commit, zero loss",
                met,
                ""
                if allowed is None
                else f"{_ratio(ours['p99_ms'], allowed)}× the allowance of {allowed:.2f} ms",
            )
        )
    return rows


INDEX_SHARE = 0.85
"""Issue 11: with the search index on, throughput no more than 15 % below the same rows
without it, in the same run (for fan-out: deliveries per server CPU second)."""
WS_RATIO = 1.3
"""Issue 13: fan-out over WebSocket within 1.3× of TCP (CPU per delivery and p99)."""


@target
def _websocket_targets(results: dict[str, Any]) -> list[Target]:
    scen = results["scenarios"]
    fan = scen.get("fanout", [])
    n = _n(results)
    rows = []
    for mode in ("burst", "paced"):
        tcp = _find(fan, contender="beseda", n=n, mode=mode)
        ws = _find(fan, contender="beseda-ws", n=n, mode=mode)
        if tcp is None or ws is None:
            continue
        cpu = _ratio(ws["cpu_us_per_unit"], tcp["cpu_us_per_unit"])
        p99 = _ratio(ws["p99_ms"], tcp["p99_ms"])
        rows.append(
            row_(
                f"WebSocket fan-out N={n} {mode}: CPU µs per delivery, p99 ms at the socket",
                f"{_with_spread(ws, 'cpu_us_per_unit')} µs, {_with_spread(ws, 'p99_ms')} ms, "
                f"{ws['losses']} lost",
                f"TCP {_with_spread(tcp, 'cpu_us_per_unit')} µs, {_with_spread(tcp, 'p99_ms')} ms",
                f"≤ {WS_RATIO:g}× TCP, zero loss",
                None
                if cpu is None or p99 is None
                else cpu <= WS_RATIO and p99 <= WS_RATIO and ws["losses"] == 0,
                f"CPU {cpu}× TCP, p99 {p99}× TCP",
            )
        )
    idle_rows = scen.get("idle", [])
    ws, tcp = _find(idle_rows, contender="beseda-ws"), _find(idle_rows, contender="beseda")
    if ws is not None:
        per = ws["bytes_per_connection"]
        rows.append(
            row_(
                f"idle: {results['sizes']['idle']:,} WebSocket connections, server KiB each",
                f"{ws['connections']:,} held, {per / KIB:.2f} KiB",
                f"TCP {tcp['bytes_per_connection'] / KIB:.2f} KiB" if tcp else None,
                "measured (no goal set)",
                None,
                f"{_ratio(per, tcp['bytes_per_connection'])}× TCP" if tcp else "",
            )
        )
    return rows


@target
def _dm_targets(results: dict[str, Any]) -> list[Target]:
    dm = results["scenarios"].get("dm", [])
    ours, irc = _find(dm, contender="beseda"), _find(dm, contender="ngircd")
    raw = _find(dm, contender="raw_sqlite3")
    if ours is None:
        return []
    allowed = irc["cpu_us_per_unit"] + raw["cpu_us_per_unit"] if irc is not None and raw else None
    return [
        row_(
            f"direct messages, {ours['pairs']} independent pairs: server CPU µs per message",
            f"{_with_spread(ours, 'cpu_us_per_unit')} at {ours.get('messages_per_commit')} "
            "messages per commit",
            f"ngIRCd {_with_spread(irc, 'cpu_us_per_unit')} + raw sqlite3 at batch "
            f"{raw['batch']} {_fmt(raw['cpu_us_per_unit'])}"
            if irc and raw
            else None,
            "≤ ngIRCd + raw sqlite3 at beseda's commits per message",
            None if allowed is None else ours["cpu_us_per_unit"] <= allowed,
            ""
            if allowed is None
            else f"{_ratio(ours['cpu_us_per_unit'], allowed)}× the allowance of {allowed:.1f} µs",
        )
    ]


@target
def _durable_targets(results: dict[str, Any]) -> list[Target]:
    durable = results["scenarios"].get("durable")
    if not durable:
        return []
    ours = durable["beseda"]
    rate = ours["acks_per_s"]
    raw = durable["raw_sqlite3"]["rows_per_s"]
    share = _ratio(rate, raw)
    return [
        row_(
            "durable throughput, one message in flight per sender: acknowledged messages/s",
            _with_spread(ours, "acks_per_s", 0),
            f"raw sqlite3 {raw:,.0f} at batch {durable['raw_sqlite3']['batch']}",
            "≥ 0.5× raw sqlite3 at the same batch, and ≥ 30,000",
            rate >= 30_000 and (share or 0) >= 0.5,
            f"{share}× raw sqlite3; {rate / 30_000:.2f}× 30,000",
        )
    ]


@target
def _search_index_targets(results: dict[str, Any]) -> list[Target]:
    scen = results["scenarios"]
    rows = []
    fan = scen.get("fanout", [])
    n = _n(results)
    for mode in ("burst", "paced"):
        on = _find(fan, contender="beseda", n=n, mode=mode)
        off = _find(fan, contender="beseda-no-index", n=n, mode=mode)
        if on is None or off is None:
            continue
        # Capacity: deliveries per CPU second, with the index against without it.
        share = (
            round(off["cpu_us_per_unit"] / on["cpu_us_per_unit"], 3)
            if on["cpu_us_per_unit"] and off["cpu_us_per_unit"]
            else None
        )
        rows.append(
            row_(
                f"fan-out N={n} {mode} with the search index: server CPU µs per delivery",
                f"{_with_spread(on, 'cpu_us_per_unit')}; p99 {_fmt(on['p99_ms'])} ms",
                f"index off {_with_spread(off, 'cpu_us_per_unit')}; p99 {_fmt(off['p99_ms'])} ms",
                f"deliveries per CPU second ≥ {INDEX_SHARE:g}× index off (≤ 15 % below)",
                None if share is None else share >= INDEX_SHARE,
                "" if share is None else f"{share}× index off",
            )
        )
    durable = scen.get("durable") or {}
    on, off = durable.get("beseda"), durable.get("beseda_no_index")
    if on and off:
        share = off.get("paired_ratio")  # the median of alternating rounds' own ratios
        if share is None and off["acks_per_s"]:
            share = round(on["acks_per_s"] / off["acks_per_s"], 3)
        paired = off.get("paired_ratios")
        rounds = f" (median of alternating rounds: {', '.join(map(str, paired))})" if paired else ""
        rows.append(
            row_(
                "durable throughput with the search index: acknowledged messages/s",
                _with_spread(on, "acks_per_s", 0),
                f"index off {_with_spread(off, 'acks_per_s', 0)}",
                f"≥ {INDEX_SHARE:g}× index off (≤ 15 % below)",
                None if share is None else share >= INDEX_SHARE,
                "" if share is None else f"{share}× index off{rounds}",
            )
        )
    return rows


@target
def _idle_targets(results: dict[str, Any]) -> list[Target]:
    idle_rows = results["scenarios"].get("idle", [])
    ours = _find(idle_rows, contender="beseda")
    if ours is None:
        return []
    irc = _find(idle_rows, contender="ngircd")
    wanted = results["sizes"]["idle"]
    per = ours["bytes_per_connection"] / KIB
    theirs = irc["bytes_per_connection"] / KIB if irc else None
    ratio = _ratio(per, theirs)
    return [
        row_(
            f"idle: {wanted:,} signed-in connections, server KiB each",
            f"{ours['connections']:,} held, {per:.2f} KiB",
            f"ngIRCd {irc['connections']:,} held, {theirs:.2f} KiB" if irc else None,
            "all held, ≤ ngIRCd's KiB per connection",
            None if ratio is None else ours["connections"] >= wanted and ratio <= 1,
            ""
            if ratio is None
            else f"{ratio}× ngIRCd; connected in {ours['connect_s']} s "
            f"(ngIRCd {irc['connect_s'] if irc else '—'} s)",
        )
    ]


@target
def _history_targets(results: dict[str, Any]) -> list[Target]:
    hist = results["scenarios"].get("history")
    if not hist:
        return []
    return [
        row_(
            f"history ({hist['stored']:,} stored): page p99 ms",
            _with_spread(hist, "page_p99_ms"),
            None,
            "≤ 2 ms",
            hist["page_p99_ms"] is not None and hist["page_p99_ms"] <= 2,
            f"{_fmt(hist['page_p99_ms'] / 2)}× the goal" if hist["page_p99_ms"] else "",
        ),
        row_(
            f"history: sync of {hist['missed']:,} missed messages, ms",
            _with_spread(hist, "sync_ms_median"),
            None,
            "≤ 200 ms",
            hist["sync_ms_median"] is not None and hist["sync_ms_median"] <= 200,
            f"{_fmt(hist['sync_ms_median'] / 200)}× the goal" if hist["sync_ms_median"] else "",
        ),
    ]


@target
def _channel_targets(results: dict[str, Any]) -> list[Target]:
    scen = results["scenarios"]
    rows = []
    ch = scen.get("channels")
    if ch:
        c, g = ch["channels"], ch["general"]
        ratio = ch["cpu_ratio"]
        rows.append(
            row_(
                f"channels fan-out ({c['channels']} × {c['members']} members, "
                f"{c['rate']:g}/s each): server CPU µs per delivery",
                f"{_fmt(c['cpu_us_per_unit'])} at {_fmt(c['per_s'], 0)}/s",
                f"General N={g['n']:,}: {_fmt(g['cpu_us_per_unit'])} at {_fmt(g['per_s'], 0)}/s",
                f"≤ {ch['goal_ratio']:g}× General",
                ch["met"] if c["losses"] == 0 else False,
                "" if ratio is None else f"{ratio}× General; {c['losses']} lost",
            )
        )
    cs = scen.get("channel_sync")
    if cs:
        rows.append(
            row_(
                f"sync in {cs['conversations']} conversations after {cs['missed']:,} entries, ms",
                f"{_fmt(cs['sync_ms_median'])} ms, {cs['round_trips']} round trips",
                None,
                "measured (no goal set)",
                None,
                f"{cs['sync_ms_min']}–{cs['sync_ms_max']} ms over {cs['repeats']} runs; "
                f"server CPU {cs['server_cpu_ms_median']} ms",
            )
        )
    return rows


@target
def _storm_targets(results: dict[str, Any]) -> list[Target]:
    st = results["scenarios"].get("storm")
    if not st:
        return []
    ratio = st.get("p99_ratio")
    w = st["with"]
    capacity = st.get("capacity", {})
    refused = w.get("failed_logins", 0)
    return [
        row_(
            f"sign-ins at {results['sizes'].get('storm_share', 0.8):.0%} of one core's hashing "
            f"({st.get('login_rate')}/s of {capacity.get('hashes_per_s')}/s) during the paced "
            "fan-out: refused; chat p99 with / without",
            f"{refused} of {w.get('attempted_logins')} refused; "
            f"{_fmt(w['p99_ms'])} / {_fmt(st['without']['p99_ms'])} ms",
            None,
            "none refused; ≤ 1.3×",
            None if ratio is None else ratio <= 1.3 and refused == 0,
            "" if ratio is None else f"{ratio}×; login p99 {_fmt(w.get('login_p99_ms'))} ms",
        )
    ]


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")


def plot(results: dict[str, Any], path: Path) -> bool:
    """Fan-out CPU per delivery (burst) and p99 latency (paced) against N, per server."""
    fan = results["scenarios"].get("fanout")
    if not fan:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (cpu_axis, p99_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = sorted({row["contender"] for row in fan}, key=lambda c: c != "beseda")
    for name in names:
        burst = sorted(
            (r for r in fan if r["contender"] == name and r["mode"] == "burst"),
            key=lambda r: r["n"],
        )
        paced = sorted(
            (r for r in fan if r["contender"] == name and r["mode"] == "paced"),
            key=lambda r: r["n"],
        )
        cpu_axis.plot(
            [r["n"] for r in burst], [r["cpu_us_per_unit"] for r in burst], "o-", label=name
        )
        p99_axis.plot([r["n"] for r in paced], [r["p99_ms"] or 0 for r in paced], "o-", label=name)
    cpu_axis.set(
        xlabel="receivers N",
        ylabel="server CPU µs per delivery",
        title="Fan-out burst: cost per delivery",
    )
    p99_axis.set(
        xlabel="receivers N",
        ylabel="p99 latency at the socket, ms (log)",
        title=f"Fan-out paced {results['sizes']['paced_rate']:g}/s: p99 latency",
    )
    p99_axis.set_yscale("log")
    for axis in (cpu_axis, p99_axis):
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _busy(row: dict[str, Any]) -> str:
    shares = row.get("generator_process_shares") or []
    most = f", busiest process {max(shares):.2f}" if shares else ""
    return f"{row['generator_share']}{most}{' (saturated)' if row['generator_saturated'] else ''}"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


Section = Callable[[dict[str, Any]], str | None]
SECTIONS: list[Section] = []
"""Functions of the results that each return one section of docs/performance.md (or None
when their scenario did not run), in order; a scenario added elsewhere appends its own."""


def section(function: Section) -> Section:
    """Register a section renderer (see :data:`SECTIONS`)."""
    SECTIONS.append(function)
    return function


def method(results: dict[str, Any]) -> str:
    """How the figures are taken: written from the results, so it cannot go stale."""
    meta = results["meta"]
    sizes = results["sizes"]
    return (
        f"Every row is the median of {sizes.get('repeats', 1)} runs "
        f"({sizes.get('idle_repeats', 1)} for the idle rows, each on a fresh server; the "
        "others repeat the timed part on one server and one set of connections; the spread, "
        "min–max over "
        "the runs, is in brackets; every run's figures are in the JSON). Server CPU is the "
        f"server process's CPU time, all its threads, from {meta.get('cpu_source', '/proc')} "
        "over the timed part only, divided by what the row counts (deliveries, messages). "
        "Latency runs from the send time embedded in each message to the kernel's receive "
        "timestamp at the receiving socket (`SO_TIMESTAMPNS`), so a busy generator that reads "
        'late does not add to it; the time the generator\'s process read it ("app") is shown '
        "beside it. The servers run as users start them: `beseda serve` with flags "
        "(`bench/servers.py` lists them and why), ngIRCd from its package; every run on a fresh "
        "copy of the database, on a free port; the generator connects from "
        f"many loopback addresses (127.0.x.y). During each run the CPU that neither the "
        "server, the generator nor the harness used is measured from /proc/stat: a run with "
        f"more than {meta.get('foreign_rerun', 0.2)} cores of such foreign load is run again "
        "(the notes say how often). Senders of direct messages and of the channels run on "
        'schedules of their own (a random phase each). "generator busy" is the generator\'s CPU '
        "share of its cores and of its busiest process: above 0.85 it may be the limit, and "
        "the run is marked saturated."
    )


def markdown(results: dict[str, Any], plot_name: str | None, analysis: str = "") -> str:
    """docs/performance.md: targets first, then every figure measured."""
    meta = results["meta"]
    out = [
        "# Performance",
        "",
        "Written by `make bench` (`python -m bench`) from `bench/results/latest.json`; "
        "`python -m bench --smoke` runs every scenario at a tiny size (part of `make test`).",
        "",
        f"Run of {meta['date']}: {meta['machine']}. {meta['placement']}. "
        f"Load generator: {meta['processes']} processes. Sizes: {meta['size_note']}"
        + (f"; {meta['seconds']:.0f} s in all." if meta.get("seconds") else "."),
        "",
    ]
    if meta.get("rerun"):
        rerun = ", ".join(f"{name} at {date}" for name, date in meta["rerun"].items())
        out += [f"Scenarios re-run later (`--merge`): {rerun}.", ""]
    out += [method(results), "", "## Targets", ""]
    verdict = {True: "**met**", False: "**missed**", None: "not measured"}
    out.append(
        _table(
            ["target", "beseda", "reference", "goal", "verdict", "by how much"],
            [
                [t["target"], t["beseda"], t["reference"], t["goal"], verdict[t["met"]], t["note"]]
                for t in targets(results)
            ],
        )
    )
    said = findings(results)
    if said:
        out += ["", "## What this run says", "", *said]
    if analysis:
        out += ["", analysis.strip()]
    if plot_name:
        out += ["", f"![fan-out: CPU per delivery and p99 latency]({plot_name})"]
    for render in SECTIONS:
        text = render(results)
        if text:
            out += ["", text]
    if results.get("notes"):
        out += ["", "## Notes", ""] + [f"- {note}" for note in results["notes"]]
    return "\n".join(out) + "\n"


def _pct(a: float | None, b: float | None) -> str:
    """'missed by 12 %' / 'met with 8 % to spare' for ``a`` against a goal of ``b`` (the
    exact quotient, so that the words agree with the verdict of the targets table)."""
    if a is None or b is None or b == 0:
        return "not measured"
    off = (a / b - 1) * 100
    digits = 1 if abs(off) < 1 else 0
    if off > 0:
        return f"missed by {off:.{digits}f} %"
    return f"met with {-off:.{digits}f} % to spare"


def findings(results: dict[str, Any]) -> list[str]:
    """The sentences the figures feed, written from the results (none is kept by hand)."""
    scen = results["scenarios"]
    said: list[str] = []
    fan = scen.get("fanout", [])
    n = _n(results)
    ours = _find(fan, contender="beseda", n=n, mode="paced")
    irc = _find(fan, contender="ngircd", n=n, mode="paced")
    floor = _find(fan, contender="asyncio", n=n, mode="paced")
    if ours and irc:
        split = ours.get("threads_us_per_unit") or {}
        ratio = _ratio(ours["cpu_us_per_unit"], irc["cpu_us_per_unit"])
        said.append(
            f"- **Paced fan-out, CPU** (N={n}): beseda {_fmt(ours['cpu_us_per_unit'])} µs per "
            f"delivery, ngIRCd {_fmt(irc['cpu_us_per_unit'])}"
            + (f", the plain asyncio floor {_fmt(floor['cpu_us_per_unit'])}" if floor else "")
            + f": {ratio}×, {_pct(ours['cpu_us_per_unit'], irc['cpu_us_per_unit'])}. "
            f"Of beseda's, {_fmt(split.get('loop'))} µs are the "
            f"event loop and {_fmt(split.get('threads'))} µs its other threads (the SQLite "
            f"writer: {ours.get('commits')} commits per run of {ours['messages']} messages)."
        )
        commit = scen.get("commit")
        if commit and irc.get("p99_ms") is not None and ours.get("p99_ms") is not None:
            allowed = irc["p99_ms"] + commit["p99_ms"]
            ratio = _ratio(ours["p99_ms"], allowed)
            said.append(
                f"- **Paced fan-out, p99 at the socket**: beseda {_fmt(ours['p99_ms'])} ms "
                f"(read by the generator at {_fmt(ours.get('app_p99_ms'))} ms), ngIRCd "
                f"{_fmt(irc['p99_ms'])} ms, one raw commit {_fmt(commit['p99_ms'])} ms: "
                f"{ratio}× the allowance of {allowed:.2f} ms, {_pct(ours['p99_ms'], allowed)}; "
                f"{ours['losses']} lost."
            )
    dm = scen.get("dm", [])
    ours, irc = _find(dm, contender="beseda"), _find(dm, contender="ngircd")
    raw = _find(dm, contender="raw_sqlite3")
    if ours and irc and raw:
        split = ours.get("threads_us_per_unit") or {}
        allowed = irc["cpu_us_per_unit"] + raw["cpu_us_per_unit"]
        ratio = _ratio(ours["cpu_us_per_unit"], allowed)
        said.append(
            f"- **Direct messages**: beseda {_fmt(ours['cpu_us_per_unit'])} µs per message "
            f"(event loop {_fmt(split.get('loop'))}, writer {_fmt(split.get('threads'))}) at "
            f"{ours.get('messages_per_commit')} messages per commit; the allowance is ngIRCd's "
            f"{_fmt(irc['cpu_us_per_unit'])} + raw sqlite3's {_fmt(raw['cpu_us_per_unit'])} at "
            f"batch {raw['batch']} = {allowed:.1f} µs: {ratio}×, "
            f"{_pct(ours['cpu_us_per_unit'], allowed)}."
        )
    durable = scen.get("durable")
    if durable:
        rate, raw_rate = durable["beseda"]["acks_per_s"], durable["raw_sqlite3"]["rows_per_s"]
        share = _ratio(rate, raw_rate)
        said.append(
            f"- **Durable throughput**: {_fmt(rate, 0)} acknowledged messages/s with one in "
            f"flight per sender ({durable['beseda']['mean_batch']} per commit, "
            f"{_fmt(durable['beseda']['cpu_us_per_unit'])} µs of server CPU each), "
            f"{share}× raw sqlite3 at the same batch ({_fmt(raw_rate, 0)} rows/s; goal 0.5×) "
            f"and {rate / 30_000:.2f}× the 30,000 goal"
            + (
                f"; with {pl['window']} in flight per sender {_fmt(pl['acks_per_s'], 0)}/s."
                if (pl := durable.get("beseda_pipelined"))
                else "."
            )
        )
    idle_rows = scen.get("idle", [])
    ours, irc = _find(idle_rows, contender="beseda"), _find(idle_rows, contender="ngircd")
    floor = _find(idle_rows, contender="asyncio")
    if ours and irc:
        kib = ours["bytes_per_connection"] / KIB
        said.append(
            f"- **Idle connections**: {kib:.2f} KiB per signed-in connection against ngIRCd's "
            f"{irc['bytes_per_connection'] / KIB:.2f}"
            + (
                f" and the asyncio floor's {floor['bytes_per_connection'] / KIB:.2f} (an "
                f"asyncio transport, its socket and nothing else; beseda's plain TCP does not "
                f'use asyncio\'s transport, docs/architecture.md, "Lean sockets")'
                if floor
                else ""
            )
            + f": {_ratio(kib, irc['bytes_per_connection'] / KIB)}× ngIRCd."
        )
    st = scen.get("storm")
    if st and st.get("capacity"):
        capacity = st["capacity"]["hashes_per_s"]
        busy = st["without"]["server_busy"]
        spare = max(0.0, 1 - busy) * capacity
        w = st["with"]
        refusals = ", ".join(f"{v} {k}" for k, v in (w.get("refusals") or {}).items())
        said.append(
            f"- **Sign-ins**: one server core hashes {capacity} passwords/s when idle "
            f"({st['capacity']['cpu_ms_per_hash']} ms of CPU each). The storm tried "
            f"{st['login_rate']}/s for {results['sizes'].get('storm_seconds', 5):g} s during "
            f"the paced fan-out, which kept the core {busy:.0%} busy without it, leaving "
            f"about {spare:.1f} hashes/s to the hashing thread: {w.get('logins')} of "
            f"{w.get('attempted_logins')} signed in"
            + (f" ({refusals})" if refusals else ", none refused")
            + f", login p50 {_fmt(w.get('login_p50_ms'))} ms and p99 "
            f"{_fmt(w.get('login_p99_ms'))} ms; the chat's p99 {st.get('p99_ratio')}× the run "
            "without."
        )
    return said


def _cpu_cell(row: dict[str, Any]) -> str:
    text = _with_spread(row, "cpu_us_per_unit")
    split = row.get("threads_us_per_unit") or {}
    if split.get("threads"):
        text += f"; loop {split['loop']:.2f}, threads {split['threads']:.2f}"
    return text


@section
def _commit_section(results: dict[str, Any]) -> str | None:
    commit = results["scenarios"].get("commit")
    if not commit:
        return None
    return "\n".join(
        [
            "## One raw commit",
            "",
            f"Plain sqlite3, one row per transaction ({commit['commits']} commits), WAL and "
            "`synchronous=FULL`, the same schema: the least that persisting a message before "
            "delivering it can cost. The paced target allows beseda ngIRCd's p99 plus this p99.",
            "",
            _table(
                ["p50 ms", "p99 ms", "CPU µs per commit"],
                [
                    [
                        _with_spread(commit, "p50_ms", 3),
                        _with_spread(commit, "p99_ms", 3),
                        _with_spread(commit, "cpu_us_per_commit", 1),
                    ]
                ],
            ),
        ]
    )


@section
def _fanout_section(results: dict[str, Any]) -> str | None:
    fan = results["scenarios"].get("fanout")
    if not fan:
        return None
    return "\n".join(
        [
            "## Fan-out",
            "",
            "One sender posts to the general room; N receivers. `burst`: as fast as the "
            "transport takes them; `paced`: a fixed rate. For beseda the CPU is split into "
            "the event loop and its other threads (the SQLite writer here). At the targets' "
            "N the same server also runs with its clients on WebSocket (`beseda-ws`: the "
            "same lines, one per text frame, on the HTTP port's `/ws`) and without its "
            "search index (`beseda-no-index`: `--search-index off`).",
            "",
            _table(
                [
                    "server",
                    "N",
                    "mode",
                    "delivered / expected",
                    "lost",
                    "p50 ms",
                    "p99 ms (socket)",
                    "p99 ms (app)",
                    "CPU µs/delivery",
                    "commits",
                    "deliveries/s",
                    "server busy",
                    "generator busy",
                    "foreign cores",
                ],
                [
                    [
                        r["contender"],
                        r["n"],
                        r["mode"],
                        f"{r['deliveries']:,} / {r['expected_deliveries']:,}",
                        r["losses"],
                        r["p50_ms"],
                        _with_spread(r, "p99_ms"),
                        r.get("app_p99_ms"),
                        _cpu_cell(r),
                        r.get("commits"),
                        r["per_s"],
                        r["server_busy"],
                        _busy(r),
                        r.get("foreign_cores"),
                    ]
                    for r in fan
                ],
            ),
        ]
    )


@section
def _dm_section(results: dict[str, Any]) -> str | None:
    dm = results["scenarios"].get("dm")
    if not dm:
        return None
    sizes = results["sizes"]
    served = [r for r in dm if r["contender"] != "raw_sqlite3"]
    raw = _find(dm, contender="raw_sqlite3")
    text = [
        "## Direct messages",
        "",
        f"{sizes['dm_pairs']} pairs of users send each other {sizes['dm_messages']} messages "
        f"each at {sizes['dm_rate']:g}/s per user, every user at a random phase of its own "
        f"({2 * sizes['dm_pairs'] * sizes['dm_rate']:,.0f} messages/s in all).",
        "",
        _table(
            [
                "server",
                "messages",
                "delivered",
                "lost",
                "p50 ms",
                "p99 ms (socket)",
                "p99 ms (app)",
                "CPU µs/message",
                "messages per commit",
                "server busy",
                "generator busy",
                "foreign cores",
            ],
            [
                [
                    r["contender"],
                    r["messages"],
                    r["deliveries"],
                    r["losses"],
                    r["p50_ms"],
                    _with_spread(r, "p99_ms"),
                    r.get("app_p99_ms"),
                    _cpu_cell(r),
                    r.get("messages_per_commit"),
                    r["server_busy"],
                    _busy(r),
                    r.get("foreign_cores"),
                ]
                for r in served
            ],
        ),
    ]
    if raw:
        text += [
            "",
            f"Raw sqlite3 writing the same rows {raw['batch']} per commit (beseda's measured "
            f"messages per commit, rounded) costs {_fmt(raw['cpu_us_per_unit'])} µs of CPU per "
            "message: the storage floor of the target.",
        ]
    return "\n".join(text)


@section
def _durable_section(results: dict[str, Any]) -> str | None:
    durable = results["scenarios"].get("durable")
    if not durable:
        return None
    b, raw = durable["beseda"], durable["raw_sqlite3"]
    rows = [
        [
            "beseda",
            b["acks"],
            _with_spread(b, "acks_per_s", 0),
            b["ack_p50_ms"],
            b["ack_p99_ms"],
            b["commits"],
            b["mean_batch"],
            _with_spread(b, "cpu_us_per_unit"),
        ]
    ]
    if pl := durable.get("beseda_pipelined"):
        rows.append(
            [
                f"beseda, {pl['window']} in flight per sender",
                pl["acks"],
                _with_spread(pl, "acks_per_s", 0),
                pl["ack_p50_ms"],
                pl["ack_p99_ms"],
                pl["commits"],
                pl["mean_batch"],
                _with_spread(pl, "cpu_us_per_unit"),
            ]
        )
    if ni := durable.get("beseda_no_index"):
        rows.append(
            [
                "beseda, search index off",
                ni["acks"],
                _with_spread(ni, "acks_per_s", 0),
                ni["ack_p50_ms"],
                ni["ack_p99_ms"],
                ni["commits"],
                ni["mean_batch"],
                _with_spread(ni, "cpu_us_per_unit"),
            ]
        )
    rows.append(
        [
            "raw sqlite3",
            raw["rows"],
            round(raw["rows_per_s"], 1),
            None,
            None,
            None,
            raw["batch"],
            round(raw["cpu_s"] / max(raw["rows"], 1) * 1e6, 2) if "cpu_s" in raw else None,
        ]
    )
    if one := durable.get("raw_sqlite3_one_conversation"):
        rows.append(
            [
                "raw sqlite3, one conversation",
                one["rows"],
                round(one["rows_per_s"], 1),
                None,
                None,
                None,
                one["batch"],
                round(one["cpu_s"] / max(one["rows"], 1) * 1e6, 2) if "cpu_s" in one else None,
            ]
        )
    return "\n".join(
        [
            "## Durable throughput",
            "",
            "Senders send direct messages to users who are offline, each waiting for the "
            "acknowledgement (sent after the commit) before the next (the target's run); in "
            "the second row each sender keeps several unacknowledged, as a pipelining client "
            "does. Raw sqlite3: plain INSERTs (one `executemany` per transaction) of beseda's "
            "measured mean batch, WAL, synchronous=FULL, same schema, the same rows: as many "
            "senders, each into its own conversation, so that a commit touches as many index "
            "pages as beseda's. The last row puts every row in one conversation from one "
            'sender, a cheaper job (about three pages per commit). "search index off": '
            "the first row's run on a server started with `--search-index off`, for what the "
            "index costs.",
            "",
            _table(
                [
                    "",
                    "messages",
                    "per second",
                    "ack p50 ms",
                    "ack p99 ms",
                    "commits",
                    "mean batch",
                    "CPU µs/message",
                ],
                rows,
            ),
        ]
    )


@section
def _idle_section(results: dict[str, Any]) -> str | None:
    idle_rows = results["scenarios"].get("idle")
    if not idle_rows:
        return None
    return "\n".join(
        [
            "## Idle connections",
            "",
            "Signed-in connections held open (beseda: token login, so every login is "
            "announced to those who watch it; IRC: registered, not joined to a channel). "
            "Memory is the growth of the server's RSS.",
            "",
            _table(
                [
                    "server",
                    "held",
                    "failed",
                    "signed in after s",
                    "quiet after s",
                    "server CPU s",
                    "RSS before MiB",
                    "RSS after MiB",
                    "KiB per connection",
                ],
                [
                    [
                        r["contender"],
                        r["connections"],
                        r["failed"],
                        _with_spread(r, "connect_s"),
                        r["settled_s"],
                        r.get("connect_cpu_s"),
                        round(r["rss_before"] / KIB / KIB, 1),
                        round(r["rss_after"] / KIB / KIB, 1),
                        f"{r['bytes_per_connection'] / KIB:.2f}"
                        + (
                            f" ({min(v) / KIB:.2f}–{max(v) / KIB:.2f})"
                            if len(v := (r.get("runs") or {}).get("bytes_per_connection", [])) > 1
                            else ""
                        ),
                    ]
                    for r in idle_rows
                ],
            ),
        ]
    )


@section
def _history_section(results: dict[str, Any]) -> str | None:
    hist = results["scenarios"].get("history")
    if not hist:
        return None
    return "\n".join(
        [
            "## History",
            "",
            f"{hist['stored']:,} messages in the general room (built with direct inserts in "
            f"{hist['build_s']} s). Page: `history` of 50 before a random seq, one client, "
            f"{hist['pages']:,} requests. Sync: from a cursor {hist['missed']:,} behind, "
            "all pages of up to 1,000, decoded by the client.",
            "",
            _table(
                ["page p50 ms", "page p99 ms", "sync ms (median)", "sync ms (max)", "synced"],
                [
                    [
                        _with_spread(hist, "page_p50_ms", 3),
                        _with_spread(hist, "page_p99_ms", 3),
                        _with_spread(hist, "sync_ms_median"),
                        hist["sync_ms_max"],
                        hist["sync_messages"],
                    ]
                ],
            ),
        ]
    )


@section
def _storm_section(results: dict[str, Any]) -> str | None:
    st = results["scenarios"].get("storm")
    if not st:
        return None
    w, wo = st["with"], st["without"]
    capacity = st.get("capacity", {})
    rows = [
        [
            "without storm",
            wo["p50_ms"],
            _with_spread(wo, "p99_ms"),
            wo["losses"],
            wo["server_busy"],
            _busy(wo),
            None,
            None,
            None,
            None,
        ],
    ]
    for label, r in (
        ("with storm", w),
        ("with storm, signed-in connections staying", st.get("with_staying")),
    ):
        if r:
            rows.append(
                [
                    label,
                    r["p50_ms"],
                    _with_spread(r, "p99_ms"),
                    r["losses"],
                    r["server_busy"],
                    _busy(r),
                    f"{r.get('logins')} / {r.get('attempted_logins')}",
                    r.get("failed_logins"),
                    r.get("login_p50_ms"),
                    r.get("login_p99_ms"),
                ]
            )
    return "\n".join(
        [
            "## Sign-in storm",
            "",
            f"First the hashing capacity: the server's own hasher (argon2id, the production "
            f"parameters) pinned to the server's core checks {capacity.get('hashes_per_s')} "
            f"passwords per second ({capacity.get('ms_per_hash')} ms each) when the core does "
            f"nothing else. Then the paced fan-out (N={wo['n']}), once alone and once with "
            f"password logins on new connections at {st.get('login_rate')}/s "
            f"({results['sizes'].get('storm_share', 0.8):.0%} of that capacity); each signs "
            "in and leaves, so the two runs differ by the sign-ins alone (the target's ratio). "
            "In the last row the signed-in connections stay and receive the room as well.",
            "",
            _table(
                [
                    "run",
                    "p50 ms",
                    "p99 ms (socket)",
                    "lost",
                    "server busy",
                    "generator busy",
                    "signed in / tried",
                    "refused or failed",
                    "login p50 ms",
                    "login p99 ms",
                ],
                rows,
            ),
        ]
    )


@section
def _channels(results: dict[str, Any]) -> str | None:
    ch = results["scenarios"].get("channels")
    return _channels_section(ch) if ch else None


@section
def _channel_sync(results: dict[str, Any]) -> str | None:
    cs = results["scenarios"].get("channel_sync")
    return _channel_sync_section(cs) if cs else None


def _channels_section(ch: dict[str, Any]) -> str:
    c, g = ch["channels"], ch["general"]
    text = [
        "## Channels fan-out",
        "",
        f"{c['users']:,} users (protocol 3), each in {c['per_user']} of {c['channels']} public "
        f"channels of {c['members']} members (membership drawn at random, fixed seed). One "
        f"member of each channel posts {c['rate']:g} message/s into it, each channel at its own "
        f"random phase, for {ch['seconds']:g} s: about {_fmt(ch['target_deliveries_per_s'], 0)} "
        "deliveries/s. The reference in the same run is today's General fan-out (protocol-2 "
        f"`send`): one sender, {g['n']:,} receivers, paced at {g['rate']:g} messages/s to give "
        "the same deliveries/s. The two alternate, and of each the run with the median CPU per "
        "delivery is kept (all runs are in the JSON). Server CPU: /proc, over the timed part, "
        "divided by deliveries.",
        "",
        _table(
            [
                "run",
                "messages",
                "delivered / expected",
                "lost",
                "p50 ms",
                "p99 ms",
                "CPU µs/delivery",
                "CPU µs/delivery, every run",
                "deliveries/s",
                "server busy",
                "generator busy",
            ],
            [
                [
                    label,
                    r["messages"],
                    f"{r['deliveries']:,} / {r['expected_deliveries']:,}",
                    r["losses"],
                    r["p50_ms"],
                    r["p99_ms"],
                    r["cpu_us_per_unit"],
                    ", ".join(str(v) for v in r.get("cpu_us_per_unit_runs", [])) or "—",
                    r["per_s"],
                    r["server_busy"],
                    _busy(r),
                ]
                for label, r in (
                    (f"{c['channels']} channels × {c['members']}", c),
                    (f"General N={g['n']:,}", g),
                )
            ],
        ),
        "",
        f"Channels cost {_fmt(ch['cpu_ratio'])}× General's CPU per delivery (goal: ≤ "
        f"{ch['goal_ratio']:g}×): "
        + ("**met**." if ch["met"] and c["losses"] == 0 else "**missed**."),
    ]
    return "\n".join(text)


def _channel_sync_section(cs: dict[str, Any]) -> str:
    text = [
        "## Sync across conversations",
        "",
        f"One user in {cs['conversations']} channels (each with four other members) had read "
        f"{cs['seen_per_conversation']} messages in each; then {cs['missed']:,} messages "
        "arrived while they were offline, spread at random over the channels (built with "
        f"direct inserts in {cs['build_s']} s). The user logs in (protocol 3) and syncs from "
        "their cursors (one per channel, and General's), pages of up to 1,000 entries, "
        "advancing the cursors from each page, until `more` is false; the client decodes "
        f"every reply. Repeated {cs['repeats']} times from the same cursors; wall clock per "
        "sync, and server CPU (/proc, in ns) over each sync.",
        "",
        _table(
            [
                "entries synced",
                "round trips",
                "sync ms (median)",
                "min ms",
                "max ms",
                "server CPU ms (median)",
                "every run, ms",
            ],
            [
                [
                    cs["entries"],
                    cs["round_trips"],
                    cs["sync_ms_median"],
                    cs["sync_ms_min"],
                    cs["sync_ms_max"],
                    cs["server_cpu_ms_median"],
                    ", ".join(str(v) for v in cs["sync_ms_runs"]),
                ]
            ],
        ),
    ]
    return "\n".join(text)
