"""The benchmark harness runs every scenario at a tiny size and produces every figure.

It checks that results are produced, not how fast: the full run is ``make bench``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pg_server

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = (
    "fanout",
    "dm",
    "durable",
    "idle",
    "history",
    "storm",
    "channels",
    "channel_sync",
    "hot_counter",
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
    for row in scenarios["fanout"] + scenarios["dm"]:
        assert row["deliveries"] > 0, row
        assert row["p99_ms"] is not None, row
        assert row["cpu_us_per_unit"] is not None, row
    assert {row["mode"] for row in scenarios["fanout"]} == {"burst", "paced"}
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
        # Every receiver on either node got every message.
        assert run["deliveries"] == run["expected_deliveries"] > 0, run
        assert run["p99_ms"] is not None, run
    assert cluster["two_nodes"]["nodes"] == 2
    assert cluster["p99_ratio"] is not None
    sync = scenarios["channel_sync"]
    assert sync["entries"] == results["sizes"]["sync_missed"]
    assert sync["round_trips"] >= 1
    assert sync["sync_ms_median"] is not None


@pytest.mark.timeout(180)
@pytest.mark.skipif(not pg_server.available(), reason="PostgreSQL is not installed")
def test_the_postgresql_rows_have_figures(smoke: tuple[dict, str]) -> None:
    results, markdown = smoke
    scenarios = results["scenarios"]
    on_postgres = scenarios["durable"]["beseda_postgresql"]
    assert on_postgres["engine"] == "postgresql"
    assert on_postgres["acks"] == on_postgres["messages"] > 0
    assert on_postgres["vs_sqlite"] is not None
    assert on_postgres["postgres_cpu_us_per_message"] > 0
    rows = scenarios["hot_counter"]
    writers = results["sizes"]["counter_writers"]
    assert {(row["writers"], row["conversations"]) for row in rows} == {
        (n, kind) for n in writers for kind in ("one (hot)", "one each")
    }
    for row in rows:
        assert row["messages"] == row["writers"] * results["sizes"]["counter_messages"]
        assert row["per_s"] > 0
    assert all(row["cost_vs_own"] > 0 for row in rows if row["conversations"] == "one (hot)")
    assert "durable throughput on PostgreSQL" in markdown
    assert "## PostgreSQL: a hot conversation's counter row" in markdown


@pytest.mark.timeout(180)
def test_report_has_the_targets_table(smoke: tuple[dict, str]) -> None:
    _, markdown = smoke
    assert "## Targets" in markdown
    for phrase in (
        "fan-out",
        "durable throughput",
        "idle",
        "history",
        "sign-in storm",
        "channels fan-out",
        "sync in",
    ):
        assert phrase in markdown
