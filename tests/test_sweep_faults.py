"""Damage done to real sweeps: SIGKILL, Ctrl-C or SIGTERM mid-trial; the rerun must recover everything."""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweeplab.trust import TRUST_ENV
from tests.conftest import ROOT
from tests.test_sweep import SMALL, TEST_CONF, load

pytestmark = pytest.mark.slow


def command(out: Path, study: str, *overrides: str) -> list[str]:
    return [
        sys.executable, "-m", "sweeplab.train", "--multirun", *SMALL, f"paths.output_root={out}",
        "hparams_search=qlora", f"hydra.sweeper.study_name={study}", "hydra/sweeper/pruner=none", *overrides,
    ]  # fmt: skip


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """In its own session, like a sweep started in its own terminal."""
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the sweep ended before the damage was done:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


def running_with_checkpoints(out: Path, study: str) -> list[int]:
    """The RUNNING trials whose run dir holds a last.ckpt. Read-only polling: opening the storage with
    optuna would race the sweep creating its schema."""
    db = out / "sweeps" / "optuna.db"
    query = (
        "SELECT t.number FROM trials t JOIN studies s ON s.study_id = t.study_id "
        "WHERE s.study_name = ? AND t.state = 'RUNNING'"
    )
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            numbers = [row[0] for row in conn.execute(query, (study,))]
    except sqlite3.OperationalError:
        return []  # locked or not yet created
    return [n for n in numbers if (out / "sweeps" / study / str(n) / "checkpoints" / "last.ckpt").is_file()]


def running_with_checkpoint(out: Path, study: str, number: int) -> Callable[[], bool]:
    return lambda: number in running_with_checkpoints(out, study)


def rerun(cmd: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def retry_of(trials: list[optuna.trial.FrozenTrial], number: int) -> optuna.trial.FrozenTrial:
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == number]
    return retry


