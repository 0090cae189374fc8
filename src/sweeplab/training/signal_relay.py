"""What a run's signal handler tells the sweep loop that runs it in the same process.

Kept apart from interrupt.py (which imports Lightning) so the sweeper imports it at no cost: a sweep of
another Hydra app never loads Lightning.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator

# The signal a run took over, kept for the sweep loop that ran it in this process: a trial may end another
# way before the step it would stop at (pruned at the validation the signal came in, or finished), and the
# loop must stop all the same instead of asking for the next trial.
_TAKEN: list[str] = []
# Who else must hear of it at once: a sweep's worker processes (their own sessions) get the signal the
# moment a run in the main process takes it over, not after that run has saved and stopped (a
# scheduler's grace period is for all of them at once).
_PASS_ON: list[Callable[[int], None]] = []


def took(signum: int) -> str:
    """A run took this signal over: remember it, and pass it on. Returns its name."""
    name = signal.Signals(signum).name
    _TAKEN.append(name)
    for forward in _PASS_ON:
        forward(signum)
    return name


def take_signal() -> str | None:
    """The name of the signal a run took over since the last call, if any (and forget it)."""
    name = _TAKEN[0] if _TAKEN else None
    _TAKEN.clear()
    return name


@contextlib.contextmanager
def passing_signals_to(forward: Callable[[int], None]) -> Iterator[None]:
    _PASS_ON.append(forward)
    try:
        yield
    finally:
        _PASS_ON.remove(forward)
