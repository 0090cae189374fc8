"""hydra.sweeper.keep_checkpoints: finished trials' checkpoints go, the best N's and resumable ones stay."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial

from hydra_plugins.sweeplab_sweeper.retention import deletable, delete_checkpoints, spans
from tests.conftest import ROOT
from tests.test_sweep import SMALL, load
from tests.test_sweep_faults import start, wait_for

LR = {"optim.lr": FloatDistribution(1e-5, 1e-2, log=True)}


def trial(
    number: int, state: TrialState, value: float | None = None, **user: object
) -> optuna.trial.FrozenTrial:
    """A stored trial as the study returns it; its run dir is /runs/<number>."""
    system = user.pop("system", {})
    t = create_trial(
        state=state,
        value=value,
        params={"optim.lr": 1e-3},
        distributions=LR,
        user_attrs={"run_dir": f"/runs/{number}", **user},
        system_attrs=system,
    )
    t.number = number
    return t


def numbers(
    trials: list[optuna.trial.FrozenTrial], keep: int, direction=StudyDirection.MINIMIZE
) -> list[int]:
    return sorted(t.number for t in deletable(trials, keep, direction, max_retries=1))


def test_only_the_best_n_complete_trials_keep_theirs_and_pruned_ones_never() -> None:
    trials = [
        trial(0, TrialState.COMPLETE, 3.0),
        trial(1, TrialState.COMPLETE, 1.0),
        trial(2, TrialState.PRUNED),
    ]
    trials += [trial(3, TrialState.COMPLETE, 2.0), trial(4, TrialState.RUNNING), trial(5, TrialState.WAITING)]
    assert numbers(trials, keep=2) == [0, 2]
    assert numbers(trials, keep=0) == [0, 1, 2, 3]
    assert numbers(trials, keep=2, direction=StudyDirection.MAXIMIZE) == [1, 2]  # 3.0 and 2.0 are best


def test_a_failed_trial_keeps_its_checkpoint_while_anything_may_resume_from_it() -> None:
    ckpt = "/runs/1/checkpoints/last.ckpt"
    killed = trial(1, TrialState.FAIL, fail_kind="killed")
    # Killed, its retry not queued yet (another worker is between FAIL and the queueing): kept.
    assert numbers([killed], keep=0) == []
    # Its retry waits, then runs, resuming from the killed trial's last.ckpt: kept.
    retry = dict(resume_from=ckpt, system={"failed_trial": 1, "retry_history": [1]})
    assert numbers([killed, trial(2, TrialState.WAITING, **retry)], keep=0) == []
    assert numbers([killed, trial(2, TrialState.RUNNING, **retry)], keep=0) == []
    # The retry ended (any way): nothing resumes from trial 1 any more.
    assert numbers([killed, trial(2, TrialState.COMPLETE, 1.0, **retry)], keep=1) == [1]
    # Killed again before its first checkpoint: the next retry resumes from trial 1's, still kept.
    again = dict(resume_from=ckpt, system={"failed_trial": 1, "retry_history": [1, 2]})
    chain = [
        killed,
        trial(2, TrialState.FAIL, fail_kind="killed", **retry),
        trial(3, TrialState.WAITING, **again),
    ]
    assert numbers(chain, keep=0) == [2]
    # Interrupted before a checkpoint of its own, its retry not queued yet: it will pass trial 1's on.
    stopped = dict(resume_from=ckpt, system={"failed_trial": 1, "retry_history": [1]})
    assert numbers([killed, trial(2, TrialState.FAIL, fail_kind="interrupted", **stopped)], keep=0) == []


def test_a_failed_trial_that_will_not_run_again_loses_its_checkpoint() -> None:
    crashed = trial(0, TrialState.FAIL, fail_kind="oom")  # failed by its own job: never retried
    out_of_retries = trial(1, TrialState.FAIL, fail_kind="killed", system={"retry_history": [7]})
    interrupted = trial(2, TrialState.FAIL, fail_kind="interrupted", system={"retry_history": [7, 8, 9]})
    assert numbers([crashed, out_of_retries, interrupted], keep=3) == [0, 1]  # interruptions: always again


def test_only_checkpoint_files_are_deleted(tmp_path: Path) -> None:
    run = tmp_path / "0"
    for name in ("checkpoints/last.ckpt", "checkpoints/best.ckpt", "checkpoints/.last.ckpt.x.tmp",
                 "adapter/adapter_model.safetensors", "metrics.json", "csv/metrics.csv"):  # fmt: skip
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(b"x" * 10)
    freed, total = delete_checkpoints([str(run), str(tmp_path / "never-ran")])
    assert freed == [str(run)] and total == 30
    assert not (run / "checkpoints").exists()
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()) == [
        "adapter/adapter_model.safetensors", "csv/metrics.csv", "metrics.json"
    ]  # fmt: skip


def test_the_log_names_freed_trials_as_spans() -> None:
    assert spans([7, 0, 1, 2, 5, 8]) == "0-2, 5, 7-8" and spans([4]) == "4" and spans([]) == ""


def test_keep_checkpoints_must_be_a_count_or_null(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sweeplab.train", "--multirun", *SMALL, "hparams_search=qlora",
         "hydra.sweeper.keep_checkpoints=-1", f"paths.output_root={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "hydra.sweeper.keep_checkpoints must be an integer >= 0" in result.stderr
    assert "Traceback" not in result.stderr


def sweep(out: Path, study: str, *overrides: str) -> list[str]:
    return [
        sys.executable, "-m", "sweeplab.train", "--multirun", *SMALL, "hparams_search=qlora",
        f"hydra.sweeper.study_name={study}", "eval.n_generate=4", "data.n_test=4", "eval.max_new_tokens=16",
        f"paths.output_root={out}", *overrides,
    ]  # fmt: skip


def checkpointed(out: Path, study: str) -> list[int]:
    return sorted(int(p.parent.parent.name) for p in (out / "sweeps" / study).glob("*/checkpoints/last.ckpt"))


@pytest.mark.slow
def test_a_sweep_keeps_the_best_trials_checkpoints_and_every_adapter(tmp_path: Path) -> None:
    # Successive halving from the first validation: pruned trials too, on these short trials.
    cmd = sweep(tmp_path, "keep", "hydra.sweeper.n_trials=6", "hydra.sweeper.keep_checkpoints=2")
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = load(tmp_path, "keep").trials
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert checkpointed(tmp_path, "keep") == sorted(t.number for t in complete[:2])
    for t in complete:  # every finished trial's results stay
        run_dir = Path(t.user_attrs["run_dir"])
        assert (run_dir / "metrics.json").is_file() and (
            run_dir / "adapter" / "adapter_config.json"
        ).is_file()
    assert "(hydra.sweeper.keep_checkpoints)" in result.stderr + result.stdout


@pytest.mark.slow
def test_two_workers_a_killed_trial_resumes_and_then_its_checkpoint_goes(tmp_path: Path) -> None:
    """keep_checkpoints=0 on two workers: worker 0 deletes finished trials' checkpoints after each of its
    trials, while worker 1's trial trains; worker 1 is SIGKILLed, and its trial's retry must still find
    the checkpoint it resumes from."""
    cmd = sweep(
        tmp_path, "two", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "hydra/sweeper/pruner=none",
        "hydra.sweeper.keep_checkpoints=0", "trainer.max_steps=40",
    )  # fmt: skip
    log = tmp_path / "sweep.log"
    proc = start(cmd, log)
    db = f"sqlite:///{tmp_path / 'sweeps' / 'optuna.db'}"

    def worker_1_trial_checkpointed() -> bool:
        try:
            running = optuna.load_study(study_name="two", storage=db).get_trials(states=(TrialState.RUNNING,))
        except Exception:  # noqa: BLE001 - the study is not created yet
            return False
        for t in running:
            ckpt = tmp_path / "sweeps" / "two" / str(t.number) / "checkpoints" / "last.ckpt"
            if t.system_attrs["sweeplab:worker"]["pid"] != proc.pid and ckpt.is_file():
                worker_1_trial_checkpointed.victim = (t.number, t.system_attrs["sweeplab:worker"]["pid"])
                return True
        return False

    wait_for(worker_1_trial_checkpointed, proc, log)
    number, pid = worker_1_trial_checkpointed.victim
    os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=900) == 0, log.read_text()[-4000:]
    # Worker 0 may have counted the killed trial as running and ended its loop before the kill: the command
    # then finds the dead worker's trial once its workers are done; else worker 0's loop found it. Either
    # way it is resumed, once, before the command ends; a rerun has nothing left to do.
    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    trials = load(tmp_path, "two").trials
    assert len(trials) == 5  # 4 and the killed one's retry: the rerun added none
    assert trials[number].state == TrialState.FAIL and trials[number].user_attrs["fail_kind"] == "killed"
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == number]
    assert retry.state == TrialState.COMPLETE
    job_log = (tmp_path / "sweeps" / "two" / str(retry.number) / "train.log").read_text()
    assert "Restored all states from the checkpoint" in job_log  # it was there when the retry began
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
    assert checkpointed(tmp_path, "two") == []  # and gone once the retry had finished
    assert "Traceback" not in log.read_text() + rerun.stderr