def test_sigkill_mid_trial_then_rerun_resumes_the_killed_trial(tmp_path: Path) -> None:
    cmd = command(tmp_path, "k", "hydra.sweeper.n_trials=3", "trainer.max_steps=24")
    log = tmp_path / "first.log"
    proc = start(cmd, log)
    wait_for(running_with_checkpoint(tmp_path, "k", 1), proc, log)
    os.killpg(proc.pid, signal.SIGKILL)  # no handler runs: as if the power went
    proc.wait()
    before = load(tmp_path, "k").trials
    assert [t.state for t in before[:2]] == [TrialState.COMPLETE, TrialState.RUNNING]

    rerun(cmd)
    trials = load(tmp_path, "k").trials
    assert trials[0].datetime_complete == before[0].datetime_complete  # the finished trial was kept as is
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs["fail_reason"].startswith("killed")
    retry = retry_of(trials, 1)
    assert retry.state == TrialState.COMPLETE and retry.params == trials[1].params
    killed_ckpt = tmp_path / "sweeps" / "k" / "1" / "checkpoints" / "last.ckpt"
    assert retry.user_attrs["resume_from"] == str(killed_ckpt)
    job_log = (tmp_path / "sweeps" / "k" / str(retry.number) / "train.log").read_text()
    assert "Restored all states from the checkpoint" in job_log  # went on from the killed trial's step
    assert min(retry.intermediate_values) <= min(trials[1].intermediate_values)  # its curve is whole
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3 and len({t.number for t in done}) == 3  # the total, nothing counted twice

    storage = f"sqlite:///{tmp_path / 'sweeps' / 'optuna.db'}"
    report = subprocess.run(
        [sys.executable, "-m", "sweeplab.report", "k", "--storage", storage, "--out", tmp_path / "report"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    rows = {r["number"]: r for r in csv.DictReader((tmp_path / "report" / "trials.csv").open())}
    assert rows[str(retry.number)]["retry_of"] == "1" and rows["1"]["fail_kind"] == "killed"
    assert rows["1"]["fail_reason"].startswith("killed")


def test_ctrl_c_stops_after_saving_and_the_rerun_goes_on(tmp_path: Path) -> None:
    cmd = command(tmp_path, "c", "hydra.sweeper.n_trials=2", "trainer.max_steps=24")
    log = tmp_path / "first.log"
    proc = start(cmd, log)
    wait_for(running_with_checkpoint(tmp_path, "c", 0), proc, log)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
    assert proc.wait(timeout=300) == 130, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()

    trials = load(tmp_path, "c").trials
    first = trials[0]
    assert first.state == TrialState.FAIL
    assert first.user_attrs["fail_reason"].startswith("Interrupted: SIGINT at step"), first.user_attrs
    run_dir = tmp_path / "sweeps" / "c" / "0"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and not (run_dir / "metrics.json").exists()
    assert retry_of(trials, 0).state == TrialState.WAITING  # queued to run again, from the checkpoint

    rerun(cmd)
    trials = load(tmp_path, "c").trials
    retry = retry_of(trials, 0)
    assert retry.state == TrialState.COMPLETE and retry.params == first.params
    assert (
        "Restored all states from the checkpoint"
        in (tmp_path / "sweeps" / "c" / str(retry.number) / "train.log").read_text()
    )
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2


def test_sigterm_to_a_two_worker_sweep_stops_both_at_a_step_and_the_rerun_resumes(tmp_path: Path) -> None:
    """Kubernetes signals the main process only: it must pass SIGTERM on to the other worker."""
    # Long trials, no decoding: both workers' trials must be training with a checkpoint at once.
    cmd = command(
        tmp_path,
        "t",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_jobs=2",
        "trainer.max_steps=400",
        "trainer.val_every_n_steps=20",
        "eval.n_generate=0",
        "eval.test=false",
    )
    log = tmp_path / "first.log"
    proc = start(cmd, log)
    # Each worker's trial, whichever it is: a starved main process may see worker 1 finish one first.
    cut: list[int] = []

    def both_training() -> bool:
        cut[:] = running_with_checkpoints(tmp_path, "t")
        return len(cut) == 2

    wait_for(both_training, proc, log)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=300) == 130, log.read_text()[-3000:]
    worker_log = (tmp_path / "sweeps" / "t" / "worker-1.log").read_text()
    for text in (log.read_text(), worker_log):
        assert "Traceback" not in text, text[-3000:]

    trials = load(tmp_path, "t").trials
    for n in cut:  # each worker stopped its own trial at a step boundary, saved and queued it again
        reason = trials[n].user_attrs.get("fail_reason", "")
        assert trials[n].state == TrialState.FAIL and reason.startswith("Interrupted: SIGTERM at step"), (
            trials[n].state,
            reason,
        )
        assert not (tmp_path / "sweeps" / "t" / str(n) / "metrics.json").exists()
        assert retry_of(trials, n).state == TrialState.WAITING
        ckpt = tmp_path / "sweeps" / "t" / str(n) / "checkpoints" / "last.ckpt"
        assert retry_of(trials, n).user_attrs["resume_from"] == str(ckpt)
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]

    rerun(cmd)
    trials = load(tmp_path, "t").trials
    for n in cut:
        retry = retry_of(trials, n)
        assert retry.state == TrialState.COMPLETE and retry.params == trials[n].params
        job_log = (tmp_path / "sweeps" / "t" / str(retry.number) / "train.log").read_text()
        assert "Restored all states from the checkpoint" in job_log
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3


def test_sigterm_while_a_trial_is_sized_queues_it_again(tmp_path: Path) -> None:
    """hydra.sweeper.max_memory_gb sizes each claimed trial before its job starts: a SIGTERM then must not
    leave the trial RUNNING (the rerun would call it killed and spend a retry on it)."""
    sizing = tmp_path / "sizing"
    site = ROOT / "tests" / "slow_sizing"  # its sitecustomize makes sizing take a minute
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "SWEEPLAB_TEST_SIZING": str(sizing)}
    cmd = command(tmp_path, "z", "hydra.sweeper.n_trials=1", "hydra.sweeper.max_memory_gb=100")
    log = tmp_path / "sweep.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    wait_for(sizing.exists, proc, log)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    trials = load(tmp_path, "z").trials
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["fail_kind"] == "interrupted"
    assert retry_of(trials, 0).state == TrialState.WAITING
    assert not (tmp_path / "sweeps" / "z" / "0").exists()  # no job started


