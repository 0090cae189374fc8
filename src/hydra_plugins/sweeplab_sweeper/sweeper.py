"""The sweep loop, one trial at a time per worker: ask under a lock, launch, tell, until the study is full.

Extends the upstream OptunaSweeperImpl (its search-space parsing, trial configuration and
directions are reused); only `sweep()` is replaced, because upstream's is one block with no hooks.
"""

from __future__ import annotations

import collections
import gc
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method, instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import DictConfig, OmegaConf
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from hydra_plugins.sweeplab_sweeper import checks, cluster
from hydra_plugins.sweeplab_sweeper.memory import MemoryGate
from hydra_plugins.sweeplab_sweeper.recovery import (
    RESUME_ATTR,
    STORAGE_LOST_NOTE,
    RetryWithCheckpoint,
    claim,
    fail_lost_trials,
)
from hydra_plugins.sweeplab_sweeper.storage import absolute_url, open_storage, study_lock
from sweeplab.config import validate
from sweeplab.errors import (
    ConfigError,
    DataError,
    DataLoaderFailed,
    DiskFull,
    DivergedError,
    Interrupted,
    OutOfMemory,
)
from sweeplab.outputs import atomic_write_text
from sweeplab.secrets import install_log_redaction, redact_text
from sweeplab.sweep.storage_retry import LOST, LOST_ERROR, StorageUnreachable, give_up
from sweeplab.sweep.trial import TRIAL_ENV, build_pruner
from sweeplab.training.ranks import WORKER_ENV

log = logging.getLogger(__name__)
# Heartbeats are documented for study.optimize(); ask/tell with our own beat thread is equivalent.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
warnings.filterwarnings("ignore", message=".*fail_stale_trials is experimental", category=ExperimentalWarning)

STORAGE_LOST_EXIT = 75  # EX_TEMPFAIL: try again later
RECIPE_OVERRIDES = "recipe_overrides"
FIXED_ATTR = "fixed"  # a trial's values of the keys the sweep does not search (the command's overrides)
SAMPLER_WHITELIST = ("hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*")


