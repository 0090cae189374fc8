"""`hydra/sweeper=sweeplab`: the upstream Optuna sweeper's keys plus the ones its limits needed."""

from __future__ import annotations

from dataclasses import MISSING as NO_DEFAULT
from dataclasses import dataclass, field, fields
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from omegaconf import MISSING, OmegaConf

from sweeplab.sweep.pruners import PRUNERS, MedianPrunerConfig


@dataclass
class SweeplabSweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.sweeplab_sweeper.sweeper.SweeplabSweeper"
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])
    # A config group like the sampler: hydra/sweeper/pruner=none | median | successive_halving | hyperband,
    # each node its own _target_ and arguments (hydra.sweeper.pruner.n_warmup_steps=4).
    # `hydra.sweeper.pruner=NAME` (a plain name, the older spelling) is refused with the new one. The job
    # reports the objective at every validation (the final one too) and may be stopped at any but the final
    # one. The study and every job build the same pruner (TPE reads it: under Hyperband it models each
    # bracket's trials apart). Arguments are checked against the pruner's signature and trainer.max_steps
    # before the study exists: a value that could never prune is refused.
    pruner: Any = MISSING
    # Gone: the arguments are the pruner node's own keys. Any value is refused, saying so.
    pruner_kwargs: Any = None
    # Known recipes run as the first trials of a new study: [{recipe: name, params: {key: value}}].
    enqueue: list[Any] = field(default_factory=list)
    # Worker processes on one storage; each takes the next trial as soon as its own ends. With
    # hydra/launcher=submitit_slurm or submitit_local: the number of worker jobs.
    n_jobs: int = 1
    # FAIL trials do not count toward n_trials; beyond this many the sweep stops (default: n_trials).
    max_failures: int | None = None
    # Upstream's key, 0..1: the share of n_trials that may fail. This sweeper runs no batches, so the
    # rate is a count: floor(rate * n_trials) failures are tolerated, one more stops the sweep
    # (0.0, upstream's default: the first failure stops it). Set it or max_failures, not both.
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


_UPSTREAM_KEYS = {f.name for f in fields(OptunaSweeperConf)}
# sweeplab's own keys and their defaults, for an impl built in code with upstream's arguments alone.
EXTRA_DEFAULTS: dict[str, Any] = {
    f.name: f.default if f.default is not NO_DEFAULT else f.default_factory()
    for f in fields(SweeplabSweeperConf)
    if f.name not in _UPSTREAM_KEYS
}
EXTRA_DEFAULTS["pruner"] = OmegaConf.structured(MedianPrunerConfig)  # the group's default option

ConfigStore.instance().store(
    group="hydra/sweeper", name="sweeplab", node=SweeplabSweeperConf, provider="sweeplab"
)
for name, node in PRUNERS.items():
    ConfigStore.instance().store(group="hydra/sweeper/pruner", name=name, node=node, provider="sweeplab")
