"""Worker jobs of an earlier run of the same sweep: a rerun attaches to those still queued or running.

Without this, rerunning a SLURM sweep (to follow it, or after `wait=false`) while its jobs still wait
in the queue submitted n_jobs more workers each time. The jobs a run submits are stored in the study
(so any login node sees them); a rerun asks the scheduler (sacct, through submitit) which of them
are still alive, waits on those, and submits only what n_jobs still lacks.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import optuna
import psutil
from submitit.local.local import LocalJob
from submitit.slurm.slurm import SlurmJob

ATTR = "worker_jobs"
# sacct states of a job that has not ended (the first word: "CANCELLED by 123" has ended).
ALIVE = {
    "PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "REQUEUE_HOLD"
}  # fmt: skip


class AttachedLocalJob(LocalJob):
    """A submitit_local job of an earlier process: its controller is known by pid and start time only."""

    def __init__(self, folder: str, job_id: str, started: float) -> None:
        super().__init__(folder, job_id)
        self.started = started

    def _alive(self) -> bool:
        try:  # the start time tells a reused pid from the job's controller
            return abs(psutil.Process(int(self.job_id)).create_time() - self.started) < 1.0
        except (psutil.NoSuchProcess, ValueError):
            return False

    def get_info(self, mode: str = "force") -> dict[str, str]:  # noqa: ARG002 - submitit's signature
        if self._alive():
            return {"jobState": "RUNNING"}
        return {"jobState": "FINISHED" if self.paths.result_pickle.exists() else "INTERRUPTED"}

    def cancel(self, check: bool = True) -> None:  # noqa: ARG002 - submitit's signature
        if self._alive():
            os.kill(int(self.job_id), signal.SIGINT)  # as submitit cancels its own local jobs


def record(study: optuna.Study, jobs: list[Any], kind: str) -> None:
    """The jobs now working for this study, for the next run to find."""
    entries = []
    for job in jobs:
        entry = {"id": job.job_id, "folder": str(job.paths._folder), "kind": kind}
        if kind == "local":
            entry["started"] = getattr(job, "started", None) or psutil.Process(int(job.job_id)).create_time()
        entries.append(entry)
    study.set_user_attr(ATTR, entries)


def alive(study: optuna.Study, kind: str) -> list[Any]:
    """The stored jobs of this kind that have not ended, as submitit jobs to wait on or cancel."""
    entries = [e for e in study.user_attrs.get(ATTR) or [] if e.get("kind") == kind]
    if kind == "local":
        local = [AttachedLocalJob(e["folder"], e["id"], e.get("started") or 0.0) for e in entries]
        return [job for job in local if job._alive()]
    jobs = [SlurmJob(e["folder"], e["id"]) for e in entries]
    for job in jobs:
        SlurmJob.watcher.register_job(job.job_id)
    SlurmJob.watcher.update()  # one sacct call for them all
    states = {job.job_id: SlurmJob.watcher.get_state(job.job_id, mode="cache").split(" ")[0] for job in jobs}
    return [job for job in jobs if states[job.job_id] in ALIVE and not job.paths.result_pickle.exists()]