class SweeplabSweeperImpl(OptunaSweeperImpl):
    def __init__(self, sampler_cfg: DictConfig, extra: dict[str, Any], **upstream: Any) -> None:
        super().__init__(sampler=None, max_failure_rate=0.0, custom_search_space=None, **upstream)
        self.sampler_cfg = sampler_cfg
        if extra["custom_search_space"]:  # the user named it: trusted like callbacks.extra's targets
            self.custom_search_space_extender = get_method(extra["custom_search_space"])
        self.pruner = extra["pruner"]
        self.pruner_kwargs = dict(extra["pruner_kwargs"] or {})
        self.enqueue = extra["enqueue"]
        self.max_failures = extra["max_failures"] if extra["max_failures"] is not None else self.n_trials
        self.heartbeat_interval = extra["heartbeat_interval"]
        self.grace_period = extra["grace_period"]
        self.max_retries = extra["max_retries"]
        self.patience = extra["patience"]
        self.in_flight: Path | None = None  # the run dir of the trial this process is running
        self.storage_timeout = extra["storage_timeout"]
        self.memory = MemoryGate(extra["max_memory_gb"])
        self.wait = extra["wait"]
        self.cluster: str | None = None  # 'slurm' | 'local' under a submitit launcher: workers are jobs

    def _get_directions(self) -> list[str]:
        """`auto` (the default, via ${objective.direction}): the objective metric's own sense."""
        return [self.objective.resolved_direction if d == "auto" else d for d in super()._get_directions()]

    @property
    def objective(self):
        return validate(self.config).objective

    def sampler_for(self, n: int) -> optuna.samplers.BaseSampler:
        """Seed mixed with the trial number: a fixed seed would make workers and resumed studies repeat
        params; plain seed + n would make seed s+1 replay seed s shifted by one trial."""
        seed = self.sampler_cfg.get("seed")
        kwargs = {"seed": (seed * 1_000_003 + n) % 2**32} if seed is not None else {}
        return instantiate(self.sampler_cfg, **kwargs, _execution_whitelist_=SAMPLER_WHITELIST)

    def _configure_trials(self, trials, search_space_distributions, fixed_params, fixed_overrides):
        """Upstream's, with the fixed values stored as one user attr: upstream stores each (every
        command-line override is one), a commit apiece: 15 on the quick bench, ~20 ms per trial."""
        overrides = []
        for trial in trials:
            for name, distribution in search_space_distributions.items():
                trial._suggest(name, distribution)
            if self.custom_search_space_extender:
                self.custom_search_space_extender(self.config, trial)
                if overlap := trial.params.keys() & fixed_params.keys():
                    raise ValueError(f"the custom search space suggests fixed keys: {sorted(overlap)}")
            trial.set_user_attr(FIXED_ATTR, dict(fixed_params))
            params = {**trial.params, **fixed_params}
            overrides.append(tuple(f"{name}={val}" for name, val in params.items()) + tuple(fixed_overrides))
        return overrides

    def sweep(self, arguments: list[str]) -> None:
        install_log_redaction()  # the launcher logs every job's overrides, a storage URL among them
        sys.argv[:] = [redact_text(a) for a in sys.argv]  # W&B records argv; workers use sys.orig_argv
        self._process_searchspace_config()
        distributions, fixed, fixed_overrides = create_params_from_overrides(
            self._parse_sweeper_params_config() + list(arguments)
        )
        for name in fixed:
            distributions.pop(name, None)
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
            study = self.open_study(storage, url)
            if study.metric_names is None:
                study.set_metric_names([metric])
            elif study.metric_names != [metric]:
                checks.fail(
                    "cannot resume the study",
                    [
                        f"study {self.study_name} optimizes {study.metric_names[0]}, but objective.metric="
                        f"{metric}; set objective.metric={study.metric_names[0]} to resume it, or choose a "
                        "new hydra.sweeper.study_name"
                    ],
                )
            if not study.user_attrs.get("enqueued"):
                for recipe in self.enqueue:
                    params = dict(recipe["params"])
                    # Keys outside the search space (lora.use_rslora: false for a recipe written with
                    # alpha/r) are set by override for that trial only, so the recipe means what it says.
                    outside = {k: v for k, v in params.items() if k not in distributions}
                    study.enqueue_trial(
                        {k: v for k, v in params.items() if k in distributions},
                        user_attrs={"recipe": recipe["recipe"], RECIPE_OVERRIDES: outside},
                    )
                study.set_user_attr("enqueued", True)
                study.set_user_attr("command", base_command())
                study.set_user_attr("fixed", fixed)  # the space's fixed values: part of every trial's command
        finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        log.info(
            "study %s in %s: %d of %d trials done",
            study.study_name,
            redact_text(url),
            len(finished),
            self.n_trials,
        )
        if self.cluster and not os.environ.get(WORKER_ENV):
            return self.run_on_cluster(study, lock, sweep_dir, url)
        workers = self.spawn_workers(sweep_dir) if not os.environ.get(WORKER_ENV) else []
        received: list[int] = []
        if threading.current_thread() is threading.main_thread():
            # SIGTERM (SLURM, Kubernetes) outside a training step: stop like Ctrl-C, not die at once
            # with the workers left running. Inside a step, GracefulStop takes both signals over.
            signal.signal(signal.SIGTERM, lambda signum, frame: _raise_interrupt(received, signum))
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
            self.log_to_wandb(study, sweep_dir)
        if not complete:
            sys.exit(1)  # too many failures: the log above says which and why

    def open_study(self, storage, url: str) -> optuna.Study:
        """Create or resume the study; resuming one made for the other direction is refused."""
        directions = self._get_directions()
        try:
            existing = [
                d.name.lower()
                for d in storage.get_study_directions(storage.get_study_id_from_name(self.study_name))
            ]
        except KeyError:  # no such study yet
            existing = directions
        if existing != directions:
            checks.fail(
                "cannot resume the study",
                [
                    f"study {self.study_name} in {redact_text(url)} was created to {existing[0]}, but this "
                    f"sweep would {directions[0]}; choose a new hydra.sweeper.study_name"
                ],
            )
        max_steps = self.config.trainer.max_steps
        if self.pruner == "hyperband" and self.pruner_kwargs.get("max_resource", "auto") == "auto":
            log.info("hyperband pruner: max_resource=auto is trainer.max_steps=%d", max_steps)
        return optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            sampler=self.sampler_for(0),
            pruner=build_pruner(self.pruner, self.pruner_kwargs, max_steps),
            directions=directions,
            load_if_exists=True,
        )

    def log_to_wandb(self, study: optuna.Study, sweep_dir: Path) -> None:
        logger = self.config.get("logger")
        if logger is None or logger.get("backend") != "wandb":
            return
        from sweeplab.sweep.wandb_summary import log_sweep_summary

        try:
            log_sweep_summary(study, logger.project, sweep_dir, logger.get("mode", "auto"))
        except Exception as exc:  # noqa: BLE001 - a dashboard hiccup must not fail a finished sweep
            log.warning("could not log the W&B sweep summary: %s", exc)

    def run_on_cluster(self, study: optuna.Study, lock, sweep_dir: Path, url: str) -> None:
        """This command trains nothing: it submits n_jobs workers, then waits and summarizes, or returns."""
        sweep_dir.mkdir(parents=True, exist_ok=True)
        jobs = cluster.submit_workers(self.launcher, self.n_jobs, detach=not self.wait)
        if not self.wait:
            for line in cluster.how_to_follow(jobs, self.cluster, study.study_name, url):
                log.info("%s", line)
            return
        if threading.current_thread() is threading.main_thread():  # SIGTERM stops the sweep like Ctrl-C
            signal.signal(signal.SIGTERM, lambda signum, frame: _raise_interrupt([], signum))
        try:
            failed = cluster.wait_for(jobs, lambda: self.progress(study))
            self.wait_for_running(study, lock)
        except KeyboardInterrupt:
            cluster.cancel(jobs)
            log.warning(
                "sweep stopped: worker jobs %s cancelled (their running trials are stored FAIL and queued "
                "again); run the same command again to resume",
                " ".join(job.job_id for job in jobs),
            )
            sys.exit(130)
        summarize(study, sweep_dir)
        self.log_to_wandb(study, sweep_dir)
        done = self.finished(study)
        if failed and done < self.n_trials:
            log.error(
                "%d of %d trials finished and %d worker jobs failed (logs above); run the same command "
                "again to resume",
                done,
                self.n_trials,
                len(failed),
            )
            sys.exit(1)

    @staticmethod
    def finished(study: optuna.Study) -> int:
        return sum(
            t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials(deepcopy=False)
        )

    def progress(self, study: optuna.Study) -> str:
        return f"study {study.study_name}: {self.finished(study)} of {self.n_trials} trials done"

    def wait_for_running(self, study: optuna.Study, lock) -> None:
        """Workers of an earlier submission (wait=false) or on other machines may still hold trials:
        the summary waits for them; a dead worker's trial is failed (and queued) as a worker would."""
        while True:
            with lock():
                fail_lost_trials(study, self.max_retries)
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not running:
                return
            log.info("waiting for %d trials still running in other workers", len(running))
            time.sleep(cluster.POLL_S)

    def spawn_workers(self, sweep_dir: Path) -> list[subprocess.Popen]:
        """n_jobs - 1 more copies of this very command on the same storage; this process is worker 0."""
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if self.n_jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
            # Each torch process would take every core: N workers on 2 cores ran a step 80x slower.
            os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.n_jobs))
            log.info("OMP_NUM_THREADS=%s per worker (%d workers)", os.environ["OMP_NUM_THREADS"], self.n_jobs)
        workers = []
        for k in range(1, self.n_jobs):
            with open(sweep_dir / f"worker-{k}.log", "a") as out:
                env = {**os.environ, WORKER_ENV: str(k)}
                workers.append(
                    subprocess.Popen(
                        sys.orig_argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )
            log.info("worker %d started (log: %s)", k, sweep_dir / f"worker-{k}.log")
        return workers

    def work(self, study, storage, lock, distributions, fixed, fixed_overrides) -> bool:
        """Run trials until the study holds n_trials finished ones (True) or too many failed (False)."""
        while True:
            with lock():
                fail_lost_trials(study, self.max_retries)
                trials = study.get_trials(deepcopy=False)
                states = collections.Counter(t.state for t in trials)
                if states[TrialState.COMPLETE] + states[TrialState.PRUNED] + states[TrialState.RUNNING] >= (
                    self.n_trials
                ):
                    return True
                # A trial stopped by the user is no failure of its params (it is queued again).
                failures = [t for t in trials if t.state == TrialState.FAIL and not interrupted(t)]
                if len(failures) > self.max_failures:
                    log.error(
                        "%d trials failed (hydra.sweeper.max_failures=%d): stopping the sweep",
                        len(failures),
                        self.max_failures,
                    )
                    return False
                if self.patience is not None and (since := trials_since_best(study, trials)) >= self.patience:
                    log.info(
                        "the best has not improved over the last %d finished trials "
                        "(hydra.sweeper.patience=%d): stopping the sweep",
                        since,
                        self.patience,
                    )
                    return True
                study.sampler = self.sampler_for(len(study.trials))
                trial = study.ask()
                claim(study, trial)
                [overrides] = self._configure_trials([trial], distributions, fixed, fixed_overrides)
            overrides = with_recipe(list(overrides), trial)
            # Outside the lock: sizing takes seconds, and other workers need not wait for it.
            predicted = self.memory.reason(self.hydra_context, self.config, overrides)
            if predicted is not None:
                self.prune_predicted(study, trial, *predicted)
                continue
            self.run_trial(study, storage, trial, overrides)
            if LOST.is_set():  # the heartbeat gave up after the trial had ended
                raise LOST_ERROR[0]

    def prune_predicted(self, study: optuna.Study, trial: optuna.Trial, reason: str, gb: float) -> None:
        """PRUNED, not FAIL: a region the sampler should avoid, not a crash counted toward max_failures."""
        trial.set_user_attr("pruned_reason", reason)
        trial.set_user_attr("predicted_memory_gb", round(gb, 4))
        study.tell(trial, state=TrialState.PRUNED)
        params = " ".join(f"{k}={v}" for k, v in trial.params.items())
        log.info(
            "trial %d PRUNED before launch (hydra.sweeper.max_memory_gb): %s; %s",
            trial.number,
            reason,
            params,
        )

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
        study.tell(trial, state=state, values=None if value is None else [value])
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
        study.tell(trial, state=TrialState.FAIL)
        RetryWithCheckpoint(max_retry=None)(study, study._storage.get_trial(trial._trial_id))


def note_storage_lost(run_dir: Path | None, exc: StorageUnreachable) -> None:
    """The storage went away outside a training step (the job's last writes, the tell): GracefulStop
    wrote no note then, and without one the rerun would call the trial killed instead of cut off."""
    note = run_dir / "checkpoints" / STORAGE_LOST_NOTE if run_dir is not None else None
    if note is not None and note.parent.is_dir() and not note.exists():
        atomic_write_text(note, f"{exc} (the sweep stopped)\n")


def trials_since_best(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> int:
    """Finished trials after the first one holding the best value (0 while none is COMPLETE)."""
    finished = [
        t
        for t in sorted(trials, key=lambda t: t.number)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    ]
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    if not complete:
        return 0
    pick = min if study.direction == optuna.study.StudyDirection.MINIMIZE else max
    best = pick(complete, key=lambda t: t.value)  # the first of equal values: a tie is no improvement
    return len(finished) - 1 - finished.index(best)


def with_recipe(overrides: list[str], trial: optuna.Trial) -> list[str]:
    """A recipe's keys outside the search space replace the space's fixed values for its trial."""
    extra = trial.user_attrs.get(RECIPE_OVERRIDES) or {}
    kept = [o for o in overrides if o.split("=", 1)[0] not in extra]
    return kept + [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in extra.items()]


def interrupted(trial: optuna.trial.FrozenTrial) -> bool:
    return trial.user_attrs.get("fail_kind") in ("interrupted", "disk_full", "storage")


class SweepInterrupted(Exception):
    """Ctrl-C or SIGTERM: the trial is stored FAIL, its params queued again, the sweep stops."""


class SweepDiskFull(Exception):
    """A trial's outputs did not fit on the disk: it is stored FAIL (disk_full) and the sweep stops."""


def beat(storage, trial_id: int, interval: int, stop: threading.Event) -> None:
    """Optuna beats only inside study.optimize(); ask/tell sweeps must do it themselves."""
    while True:
        try:
            storage.record_heartbeat(trial_id)  # retried while the storage is down
        except StorageUnreachable as exc:
            give_up(exc)  # training saves last.ckpt at the next step and the sweep ends
            return
        if stop.wait(interval):
            return


def _raise_interrupt(received: list[int], signum: int) -> None:
    if received:
        return  # one is enough: the first is being handled
    received.append(signum)
    raise KeyboardInterrupt


def release_memory() -> None:
    """A failed job's exception holds its frames and with them its model: collect both now.

    Then freeze what survived (imports, a held base): a full collection over every object of torch and
    transformers took ~0.35 s per trial; frozen, the next one scans only the next trial's objects.
    sweeplab.reuse unfreezes before it lets a held base go, so a base in a cycle is still collected."""
    gc.collect()
    gc.freeze()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def fail_kind(exc: BaseException) -> str:
    """A coarse class of the failure, for the report and for filtering in the dashboard."""
    kinds = {
        DivergedError: "diverged",
        OutOfMemory: "oom",
        DataLoaderFailed: "data",
        DataError: "data",
        ConfigError: "config",
        Interrupted: "interrupted",
        DiskFull: "disk_full",
        StorageUnreachable: "storage",
    }
    return next((kind for cls, kind in kinds.items() if isinstance(exc, cls)), "error")


def outcome(ret: Any) -> tuple[TrialState, float | None, str | None, str | None]:
    """(state, value, fail_reason, fail_kind) of a finished job."""
    if ret.status == JobStatus.FAILED and isinstance(ret._return_value, optuna.TrialPruned):
        # Read directly: Hydra's return_value getter prints "Error executing job", and pruning is no error.
        return TrialState.PRUNED, None, None, None
    try:
        value = float(ret.return_value)  # re-raises the job's exception
    except optuna.TrialPruned:
        return TrialState.PRUNED, None, None, None
    except Exception as exc:  # noqa: BLE001 - any job error is this trial's failure, not the sweep's
        text = f"{type(exc).__name__}: {exc}"
        if "TrialPruned" in text:  # launchers that cannot pickle it send a RuntimeError naming it
            return TrialState.PRUNED, None, None, None
        return TrialState.FAIL, None, text[:2000], fail_kind(exc)
    if not math.isfinite(value):
        return TrialState.FAIL, None, f"objective is {value}", "diverged"
    return TrialState.COMPLETE, value, None, None


def base_command() -> str:
    """The sweep command without the sweep, as the start of the best trial's command."""
    args = [
        a
        for a in sys.argv[1:]
        if not a.startswith(("--multirun", "-m", "hparams_search=", "hydra.", "hydra/"))
    ]
    return redact_text(" ".join(["python -m sweeplab.train", *args]))


def summarize(study: optuna.Study, sweep_dir: Path) -> None:
    states = collections.Counter(t.state.name for t in study.trials)
    log.info("study %s: %s", study.study_name, dict(states))
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not done:
        log.error(
            "no trial completed; see the trials' fail_reason (python -m sweeplab.report %s)", study.study_name
        )
        return
    best = study.best_trial
    metric = study.metric_names[0] if study.metric_names else "value"
    log.info("best trial %d: %s %.4f with %s", best.number, metric, best.value, best.params)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "name": "optuna",
        "best_params": best.params,
        "best_value": best.value,
        "best_trial": best.number,
    }
    OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")


class SweeplabSweeper(Sweeper):
    """Built by Hydra from hydra.sweeper; upstream OptunaSweeper builds its own impl, so we need ours."""

    def __init__(self, sampler: DictConfig, **kwargs: Any) -> None:
        checks.fail("invalid sweeper config", checks.option_problems(kwargs))
        extra = {
            k: kwargs.pop(k)
            for k in (
                "pruner",
                "pruner_kwargs",
                "enqueue",
                "max_failures",
                "max_failure_rate",
                "custom_search_space",
                "heartbeat_interval",
                "grace_period",
                "max_retries",
                "patience",
                "max_memory_gb",
                "storage_timeout",
                "wait",
            )
        }
        self.impl = SweeplabSweeperImpl(sampler, extra, **kwargs)

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
        space += checks.pruner_problems(impl.pruner, impl.pruner_kwargs, impl.config)
        checks.fail("invalid sweep", space + checks.enqueue_problems(impl.enqueue, impl.config))
        checks.fail("invalid config for every trial", checks.config_problems(impl.config, impl.direction))
        url = str(impl.storage or f"sqlite:///{Path(impl.sweep_dir).parent / 'optuna.db'}")
        checks.fail("cannot use the study storage", [p for p in [checks.storage_problem(url)] if p])
        launcher = impl.config.hydra.launcher
        checks.fail(
            "cannot run the workers as jobs", checks.cluster_problems(impl.cluster, url, launcher, impl.wait)
        )
        return impl.sweep(arguments)
