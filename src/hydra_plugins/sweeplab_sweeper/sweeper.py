"""The sweep loop, one trial at a time per worker: ask under a lock, launch, tell, until the study is full.

Extends the upstream OptunaSweeperImpl (its search-space parsing, trial configuration and
directions are reused); only `sweep()` is replaced, because upstream's is one block with no hooks.
The study's set-up and summary live in study.py, what a finished job means in outcome.py, and the
command that submits workers as cluster jobs and waits for them in cluster.py.
"""

from __future__ import annotations

import collections
import logging
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
from optuna.trial import TrialState

from hydra_plugins.sweeplab_sweeper import apps, checks, cluster, phases, retention
from hydra_plugins.sweeplab_sweeper.config import EXTRA_DEFAULTS
from hydra_plugins.sweeplab_sweeper.failures import FailureRule
from hydra_plugins.sweeplab_sweeper.grid import grid_size, grid_space, is_grid, tell
from hydra_plugins.sweeplab_sweeper.memory import MemoryGate, prune_predicted
from hydra_plugins.sweeplab_sweeper.outcome import (
    SweepDiskFull,
    SweepInterrupted,
    beat,
    interrupted,
    note_storage_lost,
    outcome,
    quiet_optuna,
    release_memory,
    shown_values,
)
from hydra_plugins.sweeplab_sweeper.recovery import RESUME_ATTR, RetryWithCheckpoint, claim, fail_lost_trials
from hydra_plugins.sweeplab_sweeper.sigterm import SigtermGuard, WorkerSignals
from hydra_plugins.sweeplab_sweeper.storage import (
    absolute_url,
    default_storage,
    grace_period_for,
    open_storage,
    study_lock,
)
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
from sweeplab.outputs import quiet_log_write_errors
from sweeplab.secrets import install_log_redaction, redact_text
from sweeplab.sweep.pruners import pruner_node
from sweeplab.sweep.storage_retry import LOST, LOST_ERROR, StorageUnreachable
from sweeplab.sweep.task import is_sweeplab_task
from sweeplab.sweep.trial import STORAGE_ENV, STUDY_ENV, TRIAL_ENV
from sweeplab.training.ranks import WORKER_ENV
from sweeplab.training.signal_relay import passing_signals_to, take_signal
from sweeplab.trust import refusal

log = logging.getLogger(__name__)

