"""Resume after a kill as if nothing happened: data order, RNG states, checkpoint files that are whole."""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from sweeplab.data.sampler import EpochSeededSampler
from sweeplab.errors import ConfigError
from sweeplab.outputs import disk_full


class DataPosition(Callback):
    """Saves (epoch, batches done) with each checkpoint and sets the sampler there on resume.

    Set on load, before Lightning creates the first iterator (eagerly, with worker processes); the
    batches the sampler skips are the ones Lightning counts as done, so the epoch still ends on time.
    """

    def __init__(self, sampler: EpochSeededSampler, batch_size: int) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, int]:
        if self.trainer is None:
            return {}
        fit_loop = self.trainer.fit_loop
        return {
            "epoch": fit_loop.epoch_progress.current.processed,
            # processed, not completed: a save in on_train_batch_end (Ctrl-C) comes before Lightning
            # marks the batch completed, though its optimizer step is done.
            "batches": fit_loop.epoch_loop.batch_progress.current.processed,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not state:
            return
        # Lightning checks the DataLoader, not its sampler, and would call this resume unreliable.
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")
        epoch, batches = state["epoch"], state["batches"]
        per_epoch = -(-self.sampler.n // self.batch_size)  # ceil: the last batch may be short
        if batches >= per_epoch:  # saved at the epoch's last batch: the next epoch starts fresh
            epoch, batches = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self.sampler.skip = batches * self.batch_size


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written next to their target and renamed into place; loaded weights-only.

    Lightning's own save writes to tempfile.mkstemp() (the system temp dir) and then shutil.move()s it:
    a rename when that dir is on the checkpoint's filesystem, but a copy over the old file when it is
    not (a tmpfs /tmp, a scratch mount), so a kill mid-copy leaves a truncated last.ckpt and no old one.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)  # remote: fsspec's transaction
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic on one filesystem: the old file or the new one, never half
        except BaseException as exc:
            full = disk_full(exc, path)  # torch.save reports ENOSPC as a RuntimeError
            Path(tmp).unlink(missing_ok=True)
            if full:
                raise full from exc
            raise

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> Any:
        # A checkpoint is a pickle: only tensors and plain containers may come out of it, never code.
        return super().load_checkpoint(path, map_location=map_location or "cpu", weights_only=True)


def check_checkpoint(path: str) -> None:
    """Refuse a checkpoint before any weights load: one whose pickle would run code, or a broken file."""
    try:
        # mmap: the pickle is checked without reading the tensors' bytes (zip format only)
        torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f"it calls {found.group(1)}" if found else "it holds more than tensors and plain values"
        raise ConfigError(
            f"ckpt_path: refusing to unpickle {path}: {what}; resume only from checkpoints sweeplab wrote"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a file torch cannot read is no checkpoint to resume from
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"ckpt_path: {path} is not a readable checkpoint (truncated?): {reason}") from None


def resolve_ckpt(ckpt_path: str | None, run_dir: Path, output_root: Path) -> str | None:
    """'last': this run dir's last.ckpt, else the newest unfinished run's; or a .ckpt / run dir path."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        own = run_dir / "checkpoints" / "last.ckpt"
        if own.exists():
            return str(own)
        candidates = [
            p
            for p in (output_root / "runs").glob("*/checkpoints/last.ckpt")
            if not (p.parents[1] / "metrics.json").exists()
        ]
        if not candidates:
            raise ConfigError(
                f"ckpt_path=last: no unfinished run with checkpoints/last.ckpt under {output_root / 'runs'}"
            )
        return str(max(candidates, key=lambda p: p.stat().st_mtime))
    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise ConfigError(f"ckpt_path: no checkpoint at {path}; use 'last', a .ckpt file or a run dir")
    return str(path)
