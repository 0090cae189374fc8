"""A trial that only sleeps, swept by sweeplab: what bench_workers.py measures is the sweeper and its storage.

    python bench/sleep_app/sleep.py --multirun hydra.sweeper.storage=postgresql+psycopg://... \
        hydra.sweeper.n_jobs=4 seconds=1.5 reports=5

Each trial sleeps `seconds` in `reports` equal steps and reports a value after each through sweeplab's
pruning API, so the storage sees a real trial's traffic (ask, reports, should_prune, tell) without any
training fighting the workers for the CPU. The reported values do not depend on the params, so the
median pruner reads every finished trial at each report and never stops one: every trial works the
same `seconds`. The trial's own timing goes to work.json in its run dir, not to the storage.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import hydra
import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sweeplab.sweep.job import report


@hydra.main(config_path="conf", config_name="config", version_base=None)
def sleep(cfg: DictConfig) -> float:
    start = time.time()
    in_reports = 0.0  # seconds spent in report(): storage round trips inside the trial
    for step in range(cfg.reports):
        time.sleep(cfg.seconds / cfg.reports)
        t0 = time.perf_counter()
        stop = report(1.0 / (step + 1), step=step)
        in_reports += time.perf_counter() - t0
        if stop:
            raise optuna.TrialPruned(f"pruned at step {step}")
    work = {"pid": os.getpid(), "start": start, "end": time.time(), "in_reports": in_reports}
    Path(HydraConfig.get().runtime.output_dir, "work.json").write_text(json.dumps(work))
    return (cfg.lr - 1e-3) ** 2 + cfg.dropout + 0.01 * cfg.r  # the sampler gets something to model


if __name__ == "__main__":
    sleep()
