"""The benchmark harness runs every scenario at a tiny size and produces every figure.

It checks that results are produced, not how fast: the full run is ``make bench``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import pg_server

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = (
    "commit",
    "fanout",
    "dm",
    "durable",
    "idle",
    "history",
    "storm",
    "channels",
    "channel_sync",
    "search",
    "postgres",
    "cluster",
)
TIMEOUT_FACTOR = float(os.environ.get("BESEDA_TEST_TIMEOUT_FACTOR", "1"))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    docs = out.with_suffix(".md")
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out), "--docs", str(docs)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150 * TIMEOUT_FACTOR,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(out.read_text()), docs.read_text()


@pytest.mark.timeout(180)
def test_every_scenario_has_figures(smoke: tuple[dict, str]) -> None:
    results, _ = smoke
    scenarios = results["scenarios"]
    assert set(SCENARIOS) <= set(scenarios)
    served = [row for row in scenarios["dm"] if row["contender"] != "raw_sqlite3"]
    for row in scenarios["fanout"] + served:
        assert row["deliveries"] > 0, row
        assert row["p99_ms"] is not None, row
        assert row["app_p99_ms"] is not None, row
        assert row["kernel_stamps"] == 1.0, row  # every delivery stamped by the kernel
        assert row["cpu_us_per_unit"] is not None, row
        assert row["runs"]["cpu_us_per_unit"], row
    beseda_dm = next(row for row in served if row["contender"] == "beseda")
    assert beseda_dm["commits"] > 0
    assert beseda_dm["messages_per_commit"] > 0
    raw = next(row for row in scenarios["dm"] if row["contender"] == "raw_sqlite3")
    assert raw["cpu_us_per_unit"] > 0
    assert scenarios["commit"]["p99_ms"] > 0
    assert scenarios["storm"]["capacity"]["hashes_per_s"] > 0
    assert {row["mode"] for row in scenarios["fanout"]} == {"burst", "paced"}
    # WebSocket rows and rows without the search index beside beseda's TCP rows, at the same
    # N in the same run; each WebSocket delivery was read from a frame and kernel-stamped.
    n = results["sizes"]["repeat_n"]
    for contender in ("beseda-ws", "beseda-no-index"):
        rows = [row for row in scenarios["fanout"] if row["contender"] == contender]
        assert {(row["mode"], row["n"]) for row in rows} == {("burst", n), ("paced", n)}
        for row in rows:
            assert row["deliveries"] == row["expected_deliveries"] > 0, row
            assert row["acks"] > 0, row
            assert row["errors"] == 0, row
            assert row["kernel_stamps"] == 1.0, row
            assert row["p99_ms"] is not None, row
            assert row["commits"] > 0, row
    ws_dm = next(row for row in served if row["contender"] == "beseda-ws")
    assert ws_dm["deliveries"] == ws_dm["expected_deliveries"] > 0
    idle = {row["contender"]: row for row in scenarios["idle"]}
    assert idle["beseda-ws"]["connections"] == results["sizes"]["idle"]
    assert idle["beseda-ws"]["bytes_per_connection"] > 0
    no_index = scenarios["durable"]["beseda_no_index"]
    assert no_index["contender"] == "beseda-no-index"
    assert no_index["acks"] == no_index["messages"] > 0
    search = scenarios["search"]
    assert search["build"]["messages"] == results["sizes"]["search_messages"]
    assert search["build"]["index_rows"] > 0
    assert set(search["queries"]) == {"word", "prefix", "substring", "phrase", "filtered"}
    for kind, figures in search["queries"].items():
        assert figures["p99_ms"] >= figures["p50_ms"] > 0, kind
        assert figures["hits"] > 0, kind
    assert scenarios["durable"]["beseda"]["acks"] > 0
    assert scenarios["durable"]["raw_sqlite3"]["rows"] > 0
    assert all(row["connections"] > 0 for row in scenarios["idle"])
    assert scenarios["history"]["page_p99_ms"] is not None
    assert scenarios["history"]["sync_messages"] == results["sizes"]["sync_missed"]
    assert scenarios["storm"]["with"]["logins"] > 0
    assert scenarios["storm"]["without"]["p99_ms"] is not None
    channels = scenarios["channels"]
    for run in (channels["channels"], channels["general"]):
        assert run["deliveries"] == run["expected_deliveries"] > 0, run
        assert run["cpu_us_per_unit"] is not None, run
    assert channels["cpu_ratio"] is not None
    cluster = scenarios["cluster"]
    for run in (cluster["single"], cluster["two_nodes"]):
        # Every receiver on either node got every message, timed at the socket.
        assert run["deliveries"] == run["expected_deliveries"] > 0, run
        assert run["p99_ms"] is not None, run
        assert run["kernel_stamps"] == 1.0, run
    assert cluster["two_nodes"]["nodes"] == 2
    assert cluster["two_nodes"]["redis_cpu_s"] > 0
    assert cluster["p99_ratio"] is not None
    sync = scenarios["channel_sync"]
    assert sync["entries"] == results["sizes"]["sync_missed"]
    assert sync["round_trips"] >= 1
    assert sync["sync_ms_median"] is not None


@pytest.mark.timeout(180)
@pytest.mark.skipif(not pg_server.available(), reason="PostgreSQL is not installed")
def test_the_postgresql_rows_have_figures(smoke: tuple[dict, str]) -> None:
    results, markdown = smoke
    found = results["scenarios"]["postgres"]
    durable = found["durable"]
    assert durable["engine"] == "postgresql"
    assert durable["acks"] == durable["messages"] > 0
    assert durable["postgres_cpu_us_per_message"] > 0
    writers = results["sizes"]["counter_writers"]
    assert {(row["writers"], row["conversations"]) for row in found["hot_counter"]} == {
        (n, kind) for n in writers for kind in ("one (hot)", "one each")
    }
    for row in found["hot_counter"]:
        assert row["messages"] == row["writers"] * results["sizes"]["counter_messages"]
        assert row["per_s"] > 0
    assert "durable throughput on PostgreSQL" in markdown
    assert "### A hot conversation's counter row" in markdown


@pytest.mark.timeout(180)
def test_report_has_the_targets_table(smoke: tuple[dict, str]) -> None:
    _, markdown = smoke
    assert "## Targets" in markdown
    for phrase in (
        "raw commit",
        "fan-out",
        "WebSocket fan-out",
        "WebSocket connections",
        "with the search index",
        "durable throughput with the search index",
        "search over",
        "over 2 nodes",
        "## Fan-out across nodes",
        "## Search",
        "durable throughput",
        "idle",
        "history",
        "sign-ins at",
        "channels fan-out",
        "sync in",
    ):
        assert phrase in markdown


def test_the_search_scenario_measures_every_query_kind(tmp_path: Path) -> None:
    out = tmp_path / "search.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.search",
            "--messages",
            "2000",
            "--rounds",
            "1",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120 * TIMEOUT_FACTOR,
    )
    results = json.loads(out.read_text(encoding="utf-8"))
    built = results["build"]
    assert isinstance(built, dict)
    assert built["messages"] == 2000
    assert built["index_on_upgrade_s"] > 0
    assert built["index_rows"] > 0
    queries = results["queries"]
    assert isinstance(queries, dict)
    assert set(queries) == {"word", "prefix", "substring", "phrase", "filtered"}
    for kind, figures in queries.items():
        assert figures["p99_ms"] >= figures["p50_ms"] > 0, kind
        assert figures["hits"] > 0, kind  # the corpus has what each kind looks for


def _profile() -> ModuleType:
    """``bench/profile.py`` itself: ``bench`` on ``sys.path`` here is this test directory."""
    spec = importlib.util.spec_from_file_location("bench_profile", ROOT / "bench" / "profile.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def test_place_names_system_calls_libraries_and_the_rest() -> None:
    place = _profile().place

    kernel = "[kernel.kallsyms]"
    sendto = [("__sys_sendto", kernel), ("__x64_sys_sendto", kernel), ("do_syscall_64", kernel)]
    assert place(sendto) == "syscall sendto"
    write = [("tcp_sendmsg", kernel), ("ksys_write", kernel), ("do_syscall_64", kernel)]
    assert place(write) == "syscall write"
    argon2 = "/venv/lib/python3.11/site-packages/_argon2_cffi_bindings/_ffi.abi3.so"
    assert place([("fill_segment", argon2)]) == "argon2"
    fault = [("clear_page_erms", kernel), ("asm_exc_page_fault", kernel)]
    assert place(fault) == "kernel: page faults"
    assert place([("schedule", kernel)]) == "kernel: other"
    python = "/usr/lib/libpython3.11.so.1.0"
    assert place([("_PyEval_EvalFrameDefault", python)]) == "Python interpreter"
    assert place([("sqlite3VdbeExec", "/usr/lib/x86_64-linux-gnu/libsqlite3.so.0")]) == "SQLite"
    assert place([("[unknown]", "[unknown]")]) == "unsymbolized"
    # The compiled modules are named, not counted as the interpreter or as SQLite itself.
    glue = "/usr/lib/python3.11/lib-dynload/_sqlite3.cpython-311-x86_64-linux-gnu.so"
    assert place([("pysqlite_step", glue)]) == "module _sqlite3"
    assert place([("sock_send", "/x/_socket.cpython-311-x86_64-linux-gnu.so")]) == "module _socket"
    core = "/venv/lib/python3.11/site-packages/msgspec/_core.cpython-311-x86_64-linux-gnu.so"
    assert place([("encode", core)]) == "module msgspec._core"
    assert place([]) == "unknown"


@pytest.mark.timeout(300)
def test_profile_splits_the_server_by_thread_and_system_call(tmp_path: Path) -> None:
    """``--profile`` records the timed runs with perf: the event loop and the SQLite writer
    are told apart (the writer names itself), and the writer's commits show as fdatasync."""
    why = _profile().available()
    if why:
        pytest.skip(why)
    directory = tmp_path / "profile"
    completed = subprocess.run(
        [
            *(sys.executable, "-m", "bench", "--smoke", "--scenario", "dm"),
            *("--contender", "beseda", "--profile", str(directory)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240 * TIMEOUT_FACTOR,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    runs = json.loads((directory / "profile.json").read_text())
    assert runs
    assert all(run["label"].startswith("direct messages beseda: beseda, run ") for run in runs)
    for run in runs:
        assert (directory / run["file"]).stat().st_size > 0
        threads = run["threads"]
        assert {"event loop (main)", "beseda-writer"} <= set(threads), threads
        assert sum(t["share"] for t in threads.values()) == pytest.approx(100, abs=0.5)
        assert "syscall fdatasync" in threads["beseda-writer"]["places"], threads
    assert "| event loop (main) |" in (directory / "profile.md").read_text()
    # The figures of record are untouched: results and report went into the directory.
    assert (directory / "results.json").exists()
    assert (directory / "performance.md").exists()
