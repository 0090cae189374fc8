"""The job's handle on its Optuna trial; light enough for the sweeper plugin to import.

The sweeper passes the trial id in SWEEPLAB_TRIAL_ID; storage, study name and pruner come from the
job's own hydra.sweeper config, so the job rebuilds exactly the study the sweeper asked from.
"""

from __future__ import annotations

import os
from typing import Any

import optuna

TRIAL_ENV = "SWEEPLAB_TRIAL_ID"
PRUNERS = ("none", "median", "successive_halving", "hyperband")


def build_pruner(name: str, kwargs: dict[str, Any] | None = None) -> optuna.pruners.BasePruner:
    kwargs = dict(kwargs or {})
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(**kwargs)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**kwargs)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(**kwargs)
    raise ValueError(f"hydra.sweeper.pruner must be one of {list(PRUNERS)}, got {name!r}")


def trial_from_env(sweeper_cfg: Any) -> optuna.Trial | None:
    """The trial this job runs for, or None outside a sweeplab sweep."""
    trial_id = os.environ.get(TRIAL_ENV)
    if not trial_id or sweeper_cfg is None or "pruner" not in sweeper_cfg:
        return None
    pruner = build_pruner(sweeper_cfg.pruner, dict(sweeper_cfg.get("pruner_kwargs") or {}))
    storage = str(sweeper_cfg.storage)
    study = optuna.load_study(study_name=sweeper_cfg.study_name, storage=storage, pruner=pruner)
    return optuna.Trial(study, int(trial_id))
