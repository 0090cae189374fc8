"""A Lightning callback that reports the objective to the job's Optuna trial and stops hopeless ones."""

from __future__ import annotations

import contextlib
import logging
import math
import time

import lightning as L
import optuna

from sweeplab.sweep.storage_retry import StorageDown, StorageUnreachable, give_up, no_wait

log = logging.getLogger(__name__)


class PruningCallback(L.Callback):
    """Reports the objective at the optimizer step of every validation and stops a hopeless trial.

    optuna-integration's PyTorchLightningPruningCallback reports per epoch; sweeplab validates
    several times per epoch, which that callback would collapse into one point.

    While the storage is down, training goes on: reports wait in `pending` and are sent, in step
    order, at the next validation that reaches the storage; no pruning decision is taken meanwhile.
    """

    def __init__(self, trial: optuna.Trial | None, monitor: str = "val/loss", sign: float = 1.0) -> None:
        self.trial = trial  # None on ranks > 0 of a multi-device trial: they follow rank 0's decision
        self.monitor = monitor
        # -1: the monitored metric runs against the study's direction (val/loss rungs of a study that
        # maximizes tool calls): reported negated, so the pruner compares in the study's own sense.
        self.sign = sign
        self.pruned_at: int | None = None
        self.pending: dict[int, float] = {}  # step -> value, not yet stored

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.global_step == 0:
            return
        prune = self._judge(trainer) if self.trial is not None else False
        if trainer.world_size > 1:  # every rank stops at the same step, or the others wait forever
            prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            self.pruned_at = trainer.global_step
            trainer.should_stop = True

    def _judge(self, trainer: L.Trainer) -> bool:
        """Report this validation (rank 0 only) and ask the pruner; True: stop the trial."""
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return False
        step = trainer.global_step
        self.pending[step] = self.sign * float(value)
        # The final validation (trainer.validate, after fit) and the one at max_steps may be the
        # trial's result: reported so the curve is whole, but pruning them saves no work and
        # would throw a finished result away (successive halving's rungs can fall on max_steps).
        final = trainer.state.fn != "fit" or step >= trainer.max_steps
        try:
            with contextlib.nullcontext() if final else no_wait():  # the last report may wait
                self._flush()
                if final or not self.trial.should_prune():
                    return False
        except StorageDown:
            log.info("trial %d: report at step %d kept until the storage is back", self.trial.number, step)
            return False
        except StorageUnreachable as exc:
            if final:
                raise
            give_up(exc)  # GracefulStop saves last.ckpt at the next step and stops
            return False
        log.info("trial %d pruned at step %d (%s %.4f)", self.trial.number, step, self.monitor, value)
        return True

    def _flush(self) -> None:
        # A retried trial inherits its predecessor's values; Optuna ignores a second report and warns.
        stored = self.trial.storage.get_trial(self.trial._trial_id).intermediate_values
        for step in sorted(self.pending):
            if step not in stored:
                self.trial.report(self.pending[step], step=step)
            del self.pending[step]


class StartupClock(L.Callback):
    """Seconds from the trial's start (Optuna's datetime_start, before its job begins) to its first
    optimizer step: the per-trial overhead that a sweep of short trials pays again and again."""

    def __init__(self, trial_start: float) -> None:
        self.trial_start = trial_start  # time.time() seconds
        self.seconds: float | None = None

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if self.seconds is None:
            self.seconds = time.time() - self.trial_start