def test_a_full_disk_fails_the_trial_keeps_the_checkpoint_and_stops_the_sweep(tmp_path: Path) -> None:
    """A real full filesystem: a small tmpfs as the output root (needs root; else skipped)."""
    out = tmp_path / "small"
    out.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(out)]
    mounted = subprocess.run(mount, capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        storage = f"sqlite:///{tmp_path / 'optuna.db'}"  # the study lives elsewhere: only outputs fill up
        cmd = command(
            out, "d", "hydra.sweeper.n_trials=3", "trainer.max_steps=60", f"hydra.sweeper.storage={storage}"
        )
        log = tmp_path / "sweep.log"
        proc = start(cmd, log)
        ckpt = out / "sweeps" / "d" / "0" / "checkpoints" / "last.ckpt"
        wait_for(ckpt.is_file, proc, log)
        time.sleep(0.5)  # let the first save's rename land
        with open(out / "filler", "wb") as filler:  # what else wrote to the disk meanwhile
            try:
                while True:
                    filler.write(b"\0" * (1 << 20))
                    filler.flush()
            except OSError:
                pass
        assert proc.wait(timeout=300) == 1, log.read_text()[-3000:]
        output = log.read_text()
        assert "sweep stopped: trial 0 FAIL: DiskFull: disk full while writing" in output, output[-3000:]
        trials = optuna.load_study(study_name="d", storage=storage).trials
        first = trials[0]
        assert first.state == TrialState.FAIL and first.user_attrs["fail_kind"] == "disk_full"
        assert str(out / "sweeps" / "d" / "0") in first.user_attrs["fail_reason"]
        assert retry_of(trials, 0).state == TrialState.WAITING  # the params run again once there is room
        started = [t.number for t in trials if t.state != TrialState.WAITING]
        assert started == [0]  # no later trial was started to fail the same way
        import torch

        torch.load(ckpt, weights_only=True)  # the previous checkpoint is whole
        assert not [p.name for p in ckpt.parent.iterdir() if p.name.endswith(".tmp")]
    finally:
        subprocess.run(["umount", "-l", str(out)], capture_output=True)


def test_oom_and_dead_data_loader_fail_their_trials_and_free_memory(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sweeplab.train", "--multirun", *SMALL, f"paths.output_root={tmp_path}",
         TEST_CONF, "hparams_search=faults"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, TRUST_ENV: "tests.faults.Fault"},  # callbacks.extra names our own test code
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = load(tmp_path, "faults").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    oom, loader, healthy = (t.user_attrs for t in trials)
    assert oom["fail_kind"] == "oom" and "out of memory at step 3" in oom["fail_reason"]
    assert "data.batch_size" in oom["fail_reason"]  # says what to change
    assert loader["fail_kind"] == "data" and "DataLoader worker" in loader["fail_reason"]
    # Each trial ran in the same process as the failed ones before it, with their models collected.
    assert [t["models_alive_at_start"] for t in (oom, loader, healthy)] == [0, 0, 0]
    # A failed trial drops the base the worker held: each trial after a failure loads its own.
    assert [t["base_reused"] for t in (oom, loader, healthy)] == [False, False, False]


def test_a_worker_killed_after_the_loop_ended_is_retried_before_the_command_ends(tmp_path: Path) -> None:
    """2 trials, 2 workers: the command's own trial finishes, its loop counts the other worker's trial as
    running and ends; then that worker is SIGKILLed. The command, its workers done, finds the trial lost
    and runs the retry itself: it ends with 2 trials COMPLETE, none RUNNING, not one short."""
    storage = f"sqlite:///{tmp_path / 'sweeps' / 'optuna.db'}"
    hook = (
        "+callbacks.extra=[{_target_: tests.faults.KillAWorkerAfterTheLoopEnds, "
        f"storage: '{storage}', study: k, marker: '{tmp_path / 'killed'}', at_step: 3}}]"
    )
    cmd = command(tmp_path, "k", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", hook)
    result = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, TRUST_ENV: "tests.faults.*"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "killed").exists()  # the worker's trial reached the fault
    trials = load(tmp_path, "k").trials
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 2 and TrialState.RUNNING not in states, states
    [killed] = [t for t in trials if t.state == TrialState.FAIL]
    assert killed.user_attrs["fail_kind"] == "killed"
    assert retry_of(trials, killed.number).state == TrialState.COMPLETE
