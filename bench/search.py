"""The search benchmark: a corpus of Russian and English chat text, the time to index an
existing database on upgrade, and p50/p99 of each query kind.

    python -m bench.search --messages 1000000 --out bench/results/search.json

``make bench`` runs it too, as the scenario ``search`` (:func:`scenario`: this module as a
child process on the server's core, at ``Sizes.search_messages``), so that its figures land in
the same results file and docs/performance.md as the rest.

The corpus is generated (seeded, so every run is the same): chat lines built from Russian
words in their case forms and English words in their inflections, names with diacritics,
numbers and times, in about the proportions of a team's chat. The database is built the way
an existing one is upgraded: messages written straight into the table (not through the
writer, so none is indexed), then the writer's backfill indexes them from the watermark, one
transaction per run of ``INDEX_CHUNK`` (storage/search_index.py), timed. Queries go through
the server's own path (``server.search.parse_query`` → ``SQLiteStorage.search``), newest
first, over a reader of three conversations out of twenty.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from beseda.server.search import fold, parse_query, search_body, stem
from beseda.storage import MessageDeletion, SearchRequest
from beseda.storage.search_index import index_all
from beseda.storage.sqlite import SQLiteStorage, connect, migrate

from . import report, scenarios

RU = [
    "встреча",
    "встречи",
    "встречу",
    "встречей",
    "завтра",
    "сегодня",
    "вчера",
    "проект",
    "проекта",
    "проекту",
    "сервер",
    "сервера",
    "серверу",
    "релиз",
    "релиза",
    "релизом",
    "задача",
    "задачи",
    "задачу",
    "ошибка",
    "ошибки",
    "ошибку",
    "база",
    "базы",
    "базу",
    "данных",
    "отчёт",
    "отчёта",
    "отчёту",
    "ёлка",
    "пятница",
    "пятницу",
    "понедельник",
    "вебсервер",
    "переговорной",
    "договорились",
    "посмотрю",
    "поправлю",
    "выкатили",
    "откатили",
    "сломалось",
    "починил",
    "спасибо",
    "привет",
    "коллеги",
    "добрый",
    "день",
    "вечер",
    "утро",
    "кто",
    "придёт",
    "когда",
    "созвон",
    "созвона",
]
EN = [
    "meeting",
    "meetings",
    "meet",
    "deploy",
    "deployed",
    "deploying",
    "release",
    "releases",
    "server",
    "servers",
    "database",
    "backup",
    "backups",
    "report",
    "reports",
    "tomorrow",
    "today",
    "yesterday",
    "friday",
    "monday",
    "fixed",
    "fixing",
    "broken",
    "issue",
    "issues",
    "ticket",
    "tickets",
    "review",
    "reviewed",
    "thanks",
    "hello",
    "team",
    "standup",
    "call",
    "calls",
    "rollback",
    "rolled",
    "customer",
    "customers",
    "invoice",
    "invoices",
]
GLUE_RU = ["и", "в", "на", "с", "по", "что", "это", "не", "я", "ты", "мы", "а", "но", "как"]
GLUE_EN = ["the", "a", "to", "of", "and", "in", "on", "is", "it", "we", "you", "for", "at", "with"]
NAMES = ("Zoë", "Renée", "Jürgen", "Åsa", "Алёна", "Пётр", "Bob", "Маша")

QUERIES = {
    "word": ["встреча", "meeting", "сервер", "release", "ошибку"],
    "prefix": ["встре", "deplo", "отчё", "backu", "созво"],
    "substring": ["треч", "erve", "ерво", "elea", "ловк"],
    "phrase": ['"добрый день"', '"the server"', '"кто придёт"', '"fixed the"'],
    "filtered": [
        "встреча from:u1",
        "deploy in:c:3",
        "сервер after:2026-01-01",
        "release before:2026-06-01 from:u2",
    ],
}


def chat_line(rng: random.Random) -> str:
    russian = rng.random() < 0.6
    words, glue = (RU, GLUE_RU) if russian else (EN, GLUE_EN)
    count = max(2, int(rng.gauss(9, 5)))
    out = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.35:
            out.append(rng.choice(glue))
        elif roll < 0.93:
            out.append(rng.choice(words))
        elif roll < 0.97:
            out.append(rng.choice(NAMES))
        else:
            out.append(f"{rng.randint(0, 23)}:{rng.choice(('00', '15', '30', '45'))}")
    text = " ".join(out)
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:]
    return text + rng.choice(("", "", ".", "?", "!", " :)"))


def build(path: Path, messages: int, seed: int = 11) -> dict[str, float]:
    """A database of ``messages`` chat lines in 20 conversations, written without the index
    and then indexed as the upgrade's migration does; the timings."""
    rng = random.Random(seed)
    conn = connect(path)
    migrate(conn)
    conn.execute("PRAGMA synchronous = OFF")
    conn.executemany(
        "INSERT INTO users (id, name, key, password_hash, created_at, folded) "
        "VALUES (?, ?, ?, 'x', 0, ?)",
        [(i, f"u{i}", f"u{i}", f"u{i}") for i in range(1, 51)],
    )
    conn.executemany(
        "INSERT INTO conversations (id, last_seq, kind, name, key) VALUES (?, 0, 'channel', ?, ?)",
        [(f"c:{i}", f"room{i}", f"room{i}") for i in range(1, 20)],
    )
    conversations = ["general", *(f"c:{i}" for i in range(1, 20))]
    seqs = dict.fromkeys(conversations, 0)
    start_ts = 1_767_225_600_000  # 2026-01-01
    started = time.perf_counter()
    conn.execute("BEGIN")
    rows = []
    for n in range(1, messages + 1):
        conversation = rng.choice(conversations)
        seqs[conversation] += 1
        rows.append(
            (
                n,
                conversation,
                seqs[conversation],
                rng.randint(1, 50),
                f"m{n}",
                chat_line(rng),
                start_ts + n * 15_000,
            )
        )
        if len(rows) == 10_000:
            conn.executemany(
                "INSERT INTO messages (id, conversation, seq, sender_id, client_id, text, ts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            rows.clear()
    if rows:
        conn.executemany(
            "INSERT INTO messages (id, conversation, seq, sender_id, client_id, text, ts) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    conn.execute("COMMIT")
    written = time.perf_counter() - started
    conn.close()
    # The upgrade: the writer's backfill from the watermark, in its runs (one transaction each).
    conn = connect(path)
    started = time.perf_counter()
    index_all(conn)
    indexed = time.perf_counter() - started
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages, index_bytes = conn.execute(
        "SELECT count(*), sum(length(block)) FROM search_data"
    ).fetchone()
    (text_bytes,) = conn.execute("SELECT sum(length(CAST(text AS BLOB))) FROM messages").fetchone()
    conn.close()
    return {
        "messages": messages,
        "write_s": round(written, 3),
        "index_on_upgrade_s": round(indexed, 3),
        "index_rows": pages,
        "index_bytes": index_bytes,
        "text_bytes": text_bytes,
        "db_bytes": path.stat().st_size,
    }


async def erase(path: Path) -> float:
    """Seconds from a delete's commit until its text is gone from the files (the index
    merged into one segment, the WAL truncated)."""
    storage = SQLiteStorage(path, readers=1)
    await storage.open()
    try:
        (user,) = await storage.users_by_ids([1])
        page, _ = await storage.history("general", None, 50)
        mine = [e for e in page if e.kind == "message" and e.sender == user.name]
        target = mine[0] if mine else page[0]
        author = (await storage.users_by_keys([target.sender]))[0]
        await storage.delete_message(MessageDeletion("general", target.seq, author, 0))
        started = time.perf_counter()
        await storage.finish_erasure()
        return round(time.perf_counter() - started, 3)
    finally:
        await storage.close()


# The alternative measured against the trigram index: FTS5's word tokenizer over Snowball
# stems, with a prefix index (what most FTS5 setups use).
CASES = [
    ("word form, Russian", "встреча", "Перенесём встречу на пятницу"),
    ("word form, English", "meeting", "Weekly meetings are on Friday"),
    ("ё and case", "ЕЛКА", "Ёлка стоит в офисе"),
    ("diacritics", "zoe", "Zoë will be late"),
    ("beginning of a word", "перенес", "Перенесём встречу на пятницу"),
    ("part of a word", "сервер", "Обновили вебсервер ночью"),
    ("part of a word, English", "base", "the database is back"),
    ("phrase", '"добрый день"', "добрый день, коллеги"),
    ("short word", "ok", "ok, deploying now"),
    ("stem not a prefix", "happiness", "so happy with it"),
]


def compare(messages: int, seed: int = 11) -> dict[str, object]:
    """Index size and build time of both designs on the same corpus, and which of issue 11's
    cases each finds."""
    rng = random.Random(seed)
    texts = [chat_line(rng) for _ in range(messages)]
    out: dict[str, object] = {}
    for design in ("trigram", "words"):
        conn = sqlite3.connect(":memory:", isolation_level=None)
        conn.execute("BEGIN")
        if design == "trigram":
            conn.execute(
                "CREATE VIRTUAL TABLE t USING fts5(body, content='', "
                "tokenize='trigram case_sensitive 1')"
            )
            prepare = search_body  # without marks, as the words design
        else:
            conn.execute(
                "CREATE VIRTUAL TABLE t USING fts5(body, content='', "
                "tokenize='unicode61 remove_diacritics 2', prefix='3')"
            )

            def prepare(text: str) -> str:
                return " ".join(stem(w) for w in re.findall(r"\w+", fold(text)))

        started = time.perf_counter()
        conn.executemany(
            "INSERT INTO t (rowid, body) VALUES (?, ?)",
            [(i, prepare(t)) for i, t in enumerate(texts, 1)],
        )
        conn.execute("COMMIT")  # FTS5 writes its pending terms at the commit
        built = time.perf_counter() - started
        (size,) = conn.execute("SELECT sum(length(block)) FROM t_data").fetchone()
        found = {}
        for name, query, text in CASES:
            conn.execute("INSERT INTO t (rowid, body) VALUES (?, ?)", (10**9, prepare(text)))
            if design == "trigram":
                expression = parse_query(query).fts()
            else:
                words = [stem(w) for w in re.findall(r"\w+", fold(query))]
                expression = (
                    '"' + " ".join(words) + '"'
                    if query.startswith('"')
                    else " AND ".join(f"{w}*" for w in words)
                )
            hit = conn.execute(
                "SELECT 1 FROM t WHERE t MATCH ? AND rowid = ?", (expression, 10**9)
            ).fetchone()
            found[name] = hit is not None
            conn.execute(
                "INSERT INTO t (t, rowid, body) VALUES ('delete', ?, ?)", (10**9, prepare(text))
            )
        conn.close()
        out[design] = {"index_bytes": size, "build_s": round(built, 3), "finds": found}
    return out


async def measure(path: Path, rounds: int) -> dict[str, dict[str, float]]:
    storage = SQLiteStorage(path, readers=1)
    await storage.open()
    readable = {c: (0, 2**62) for c in ("general", "c:3", "c:7")}
    senders = {"u1": 1, "u2": 2}
    out: dict[str, dict[str, float]] = {}
    try:
        for kind, queries in QUERIES.items():
            times = []
            hits = 0
            slowest: dict[str, float] = {}
            for _ in range(rounds):
                for text in queries:
                    query = parse_query(text)
                    scope = readable
                    if query.conversations:
                        scope = {c: readable.get(c, (0, 2**62)) for c in query.conversations}
                    ids = tuple(senders[s] for s in query.senders)
                    started = time.perf_counter()
                    found, _ = await storage.search(
                        SearchRequest(
                            match=query.fts(),
                            readable=scope,
                            reader=1,
                            senders=ids,
                            before=query.before,
                            after=query.after,
                            limit=20,
                        )
                    )
                    took = time.perf_counter() - started
                    times.append(took)
                    slowest[text] = max(slowest.get(text, 0.0), took)
                    hits += len(found)
            times.sort()
            out[kind] = {
                "p50_ms": round(statistics.median(times) * 1000, 2),
                "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))] * 1000, 2),
                "queries": len(times),
                "hits": hits,
                "slowest_ms": {q: round(t * 1000, 2) for q, t in slowest.items()},
            }
    finally:
        await storage.close()
    return out


def run(messages: int, rounds: int, directory: Path | None = None) -> dict[str, object]:
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        path = Path(tmp) / "search.db"
        built = build(path, messages)
        queries = asyncio.run(measure(path, rounds))
        built["erase_after_delete_s"] = asyncio.run(erase(path))
    return {"build": built, "queries": queries, "designs": compare(min(messages, 100_000))}


P99_GOAL_MS = 50.0
"""Issue 11: p99 of each query kind over 1,000,000 stored messages."""


def scenario(bench: scenarios.Bench) -> dict[str, Any]:
    """The search benchmark at ``sizes.search_messages``, run as ``python -m bench.search``
    pinned to the server's core (where the server would run the queries)."""
    size = bench.sizes
    bench.progress(f"search: {size.search_messages:,} messages, {size.search_rounds} rounds")
    out = bench.workdir / "search.json"
    command = [sys.executable, "-m", "bench.search", "--messages", str(size.search_messages)]
    command += ["--rounds", str(size.search_rounds), "--out", str(out)]
    command += ["--directory", str(bench.workdir)]
    completed = subprocess.run(
        bench.placement.server_prefix() + command,
        capture_output=True,
        text=True,
        timeout=3600,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"bench.search failed: {completed.stderr[-2000:]}")
    results: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    results["rounds"] = size.search_rounds
    return results


scenarios.register("search", scenario, lambda sizes, contenders: 1)


@report.target
def _search_targets(results: dict[str, Any]) -> list[report.Target]:
    found = results["scenarios"].get("search")
    if not found:
        return []
    stored = found["build"]["messages"]
    return [
        report.row_(
            f"search over {stored:,} messages, {kind}: p99 ms",
            f"{figures['p99_ms']:.2f} (p50 {figures['p50_ms']:.2f})",
            None,
            f"≤ {P99_GOAL_MS:g} ms",
            figures["p99_ms"] <= P99_GOAL_MS,
            f"{figures['p99_ms'] / P99_GOAL_MS:.2f}× the goal; {figures['queries']} queries",
        )
        for kind, figures in found["queries"].items()
    ]


@report.section
def _search_section(results: dict[str, Any]) -> str | None:
    found = results["scenarios"].get("search")
    if not found:
        return None
    built = found["build"]
    rows = [
        [kind, f["queries"], f["hits"], f["p50_ms"], f["p99_ms"], max(f["slowest_ms"].values())]
        for kind, f in found["queries"].items()
    ]
    designs = found.get("designs") or {}
    text = [
        "## Search",
        "",
        f"{built['messages']:,} generated chat lines (Russian and English, 20 conversations) "
        f"written without the index in {built['write_s']} s, then indexed by the upgrade's own "
        f"backfill in **{built['index_on_upgrade_s']} s** (index {built['index_bytes']:,} "
        f"bytes for {built['text_bytes']:,} bytes of text; database {built['db_bytes']:,} "
        f"bytes). A delete's text is gone from the files {built['erase_after_delete_s']} s "
        f"after its commit. Each query kind runs {found.get('rounds', '?')} rounds over a "
        "reader of three conversations, newest first, 20 results, through the server's own "
        "parser and storage (`bench/search.py`).",
        "",
        report._table(["query kind", "queries", "hits", "p50 ms", "p99 ms", "slowest ms"], rows),
    ]
    if designs:
        text += [
            "",
            report._table(
                ["index design", "index bytes", "build s", "finds issue 11's cases"],
                [
                    [
                        name,
                        d["index_bytes"],
                        d["build_s"],
                        f"{sum(d['finds'].values())} of {len(d['finds'])}",
                    ]
                    for name, d in designs.items()
                ],
            ),
        ]
    return "\n".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--directory", type=Path, help="where the database is built")
    args = parser.parse_args()
    results = run(args.messages, args.rounds, args.directory)
    text = json.dumps(results, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
