"""A sweep worker keeps its loaded base, tokenizer and tokenized data for the next trial that shares them.

Reloading them is most of a short trial's start-up. Only trials keep anything (a single run has no
next trial), one object per kind (a new key frees the old one before building its replacement), and
a trial that fails drops everything: the next one starts from disk, as if it were the first.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

OFF_ENV = "SWEEPLAB_REUSE"  # =0 turns reuse off: every trial loads from disk (for comparison or doubt)
T = TypeVar("T")

_held: dict[str, tuple[Hashable, Any]] = {}  # kind -> (key, object)
_cleanups: list[Callable[[], None]] = []  # what returns held objects to their as-loaded state
reused: dict[str, bool] = {}  # kind -> whether this trial got it from memory


def enabled(in_sweep: bool) -> bool:
    return in_sweep and os.environ.get(OFF_ENV, "1") != "0"


def held(kind: str, key: Hashable, build: Callable[[], T], keep: bool) -> T:
    """The object of this kind built for `key`: from memory when the last one was built for it."""
    entry = _held.get(kind)
    reused[kind] = keep and entry is not None and entry[0] == key
    if reused[kind]:
        log.info("%s reused from the previous trial", kind)
        return entry[1]
    if entry is not None:  # freed before its replacement loads: two bases may not fit side by side
        del _held[kind], entry
        release()
    value = build()
    if keep:
        _held[kind] = (key, value)
    return value


def validate_at_start(trainer: Any, module: Any, val_loader: Any, key: Hashable, keep: bool) -> None:
    """The validation before training sees the untouched base (LoRA starts as the identity: B = 0, and
    DoRA's magnitude is the weight's norm), so every trial of a worker that shares base, data and eval
    config gets the same metrics: the first runs it (decoding included), the next ones reuse it."""

    from sweeplab.rng import rng_state, set_rng_state

    def run() -> tuple[dict, list[dict]]:
        trainer.validate(module, val_loader, verbose=False)
        return dict(module.val_history[-1]), list(module.predictions)

    before = rng_state()  # run or reused, training starts from the same random state
    entry, predictions = held("start_validation", key, run, keep and trainer.world_size == 1)
    set_rng_state(before)
    if not reused["start_validation"]:
        return
    module.val_history.append(dict(entry))
    module.predictions = list(predictions)
    for logger in trainer.loggers:  # the curve starts at step 0 as if it had run here
        logger.log_metrics({k: v for k, v in entry.items() if k != "step"}, step=0)


def after_trial(cleanup: Callable[[], None]) -> None:
    """Run at the end of a trial that went well, e.g. to take its adapter off the held base."""
    _cleanups.append(cleanup)


def end_trial(clean: bool) -> None:
    """Restore held objects after a finished (or pruned) trial; drop them all after a failed one."""
    cleanups = list(_cleanups)
    _cleanups.clear()
    if clean:
        try:
            for cleanup in cleanups:
                cleanup()
            return
        except Exception as exc:  # noqa: BLE001 - a base we could not restore is loaded again instead
            log.warning("could not restore the held base (%s); the next trial loads it again", exc)
    drop()


def drop() -> None:
    if _held:
        log.info("dropping held %s: the next trial loads from disk", ", ".join(sorted(_held)))
    _held.clear()
    reused.clear()
    release()


def release() -> None:
    gc.unfreeze()  # the sweeper freezes what survives each trial, a held base among them
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
