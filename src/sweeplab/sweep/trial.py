"""The job's handle on its Optuna trial; light enough for the sweeper plugin to import.

The sweeper passes the trial id in SWEEPLAB_TRIAL_ID; storage, study name and pruner come from the
job's own hydra.sweeper config, so the job rebuilds exactly the study the sweeper asked from.
"""

from __future__ import annotations

import os
from typing import Any

import optuna

from sweeplab.sweep.pruners import build_pruner

TRIAL_ENV = "SWEEPLAB_TRIAL_ID"
# The study's storage as the sweeper resolved it (a relative SQLite path against its cwd, or the
# default beside the trials), passed when it holds no password; else the job reads hydra.sweeper.storage.
STORAGE_ENV = "SWEEPLAB_STORAGE"
STUDY_ENV = (
    "SWEEPLAB_STUDY"  # the study's name, which the sweeper chooses when hydra.sweeper.study_name is null
)
_storages: dict[tuple[str, float], Any] = {}  # (url, timeout) -> the storage this process's trials use


def trial_from_env(sweeper_cfg: Any, max_steps: int | None = None) -> optuna.Trial | None:
    """The trial this job runs for, or None outside a sweeplab sweep."""
    trial_id = os.environ.get(TRIAL_ENV)
    if not trial_id or sweeper_cfg is None or "pruner" not in sweeper_cfg:
        return None
    pruner = build_pruner(sweeper_cfg.pruner, max_steps)
    from sweeplab.sweep.storage_retry import RetryingRDBStorage

    # The sweeper's own storage settings: a database restart during training costs this job nothing.
    url = os.environ.get(STORAGE_ENV) or str(sweeper_cfg.storage)
    key = (url, sweeper_cfg.get("storage_timeout", 180))
    if key not in _storages:  # a worker's trials share one: its engine took ~20 ms to build per trial
        _storages.clear()
        _storages[key] = RetryingRDBStorage(key[0], timeout=key[1])
    storage = _storages[key]
    name = os.environ.get(STUDY_ENV) or sweeper_cfg.study_name
    study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
    return optuna.Trial(study, int(trial_id))
