"""`hydra/sweeper=sweeplab`: the upstream Optuna sweeper's keys plus the ones its limits needed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf


@dataclass
class SweeplabSweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.sweeplab_sweeper.sweeper.SweeplabSweeper"
    # none | median | successive_halving | hyperband; the job reports the objective at every validation
    # (the final one too) and may be stopped at any but the final one. The study and every job build
    # the same pruner (TPE reads it: under Hyperband it models each bracket's trials apart).
    pruner: str = "median"
    # The pruner's own arguments, checked against its signature and trainer.max_steps before the study
    # exists: a value that could never prune is refused. Hyperband's max_resource=auto is max_steps.
    # With pruner=none they are not used (so turning pruning off needs no other change).
    pruner_kwargs: dict[str, Any] = field(default_factory=dict)
    # Known recipes run as the first trials of a new study: [{recipe: name, params: {key: value}}].
    enqueue: list[Any] = field(default_factory=list)
    # Worker processes on one storage; each takes the next trial as soon as its own ends. With
    # hydra/launcher=submitit_slurm or submitit_local: the number of worker jobs.
    n_jobs: int = 1
    # FAIL trials do not count toward n_trials; beyond this many the sweep stops (default: n_trials).
    max_failures: int | None = None
    # Upstream's failure rate per batch of trials; this sweeper runs no batches and stops on
    # max_failures alone, so any value is refused (one rule, not two overlapping ones).
    max_failure_rate: float | None = None
    # Upstream's hook, honoured: module.function(cfg, trial) called on each asked trial; the params it
    # suggests become overrides of that trial, like hydra.sweeper.params.
    custom_search_space: str | None = None
    # A worker that dies mid-trial stops beating; its trial turns FAIL and its params run again.
    heartbeat_interval: int = 30
    # Seconds without a heartbeat after which a trial of a worker on another machine is called lost
    # (on this machine a dead pid is certain at once). It must outlast an outage a worker rides out:
    # at least storage_timeout + heartbeat_interval + 4 s, else refused; null: that + heartbeat_interval.
    grace_period: int | None = None
    # Seconds a storage outage (a PostgreSQL restart) is ridden out: every storage call of the sweep,
    # the jobs' reports and the heartbeat retry with backoff meanwhile, and training goes on. Longer,
    # and the running trial saves last.ckpt and the sweep exits 75 saying how to resume.
    storage_timeout: int = 180
    # How often a killed trial's params run again (from its last checkpoint); interruptions are free.
    max_retries: int = 1
    # Opt-in: stop the study once the best has not improved over this many finished trials
    # (COMPLETE or PRUNED, in trial order); null runs all n_trials. A rerun stops at once too.
    patience: int | None = None
    # Opt-in: before launching, each trial's config is sized by sweeplab.estimate (no weights load) and
    # a trial whose predicted total exceeds this many GB (2**30 bytes, as the estimate counts them) is
    # stored PRUNED with pruned_reason "predicted X GB > Y GB" instead of running into an OOM. The
    # total is the one for the trial's trainer.accelerator: fp32 activations on cpu, the GPU's
    # 16-mixed otherwise (docs/ESTIMATE.md; activations read about half the measured CPU growth, so
    # leave headroom). Such trials count toward n_trials like other PRUNED ones; TPE ranks a pruned
    # trial without intermediate values worst and so learns to avoid that region. A trial that cannot
    # be estimated runs unchecked (one warning). null: no check.
    max_memory_gb: float | None = None
    # With hydra/launcher=submitit_slurm (or submitit_local) this command submits n_jobs worker jobs
    # and trains nothing itself. true: it waits, logs progress and summarizes (Ctrl-C or SIGTERM
    # cancels the jobs; their running trials are queued again). false: it returns at once, printing
    # the job ids, their logs and how to follow; running it again resumes. Other launchers: must be true.
    wait: bool = True
    # Opt-in: the compute the whole study may train, in runs of trainer.max_steps (optimizer steps of
    # every trial, pruned and failed ones too, and the lr range test). A hard cap: a trial starts only
    # if it fits whole; n_trials still caps the count. null: n_trials alone.
    budget: float | None = None
    # Opt-in: {steps: N} runs an lr range test before the first trial (N steps, lr rising exponentially
    # over the optim.lr interval of params, at the space's centre: each choice's first value). optim.lr
    # is then searched from lr_at_min_loss / 10**1.5 to lr_at_min_loss, the centre point at its
    # middle runs first, then the recipes. Needs optim.lr as a log interval; counted in budget.
    lr_range_test: dict[str, Any] | None = None
    # Disk: once a trial is finished and nothing can resume from it (COMPLETE, PRUNED, or FAIL that
    # will not run again), its checkpoints/ (last.ckpt, best.ckpt) are deleted unless it is among the
    # best N COMPLETE trials; adapters, metrics.json, predictions and logs stay. 3: the winner and two
    # runners-up can be trained on from their optimizer state, and the disk holds ~N + n_jobs trials'
    # checkpoints whatever n_trials is. null keeps every checkpoint; 0 keeps none of finished trials.
    keep_checkpoints: int | None = 3


ConfigStore.instance().store(
    group="hydra/sweeper", name="sweeplab", node=SweeplabSweeperConf, provider="sweeplab"
)
