"""What a finished job means for its trial and for the sweep, and the chores around running one."""

from __future__ import annotations

import gc
import math
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobStatus
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from hydra_plugins.sweeplab_sweeper.recovery import STORAGE_LOST_NOTE
from sweeplab.errors import (
    ConfigError,
    DataError,
    DataLoaderFailed,
    DiskFull,
    DivergedError,
    Interrupted,
    OutOfMemory,
)
from sweeplab.outputs import atomic_write_text
from sweeplab.sweep.storage_retry import StorageUnreachable, give_up


def note_storage_lost(run_dir: Path | None, exc: StorageUnreachable) -> None:
    """The storage went away outside a training step (the job's last writes, the tell): GracefulStop
    wrote no note then, and without one the rerun would call the trial killed instead of cut off."""
    note = run_dir / "checkpoints" / STORAGE_LOST_NOTE if run_dir is not None else None
    if note is not None and note.parent.is_dir() and not note.exists():
        atomic_write_text(note, f"{exc} (the sweep stopped)\n")


def interrupted(trial: optuna.trial.FrozenTrial) -> bool:
    return trial.user_attrs.get("fail_kind") in ("interrupted", "disk_full", "storage")


def beat(storage, trial_id: int, interval: int, stop: threading.Event) -> None:
    """Optuna beats only inside study.optimize(); ask/tell sweeps must do it themselves."""
    while True:
        try:
            storage.record_heartbeat(trial_id)  # retried while the storage is down
        except StorageUnreachable as exc:
            give_up(exc)  # training saves last.ckpt at the next step and the sweep ends
            return
        if stop.wait(interval):
            return


def release_memory() -> None:
    """A failed job's exception holds its frames and with them its model: collect both now.

    Then freeze what survived (imports, a held base): a full collection over every object of torch and
    transformers took ~0.35 s per trial; frozen, the next one scans only the next trial's objects.
    sweeplab.reuse unfreezes before it lets a held base go, so a base in a cycle is still collected."""
    gc.collect()
    gc.freeze()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def fail_kind(exc: BaseException) -> str:
    """A coarse class of the failure, for the report and for filtering in the dashboard."""
    kinds = {
        DivergedError: "diverged",
        OutOfMemory: "oom",
        DataLoaderFailed: "data",
        DataError: "data",
        ConfigError: "config",
        Interrupted: "interrupted",
        DiskFull: "disk_full",
        StorageUnreachable: "storage",
    }
    return next((kind for cls, kind in kinds.items() if isinstance(exc, cls)), "error")


def objective_values(returned: Any, n: int) -> list[float]:
    """The job's return value as the study's n objective values (upstream's rules); ValueError if not."""
    if n == 1:
        try:
            return [float(returned)]
        except (TypeError, ValueError):
            raise ValueError(f"the app must return a float-castable value, got {returned!r}") from None
    try:
        values = [float(v) for v in returned]
    except (TypeError, ValueError):
        raise ValueError(
            f"the study has {n} objectives: the app must return a list or tuple of {n} floats, "
            f"got {returned!r}"
        ) from None
    if len(values) != n:
        raise ValueError(
            f"the study has {n} objectives, but the app returned {len(values)} values: {returned!r}"
        )
    return values


def outcome(ret: Any, n: int = 1) -> tuple[TrialState, list[float] | None, str | None, str | None]:
    """(state, values, fail_reason, fail_kind) of a finished job in a study of n objectives."""
    if ret.status == JobStatus.FAILED and isinstance(ret._return_value, optuna.TrialPruned):
        # Read directly: Hydra's return_value getter prints "Error executing job", and pruning is no error.
        return TrialState.PRUNED, None, None, None
    try:
        returned = ret.return_value  # re-raises the job's exception
    except optuna.TrialPruned:
        return TrialState.PRUNED, None, None, None
    except Exception as exc:  # noqa: BLE001 - any job error is this trial's failure, not the sweep's
        text = f"{type(exc).__name__}: {exc}"
        if "TrialPruned" in text:  # launchers that cannot pickle it send a RuntimeError naming it
            return TrialState.PRUNED, None, None, None
        return TrialState.FAIL, None, text[:2000], fail_kind(exc)
    try:
        values = objective_values(returned, n)
    except ValueError as exc:
        return TrialState.FAIL, None, str(exc)[:2000], "value"
    if not all(math.isfinite(v) for v in values):
        shown = values[0] if n == 1 else values
        return TrialState.FAIL, None, f"objective is {shown}", "diverged"
    return TrialState.COMPLETE, values, None, None


class SweepInterrupted(Exception):
    """Ctrl-C or SIGTERM: the trial is stored FAIL, its params queued again, the sweep stops."""


class SweepDiskFull(Exception):
    """A trial's outputs did not fit on the disk: it is stored FAIL (disk_full) and the sweep stops."""


def raise_interrupt(received: list[int], signum: int) -> None:
    if received:
        return  # one is enough: the first is being handled
    received.append(signum)
    raise KeyboardInterrupt


def quiet_optuna() -> None:
    """Heartbeats are documented for study.optimize(); ask/tell with our own beat thread is equivalent.
    Set when the sweep starts: Hydra imports plugins inside catch_warnings, which drops filters set then."""
    warnings.filterwarnings(
        "ignore", message="Heartbeat of storage is supposed to be used with Study.optimize"
    )
    warnings.filterwarnings(
        "ignore", message=".*fail_stale_trials is experimental", category=ExperimentalWarning
    )
    # the storage's heartbeat arguments, which sweeplab relies on (an app run with -Werror must not die)
    for arg in ("heartbeat_interval", "grace_period"):
        warnings.filterwarnings(
            "ignore", message=f"Argument ``{arg}`` is an experimental", category=ExperimentalWarning
        )


def shown_values(names: list[str] | None, values: list[float] | None) -> str:
    """' val/loss 4.12' or ' value 0.5' or ' values [1, 45.25]' for the trial's log line."""
    if not values:
        return ""
    if names:
        return " " + ", ".join(f"{name} {v:.4g}" for name, v in zip(names, values, strict=True))
    return (
        f" value {values[0]:.4g}"
        if len(values) == 1
        else f" values [{', '.join(f'{v:.4g}' for v in values)}]"
    )
