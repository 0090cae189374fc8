"""Which Hydra task a sweep runs: sweeplab's training app, or any other app.

The sweeper applies sweeplab's own checks and phases (the training schema, memory estimates, the lr
range test, a budget in runs of trainer.max_steps, W&B grouping) to sweeplab's task only. It knows
that task by a mark on its function, set by `sweeplab.train` (and by any wrapper that calls
`sweeplab.train.run` and wants the same treatment). Neither the function's module (`__main__` under
`python -m sweeplab.train`) nor the config's keys (any app may have a `model` or `trainer` key, and a
typo in sweeplab's own config would turn its checks off) say it as reliably. No imports: the
training entry point marks itself without loading Optuna.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

MARK = "__sweeplab_task__"
F = TypeVar("F", bound=Callable[..., Any])


def sweeplab_task(function: F) -> F:
    """Mark a Hydra task function as sweeplab's training task (put it under @hydra.main)."""
    setattr(function, MARK, True)
    return function


def is_sweeplab_task(function: Any) -> bool:
    """True for a marked function, or a wrapper of one (functools.wraps keeps the mark)."""
    return bool(getattr(function, MARK, False))
