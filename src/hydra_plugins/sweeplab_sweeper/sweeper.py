"""The sweep loop, one trial at a time per worker: ask under a lock, launch, tell, until the study is full.

Extends the upstream OptunaSweeperImpl (its search-space parsing, trial configuration and
directions are reused); only `sweep()` is replaced, because upstream's is one block with no hooks.
The study's set-up and summary live in study.py, what a finished job means in outcome.py, and the
command that submits workers as cluster jobs and waits for them in cluster.py.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import optuna
from hydra.errors import InstantiationException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import DictConfig
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from hydra_plugins.sweeplab_sweeper import checks, cluster, phases
from hydra_plugins.sweeplab_sweeper.config import EXTRA_DEFAULTS
from hydra_plugins.sweeplab_sweeper.grid import grid_size, grid_space, is_grid, tell
from hydra_plugins.sweeplab_sweeper.memory import MemoryGate, prune_predicted
from hydra_plugins.sweeplab_sweeper.outcome import (
    SweepDiskFull,
    SweepInterrupted,
    beat,
    interrupted,
    note_storage_lost,
    outcome,
    raise_interrupt,
    release_memory,
)
from hydra_plugins.sweeplab_sweeper.recovery import RESUME_ATTR, RetryWithCheckpoint, claim, fail_lost_trials
from hydra_plugins.sweeplab_sweeper.storage import absolute_url, open_storage, study_lock
from hydra_plugins.sweeplab_sweeper.study import (
    configure_trials,
    enqueue_recipes,
    log_to_wandb,
    open_study,
    record_settings,
    sampler_for,
    set_metric,
    summarize,
    trials_since_best,
    with_recipe,
)
from sweeplab.config import validate
from sweeplab.secrets import install_log_redaction, redact_text
from sweeplab.sweep.pruners import pruner_node
from sweeplab.sweep.storage_retry import LOST, LOST_ERROR, StorageUnreachable
from sweeplab.sweep.trial import TRIAL_ENV
from sweeplab.training.ranks import WORKER_ENV
from sweeplab.trust import refusal

log = logging.getLogger(__name__)
# Heartbeats are documented for study.optimize(); ask/tell with our own beat thread is equivalent.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
warnings.filterwarnings("ignore", message=".*fail_stale_trials is experimental", category=ExperimentalWarning)

STORAGE_LOST_EXIT = 75  # EX_TEMPFAIL: try again later


class SweeplabSweeperImpl(OptunaSweeperImpl):
    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: Any | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float | None,
        custom_search_space: str | None,
        params: DictConfig | None,
        **extra: Any,
    ) -> None:
        """Upstream's signature (a drop-in for OptunaSweeperImpl), then sweeplab's keys by name."""
        if unknown := sorted(set(extra) - set(EXTRA_DEFAULTS)):
            raise TypeError(f"SweeplabSweeperImpl got unknown keys {unknown}")
        extra = {**EXTRA_DEFAULTS, **extra}
        try:  # upstream resolves the hook with instantiate(): the app's execution whitelist applies
            super().__init__(
                None, direction, storage, study_name, n_trials, n_jobs, max_failure_rate or 0.0,
                custom_search_space, params,
            )  # fmt: skip
        except InstantiationException as exc:
            raise InstantiationException(
                refusal("hydra.sweeper.custom_search_space", custom_search_space, exc)
            ) from exc
        # The sampler's node, built per trial (reseeded) once the grid, if any, is known; or a sampler
        # built in code, used as it is.
        self.sampler_cfg = sampler
        self.grid: dict[str, list[Any]] | None = None
        self.max_failure_rate = max_failure_rate
        self.pruner = pruner_node(extra["pruner"])
        self.enqueue = extra["enqueue"]
        self.max_failures_cfg = extra["max_failures"]
        self.heartbeat_interval = extra["heartbeat_interval"]
        self.grace_period = extra["grace_period"]
        self.max_retries = extra["max_retries"]
        self.patience = extra["patience"]
        self.in_flight: Path | None = None  # the run dir of the trial this process is running
        self.storage_timeout = extra["storage_timeout"]
        self.memory = MemoryGate(extra["max_memory_gb"])
        self.wait = extra["wait"]
        self.cluster: str | None = None  # 'slurm' | 'local' under a submitit launcher: workers are jobs
        self.budget = extra["budget"]  # runs of trainer.max_steps the whole study may train, or None

    @property
    def max_failures(self) -> int:
        """FAIL trials tolerated: max_failures, or upstream's rate as a share of n_trials, or n_trials."""
        if self.max_failures_cfg is not None:
            return self.max_failures_cfg
        if self.max_failure_rate is not None:
            return math.floor(self.max_failure_rate * self.n_trials)
        return self.n_trials

    def _get_directions(self) -> list[str]:
        """`auto` (the default, via ${objective.direction}): the objective metric's own sense."""
        return [self.objective.resolved_direction if d == "auto" else d for d in super()._get_directions()]

    @property
    def objective(self):
        return validate(self.config).objective

    def _configure_trials(self, trials, search_space_distributions, fixed_params, fixed_overrides):
        """Upstream's hook, kept an override: study.configure_trials says what it changes."""
        extender = self.custom_search_space_extender
        return configure_trials(
            self.config, extender, trials, search_space_distributions, fixed_params, fixed_overrides
        )

    def sweep(self, arguments: list[str]) -> None:
        install_log_redaction()  # the launcher logs every job's overrides, a storage URL among them
        sys.argv[:] = [redact_text(a) for a in sys.argv]  # W&B records argv; workers use sys.orig_argv
        self._process_searchspace_config()
        distributions, fixed, fixed_overrides = create_params_from_overrides(
            self._parse_sweeper_params_config() + list(arguments)
        )
        for name in fixed:
            distributions.pop(name, None)
        if is_grid(self.sampler_cfg):  # checks.grid_problems refused a continuous interval before
            self.grid = grid_space(distributions)
            # Every grid point once; recipes (enqueue) run besides the grid, as extra points.
            cap = grid_size(self.grid) + len(self.enqueue or [])
            if self.n_trials > cap:
                log.info(
                    "grid sampler: n_trials %d -> %d, the grid's size and the recipes", self.n_trials, cap
                )
                self.n_trials = cap
        sweep_dir = Path(self.sweep_dir)
        url = absolute_url(str(self.storage or f"sqlite:///{sweep_dir.parent / 'optuna.db'}"))
        lock = lambda: study_lock(url, self.study_name, sweep_dir, self.storage_timeout)  # noqa: E731
        metric = self.objective.metric
        try:
            self._sweep(url, lock, distributions, fixed, fixed_overrides, sweep_dir, metric)
        except StorageUnreachable as exc:  # one line, no traceback: the rerun resumes from last.ckpt
            log.error("%s", exc)
            note_storage_lost(self.in_flight, exc)
            sys.exit(STORAGE_LOST_EXIT)

    def _sweep(self, url, lock, distributions, fixed, fixed_overrides, sweep_dir: Path, metric: str) -> None:
        LOST.clear()
        LOST_ERROR.clear()
        with lock():
            storage = open_storage(url, self.heartbeat_interval, self.grace_period, self.storage_timeout)
            study = open_study(
                storage,
                url,
                self.study_name,
                self._get_directions(),
                self.sampler_cfg,
                self.pruner,
                self.config.trainer.max_steps,
                self.grid,
            )
            set_metric(study, metric)
            record_settings(study, self.config.trainer.max_steps, self.budget, self.objective)
            if not phases.wanted(self.config, distributions):  # else after the range test's centre point
                enqueue_recipes(study, self.enqueue, distributions, fixed)
        finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        log.info(
            "study %s in %s: %d of %d trials done",
            study.study_name,
            redact_text(url),
            len(finished),
            self.n_trials,
        )
        if self.cluster and not os.environ.get(WORKER_ENV):
            return cluster.run_on_cluster(
                study,
                lock,
                sweep_dir,
                url,
                self.launcher,
                self.cluster,
                self.n_jobs,
                self.n_trials,
                self.max_retries,
                self.wait,
                self.config,
            )
        workers = cluster.spawn_workers(sweep_dir, self.n_jobs) if not os.environ.get(WORKER_ENV) else []
        received: list[int] = []
        if threading.current_thread() is threading.main_thread():
            # SIGTERM (SLURM, Kubernetes) outside a training step: stop like Ctrl-C, not die at once
            # with the workers left running. Inside a step, GracefulStop takes both signals over.
            signal.signal(signal.SIGTERM, lambda signum, frame: raise_interrupt(received, signum))
        try:
            complete = self.work(study, storage, lock, distributions, fixed, fixed_overrides)
        except (SweepInterrupted, KeyboardInterrupt) as stop:
            sig = signal.SIGTERM if received or "SIGTERM" in str(stop) else signal.SIGINT
            for worker in workers:  # their own sessions: the signal reached this process only
                if worker.poll() is None:
                    worker.send_signal(sig)
            for worker in workers:
                worker.wait()
            log.warning("sweep stopped (%s); run the same command again to resume", stop or sig.name)
            sys.exit(130)
        except SweepDiskFull as stop:
            for worker in workers:  # they write to the same disk: stop them at a step too
                if worker.poll() is None:
                    worker.send_signal(signal.SIGINT)
            log.error("sweep stopped: %s", stop)
            sys.exit(1)
        finally:
            for worker in workers:
                worker.wait()
        if not os.environ.get(WORKER_ENV):
            summarize(study, sweep_dir)
            log_to_wandb(study, self.config, sweep_dir)
        if not complete:
            sys.exit(1)  # too many failures: the log above says which and why

    def work(self, study, storage, lock, distributions, fixed, fixed_overrides) -> bool:
        """Run trials until the study holds n_trials finished ones or its budget is spent (True), or too
        many failed (False). The range test, when configured, comes first and narrows optim.lr."""
        distributions = phases.before_trials(self, study, lock, distributions, fixed, fixed_overrides)
        max_steps = self.config.trainer.max_steps
        while True:
            with lock():
                fail_lost_trials(study, self.max_retries)
                trials = study.get_trials(deepcopy=False)
                if not phases.budget_left(study, trials, self.budget, max_steps):
                    return True
                states = collections.Counter(t.state for t in trials)
                if states[TrialState.COMPLETE] + states[TrialState.PRUNED] + states[TrialState.RUNNING] >= (
                    self.n_trials
                ):
                    return True
                # A trial stopped by the user is no failure of its params (it is queued again).
                failures = [t for t in trials if t.state == TrialState.FAIL and not interrupted(t)]
                if len(failures) > self.max_failures:
                    self.stop_for_failures(failures)
                    return False
                if self.patience is not None and (since := trials_since_best(study, trials)) >= self.patience:
                    log.info(
                        "the best has not improved over the last %d finished trials "
                        "(hydra.sweeper.patience=%d): stopping the sweep",
                        since,
                        self.patience,
                    )
                    return True
                study.sampler = sampler_for(self.sampler_cfg, len(study.trials), self.grid)
                if self.grid is not None and study.sampler.is_exhausted(study):
                    return True  # a failed point counts as run, as upstream's grid sweeps count it
                with warnings.catch_warnings():  # a recipe's lr outside the narrowed range is meant
                    warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
                    trial = study.ask()
                claim(study, trial)
                [overrides] = self._configure_trials([trial], distributions, fixed, fixed_overrides)
            overrides = with_recipe(list(overrides), trial)
            # Outside the lock: sizing takes seconds, and other workers need not wait for it.
            predicted = self.memory.reason(self.hydra_context, self.config, overrides)
            if predicted is not None:
                prune_predicted(study, trial, *predicted)
                continue
            self.run_trial(study, storage, trial, overrides)
            if LOST.is_set():  # the heartbeat gave up after the trial had ended
                raise LOST_ERROR[0]

    def stop_for_failures(self, failures: list[optuna.trial.FrozenTrial]) -> None:
        """Upstream raises the failing job's error; here its reason goes to stderr with the rule."""
        if self.max_failures_cfg is not None:
            rule = f"hydra.sweeper.max_failures={self.max_failures_cfg}"
        elif self.max_failure_rate is not None:
            rule = f"hydra.sweeper.max_failure_rate={self.max_failure_rate} of n_trials={self.n_trials}"
        else:
            rule = f"by default n_trials={self.n_trials}"
        last = failures[-1]
        message = (
            f"{len(failures)} trials failed, more than {self.max_failures} ({rule}): stopping the sweep; "
            f"the last, trial {last.number}: {last.user_attrs.get('fail_reason', 'no reason recorded')}"
        )
        log.error("%s", message)
        print(f"sweeplab: error: {message}", file=sys.stderr)

    def run_trial(self, study: optuna.Study, storage, trial: optuna.Trial, overrides: list[str]) -> None:
        recipe = trial.user_attrs.get("recipe")
        params = " ".join(f"{k}={v}" for k, v in trial.params.items())
        log.info("trial %d%s: %s", trial.number, f" ({recipe})" if recipe else "", params)
        self.in_flight = Path(self.sweep_dir) / str(trial.number)  # hydra.sweep.subdir: the trial number
        overrides += [
            f"+hydra.job.env_set.{TRIAL_ENV}={trial._trial_id}",
            f"logger.group={study.study_name}",
            f"logger.name=trial-{trial.number}",
        ]
        resume_from = trial.user_attrs.get(RESUME_ATTR)
        if resume_from and Path(resume_from).is_file():  # a retry of a killed trial goes on from there
            overrides.append(f"ckpt_path='{resume_from}'")
            log.info("trial %d resumes %s", trial.number, resume_from)
        beating = threading.Event()
        heart = threading.Thread(
            target=beat, args=(storage, trial._trial_id, self.heartbeat_interval, beating), daemon=True
        )
        heart.start()
        try:
            [ret] = self.launcher.launch([overrides], initial_job_idx=trial.number)
        except (KeyboardInterrupt, SystemExit) as exc:  # stopped outside a training step
            self.stop_trial(study, trial, f"interrupted ({type(exc).__name__})")
            raise SweepInterrupted(f"trial {trial.number} interrupted") from None
        finally:
            beating.set()
            heart.join()
        state, value, reason, kind = outcome(ret)
        del ret
        release_memory()
        if kind == "storage":  # last.ckpt saved; the trial stays RUNNING and the rerun resumes it
            raise LOST_ERROR[0] if LOST_ERROR else StorageUnreachable(storage.url, self.storage_timeout)
        if kind == "interrupted":
            self.stop_trial(study, trial, reason)
            raise SweepInterrupted(f"trial {trial.number} {reason}")
        if kind == "disk_full":  # every later trial would fail the same way: stop, keep the params queued
            self.stop_trial(study, trial, reason, kind)
            raise SweepDiskFull(f"trial {trial.number} FAIL: {reason}")
        if reason:
            trial.set_user_attr("fail_reason", reason)
            trial.set_user_attr("fail_kind", kind)
            log.warning("trial %d failed (%s): %s", trial.number, kind, reason)
        tell(study, trial, state=state, values=None if value is None else [value])
        shown = (
            f" {study.metric_names[0] if study.metric_names else 'value'} {value:.4f}"
            if value is not None
            else ""
        )
        log.info("trial %d %s%s", trial.number, state.name, shown)
        self.in_flight = None

    def stop_trial(
        self, study: optuna.Study, trial: optuna.Trial, reason: str, kind: str = "interrupted"
    ) -> None:
        """An interruption (or a full disk) is no verdict on the params: FAIL, and queue them again."""
        trial.set_user_attr("fail_reason", reason)
        trial.set_user_attr("fail_kind", kind)
        tell(study, trial, state=TrialState.FAIL)
        RetryWithCheckpoint(max_retry=None)(study, study._storage.get_trial(trial._trial_id))


