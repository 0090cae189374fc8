"""Ctrl-C (SIGINT) or SIGTERM during training: finish the optimizer step, save last.ckpt, stop.

Lightning alone catches KeyboardInterrupt mid-step and exits without a checkpoint; a batch
scheduler's SIGTERM would lose everything since the last validation. A second signal stops at once.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import lightning as L

from sweeplab.errors import Interrupted
from sweeplab.outputs import atomic_write_text
from sweeplab.training.signal_relay import took

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGINT, signal.SIGTERM)
STORAGE_LOST_NOTE = "storage_lost.txt"  # beside last.ckpt; the sweep's rerun reads it


class GracefulStop(L.Callback):
    def __init__(self, ckpt_path: Path) -> None:
        self.ckpt_path = ckpt_path
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning registered its own SIGTERM handler (it does so after on_fit_start): what is
        # put back at the end is then its handler, which its teardown replaces with the original.
        # Installed earlier, this handler would outlive the run and keep its trainer alive.
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt  # the second one: stop now
        self.requested = took(signum)  # the sweep loop in this process, and its workers, hear of it
        log.warning(
            "%s: stopping after this step, saving %s (again to stop at once)", self.requested, self.ckpt_path
        )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        # Lightning has stepped the optimizer and the lr scheduler by now, and resumes a checkpoint
        # saved here as "restarted on train batch end". Mid-accumulation is no point to resume from.
        retry = sys.modules.get("sweeplab.sweep.storage_retry")  # imported in sweeps only
        lost = retry is not None and retry.LOST.is_set()  # the sweep's storage stayed down too long
        if not (self.requested or lost) or trainer.fit_loop.epoch_loop._should_accumulate():
            return
        trainer.save_checkpoint(self.ckpt_path)
        if lost:
            error = retry.LOST_ERROR[0]
            # Read by the rerun (hydra_plugins.sweeplab_sweeper.recovery): the trial could not be
            # stored FAIL now, and "killed" would be the wrong reason then.
            note = f"{error} (checkpoint at step {trainer.global_step})"
            atomic_write_text(self.ckpt_path.parent / STORAGE_LOST_NOTE, note + "\n")
            log.error("storage lost at step %d; checkpoint saved to %s", trainer.global_step, self.ckpt_path)
            raise error
        raise Interrupted(
            f"{self.requested} at step {trainer.global_step}; checkpoint saved to {self.ckpt_path}"
        )

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore()
