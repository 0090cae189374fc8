"""Any Hydra app, pruned by sweeplab's sweeper: gradient descent on x**2, reporting its loss each step.

    python docs/examples/prunable_app/descent.py --multirun            # 8 trials over lr, median pruner
    python -m sweeplab.report descent --storage sqlite:///multirun/<date>/<time>/optuna.db

Trials whose loss lags the median of earlier trials at the same step are stopped there (PRUNED).
The same script runs alone (`python descent.py lr=0.1`) or under the upstream optuna sweeper:
`report` then stores nothing and never asks to stop.
"""

from __future__ import annotations

import hydra
import optuna
from omegaconf import DictConfig

from sweeplab.sweep.job import report


@hydra.main(config_path="conf", config_name="config", version_base=None)
def descend(cfg: DictConfig) -> float:
    x = cfg.start
    loss = x * x
    for step in range(cfg.steps):
        x -= cfg.lr * 2 * x  # the gradient of x**2
        loss = x * x
        if report(loss, step=step):  # True: the pruner stops this trial now
            raise optuna.TrialPruned(f"pruned at step {step} (loss {loss:.4g})")
    return loss


if __name__ == "__main__":
    descend()
