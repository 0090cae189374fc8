"""hydra/sweeper/sampler=grid: the grid is the search space's own values, as upstream builds it.

Optuna's GridSampler takes its grid as a constructor argument, so its config is a partial that the
sweeper completes from hydra.sweeper.params and the command line's sweeps.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import optuna
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
from omegaconf import DictConfig
from optuna.distributions import BaseDistribution, FloatDistribution

GRID_TARGET = "optuna.samplers.GridSampler"


def is_grid(sampler: Any) -> bool:
    """A grid sampler's node (hydra/sweeper/sampler=grid), or the partial upstream's tests pass."""
    if isinstance(sampler, DictConfig | dict):
        return sampler.get("_target_") == GRID_TARGET
    return isinstance(sampler, functools.partial) and sampler.func is optuna.samplers.GridSampler


def grid_problems(distributions: dict[str, BaseDistribution]) -> list[str]:
    """Every searched key needs a finite list of values; a float interval without a step has none."""
    return [
        f"{name}: the grid sampler needs a finite set of values, and a float interval has none; "
        f"use choice(a, b, ...) or range(start, stop, step) for {name}, or another sampler"
        for name, dist in distributions.items()
        if isinstance(dist, FloatDistribution) and dist.step is None
    ]


def grid_space(distributions: dict[str, BaseDistribution]) -> dict[str, list[Any]]:
    """Upstream's conversion: choices as they are, ranges as their values (both ends included)."""
    return {name: list(OptunaSweeperImpl._to_grid_sampler_choices(d)) for name, d in distributions.items()}


def grid_size(space: dict[str, list[Any]]) -> int:
    return math.prod(len(values) for values in space.values())


def tell(study: optuna.Study, trial: optuna.Trial, **kwargs: Any) -> None:
    """study.tell, where a grid sampler's study.stop() at the last grid point is no error.

    GridSampler calls study.stop() once its grid is used up, which raises outside study.optimize();
    the trial's state is stored before that, and this sweeper stops by n_trials (capped at the grid).
    """
    try:
        study.tell(trial, **kwargs)
    except RuntimeError as exc:
        if "`Study.stop` is supposed to be invoked" not in str(exc):
            raise
