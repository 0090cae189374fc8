"""Trials whose worker died or was interrupted: marked FAIL with a reason, and run again.

A RUNNING trial holds the host and pid of its worker. On this host a dead pid is certain at once;
elsewhere Optuna's heartbeat grace period decides. Either way the trial becomes FAIL and a copy
with the same parameters is queued (optuna's RetryHeartbeatStaleTrialCallback), carrying the
killed trial's last checkpoint so the retry resumes instead of starting over.
"""

from __future__ import annotations

import copy
import datetime
import logging
import socket
from pathlib import Path

import optuna
import psutil
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)

WORKER_ATTR = "sweeplab:worker"
RESUME_ATTR = "resume_from"
STORAGE_LOST_NOTE = "storage_lost.txt"  # must match sweeplab.training.interrupt
ORPHAN = "storage: never claimed (made by an ask that a storage outage cut; the ask made another)"
KEPT_ATTRS = ("recipe", "recipe_overrides")  # the rest (run_dir, steps, ...) describe the failed attempt only


def this_worker() -> dict[str, object]:
    me = psutil.Process()
    return {"host": socket.gethostname(), "pid": me.pid, "started": me.create_time()}


def claim(study: optuna.Study, trial: optuna.Trial) -> None:
    study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, this_worker())


def _alive(worker: dict) -> bool:
    try:  # the start time tells a reused pid from the worker that held the trial
        proc = psutil.Process(worker["pid"])
        same = abs(proc.create_time() - worker["started"]) < 1.0
        # A killed worker stays a zombie until its parent reaps it (a sweep's command reaps its workers
        # only at its end): it holds a pid and a start time, and it is dead.
        return same and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, KeyError, TypeError):
        return False


def last_checkpoint(trial: FrozenTrial) -> str | None:
    run_dir = trial.user_attrs.get("run_dir")
    ckpt = Path(run_dir) / "checkpoints" / "last.ckpt" if run_dir else None
    if ckpt is not None and ckpt.is_file():
        return str(ckpt)
    return trial.user_attrs.get(RESUME_ATTR)  # killed again before its first checkpoint


class RetryWithCheckpoint(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry, with the failed attempt's last checkpoint to resume from."""

    def __init__(self, max_retry: int | None) -> None:
        super().__init__(max_retry=max_retry, inherit_intermediate_values=True)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        retry = copy.copy(trial)
        retry.user_attrs = {k: v for k, v in trial.user_attrs.items() if k in KEPT_ATTRS}
        ckpt = last_checkpoint(trial)
        if ckpt:
            retry.user_attrs[RESUME_ATTR] = ckpt
        retry.system_attrs = {k: v for k, v in trial.system_attrs.items() if k != WORKER_ATTR}
        before = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        limit = self._max_retry
        if limit is not None:  # earlier attempts that were interrupted or lost the storage cost no retry
            self._max_retry = limit + _free_attempts(study, trial.system_attrs.get("retry_history", []))
        try:
            super().__call__(study, retry)
        finally:
            self._max_retry = limit
        queued = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) > before
        where = f" from {ckpt}" if ckpt else ""
        log.warning(
            "trial %d: %s", trial.number, f"its params run again{where}" if queued else "no retries left"
        )


def _unclaimed_for(trial: FrozenTrial, now: datetime.datetime) -> float:
    return (now - trial.datetime_start).total_seconds() if trial.datetime_start else 0.0


FREE_KINDS = ("interrupted", "storage")  # no verdict on the params: a retry is not used up by them


def _free_attempts(study: optuna.Study, numbers: list[int]) -> int:
    trials = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    return sum(1 for n in numbers if n in trials and trials[n].user_attrs.get("fail_kind") in FREE_KINDS)


def fail_lost_trials(study: optuna.Study, max_retry: int | None) -> None:
    """RUNNING trials whose worker is gone turn FAIL with a reason, and their params are queued again.

    Dead workers on this host are certain at once (pid + start time); on other hosts the storage's
    heartbeat grace period decides, as in optuna.storages.fail_stale_trials. That function sets FAIL
    before its callback runs, and a finished trial takes no more attrs, so the reason could not be
    stored: hence these few lines instead of it.
    """
    host = socket.gethostname()
    storage = study._storage
    lost: dict[int, str] = {}
    backend = getattr(storage, "_backend", storage)  # Optuna wraps an RDBStorage in its cache
    interval = getattr(backend, "heartbeat_interval", None)
    if interval:
        grace = backend.grace_period or 2 * interval  # RDBStorage's own default
        for trial_id in storage._get_stale_trial_ids(study._study_id):
            lost[trial_id] = f"lost: no heartbeat from its worker for over {grace} s"
    now = datetime.datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.system_attrs.get(WORKER_ATTR)
        if not worker and interval and _unclaimed_for(trial, now) > grace:
            # Every trial is claimed in the section that asked it. One never claimed was made by an ask
            # whose commit landed while its reply was lost to a restart (the ask, retried, made another):
            # nobody runs it, and no heartbeat will ever call it stale.
            lost[trial._trial_id] = ORPHAN
        if not worker or worker.get("host") != host:
            continue
        if _alive(worker):  # certain here: its beats were only held up by a storage outage
            lost.pop(trial._trial_id, None)
        elif (note := _storage_lost_note(trial)) is not None:
            lost[trial._trial_id] = f"storage: {note}"
        else:
            lost[trial._trial_id] = (
                f"killed: worker pid {worker['pid']} died mid-trial (SIGKILL, OOM killer or power loss)"
            )
    for trial_id, reason in lost.items():
        kind = reason.split(":")[0]  # killed | lost | storage
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            storage.set_trial_user_attr(trial_id, "fail_kind", kind)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished after all, or another worker failed it first
        log.warning("trial %d FAIL (%s)", storage.get_trial_number_from_id(trial_id), reason)
        if reason == ORPHAN:
            continue  # its twin runs: nothing to queue again
        # A storage outage is no verdict on the params: it uses up none of their retries.
        retries = None if kind == "storage" else max_retry
        RetryWithCheckpoint(retries)(study, copy.deepcopy(storage.get_trial(trial_id)))


def _storage_lost_note(trial: FrozenTrial) -> str | None:
    """What GracefulStop wrote beside last.ckpt when the storage went away (it could store nothing)."""
    run_dir = trial.user_attrs.get("run_dir")
    note = Path(run_dir) / "checkpoints" / STORAGE_LOST_NOTE if run_dir else None
    return note.read_text().strip() if note is not None and note.is_file() else None
