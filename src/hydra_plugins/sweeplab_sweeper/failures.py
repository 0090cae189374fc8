"""How many FAIL trials a sweep tolerates: sweeplab's count (max_failures), or upstream's rate
(max_failure_rate, a share of n_trials: this sweeper runs no batches, so the rate is a count), or
n_trials. A trial stopped by the user is no failure of its params; the caller leaves those out."""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass

import optuna

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FailureRule:
    count: int | None  # hydra.sweeper.max_failures
    rate: float | None  # hydra.sweeper.max_failure_rate
    n_trials: int

    @property
    def limit(self) -> int:
        if self.count is not None:
            return self.count
        if self.rate is not None:
            return math.floor(self.rate * self.n_trials)
        return self.n_trials

    @property
    def every_trial_may_fail(self) -> bool:
        return self.count is None and (self.rate or 0.0) >= 1.0

    def verdict(self, failures: list[optuna.trial.FrozenTrial]) -> bool | None:
        """None: go on; True: done (upstream's rate 1.0 never stops a sweep, which ends after n_trials
        trials; FAIL trials do not count toward n_trials here, so it ends at n_trials of them); False:
        too many failed, said on stderr with the rule and the last one's reason (upstream raises it)."""
        if self.every_trial_may_fail and len(failures) >= self.n_trials:
            log.warning("all %d trials failed (hydra.sweeper.max_failure_rate=1.0)", len(failures))
            return True
        if len(failures) <= self.limit:
            return None
        if self.count is not None:
            rule = f"hydra.sweeper.max_failures={self.count}"
        elif self.rate is not None:
            rule = f"hydra.sweeper.max_failure_rate={self.rate} of n_trials={self.n_trials}"
        else:
            rule = f"by default n_trials={self.n_trials}"
        last = failures[-1]
        message = (
            f"{len(failures)} trials failed, more than {self.limit} ({rule}): stopping the sweep; "
            f"the last, trial {last.number}: {last.user_attrs.get('fail_reason', 'no reason recorded')}"
        )
        log.error("%s", message)
        print(f"sweeplab: error: {message}", file=sys.stderr)
        return False
