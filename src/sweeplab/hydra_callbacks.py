"""Hydra callbacks: checks that must run before Hydra writes anything into the run dir."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class RefuseFinishedRun(Callback):
    """A finished run dir (it holds metrics.json) is never written to again.

    The job itself refuses it too, but Hydra has rewritten the run's .hydra/ files and appended to
    its log by then; on_run_start comes before both.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(str(config.hydra.run.dir))
        if (run_dir / "metrics.json").exists():
            print(
                f"sweeplab: error: {run_dir} already holds a finished run; choose another run_name",
                file=sys.stderr,
            )
            sys.exit(2)
