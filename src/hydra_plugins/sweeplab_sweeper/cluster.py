"""Sweep workers as cluster jobs (`hydra/launcher=submitit_slurm` or `submitit_local`) through submitit,
or as local processes (`hydra.sweeper.n_jobs` with any other launcher).

hydra-submitit-launcher works with the pinned Hydra, but its `launch()` submits one job per trial in
batches and waits for each batch: the slowest-trial wait the ask/tell loop removes. So its config
(partition, GPUs, time limit, ...) is reused, mapped to submitit exactly as its `launch()` maps it,
but each job is a whole worker: this same command, running the ask/tell loop with its trials
in-process (Hydra's basic launcher) against the shared study.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from hydra_plugins.sweeplab_sweeper.apps import started_from_command_line, worker_argv
from hydra_plugins.sweeplab_sweeper.outcome import raise_interrupt
from hydra_plugins.sweeplab_sweeper.recovery import fail_lost_trials
from hydra_plugins.sweeplab_sweeper.study import log_to_wandb, summarize
from sweeplab.secrets import redact_text
from sweeplab.training.ranks import WORKER_ENV

log = logging.getLogger(__name__)

SECRET_ARG_ENV = "SWEEPLAB_WORKER_ARG_{}"  # a command argument holding a secret, passed by environment
POLL_S = 5.0  # how often the waiting command looks at its jobs and the study


def executor_kind(launcher: Any) -> str | None:
    """'slurm' or 'local' for hydra-submitit-launcher's launchers (by class, so subclasses count)."""
    try:
        from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
    except ImportError:
        return None
    return launcher._EXECUTOR if isinstance(launcher, BaseSubmititLauncher) else None


