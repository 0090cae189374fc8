"""bench/bench_workers.py on a tiny size against a real PostgreSQL: every figure it records is counted."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import pg_server
from tests.conftest import ROOT

TRIALS = 6


@pytest.fixture(scope="module")
def bench() -> Iterator:
    sys.path.insert(0, str(ROOT / "bench"))  # the bench scripts import their neighbours by name
    try:
        import bench_workers

        yield bench_workers
    finally:
        sys.path.remove(str(ROOT / "bench"))


@pytest.fixture(scope="module")
def results(bench, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    if not pg_server.available():
        pytest.skip("PostgreSQL server binaries not found (scripts/ensure-postgres.sh installs them)")
    args = argparse.Namespace(
        trials=TRIALS, seconds=0.1, reports=3, workdir=tmp_path_factory.mktemp("bench_workers")
    )
    with pg_server.running(bench.PASSWORD, bench.SERVER_SETTINGS) as server:
        return [bench.run_arm(server.url, workers, args) for workers in (1, 2)]


@pytest.mark.slow  # ~20 s: two small sweeps, each process importing Hydra and Optuna
def test_each_arm_runs_every_trial_once_and_counts_its_storage_traffic(bench, results) -> None:
    for r in results:
        assert r["states"] == {"COMPLETE": TRIALS}, r["states"]
        assert r["work"]["trials"] == TRIALS  # every trial wrote its work.json: nothing ran twice
        p = bench.per_trial(r)
        kinds = r["server"]["statements"]
        # ask, 3 reports each reading the trial and the finished trials, tell: dozens of statements a trial
        assert p["round_trips"] > 20 and kinds["transaction"]["calls"] > 0 and kinds["query"]["calls"] > 0
        assert kinds["schema"]["calls"] > 0  # the study's tables, kept out of the per-trial figures
        assert p["heartbeat_calls"] >= 1  # each trial beats once at its start
        assert p["server_ms"] > 0 and p["transactions"] > 0
        assert p["sessions"] >= 1  # the study lock opens a session per section
        assert r["connections"]["samples"] > 0 and r["connections"]["held_max"] >= r["workers"]
        assert r["lock"]["locks"] >= TRIALS  # one section per ask, besides start-up and the last count
        assert 0 < r["lock"]["held_median_s"] < r["wall_s"]
        assert r["work"]["in_reports_s"] > 0 and r["work"]["gap_median_s"] > 0
        assert TRIALS * r["seconds"] <= r["work"]["work_s"] < r["workers"] * r["wall_s"]
        assert p["sweeper_s"] > 0 and p["per_min"] < p["ideal_per_min"]
        assert r["limits"]["max_connections"] > 0 and r["limits"]["connect_ms"] > 0
    assert results[1]["server"]["database"]["sessions"] > results[0]["server"]["database"]["sessions"]


@pytest.mark.slow
def test_the_section_tables_every_arm_and_shows_the_estimate(bench, results, tmp_path: Path) -> None:
    rows = bench.table(results)
    assert [row.split(" | ")[0] for row in rows[2:]] == ["| 1", "| 2"]
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n<!-- other:start -->\nkept\n<!-- other:end -->\n")
    bench.write_section(argparse.Namespace(out=out), results, rows, bench.notes(results))
    text = out.read_text()
    assert "kept" in text and text.count(bench.START) == 1 and text.count(bench.END) == 1
    for trial_length in ("| 5 min |", "| 1 h |"):
        assert trial_length in text
    assert " nan " not in text and "| nan" not in text  # every figure was counted
