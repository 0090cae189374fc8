"""A Lightning callback that reports the objective to the job's Optuna trial and stops hopeless ones."""

from __future__ import annotations

import logging
import math

import lightning as L
import optuna

log = logging.getLogger(__name__)


class PruningCallback(L.Callback):
    """Reports the objective at the optimizer step of every validation and stops a hopeless trial.

    optuna-integration's PyTorchLightningPruningCallback reports per epoch; sweeplab validates
    several times per epoch, which that callback would collapse into one point.
    """

    def __init__(self, trial: optuna.Trial, monitor: str = "val/loss") -> None:
        self.trial = trial
        self.monitor = monitor
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or trainer.global_step == 0:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        self.trial.report(float(value), step=trainer.global_step)
        # At the last step the work is done: pruning now would only throw the finished result away
        # (successive halving's rungs can fall exactly on max_steps).
        if trainer.global_step < trainer.max_steps and self.trial.should_prune():
            self.pruned_at = trainer.global_step
            trainer.should_stop = True
            log.info(
                "trial %d pruned at step %d (%s %.4f)", self.trial.number, self.pruned_at, self.monitor, value
            )
