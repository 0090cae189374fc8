"""The study lock on a real PostgreSQL server: a restart mid-section frees it, and the sweep notices."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hydra_plugins.sweeplab_sweeper.storage import study_lock
from tests.conftest import ROOT
from tests.test_postgres import Server, _sweep, postgres  # noqa: F401 - the fixture


def test_a_restart_frees_the_lock_mid_section_and_the_holder_can_tell(
    postgres: Server,  # noqa: F811
    tmp_path: Path,
) -> None:
    contender_has_it = threading.Event()

    def contender() -> None:
        with study_lock(postgres.url, "lock", tmp_path, timeout=60):
            contender_has_it.set()

    with study_lock(postgres.url, "lock", tmp_path, timeout=60) as held:
        assert held.still_held()
        thread = threading.Thread(target=contender, daemon=True)
        thread.start()
        assert not contender_has_it.wait(1.0)  # the lock works: the other waits
        postgres.ctl("restart", "-m", "fast")  # every session ends, and with it the lock
        assert contender_has_it.wait(60)  # the other worker's retried call got it, inside our section
        assert not held.still_held()  # and the holder knows its reads may be stale
    thread.join(10)


@pytest.mark.slow
def test_a_trial_asked_while_the_lock_was_lost_is_queued_again(
    postgres: Server,  # noqa: F811
    tmp_path: Path,
) -> None:
    handshake = tmp_path / "handshake"
    handshake.mkdir()
    cmd = _sweep(
        tmp_path, "lostlock", postgres.url, "hydra.sweeper.n_trials=2", "trainer.max_steps=8",
        "hydra.sweeper.custom_search_space=tests.faults.restart_storage_once",
    )  # fmt: skip
    # The hook is test code: trusted as a user trusts their own (SWEEPLAB_TRUSTED_TARGETS).
    env = {
        **os.environ,
        "SWEEPLAB_TEST_RESTART_DIR": str(handshake),
        "SWEEPLAB_TRUSTED_TARGETS": "tests.faults.*",
    }
    log = tmp_path / "sweep.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not (handshake / "restart").exists():  # trial 0 is asked, the lock held
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        postgres.ctl("restart", "-m", "fast")
        (handshake / "restarted").touch()
        assert proc.wait(timeout=600) == 0, log.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    trials = optuna.load_study(study_name="lostlock", storage=postgres.url).trials
    first = trials[0]
    assert first.state == TrialState.FAIL and first.user_attrs["fail_kind"] == "storage", first.user_attrs
    assert "study lock was lost" in first.user_attrs["fail_reason"]
    assert "steps" not in first.user_attrs  # abandoned before its job started: nothing trained twice
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert retry.state == TrialState.COMPLETE and retry.params == first.params
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert "trial 0: the study lock was lost in a storage outage while this trial was asked" in output
    assert "Traceback" not in output
