"""Real faults injected into a real run, per trial: `callbacks.extra` builds this callback in the job."""

from __future__ import annotations

import os
import signal

import lightning as L
import psutil
import torch
from hydra.core.hydra_config import HydraConfig


class Fault(L.Callback):
    """At `at_step`, trial N suffers plan[N]: 'oom' raises torch's own OutOfMemoryError (what a CUDA
    allocation failure raises); 'dataloader' SIGKILLs the data loader's worker processes."""

    def __init__(self, plan: dict[int, str], at_step: int) -> None:
        self.plan = {int(k): v for k, v in plan.items()}
        self.at_step = at_step

    def on_train_batch_start(self, trainer: L.Trainer, *_: object) -> None:
        fault = self.plan.get(int(HydraConfig.get().job.num))
        if fault is None or trainer.global_step != self.at_step:
            return
        if fault == "oom":
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 15.77 GiB"
            )
        if fault == "dataloader":
            workers = psutil.Process().children()
            assert workers, "the data loader has no worker processes: set data.num_workers >= 1"
            for worker in workers:
                os.kill(worker.pid, signal.SIGKILL)


def restart_storage_once(cfg: object, trial: object) -> None:
    """A `hydra.sweeper.custom_search_space` hook, called while the sweep holds its study lock: the first
    time, it asks the test (a file `restart` in $SWEEPLAB_TEST_RESTART_DIR) to restart the database
    server, and waits until the test says it has (a file `restarted`)."""
    import time
    from pathlib import Path

    folder = os.environ.get("SWEEPLAB_TEST_RESTART_DIR")
    if not folder or (Path(folder) / "restart").exists():
        return
    (Path(folder) / "restart").touch()
    while not (Path(folder) / "restarted").exists():
        time.sleep(0.1)


class KillAWorkerAfterTheLoopEnds(L.Callback):
    """Two trials on two workers. At `at_step`, the command's own process waits until the spawned worker
    has a trial too; the worker (once per `marker` file) waits until the command's trial is COMPLETE,
    then SIGKILLs itself. By then the command's loop has counted the worker's trial as running and
    ended: what it does after its workers end is the test."""

    def __init__(self, storage: str, study: str, marker: str, at_step: int) -> None:
        self.storage, self.study, self.marker, self.at_step = storage, study, marker, at_step

    def on_train_batch_start(self, trainer: L.Trainer, *_: object) -> None:
        from pathlib import Path

        import optuna

        from sweeplab.training.ranks import WORKER_ENV

        if trainer.global_step != self.at_step or Path(self.marker).exists():
            return
        study = optuna.load_study(study_name=self.study, storage=self.storage)
        state = optuna.trial.TrialState
        if not os.environ.get(WORKER_ENV):
            _wait_for(lambda: len(study.get_trials(deepcopy=False, states=(state.RUNNING,))) >= 2)
            return
        Path(self.marker).touch()
        _wait_for(lambda: bool(study.get_trials(deepcopy=False, states=(state.COMPLETE,))))
        os.kill(os.getpid(), signal.SIGKILL)


def _wait_for(condition, timeout: float = 300) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the other worker never got there"
        time.sleep(0.2)
