"""A callback the bench adds through `callbacks.extra`: any sweeplab version records the same clock."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L


class FirstStep(L.Callback):
    """Writes the wall-clock time (time.time()) of the job's first optimizer step into its run dir."""

    def __init__(self) -> None:
        self.done = False
        self.started = False

    def on_train_batch_start(self, trainer: L.Trainer, *_: object) -> None:
        """Also the start of the first batch: what comes before it is set-up, what follows is training."""
        if not self.started:
            Path(trainer.default_root_dir, "first_batch.txt").write_text(f"{time.time()!r}\n")
            self.started = True

    def on_before_optimizer_step(self, trainer: L.Trainer, *_: object) -> None:
        if not self.done:
            Path(trainer.default_root_dir, "first_step.txt").write_text(f"{time.time()!r}\n")
            self.done = True
