"""Results → ``results/latest.json``, the targets table, ``docs/performance.md`` and a plot."""

from __future__ import annotations

import json
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


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 5: the figures, the verdict, and by how much."""
    scen = results["scenarios"]
    rows: list[dict[str, Any]] = []

    def add(name: str, ours: Any, theirs: Any, goal: str, met: bool | None, note: str = "") -> None:
        rows.append(
            {
                "target": name,
                "beseda": ours,
                "reference": theirs,
                "goal": goal,
                "met": met,
                "note": note,
            }
        )

    fan = scen.get("fanout", [])
    n = 500 if _find(fan, n=500) else (max((r["n"] for r in fan), default=None))
    for mode in ("burst", "paced"):
        ours = _find(fan, contender="beseda", n=n, mode=mode)
        irc = _find(fan, contender="ngircd", n=n, mode=mode)
        if ours is None:
            continue
        a, b = ours["cpu_us_per_unit"], irc["cpu_us_per_unit"] if irc else None
        ratio = _ratio(a, b)
        add(
            f"fan-out N={n} {mode}: server CPU µs per delivery",
            a,
            b,
            "≤ ngIRCd",
            None if ratio is None else ratio <= 1,
            "" if ratio is None else f"{ratio}× ngIRCd",
        )
    ours = _find(fan, contender="beseda", n=n, mode="paced")
    irc = _find(fan, contender="ngircd", n=n, mode="paced")
    if ours is not None:
        ratio = _ratio(ours["p99_ms"], irc["p99_ms"] if irc else None)
        met = None if ratio is None else (ratio <= 1 and ours["losses"] == 0)
        add(
            f"paced {results['sizes']['paced_rate']:g}/s into N={n}: p99 latency ms, loss",
            f"{_fmt(ours['p99_ms'])} ms, {ours['losses']} lost",
            f"{_fmt(irc['p99_ms'])} ms, {irc['losses']} lost" if irc else None,
            "≤ ngIRCd, zero loss",
            met,
            "" if ratio is None else f"{ratio}× ngIRCd",
        )
    dm = scen.get("dm", [])
    ours, irc = _find(dm, contender="beseda"), _find(dm, contender="ngircd")
    if ours is not None:
        ratio = _ratio(ours["cpu_us_per_unit"], irc["cpu_us_per_unit"] if irc else None)
        add(
            "direct messages: server CPU µs per message",
            ours["cpu_us_per_unit"],
            irc["cpu_us_per_unit"] if irc else None,
            "≤ ngIRCd",
            None if ratio is None else ratio <= 1,
            "" if ratio is None else f"{ratio}× ngIRCd",
        )
    durable = scen.get("durable")
    if durable:
        ours_rate = durable["beseda"]["acks_per_s"]
        raw = durable["raw_sqlite3"]["rows_per_s"]
        share = _ratio(ours_rate, raw)
        add(
            "durable throughput: acknowledged messages/s",
            ours_rate,
            round(raw, 1),
            "≥ 50,000 and ≥ 0.5× raw sqlite3",
            ours_rate >= 50_000 and (share or 0) >= 0.5,
            f"{_fmt(ours_rate / 50_000)}× the 50,000 goal; {share}× raw sqlite3 at batch "
            f"{durable['raw_sqlite3']['batch']}",
        )
        on_pg = durable.get("beseda_postgresql")
        if on_pg:
            versus = on_pg.get("vs_sqlite")
            add(
                "durable throughput on PostgreSQL: acknowledged messages/s",
                on_pg["acks_per_s"],
                ours_rate,
                "≥ 0.5× SQLite's (the row above)",
                None if versus is None else versus >= 0.5,
                f"{versus}× SQLite; mean batch {on_pg['mean_batch']}; PostgreSQL's own CPU "
                f"{on_pg['postgres_cpu_us_per_message']} µs/message",
            )
    idle_rows = scen.get("idle", [])
    ours = _find(idle_rows, contender="beseda")
    if ours is not None:
        irc = _find(idle_rows, contender="ngircd")
        wanted = results["sizes"]["idle"]
        per = ours["bytes_per_connection"]
        add(
            f"idle: {wanted:,} connections, server bytes each",
            f"{ours['connections']:,} held, {per / KIB:.1f} KiB",
            f"{irc['connections']:,} held, {irc['bytes_per_connection'] / KIB:.1f} KiB"
            if irc
            else None,
            "all held, ≤ 8 KiB",
            ours["connections"] >= wanted and per <= 8 * KIB,
            f"{per / (8 * KIB):.2f}× the 8 KiB budget; connected in {ours['connect_s']} s",
        )
    hist = scen.get("history")
    if hist:
        add(
            f"history ({hist['stored']:,} stored): page p99 ms",
            hist["page_p99_ms"],
            None,
            "≤ 2 ms",
            hist["page_p99_ms"] is not None and hist["page_p99_ms"] <= 2,
            f"{_fmt(hist['page_p99_ms'] / 2)}× the goal" if hist["page_p99_ms"] else "",
        )
        add(
            f"history: sync of {hist['missed']:,} missed messages, ms",
            hist["sync_ms_median"],
            None,
            "≤ 200 ms",
            hist["sync_ms_median"] is not None and hist["sync_ms_median"] <= 200,
            f"{_fmt(hist['sync_ms_median'] / 200)}× the goal (median of runs)"
            if hist["sync_ms_median"]
            else "",
        )
    ch = scen.get("channels")
    if ch:
        c, g = ch["channels"], ch["general"]
        ratio = ch["cpu_ratio"]
        add(
            f"channels fan-out ({c['channels']} × {c['members']} members, "
            f"{c['rate']:g}/s each): server CPU µs per delivery",
            f"{_fmt(c['cpu_us_per_unit'])} at {_fmt(c['per_s'], 0)}/s",
            f"General N={g['n']:,}: {_fmt(g['cpu_us_per_unit'])} at {_fmt(g['per_s'], 0)}/s",
            f"≤ {ch['goal_ratio']:g}× General",
            ch["met"] if c["losses"] == 0 else False,
            "" if ratio is None else f"{ratio}× General; {c['losses']} lost",
        )
    cs = scen.get("channel_sync")
    if cs:
        add(
            f"sync in {cs['conversations']} conversations after {cs['missed']:,} entries, ms",
            f"{_fmt(cs['sync_ms_median'])} ms, {cs['round_trips']} round trips",
            None,
            "measured (no goal set)",
            None,
            f"{cs['sync_ms_min']}–{cs['sync_ms_max']} ms over {cs['repeats']} runs; "
            f"server CPU {cs['server_cpu_ms_median']} ms",
        )
    st = scen.get("storm")
    if st:
        ratio = st.get("p99_ratio")
        add(
            "sign-in storm: chat p99 with / without",
            f"{_fmt(st['with']['p99_ms'])} / {_fmt(st['without']['p99_ms'])} ms",
            None,
            "≤ 2×",
            None if ratio is None else ratio <= 2,
            "" if ratio is None else f"{ratio}×",
        )
    cl = scen.get("cluster")
    if cl and cl.get("p99_ratio") is not None:
        ratio = cl["p99_ratio"]
        add(
            f"fan-out into {cl['two_nodes']['n']} over 2 nodes: p99 two / one node",
            f"{_fmt(cl['two_nodes']['p99_ms'])} / {_fmt(cl['single']['p99_ms'])} ms",
            None,
            "≤ 2×",
            ratio <= 2,
            f"{ratio}×",
        )
    return rows


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
        ylabel="p99 latency, ms (log)",
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
    return f"{row['generator_share']}{' (saturated)' if row['generator_saturated'] else ''}"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(results: dict[str, Any], plot_name: str | None, analysis: str = "") -> str:
    """docs/performance.md: targets first, then every figure measured."""
    meta = results["meta"]
    scen = results["scenarios"]
    out = [
        "# Performance",
        "",
        "Written by `make bench` (`python -m bench`) from `bench/results/latest.json`; "
        "`python -m bench --smoke` runs every scenario at a tiny size (part of `make test`).",
        "",
        f"Run of {meta['date']}: {meta['machine']}. {meta['placement']}. "
        f"Load generator: {meta['processes']} processes. Sizes: {meta['size_note']}",
        "",
    ]
    if meta.get("rerun"):
        rerun = ", ".join(f"{name} at {date}" for name, date in meta["rerun"].items())
        out += [f"Scenarios re-run later (`--merge`): {rerun}.", ""]
    out += [
        "Server CPU is the user+system time of the server process (all its threads) from "
        "/proc/<pid>/stat over the timed part only. Latency runs from the send time embedded in "
        "each message to its arrival at the receiver (one monotonic clock on this machine). "
        f"The paced N={results['sizes'].get('repeat_n', 500)} runs and the storm runs are repeated "
        f"{results['sizes'].get('repeats', 1)} times, and the run with the median p99 is kept "
        '(all p99s are in the JSON). "generator busy" is the generator\'s CPU share of its '
        "core: above 0.85 it may be the limit, and the run is marked saturated.",
        "",
        "## Targets",
        "",
    ]
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
    if analysis:
        out += ["", analysis.strip()]
    if plot_name:
        out += ["", f"![fan-out: CPU per delivery and p99 latency]({plot_name})"]
    fan = scen.get("fanout")
    if fan:
        out += [
            "",
            "## Fan-out",
            "",
            "One sender posts to the general room; N receivers. `burst`: as fast as the "
            "transport takes them; `paced`: a fixed rate. CPU is the server process's "
            "user+system time (/proc) over the timed part, divided by deliveries.",
            "",
        ]
        out.append(
            _table(
                [
                    "server",
                    "N",
                    "mode",
                    "delivered / expected",
                    "lost",
                    "p50 ms",
                    "p99 ms",
                    "CPU µs/delivery",
                    "deliveries/s",
                    "server busy",
                    "generator busy",
                ],
                [
                    [
                        r["contender"],
                        r["n"],
                        r["mode"],
                        f"{r['deliveries']:,} / {r['expected_deliveries']:,}",
                        r["losses"],
                        r["p50_ms"],
                        r["p99_ms"],
                        r["cpu_us_per_unit"],
                        r["per_s"],
                        r["server_busy"],
                        _busy(r),
                    ]
                    for r in fan
                ],
            )
        )
    dm = scen.get("dm")
    if dm:
        out += [
            "",
            "## Direct messages",
            "",
            "Pairs of users send each other messages at a fixed rate per user.",
            "",
        ]
        out.append(
            _table(
                [
                    "server",
                    "pairs",
                    "messages",
                    "delivered",
                    "lost",
                    "p50 ms",
                    "p99 ms",
                    "CPU µs/message",
                    "server busy",
                    "generator busy",
                ],
                [
                    [
                        r["contender"],
                        r["pairs"],
                        r["messages"],
                        r["deliveries"],
                        r["losses"],
                        r["p50_ms"],
                        r["p99_ms"],
                        r["cpu_us_per_unit"],
                        r["server_busy"],
                        r["generator_share"],
                    ]
                    for r in dm
                ],
            )
        )
    durable = scen.get("durable")
    if durable:
        b, raw = durable["beseda"], durable["raw_sqlite3"]
        out += [
            "",
            "## Durable throughput",
            "",
            "Senders send direct messages to users who are offline, each waiting for the "
            "acknowledgement (sent after the commit) before the next (the target's run); in "
            "the second row each sender keeps several unacknowledged, as a pipelining client "
            "does. Raw sqlite3: plain "
            "INSERTs (one `executemany` per transaction) of beseda's measured mean batch, WAL, "
            "synchronous=FULL, same schema, the same rows: as many senders, each into its own "
            "conversation, so that a commit touches as many index pages as beseda's. The "
            "last row puts every row in one conversation from one sender, a cheaper job "
            "(about three pages per commit), as earlier runs did.",
            "",
        ]
        out.append(
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
                [
                    [
                        "beseda",
                        b["acks"],
                        b["acks_per_s"],
                        b["ack_p50_ms"],
                        b["ack_p99_ms"],
                        b["commits"],
                        b["mean_batch"],
                        b["cpu_us_per_unit"],
                    ],
                    *(
                        [
                            [
                                f"beseda, {pl['window']} in flight per sender",
                                pl["acks"],
                                pl["acks_per_s"],
                                pl["ack_p50_ms"],
                                pl["ack_p99_ms"],
                                pl["commits"],
                                pl["mean_batch"],
                                pl["cpu_us_per_unit"],
                            ]
                        ]
                        if (pl := durable.get("beseda_pipelined"))
                        else []
                    ),
                    [
                        "raw sqlite3",
                        raw["rows"],
                        round(raw["rows_per_s"], 1),
                        None,
                        None,
                        None,
                        raw["batch"],
                        None,
                    ],
                    *(
                        [
                            [
                                "raw sqlite3, one conversation",
                                one["rows"],
                                round(one["rows_per_s"], 1),
                                None,
                                None,
                                None,
                                one["batch"],
                                None,
                            ]
                        ]
                        if (one := durable.get("raw_sqlite3_one_conversation"))
                        else []
                    ),
                    *(
                        [
                            [
                                "beseda on PostgreSQL (fsync on)",
                                pg["acks"],
                                pg["acks_per_s"],
                                pg["ack_p50_ms"],
                                pg["ack_p99_ms"],
                                pg["commits"],
                                pg["mean_batch"],
                                f"{pg['cpu_us_per_unit']} + PostgreSQL "
                                f"{pg['postgres_cpu_us_per_message']}",
                            ]
                        ]
                        if (pg := durable.get("beseda_postgresql"))
                        else []
                    ),
                ],
            )
        )
    counter_rows = scen.get("hot_counter")
    if counter_rows:
        out += [
            "",
            "## PostgreSQL: a hot conversation's counter row",
            "",
            "Writer processes (as nodes would) append messages, each keeping "
            f"{counter_rows[0]['window']} in flight, into one conversation (every transaction "
            "locks its counter row until its commit) and then each into a conversation of its "
            "own. The difference is what the shared row costs; its bound is one commit (one WAL "
            "flush) at a time per conversation, however many nodes write.",
            "",
        ]
        out.append(
            _table(
                [
                    "writers",
                    "conversations",
                    "messages",
                    "per second",
                    "µs/message (wall)",
                    "PostgreSQL CPU µs/message",
                    "cost vs own",
                ],
                [
                    [
                        r["writers"],
                        r["conversations"],
                        r["messages"],
                        r["per_s"],
                        r["us_per_message"],
                        r["postgres_cpu_us_per_message"],
                        r.get("cost_vs_own"),
                    ]
                    for r in counter_rows
                ],
            )
        )
    idle_rows = scen.get("idle")
    if idle_rows:
        out += [
            "",
            "## Idle connections",
            "",
            "Signed-in connections held open (beseda: token login, so every login is announced "
            "to every session; IRC: registered, not joined to a channel). Memory is the growth "
            "of the server's RSS.",
            "",
        ]
        out.append(
            _table(
                [
                    "server",
                    "held",
                    "failed",
                    "signed in after s",
                    "quiet after s",
                    "RSS before MiB",
                    "RSS after MiB",
                    "KiB per connection",
                ],
                [
                    [
                        r["contender"],
                        r["connections"],
                        r["failed"],
                        r["connect_s"],
                        r["settled_s"],
                        round(r["rss_before"] / KIB / KIB, 1),
                        round(r["rss_after"] / KIB / KIB, 1),
                        round(r["bytes_per_connection"] / KIB, 2),
                    ]
                    for r in idle_rows
                ],
            )
        )
    hist = scen.get("history")
    if hist:
        out += [
            "",
            "## History",
            "",
            f"{hist['stored']:,} messages in the general room (built with direct inserts in "
            f"{hist['build_s']} s). Page: `history` of 50 before a random seq, one client, "
            f"{hist['pages']:,} requests. Sync: from a cursor {hist['missed']:,} behind, "
            "all pages of up to 1,000, decoded by the client.",
            "",
        ]
        out.append(
            _table(
                [
                    "page p50 ms",
                    "page p99 ms",
                    "sync ms (median)",
                    "sync ms (max)",
                    "messages synced",
                ],
                [
                    [
                        hist["page_p50_ms"],
                        hist["page_p99_ms"],
                        hist["sync_ms_median"],
                        hist["sync_ms_max"],
                        hist["sync_messages"],
                    ]
                ],
            )
        )
    st = scen.get("storm")
    if st:
        w, wo = st["with"], st["without"]
        out += [
            "",
            "## Sign-in storm",
            "",
            "The paced fan-out, once alone and once with password logins (argon2id, the "
            "production parameters) on new connections at a fixed rate; each signs in and "
            "leaves, so the two runs differ by the sign-ins alone (the target's ratio). In the "
            "last row the signed-in connections stay and receive the room as well, so the "
            "fan-out grows by up to the storm's 200 connections during the run.",
            "",
        ]
        out.append(
            _table(
                [
                    "run",
                    "p50 ms",
                    "p99 ms",
                    "lost",
                    "server busy",
                    "generator busy",
                    "logins",
                    "login p99 ms",
                ],
                [
                    [
                        "without storm",
                        wo["p50_ms"],
                        wo["p99_ms"],
                        wo["losses"],
                        wo["server_busy"],
                        _busy(wo),
                        None,
                        None,
                    ],
                    [
                        "with storm",
                        w["p50_ms"],
                        w["p99_ms"],
                        w["losses"],
                        w["server_busy"],
                        _busy(w),
                        w.get("logins"),
                        w.get("login_p99_ms"),
                    ],
                    *(
                        [
                            [
                                "with storm, signed-in connections staying",
                                ws["p50_ms"],
                                ws["p99_ms"],
                                ws["losses"],
                                ws["server_busy"],
                                _busy(ws),
                                ws.get("logins"),
                                ws.get("login_p99_ms"),
                            ]
                        ]
                        if (ws := st.get("with_staying"))
                        else []
                    ),
                ],
            )
        )
    ch = scen.get("channels")
    if ch:
        out += ["", _channels_section(ch)]
    cs = scen.get("channel_sync")
    if cs:
        out += ["", _channel_sync_section(cs)]
    cl = scen.get("cluster")
    if cl:
        out += ["", _cluster_section(cl)]
    if results.get("notes"):
        out += ["", "## Notes", ""] + [f"- {note}" for note in results["notes"]]
    return "\n".join(out) + "\n"


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
        "sync, and server CPU (/proc, in 10 ms ticks) over each sync.",
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


def _cluster_section(cl: dict[str, Any]) -> str:
    one, two = cl["single"], cl["two_nodes"]
    rows = [
        [
            f"{row['nodes']} node{'s' if row['nodes'] > 1 else ''}",
            row["n"],
            row["p50_ms"],
            row["p99_ms"],
            row["losses"],
            row["cpu_us_per_unit"],
            row.get("cpu_us_per_unit_with_redis", row["cpu_us_per_unit"]),
            _busy(row),
        ]
        for row in (one, two)
    ]
    return "\n".join(
        [
            "## Fan-out across nodes",
            "",
            "One sender and N receivers in General, paced, once into one node and once with "
            "the receivers spread over two nodes on one Redis (the sender's node delivers to its "
            "half at once and publishes each message once; the other node delivers to the other "
            "half from Redis). Both nodes and Redis run on the server's core: the two-node row "
            "pays for the hop through Redis, it gains no CPU (bench/cluster.py).",
            "",
            _table(
                [
                    "run",
                    "N",
                    "p50 ms",
                    "p99 ms",
                    "lost",
                    "server CPU µs/delivery",
                    "with Redis",
                    "generator busy",
                ],
                rows,
            ),
            "",
            f"p99 ratio two nodes / one: {_fmt(cl.get('p99_ratio'))}×.",
        ]
    )