STORAGE_LOST_EXIT = 75  # EX_TEMPFAIL: try again later
NOP = {"_target_": "optuna.pruners.NopPruner"}  # what a multi-objective study gets


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
        self.grace_period = grace_period_for(
            extra["grace_period"], extra["heartbeat_interval"], extra["storage_timeout"]
        )
        self.max_retries = extra["max_retries"]
        self.patience = extra["patience"]
        self.in_flight: Path | None = None  # the run dir of the trial this process is running
        self.storage_timeout = extra["storage_timeout"]
        self.memory = MemoryGate(extra["max_memory_gb"])
        self.wait = extra["wait"]
        self.cluster: str | None = None  # 'slurm' | 'local' under a submitit launcher: workers are jobs
        self.budget = extra["budget"]  # runs of trainer.max_steps the whole study may train, or None
        self.keep_checkpoints = extra["keep_checkpoints"]
        self.sigterm = SigtermGuard()
        self.extra = extra
        # sweeplab's training task (its checks, phases and W&B grouping), or any other Hydra app
        self.own_task = True
        self.task = "sweeplab.train.main"

    @property
    def max_steps(self) -> int | None:
        """sweeplab's trial length (pruner defaults, budget); None for another app."""
        return self.config.trainer.max_steps if self.own_task else None

    @property
    def metrics(self) -> list[str] | None:
        return self.objective.metrics if self.own_task else None

    @property
    def failure_rule(self) -> FailureRule:
        """Built when asked: a grid sweep caps n_trials after __init__."""
        return FailureRule(self.max_failures_cfg, self.max_failure_rate, self.n_trials)

    @property
    def max_failures(self) -> int:
        return self.failure_rule.limit

    def _get_directions(self) -> list[str]:
        """`auto` (the default, via ${objective.direction}): each objective metric's own sense."""
        given = apps.directions_of(self.direction)
        if not self.own_task:
            return given
        senses = self.objective.resolved_directions
        if given == ["auto"]:
            return senses
        return [sense if d == "auto" else d for d, sense in zip(given, senses, strict=True)]

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
        quiet_optuna()
        quiet_log_write_errors()  # a full disk: one line per log file, not a traceback per record
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
        url = absolute_url(default_storage(self.storage, sweep_dir))
        lock = lambda: study_lock(url, self.study_name, sweep_dir, self.storage_timeout)  # noqa: E731
        try:
            self._sweep(url, lock, distributions, fixed, fixed_overrides, sweep_dir, self.metrics)
        except StorageUnreachable as exc:  # one line, no traceback: the rerun resumes from last.ckpt
            log.error("%s", exc)
            note_storage_lost(self.in_flight, exc)
            sys.exit(STORAGE_LOST_EXIT)

    def _sweep(self, url, lock, distributions, fixed, fixed_overrides, sweep_dir: Path, metrics) -> None:
        LOST.clear()
        LOST_ERROR.clear()
        self.url = url
        directions = self._get_directions()
        if len(directions) > 1 and self.pruner._target_ != NOP["_target_"] and not os.environ.get(WORKER_ENV):
            log.info(
                "pruning is off: Optuna prunes single-objective studies only (%d objectives)", len(directions)
            )
        with lock():
            storage = open_storage(url, self.heartbeat_interval, self.grace_period, self.storage_timeout)
            study = open_study(
                storage,
                url,
                self.study_name,
                directions,
                self.sampler_cfg,
                self.pruner if len(directions) == 1 else pruner_node(NOP),  # Optuna prunes one objective
                self.max_steps,
                self.grid,
            )
            if self.own_task:
                set_metric(study, metrics)
                record_settings(study, self.max_steps, self.budget, self.objective)
            if not phases.wanted(self.config, distributions):  # else after the range test's centre point
                enqueue_recipes(
                    study, self.enqueue, distributions, fixed, program=apps.program(self.own_task)
                )
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
                apps.worker_argv(str(sweep_dir), study.study_name),
                self.own_task,
            )
        workers = (
            []
            if os.environ.get(WORKER_ENV)
            else cluster.local_workers(self.config, sweep_dir, self.n_jobs, study.study_name)
        )
        self.sigterm.install()
        take_signal()  # one a run took over before this sweep is not this sweep's
        to_workers = WorkerSignals(workers)
        try:
            with passing_signals_to(to_workers.send):  # a run here that takes a signal passes it on
                complete = self.work(study, storage, lock, distributions, fixed, fixed_overrides)
            if self.sigterm.received:  # it came in a storage section, which ended the loop
                raise KeyboardInterrupt
            for worker in workers:  # in the try: a SIGTERM while they finish their trials stops them too
                worker.wait()
            if complete and workers:
                # A worker killed after this loop had counted its trial as running left it RUNNING: the
                # loop, once more, finds it lost (its pid is gone here) and runs its retry in this process.
                complete = self.work(study, storage, lock, distributions, fixed, fixed_overrides)
        except (SweepInterrupted, KeyboardInterrupt) as stop:
            sig = signal.SIGTERM if self.sigterm.received or "SIGTERM" in str(stop) else signal.SIGINT
            to_workers.send(sig)  # those a run here has not passed it on to already
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
            self.sigterm.restore()
        if not os.environ.get(WORKER_ENV):
            summarize(study, sweep_dir)
            if self.own_task:
                log_to_wandb(study, self.config, sweep_dir)
        if not complete:
            sys.exit(1)  # too many failures: the log above says which and why

    def work(self, study, storage, lock, distributions, fixed, fixed_overrides) -> bool:
        """Run trials until the study holds n_trials finished ones or its budget is spent (True), or too
        many failed (False). The range test, when configured, comes first and narrows optim.lr."""
        distributions = phases.before_trials(self, study, lock, distributions, fixed, fixed_overrides)
        max_steps = self.max_steps
        while True:
            if self.sigterm.received:  # it came while the last trial was stored: stop before the next
                raise SweepInterrupted("SIGTERM")
            with self.sigterm.deferred(), lock() as held:
                fail_lost_trials(study, self.max_retries)
                trials = study.get_trials(deepcopy=False)
                retention.apply(trials, self.keep_checkpoints, list(study.directions), self.max_retries)
                if not phases.budget_left(study, trials, self.budget, max_steps):
                    return True
                states = collections.Counter(t.state for t in trials)
                if states[TrialState.COMPLETE] + states[TrialState.PRUNED] + states[TrialState.RUNNING] >= (
                    self.n_trials
                ):
                    return True
                # A trial stopped by the user is no failure of its params (it is queued again).
                failures = [t for t in trials if t.state == TrialState.FAIL and not interrupted(t)]
                if (verdict := self.failure_rule.verdict(failures)) is not None:
                    return verdict
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
                if not held.still_held():  # a server restart freed it: another worker may have asked too
                    reason = "the study lock was lost in a storage outage while this trial was asked"
                    log.warning("trial %d: %s; its params are queued again", trial.number, reason)
                    self.stop_trial(study, trial, f"storage: {reason}", "storage")
                    continue
            overrides = with_recipe(list(overrides), trial)
            try:  # outside the lock: sizing takes seconds, and other workers need not wait for it
                predicted = self.memory.reason(self.hydra_context, self.config, overrides)
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the trial is claimed, so queue its params again
                self.stop_trial(study, trial, "interrupted (KeyboardInterrupt) while sized")
                raise SweepInterrupted(f"trial {trial.number} interrupted") from None
            if predicted is not None:
                prune_predicted(study, trial, *predicted)
                continue
            self.run_trial(study, storage, trial, overrides)
            if LOST.is_set():  # the heartbeat gave up after the trial had ended
                raise LOST_ERROR[0]

    def run_trial(self, study: optuna.Study, storage, trial: optuna.Trial, overrides: list[str]) -> None:
        recipe = trial.user_attrs.get("recipe")
        params = " ".join(f"{k}={v}" for k, v in trial.params.items())
        log.info("trial %d%s: %s", trial.number, f" ({recipe})" if recipe else "", params)
        self.in_flight = Path(self.sweep_dir) / str(trial.number)  # hydra.sweep.subdir: the trial number
        overrides += [
            f"+hydra.job.env_set.{TRIAL_ENV}={trial._trial_id}",
            f"+hydra.job.env_set.{STUDY_ENV}={apps.hydra_value(study.study_name)}",
        ]
        if redact_text(self.url) == self.url:  # no password in it: the job opens exactly this storage
            overrides.append(f"+hydra.job.env_set.{STORAGE_ENV}={apps.hydra_value(self.url)}")
        if self.own_task:
            overrides += [f"logger.group={study.study_name}", f"logger.name=trial-{trial.number}"]
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
            if self.sigterm.received:  # it came while this trial was asked: the trial never starts
                raise KeyboardInterrupt
            [ret] = self.launcher.launch([overrides], initial_job_idx=trial.number)
        except (KeyboardInterrupt, SystemExit) as exc:  # stopped outside a training step
            self.stop_trial(study, trial, f"interrupted ({type(exc).__name__})")
            raise SweepInterrupted(f"trial {trial.number} interrupted") from None
        finally:
            self.sigterm.deferring = True  # the job has ended: its trial is stored before a SIGTERM stops us
            beating.set()
            heart.join()
        try:
            result = outcome(ret, len(study.directions))
            del ret  # the job's exception holds its frames, and with them its model
            self.store(study, storage, trial, *result)
            if (taken := take_signal()) is not None:  # the job took it over, and its trial ended anyway
                raise SweepInterrupted(f"{taken} during trial {trial.number}, which ended {result[0].name}")
        finally:
            self.sigterm.deferring = False

    def store(self, study: optuna.Study, storage, trial: optuna.Trial, state, values, reason, kind) -> None:
        """What the job's end means for its trial, told to the study; a stop or a lost storage raises."""
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
        tell(study, trial, state=state, values=values)
        log.info("trial %d %s%s", trial.number, state.name, shown_values(study.metric_names, values))
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
        checks.fail("invalid sweeper config", checks.option_problems(kwargs))
        try:
            self.impl = SweeplabSweeperImpl(sampler, **kwargs)
        except InstantiationException as exc:  # custom_search_space outside the execution whitelist
            checks.fail("invalid sweeper config", [str(exc)])

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        impl = self.impl
        impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        impl.own_task = is_sweeplab_task(task_function)
        impl.task = apps.task_name(task_function)
        if impl.study_name is None:  # upstream's null is a random name; workers and a rerun need one name
            impl.study_name = str(config.hydra.job.name)
        impl.cluster = cluster.executor_kind(impl.launcher)
        if impl.cluster and os.environ.get(WORKER_ENV):  # a worker job: its trials run in it
            impl.launcher = cluster.basic_launcher(hydra_context, task_function, config)

    def sweep(self, arguments: list[str]) -> None:
        impl = self.impl  # everything checked before a storage, study or trial exists
        own = impl.own_task
        checks.fail("cannot sweep here", checks.rank_problems())
        if not own:
            checks.fail(
                "invalid sweeper config", apps.other_app_problems(impl.extra, impl.direction, impl.task)
            )
        space = checks.space_problems(impl.params, arguments, impl.config, own)
        if is_grid(impl.sampler_cfg) and not space:
            space += checks.grid_sampler_problems(impl.params, arguments)
        space += checks.pruner_problems(impl.pruner, impl.config)
        checks.fail("invalid sweep", space + checks.enqueue_problems(impl.enqueue, impl.config, own))
        if own:  # sweeplab's schema, data files and objective; another app's config is its own business
            checks.fail("invalid config for every trial", checks.config_problems(impl.config, impl.direction))
            if note := checks.end_only_note(impl.pruner, impl.config):
                log.info("%s", note)
        # directions resolved (auto: each objective.metric's sense), so checked after the config
        checks.fail(
            "invalid sweeper config", apps.multi_objective_problems(impl.extra, impl._get_directions())
        )
        url = default_storage(impl.storage, Path(impl.sweep_dir))
        # A worker rides out any outage; a user's command a restart, not long on a URL that answers nothing.
        worker = bool(os.environ.get(WORKER_ENV))
        problem = checks.storage_problem(url, impl.storage_timeout if worker else 0, impl.storage_timeout)
        checks.fail("cannot use the study storage", [problem] if problem else [])
        launcher = impl.config.hydra.launcher
        checks.fail(
            "cannot run the workers as jobs", checks.cluster_problems(impl.cluster, url, launcher, impl.wait)
        )
        return impl.sweep(arguments)
