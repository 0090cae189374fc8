"""A hydra.sweeper.custom_search_space function for tests: upstream's (cfg, trial) hook adding a param."""

from __future__ import annotations

import optuna
from omegaconf import DictConfig


def warmup(cfg: DictConfig, trial: optuna.Trial) -> None:
    trial.suggest_categorical("optim.warmup_ratio", [0.0, 0.2])
