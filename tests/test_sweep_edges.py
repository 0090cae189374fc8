"""Loose ends of a sweep: settings that contradict each other, a quick sweep, logs on a full disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from hydra_plugins.sweeplab_sweeper.storage import grace_period_for, min_grace_period
from tests.conftest import ROOT
from tests.test_sweep import SMALL, load

QUICK_EVAL = ["eval.n_generate=4", "data.n_test=4", "eval.max_new_tokens=16"]


def sweep(out: Path, *overrides: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sweeplab.train", "--multirun", *SMALL, "hparams_search=qlora", *QUICK_EVAL,
         f"paths.output_root={out}", *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_a_grace_period_shorter_than_an_outage_the_workers_ride_out_is_refused(tmp_path: Path) -> None:
    result = sweep(
        tmp_path, "hydra.sweeper.grace_period=60", "hydra.sweeper.storage_timeout=180",
        "hydra.sweeper.heartbeat_interval=30", timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    least = min_grace_period(30, 180)
    assert (
        f"hydra.sweeper.grace_period=60 is below hydra.sweeper.storage_timeout=180 + "
        f"hydra.sweeper.heartbeat_interval=30 + {least - 210} s of retry backoff = {least}"
    ) in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "sweeps").exists()


def test_the_default_grace_period_outlasts_the_storage_timeout() -> None:
    for beat, timeout in ((1, 5), (30, 180), (60, 30)):
        least = min_grace_period(beat, timeout)
        assert least > timeout + beat  # a last beat one interval before the outage, plus the outage
        assert grace_period_for(None, beat, timeout) > least  # derived: with a heartbeat to spare
        assert grace_period_for(least, beat, timeout) == least  # a given one is kept


@pytest.mark.slow
def test_a_sweep_shorter_than_one_validation_interval_runs_unpruned(tmp_path: Path) -> None:
    """trainer.max_steps below val_every_n_steps under the qlora search's successive halving."""
    result = sweep(
        tmp_path, "trainer.max_steps=6", "trainer.val_every_n_steps=50", "hydra.sweeper.n_trials=3",
        "hydra.sweeper.study_name=quick",
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    note = (
        "trainer.max_steps=6 <= trainer.val_every_n_steps=50: each trial validates once, at its end, "
        "and the pruner (optuna.pruners.SuccessiveHalvingPruner) prunes nothing"
    )
    assert output.count(note) == 1, output[-3000:]
    trials = load(tmp_path, "quick").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert all(list(t.intermediate_values) == [6] for t in trials)  # the one validation, at the end


@pytest.mark.slow
def test_a_log_on_a_full_disk_costs_one_line_not_a_traceback_per_record(tmp_path: Path) -> None:
    """Every job's log file on /dev/full (every write fails with ENOSPC), a real Hydra file handler."""
    result = sweep(
        tmp_path, "trainer.max_steps=4", "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=full",
        "hydra.job_logging.handlers.file.filename=/dev/full",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--- Logging error ---" not in result.stderr and "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if "/dev/full" in ln]
    assert lines == [
        "sweeplab: cannot write the log /dev/full: [Errno 28] No space left on device; "
        "its later lines may be lost"
    ], result.stderr[-3000:]
    assert sum(t.state == TrialState.COMPLETE for t in load(tmp_path, "full").trials) == 2


def test_other_logging_errors_still_show(tmp_path: Path) -> None:
    """Only write failures are quieted: a broken log call (a bad format argument) is a bug to see."""
    code = (
        "import logging; from sweeplab.outputs import quiet_log_write_errors; quiet_log_write_errors(); "
        "logging.basicConfig(); logging.getLogger().error('%d', 'not a number')"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert "--- Logging error ---" in result.stderr and "TypeError" in result.stderr
