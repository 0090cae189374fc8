"""`hydra.sweeper.max_memory_gb`: a trial predicted not to fit is pruned in seconds, not run into an OOM."""

from __future__ import annotations

import logging
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.trial import TrialState

from hydra_plugins.sweeplab_sweeper.grid import tell

log = logging.getLogger(__name__)


class MemoryGate:
    """Sizes each proposed trial with sweeplab.estimate (meta device, no weights) before it launches."""

    def __init__(self, limit_gb: float | None) -> None:
        self.limit_gb = limit_gb
        self.warned = False
        self.warned_seq = False

    def reason(
        self, hydra_context: Any, config: DictConfig, overrides: list[str]
    ) -> tuple[str, float] | None:
        """("predicted X GB > Y GB", predicted GB) when the trial would not fit; None to run it.

        An estimate that cannot be made (an architecture it cannot size, a config the job itself will
        reject with a better message) runs the trial: the limit is a filter, never a new failure.
        """
        if self.limit_gb is None:
            return None
        try:
            from sweeplab.config import validate
            from sweeplab.estimate import GIB, estimate

            trial_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
            rc = validate(trial_config)
            predicted = estimate(rc).total / GIB
        except Exception as exc:  # noqa: BLE001 - any failure to estimate is the trial's to meet, not the sweep's
            if not self.warned:
                self.warned = True
                message = " ".join(str(exc).split())[:300]
                log.warning(
                    "hydra.sweeper.max_memory_gb: cannot estimate a trial (%s: %s); running such trials "
                    "unchecked (this warning is shown once)",
                    type(exc).__name__,
                    message,
                )
            return None
        if rc.data.max_seq_len is None and not self.warned_seq:
            self.warned_seq = True
            log.warning(
                "hydra.sweeper.max_memory_gb: data.max_seq_len is unset, so trials are sized at the "
                "model's context, an upper bound (a run's rows are its longest chat): set data.max_seq_len "
                "to size them at your data's length"
            )
        if predicted <= self.limit_gb:
            return None
        return f"predicted {gb(predicted)} GB > {self.limit_gb:g} GB", predicted


def gb(value: float) -> str:
    """One decimal as a person reads a memory size; two significant digits below 1 GB (tiny models)."""
    return f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def prune_predicted(study: optuna.Study, trial: optuna.Trial, reason: str, predicted_gb: float) -> None:
    """PRUNED, not FAIL: a region the sampler should avoid, not a crash counted toward max_failures."""
    trial.set_user_attr("pruned_reason", reason)
    trial.set_user_attr("predicted_memory_gb", round(predicted_gb, 4))
    tell(study, trial, state=TrialState.PRUNED)
    params = " ".join(f"{k}={v}" for k, v in trial.params.items())
    log.info(
        "trial %d PRUNED before launch (hydra.sweeper.max_memory_gb): %s; %s",
        trial.number,
        reason,
        params,
    )