def basic_launcher(hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> Any:
    """Inside a worker job the trials run in-process, one after another, as on one machine."""
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher

    launcher = BasicLauncher()
    launcher.setup(hydra_context=hydra_context, task_function=task_function, config=config)
    return launcher


def make_executor(launcher: Any) -> Any:
    """The launcher's own params, mapped as BaseSubmititLauncher.launch() maps them."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    kind = launcher._EXECUTOR
    params = dict(launcher.params)
    init = {"folder": params.pop("submitit_folder")}
    if "max_num_timeout" in params:
        init[f"{kind}_max_num_timeout"] = params.pop("max_num_timeout")
    executor = submitit.AutoExecutor(cluster=kind, **init)
    common = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in common else f"{kind}_{k}": v for k, v in params.items()})
    return executor


class WorkerJob:
    """One sweep worker as a submitit job: the submitting command, as a worker, in a child process.

    Arguments holding a secret (the storage password) are not pickled into the job folder: they
    reach the job through its environment (sbatch exports the submitter's by default; local jobs
    inherit it) and are put back here.
    """

    def __init__(self, argv: list[str], env: dict[str, str], secret_args: dict[int, str], cwd: str) -> None:
        self.argv, self.env, self.secret_args, self.cwd = argv, env, secret_args, cwd

    def __call__(self) -> None:
        argv = list(self.argv)
        for i, name in self.secret_args.items():
            if name not in os.environ:
                raise RuntimeError(
                    f"{name} is not in the job's environment; the job needs the submitter's environment "
                    "(sbatch --export=ALL, its default)"
                )
            argv[i] = os.environ[name]
        worker = subprocess.Popen(argv, cwd=self.cwd, env={**os.environ, **self.env})
        # scancel / Ctrl-C reach this process: pass them on, so the trial stops at a step and is queued again.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: worker.send_signal(signum))
        code = worker.wait()
        if code != 0:
            raise RuntimeError(f"sweep worker {self.env[WORKER_ENV]} exited with code {code}")


def worker_jobs(n_jobs: int, kind: str, command: list[str], first: int = 1) -> list[WorkerJob]:
    """n_jobs copies of `command` as workers first, first + 1, ...; secrets moved into this process's
    environment."""
    argv, secret_args = [], {}
    for i, arg in enumerate(command):
        if redact_text(arg) != arg:
            name = SECRET_ARG_ENV.format(i)
            os.environ[name] = arg  # exported to the jobs at submission, never written to the job folder
            secret_args[i] = name
            arg = redact_text(arg)
        argv.append(arg)
    extra = {}
    if kind == "local" and n_jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        # Each torch process would take every core: N workers on 2 cores ran a step 80x slower.
        extra["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n_jobs))
    return [
        WorkerJob(argv, {**extra, WORKER_ENV: str(k)}, secret_args, os.getcwd())
        for k in range(first, first + n_jobs)
    ]


def submit_workers(launcher: Any, n_jobs: int, detach: bool, command: list[str], first: int = 1) -> list[Any]:
    """One submission (a SLURM job array, so array_parallelism applies) of n_jobs worker jobs."""
    executor = make_executor(launcher)
    jobs = []
    kind = launcher._EXECUTOR
    with detached_output() if detach and kind == "local" else contextlib.nullcontext(), executor.batch():
        for job in worker_jobs(n_jobs, kind, command, first):
            jobs.append(executor.submit(job))
    for k, job in enumerate(jobs, start=first):
        log.info("worker %d: %s job %s (log: %s)", k, launcher._EXECUTOR, job.job_id, job.paths.stdout)
    return jobs


@contextlib.contextmanager
def detached_output() -> Iterator[None]:
    """Local job controllers inherit this process's stdout and stderr (their tasks write to log files):
    holding them, a detached sweep piped into `tee` or captured by a script would not return."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def how_to_follow(jobs: list[Any], kind: str, study_name: str, url: str) -> list[str]:
    """What a user who got the prompt back needs: where the logs are, how to watch, stop and resume."""
    ids = " ".join(job.job_id for job in jobs)
    lines = [f"submitted {len(jobs)} sweep worker jobs ({kind}): {ids}"]
    lines += [f"  log of job {job.job_id}: {job.paths.stdout}" for job in jobs]
    if kind == "slurm":
        lines.append(f"  follow: squeue -j {','.join(j.job_id for j in jobs)}; tail -f <log>")
        lines.append(f"  stop:   scancel {ids} (running trials are stored FAIL and queued again)")
    else:
        lines.append("  follow: tail -f <log>")
    lines.append(f"  report: python -m sweeplab.report {study_name} --storage '{redact_text(url)}'")
    lines.append("  resume: run the same command again; with hydra.sweeper.wait=true it waits and summarizes")
    return lines


def wait_for(jobs: list[Any], progress: Callable[[], str]) -> list[Any]:
    """Block until every job has ended; log progress when it changes. Returns the jobs that failed."""
    shown = None
    while not all(job.done() for job in jobs):
        line = progress()
        if line != shown:
            running = sum(not job.done() for job in jobs)
            log.info("%s (%d of %d worker jobs running)", line, running, len(jobs))
            shown = line
        time.sleep(POLL_S)
    failed = []
    for job in jobs:
        if (reason := failure(job)) is not None:
            log.warning("worker job %s failed (%s); its log: %s", job.job_id, reason, job.paths.stdout)
            failed.append(job)
    return failed


def failure(job: Any) -> str | None:
    """The last line of a failed job's error (submitit keeps the whole traceback), None if it succeeded."""
    try:
        exc = job.exception()
    except Exception as err:  # noqa: BLE001 - no result at all: killed before it could write one
        exc = err
    if exc is None:
        return None
    parts = str(exc).split("-" * 22)  # submitit's FailedJobError: header, the job's traceback, paths
    lines = [ln.strip() for ln in (parts[1] if len(parts) > 2 else str(exc)).splitlines() if ln.strip()]
    return lines[-1] if lines else f"{type(exc).__name__}, state {job.state}"


def cancel(jobs: list[Any]) -> None:
    """Ctrl-C or SIGTERM while waiting stops the sweep (as on one machine): cancel every worker job."""
    for job in jobs:
        if not job.done():
            job.cancel(check=False)


def run_on_cluster(
    study: optuna.Study,
    lock: Callable[[], Any],
    sweep_dir: Path,
    url: str,
    launcher: Any,
    kind: str,
    n_jobs: int,
    n_trials: int,
    max_retries: int,
    wait: bool,
    config: DictConfig,
    command: list[str],
    own_task: bool = True,
) -> None:
    """This command trains nothing: it submits n_jobs workers (each running `command`), then waits and
    summarizes, or returns."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    from hydra_plugins.sweeplab_sweeper import earlier_jobs  # submitit: only on this path

    jobs = attach(study, kind, n_jobs)
    if len(jobs) < n_jobs:
        jobs += submit_workers(
            launcher, n_jobs - len(jobs), detach=not wait, command=command, first=len(jobs) + 1
        )
    earlier_jobs.record(study, jobs, kind)
    if not wait:
        for line in how_to_follow(jobs, kind, study.study_name, url):
            log.info("%s", line)
        return
    if threading.current_thread() is threading.main_thread():  # SIGTERM stops the sweep like Ctrl-C
        signal.signal(signal.SIGTERM, lambda signum, frame: raise_interrupt([], signum))
    try:
        failed = wait_for(jobs, lambda: progress(study, n_trials))
        wait_for_running(study, lock, max_retries)
    except KeyboardInterrupt:
        cancel(jobs)
        log.warning(
            "sweep stopped: worker jobs %s cancelled (their running trials are stored FAIL and queued "
            "again); run the same command again to resume",
            " ".join(job.job_id for job in jobs),
        )
        sys.exit(130)
    summarize(study, sweep_dir)
    if own_task:
        log_to_wandb(study, config, sweep_dir)
    done = finished(study)
    if failed and done < n_trials:
        log.error(
            "%d of %d trials finished and %d worker jobs failed (logs above); run the same command "
            "again to resume",
            done,
            n_trials,
            len(failed),
        )
        sys.exit(1)


def attach(study: optuna.Study, kind: str, n_jobs: int) -> list[Any]:
    """Worker jobs of an earlier run of this sweep still queued or running: this run waits on them
    instead of submitting n_jobs more (any beyond n_jobs go on too, and are waited for)."""
    from hydra_plugins.sweeplab_sweeper import earlier_jobs

    jobs = earlier_jobs.alive(study, kind)
    if jobs:
        more = f"submitting {n_jobs - len(jobs)} more" if len(jobs) < n_jobs else "submitting none"
        log.info(
            "%d worker jobs of an earlier run of this sweep are still queued or running: %s; attached to "
            "them, %s (hydra.sweeper.n_jobs=%d)",
            len(jobs),
            " ".join(job.job_id for job in jobs),
            more,
            n_jobs,
        )
    return jobs


def finished(study: optuna.Study) -> int:
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials(deepcopy=False))


def progress(study: optuna.Study, n_trials: int) -> str:
    return f"study {study.study_name}: {finished(study)} of {n_trials} trials done"


def wait_for_running(study: optuna.Study, lock: Callable[[], Any], max_retries: int) -> None:
    """Workers of an earlier submission (wait=false) or on other machines may still hold trials:
    the summary waits for them; a dead worker's trial is failed (and queued) as a worker would."""
    while True:
        with lock():
            fail_lost_trials(study, max_retries)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return
        log.info("waiting for %d trials still running in other workers", len(running))
        time.sleep(POLL_S)


def spawn_workers(sweep_dir: Path, n_jobs: int, command: list[str]) -> list[subprocess.Popen]:
    """n_jobs - 1 more copies of this very command (`command`) on the same storage; this is worker 0."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if n_jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        # Each torch process would take every core: N workers on 2 cores ran a step 80x slower.
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n_jobs))
        log.info("OMP_NUM_THREADS=%s per worker (%d workers)", os.environ["OMP_NUM_THREADS"], n_jobs)
    workers = []
    for k in range(1, n_jobs):
        with open(sweep_dir / f"worker-{k}.log", "a") as out:
            env = {**os.environ, WORKER_ENV: str(k)}
            workers.append(
                subprocess.Popen(
                    command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
        log.info("worker %d started (log: %s)", k, sweep_dir / f"worker-{k}.log")
    return workers


def local_workers(
    config: DictConfig, sweep_dir: Path, n_jobs: int, study_name: str
) -> list[subprocess.Popen]:
    """Worker processes 1..n_jobs-1 of a sweep on this machine (none when Hydra was driven from Python:
    a copy of that process's command would run something else)."""
    if n_jobs < 2:
        return []
    if not started_from_command_line(config):
        log.warning(
            "hydra.sweeper.n_jobs=%d: this sweep was started from Python, not a command line, so no "
            "worker processes can be started; its trials run one after another in this process",
            n_jobs,
        )
        return []
    return spawn_workers(sweep_dir, n_jobs, worker_argv(str(sweep_dir), study_name))
