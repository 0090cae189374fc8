"""Pruning for any Hydra app swept with hydra/sweeper=sweeplab: report a value, learn whether to stop.

    from sweeplab.sweep.job import report

    for epoch in range(cfg.epochs):
        loss = train_one_epoch()
        if report(loss, step=epoch):        # True: the study's pruner stops this trial here
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")
    return loss

The values go to the job's own Optuna trial (the one sweeplab's training reports to), the pruner is the
sweep's (`hydra/sweeper/pruner=NAME`, its arguments `hydra.sweeper.pruner.KEY`), and a storage outage is
ridden out as for sweeplab's own jobs. Outside a sweeplab sweep (a single run, another sweeper) and in
multi-objective studies, which Optuna cannot prune, `report` stores nothing and returns False, so the
same app runs everywhere.
"""

from __future__ import annotations

import os
from typing import Any

from sweeplab.sweep.trial import TRIAL_ENV, trial_from_env

_trial: dict[str, Any] = {}  # trial id -> its handle: one load_study per job, not per report


def current_trial() -> Any:
    """This job's optuna.Trial under hydra/sweeper=sweeplab, else None."""
    trial_id = os.environ.get(TRIAL_ENV)
    if not trial_id:
        return None
    if trial_id not in _trial:
        from hydra.core.hydra_config import HydraConfig

        sweeper = HydraConfig.get().sweeper if HydraConfig.initialized() else None
        _trial.clear()
        _trial[trial_id] = trial_from_env(sweeper)
    return _trial[trial_id]


def report(value: float, step: int) -> bool:
    """Store `value` at `step` for this trial; True when the pruner says to stop it now.

    Raise optuna.TrialPruned on True: the sweeper stores the trial PRUNED with this last value and
    goes on. A step reported twice keeps its first value (Optuna's rule)."""
    trial = current_trial()
    if trial is None or len(trial.study.directions) > 1:
        return False
    if step not in trial.storage.get_trial(trial._trial_id).intermediate_values:
        trial.report(float(value), step=step)
    return trial.should_prune()
