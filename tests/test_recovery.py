"""Trials left RUNNING with nobody to run them, found on a real (SQLite) Optuna storage."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from hydra_plugins.sweeplab_sweeper.recovery import claim, fail_lost_trials


def test_a_trial_never_claimed_is_failed_after_the_grace_period_and_not_queued_again(tmp_path: Path) -> None:
    """An ask whose commit landed while its reply was lost to a restart, then retried, leaves a trial
    nobody claimed: no heartbeat will ever call it stale, and it would count as running for ever."""
    storage = RDBStorage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage)
    orphan, mine = study.ask(), study.ask()
    claim(study, mine)  # this live process: never lost
    fail_lost_trials(study, max_retry=1)
    assert [t.state for t in study.trials] == [TrialState.RUNNING] * 2  # within the grace period
    time.sleep(1.2)
    fail_lost_trials(study, max_retry=1)
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING]
    assert trials[0].user_attrs["fail_kind"] == "storage"  # no verdict on params: not a failure
    assert "never claimed" in trials[0].user_attrs["fail_reason"]
    assert len(trials) == 2  # nothing queued again: the ask's other trial runs
    assert orphan.number == 0


def test_a_worker_on_another_host_is_lost_when_its_heartbeats_stop(tmp_path: Path) -> None:
    """Its pid means nothing here: the storage's heartbeat grace period decides (read through Optuna's
    cache, which wraps the RDBStorage a study is given: read from the wrapper, it was never checked)."""
    storage = RDBStorage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    elsewhere = {"host": "another-host", "pid": 1, "started": 0.0}
    study._storage.set_trial_system_attr(trial._trial_id, "sweeplab:worker", elsewhere)
    study._storage.record_heartbeat(trial._trial_id)
    fail_lost_trials(study, max_retry=1)
    assert study.trials[0].state == TrialState.RUNNING
    time.sleep(2.5)  # SQLite's now() counts whole seconds
    fail_lost_trials(study, max_retry=1)
    trials = study.trials
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["fail_kind"] == "lost"
    assert "no heartbeat from its worker for over 1 s" in trials[0].user_attrs["fail_reason"]
    assert trials[1].state == TrialState.WAITING  # its params run again
