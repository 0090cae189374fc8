"""The pruner config group (`hydra/sweeper/pruner=NAME`) and the one way a pruner is built from it.

Each option is a node with its own `_target_` and arguments, so one override switches the pruner and
leaves none of the previous one's arguments behind. The sweeper (the study's pruner, which TPE reads)
and each job (which prunes) build it with `build_pruner`, so both hold the same one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from hydra.utils import instantiate
from omegaconf import MISSING, DictConfig, OmegaConf

# A config names a pruner by _target_: only Optuna's pruners, plus what the app's own
# @hydra.main(execution_whitelist=...) trusts, may be built (Hydra 1.4's execution whitelist).
PRUNER_WHITELIST = ("optuna.pruners.*",)


@dataclass
class PrunerConfig:
    _target_: str = MISSING


@dataclass
class NopPrunerConfig(PrunerConfig):
    """No pruning: every trial runs to its end."""

    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConfig(PrunerConfig):
    """https://optuna.readthedocs.io/en/stable/reference/generated/optuna.pruners.MedianPruner.html"""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class SuccessiveHalvingPrunerConfig(PrunerConfig):
    """https://optuna.readthedocs.io/en/stable/reference/generated/optuna.pruners.SuccessiveHalvingPruner.html"""

    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"  # an int (steps), or auto: Optuna's estimate from the first finished trial
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class HyperbandPrunerConfig(PrunerConfig):
    """https://optuna.readthedocs.io/en/stable/reference/generated/optuna.pruners.HyperbandPruner.html"""

    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"  # an int (steps), or auto: the trials' length where the sweep knows it
    reduction_factor: int = 3
    bootstrap_count: int = 0


# The group's options (hydra/sweeper/pruner=NAME); an app's conf dir may add or shadow them.
PRUNERS: dict[str, type[PrunerConfig]] = {
    "none": NopPrunerConfig,
    "median": MedianPrunerConfig,
    "successive_halving": SuccessiveHalvingPrunerConfig,
    "hyperband": HyperbandPrunerConfig,
}


def pruner_node(pruner: Any) -> DictConfig:
    """The pruner's node as composed from the group; a plain name is the older spelling, refused
    with the new one (its arguments would otherwise stay behind, or mean something else)."""
    if isinstance(pruner, str):
        hint = (
            f"hydra/sweeper/pruner={pruner}"
            if pruner in PRUNERS
            else f"hydra/sweeper/pruner=NAME, NAME one of {list(PRUNERS)}"
        )
        raise ValueError(
            f"hydra.sweeper.pruner={pruner}: the pruner is a config group, like the sampler; write {hint} "
            "(in a config's defaults list: `- override /hydra/sweeper/pruner: NAME`) and set its arguments "
            "as hydra.sweeper.pruner.KEY=VALUE"
        )
    if not isinstance(pruner, DictConfig | dict) or "_target_" not in pruner:
        raise ValueError(
            f"hydra.sweeper.pruner must be a pruner node with a _target_ (hydra/sweeper/pruner=NAME, "
            f"NAME one of {list(PRUNERS)}), got {pruner!r}"
        )
    return pruner if isinstance(pruner, DictConfig) else OmegaConf.create(pruner)


def pruner_arguments(node: DictConfig, max_steps: int | None) -> dict[str, Any]:
    """The node's arguments, resolved; Hyperband's max_resource=auto is the trials' length when the
    sweep knows it (trainer.max_steps), so its brackets exist before the first trial ends."""
    kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_target_"}
    if (
        node._target_ == "optuna.pruners.HyperbandPruner"
        and max_steps is not None
        and kwargs.get("max_resource", "auto") == "auto"
    ):
        kwargs["max_resource"] = max_steps
    return kwargs


def build_pruner(pruner: Any, max_steps: int | None = None) -> optuna.pruners.BasePruner:
    """The same pruner in the sweeper and in each job; a target outside the whitelist is refused."""
    node = pruner_node(pruner)
    return instantiate(
        {"_target_": node._target_, **pruner_arguments(node, max_steps)},
        _execution_whitelist_=PRUNER_WHITELIST,
    )