class SweeplabSweeper(Sweeper):
    """Built by Hydra from hydra.sweeper; upstream OptunaSweeper builds its own impl, so we need ours."""

    def __init__(self, sampler: DictConfig, **kwargs: Any) -> None:
        checks.fail("invalid sweeper config", checks.option_problems(kwargs))
        try:
            self.impl = SweeplabSweeperImpl(sampler, **kwargs)
        except InstantiationException as exc:  # custom_search_space outside the execution whitelist
            checks.fail("invalid sweeper config", [str(exc)])

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        impl = self.impl
        impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        impl.cluster = cluster.executor_kind(impl.launcher)
        if impl.cluster and os.environ.get(WORKER_ENV):  # a worker job: its trials run in it
            impl.launcher = cluster.basic_launcher(hydra_context, task_function, config)

    def sweep(self, arguments: list[str]) -> None:
        impl = self.impl  # everything checked before a storage, study or trial exists
        checks.fail("cannot sweep here", checks.rank_problems())
        space = checks.space_problems(impl.params, arguments, impl.config)
        if is_grid(impl.sampler_cfg) and not space:
            space += checks.grid_sampler_problems(impl.params, arguments)
        space += checks.pruner_problems(impl.pruner, impl.config)
        checks.fail("invalid sweep", space + checks.enqueue_problems(impl.enqueue, impl.config))
        checks.fail("invalid config for every trial", checks.config_problems(impl.config, impl.direction))
        url = str(impl.storage or f"sqlite:///{Path(impl.sweep_dir).parent / 'optuna.db'}")
        checks.fail("cannot use the study storage", [p for p in [checks.storage_problem(url)] if p])
        launcher = impl.config.hydra.launcher
        checks.fail(
            "cannot run the workers as jobs", checks.cluster_problems(impl.cluster, url, launcher, impl.wait)
        )
        return impl.sweep(arguments)
