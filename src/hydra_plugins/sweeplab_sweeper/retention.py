"""`hydra.sweeper.keep_checkpoints`: a finished trial's checkpoints go once nothing can resume from them.

A trial's `checkpoints/` (last.ckpt and best.ckpt: LoRA weights, optimizer and scheduler state) is
for resuming it after a fault, and for training the best trials on later. Every other file of a
trial (adapter/, metrics.json, predictions, config, logs) is kept.

Whoever runs this (any worker, after any trial) decides from the study alone, so several workers on
one storage agree, and a file another worker may still need is never touched:
- only finished trials lose theirs: COMPLETE ones outside the best N, PRUNED ones, and FAIL ones
  that will not run again or whose retry already carries the path it resumes from;
- a path that a WAITING or RUNNING trial resumes from (`resume_from`) is kept, whoever made it;
- a FAIL trial whose retry is not queued yet (the moment between "FAIL" and "queue it again") is
  kept, with the checkpoint it resumed from: its kind says it will be retried, and the retry will
  need one of the two.
The decision only ever grows: values never change and trials only finish, so a stale view of the
study keeps more, never less.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hydra_plugins.sweeplab_sweeper.recovery import RESUME_ATTR

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
# Fail kinds that queue the params again (recovery.fail_lost_trials, SweeplabSweeperImpl.stop_trial);
# the first two only up to hydra.sweeper.max_retries.
RETRIED = {"killed": True, "lost": True, "storage": False, "interrupted": False, "disk_full": False}


def _retried_later(trial: FrozenTrial, max_retries: int) -> bool:
    """Will a retry of this FAIL trial be queued (Optuna's RetryHeartbeatStaleTrialCallback rule)?"""
    kind = trial.user_attrs.get("fail_kind")
    if kind not in RETRIED:
        return False  # failed by its own job (error, oom, diverged, ...): never run again
    capped = RETRIED[kind]
    return not capped or len(trial.system_attrs.get("retry_history", [])) + 1 <= max_retries


def deletable(
    trials: list[FrozenTrial], keep: int, direction: StudyDirection | list[StudyDirection], max_retries: int
) -> list[FrozenTrial]:
    """The finished trials whose checkpoints no trial can need any more, best N COMPLETE ones aside.

    Several objectives have no best N: every COMPLETE trial keeps its checkpoints (a Pareto front
    moves as trials finish), and only what cannot resume goes."""
    directions = direction if isinstance(direction, list) else [direction]
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    sign = -1.0 if directions[0] == StudyDirection.MAXIMIZE else 1.0
    ranked = sorted(complete, key=lambda t: (sign * t.values[0], t.number))
    best = {t.number for t in (ranked if len(directions) > 1 else ranked[:keep])}
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}

    def unqueued_retry(t: FrozenTrial) -> bool:  # FAIL, to run again, its retry not queued yet
        return t.state == TrialState.FAIL and t.number not in retried and _retried_later(t, max_retries)

    # A retry resumes from its own resume_from; one not queued yet inherits its trial's (when that
    # trial died before a checkpoint of its own).
    pending = (TrialState.WAITING, TrialState.RUNNING)
    needed = {
        str(Path(t.user_attrs[RESUME_ATTR]).parent)
        for t in trials
        if (t.state in pending or unqueued_retry(t)) and t.user_attrs.get(RESUME_ATTR)
    }
    out = []
    for t in trials:
        if t.state == TrialState.COMPLETE:
            gone = t.number not in best
        elif t.state == TrialState.PRUNED:
            gone = True
        else:  # FAIL: unless it will run again from here; RUNNING, WAITING: never
            gone = t.state == TrialState.FAIL and not unqueued_retry(t)
        run_dir = t.user_attrs.get("run_dir")
        if gone and run_dir and str(Path(run_dir) / CHECKPOINTS) not in needed:
            out.append(t)
    return out


def delete_checkpoints(run_dirs: Iterable[str]) -> tuple[list[str], int]:
    """Remove each run dir's checkpoint files (and half-written temp files); (dirs freed, bytes)."""
    freed, total = [], 0
    for run_dir in run_dirs:
        folder = Path(run_dir) / CHECKPOINTS
        if not folder.is_dir():
            continue
        size = 0
        for path in list(folder.iterdir()):
            if path.suffix in (".ckpt", ".tmp") and path.is_file():
                try:
                    size += path.stat().st_size
                    path.unlink()
                except FileNotFoundError:  # another worker removed it first
                    continue
        if size:
            freed.append(run_dir)
            total += size
        with contextlib.suppress(OSError):
            folder.rmdir()  # empty now (a storage_lost.txt note, if any, keeps it)
    return freed, total


def spans(numbers: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8': a sweep's first pass after a rerun may free hundreds."""
    out: list[str] = []
    for n in sorted(numbers):
        if out and n == int(out[-1].split("-")[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


def apply(
    trials: list[FrozenTrial],
    keep: int | None,
    direction: StudyDirection | list[StudyDirection],
    max_retries: int,
) -> None:
    """Delete what `keep` allows; one log line when anything went."""
    if keep is None:
        return
    gone = deletable(trials, keep, direction, max_retries)
    freed, total = delete_checkpoints(t.user_attrs["run_dir"] for t in gone)
    if freed:
        numbers = sorted(t.number for t in gone if t.user_attrs["run_dir"] in freed)
        log.info(
            "checkpoints of trial%s %s deleted (%.1f MB): not among the best %d and nothing resumes from "
            "them (hydra.sweeper.keep_checkpoints)",
            "s" if len(numbers) > 1 else "",
            spans(numbers),
            total / 1e6,
            keep,
        )
