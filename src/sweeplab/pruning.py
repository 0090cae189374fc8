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
        if trainer.sanity_checking or trainer.global_step == 0:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        step = trainer.global_step
        # A retried trial inherits its predecessor's values; Optuna ignores a second report and warns.
        if step not in self.trial.storage.get_trial(self.trial._trial_id).intermediate_values:
            self.trial.report(float(value), step=step)
        # The final validation (trainer.validate, after fit) and the one at max_steps may be the
        # trial's result: reported above so the curve is whole, but pruning them saves no work and
        # would throw a finished result away (successive halving's rungs can fall on max_steps).
        if trainer.state.fn != "fit" or step >= trainer.max_steps or not self.trial.should_prune():
            return
        self.pruned_at = step
        trainer.should_stop = True
        log.info("trial %d pruned at step %d (%s %.4f)", self.trial.number, step, self.monitor, value)
