"""The job's handle on its Optuna trial; light enough for the sweeper plugin to import.

The sweeper passes the trial id in SWEEPLAB_TRIAL_ID; storage, study name and pruner come from the
job's own hydra.sweeper config, so the job rebuilds exactly the study the sweeper asked from.
"""

from __future__ import annotations

import os
from typing import Any

import optuna

TRIAL_ENV = "SWEEPLAB_TRIAL_ID"
# The study's storage as the sweeper resolved it (a relative SQLite path against its cwd, or the
# default beside the trials), passed when it holds no password; else the job reads hydra.sweeper.storage.
STORAGE_ENV = "SWEEPLAB_STORAGE"
STUDY_ENV = (
    "SWEEPLAB_STUDY"  # the study's name, which the sweeper chooses when hydra.sweeper.study_name is null
)
_storages: dict[tuple[str, float], Any] = {}  # (url, timeout) -> the storage this process's trials use
PRUNERS = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
}


def pruner_kwargs(name: str, kwargs: dict[str, Any] | None, max_steps: int | None) -> dict[str, Any]:
    """Hyperband's max_resource=auto is every trial's length: known before the first trial ends."""
    kwargs = dict(kwargs or {})
    if name == "hyperband" and max_steps is not None and kwargs.get("max_resource", "auto") == "auto":
        kwargs["max_resource"] = max_steps
    return kwargs


def build_pruner(
    name: str, kwargs: dict[str, Any] | None = None, max_steps: int | None = None
) -> optuna.pruners.BasePruner:
    """The same pruner in the sweeper (the study's, which TPE reads) and in each job (which prunes)."""
    if name not in PRUNERS:
        raise ValueError(f"hydra.sweeper.pruner must be one of {list(PRUNERS)}, got {name!r}")
    if name == "none":  # turning pruning off needs no removing of the previous pruner's kwargs
        return optuna.pruners.NopPruner()
    return PRUNERS[name](**pruner_kwargs(name, kwargs, max_steps))


def trial_from_env(sweeper_cfg: Any, max_steps: int | None = None) -> optuna.Trial | None:
    """The trial this job runs for, or None outside a sweeplab sweep."""
    trial_id = os.environ.get(TRIAL_ENV)
    if not trial_id or sweeper_cfg is None or "pruner" not in sweeper_cfg:
        return None
    pruner = build_pruner(sweeper_cfg.pruner, dict(sweeper_cfg.get("pruner_kwargs") or {}), max_steps)
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
