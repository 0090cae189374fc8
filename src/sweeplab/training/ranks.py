"""Which rank this process is, and the ranks it started: light enough for the job's first lines.

sweeplab.training.distributed starts ranks 1..N-1 of a multi-device trial; this module ends them with the job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

WORKER_ENV = "SWEEPLAB_SWEEP_WORKER"  # set in every sweep worker: it runs trials and spawns no workers
LAUNCHED: list[Any] = []  # TrialLaunchers that started ranks in this process and wait to be ended
# What Lightning's launcher writes into rank 0's environment; put back after each trial, or the next
# trial in this process (a sweep worker) would believe its ranks were started for it.
LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
# Hydra settings of the parent job that a rank must not inherit: it is a single run in rank 0's dir.
PARENT_ONLY = ("hydra.mode=", "hydra.run.dir=", "hydra.sweep.", "hydra.output_subdir=", "hydra.job.name=")
CHILD_EXIT_S = 300  # after rank 0 is done; ranks only close their logs by then


def is_rank_zero() -> bool:
    """Before the Trainer exists: the process that owns the outputs and the Optuna trial."""
    if "RANK" in os.environ:  # torchrun, SLURM via Lightning
        return os.environ["RANK"] == "0"
    return os.environ.get("NODE_RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def child_command(local_rank: int) -> tuple[list[str], str]:
    """This job again as a plain run in the same dir: the trial's overrides, never the sweep's argv."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    hydra_cfg = HydraConfig.get()
    kept = [o for o in hydra_cfg.overrides.hydra if not o.lstrip("+~").startswith(PARENT_ONLY)]
    command = [
        sys.executable,
        "-m",
        "sweeplab.train",
        *hydra_cfg.overrides.task,
        *kept,
        f'hydra.run.dir="{hydra_cfg.runtime.output_dir}"',
        "hydra.output_subdir=null",  # rank 0 alone writes .hydra/ and config.yaml
        f"hydra.job.name=rank_{local_rank}",  # its log: rank_<n>.log beside rank 0's
    ]
    return command, get_original_cwd()


@contextlib.contextmanager
def trial_ranks() -> Iterator[None]:
    """Rank 0 waits for the ranks it started, ends the process group and restores its environment,
    so the next trial in this process starts its own ranks afresh."""
    saved = {key: os.environ.get(key) for key in LAUNCH_ENV}
    failed = True
    try:
        yield
        failed = False
    finally:
        while LAUNCHED:
            _end_children(LAUNCHED.pop(), failed)
            import torch.distributed as dist  # imported by then: the ranks were started by Lightning

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _end_children(launcher: Any, failed: bool) -> None:
    """After a failure the other ranks may wait in a collective forever: they are stopped."""
    launcher.stop_watching()
    for proc in launcher.procs:
        if failed:
            proc.kill()
        try:
            proc.wait(timeout=CHILD_EXIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.returncode and not failed:
            log.warning("a rank of this trial exited with code %d (see its rank_<n>.log)", proc.returncode)
