"""Run outputs written atomically: a crash never leaves a file that looks finished and is not."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sweeplab.errors import DiskFull

FULL_BYTES = 1 << 20  # less free than this while a write failed: the disk is what failed it


def disk_full(exc: BaseException, path: Path) -> DiskFull | None:
    """ENOSPC, or a writer that wraps it in its own error (torch.save, safetensors) on a full disk.

    Called before the temp file is removed, so the filesystem is still as full as the write found it.
    """
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(path)
    if not isinstance(exc, Exception):
        return None
    try:
        free = shutil.disk_usage(next(p for p in [path, *path.parents] if p.exists())).free
    except OSError:
        return None
    return DiskFull(path) if free < FULL_BYTES else None


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temp name beside `path`, renamed over it (data on disk first) only if the block succeeds.

    The one atomic write of the package: metrics, notes, reports, plots and caches all go through it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        full = disk_full(exc, path)
        tmp.unlink(missing_ok=True)
        if full:
            raise full from exc
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_adapter(model: Any, tokenizer: Any, dest: Path, state_dict: dict | None = None) -> None:
    """peft adapter (+ tokenizer, so clients get the chat template) into a temp dir, then renamed.
    state_dict: the model's weights gathered from FSDP shards (None: the model's own)."""
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        model.save_pretrained(str(tmp), state_dict=state_dict)
        tokenizer.save_pretrained(str(tmp))
        _fsync_tree(tmp)
        # A directory cannot be os.replace'd over a full one: move the old one aside first, so a
        # crash in between leaves it under a hidden name rather than losing it.
        old = dest.parent / f".{dest.name}.old-{os.getpid()}"
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        full = disk_full(exc, dest)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise full from exc
        raise


def _fsync_tree(root: Path) -> None:
    """Data on disk before the rename: after a power loss the renamed dir must not hold empty files."""
    for path in root.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


_log_write_failed: set[str] = set()  # logs whose write error was shown already
_default_handle_error = logging.Handler.handleError


def _handle_log_error(handler: logging.Handler, record: logging.LogRecord) -> None:
    """One line per log that cannot be written (full disk, closed pipe) instead of Python's
    "--- Logging error ---" traceback for every record; any other logging error as before."""
    exc = sys.exc_info()[1]
    if not isinstance(exc, OSError) or not logging.raiseExceptions:
        _default_handle_error(handler, record)
        return
    stream = getattr(handler, "stream", None)
    where = getattr(handler, "baseFilename", None) or getattr(stream, "name", None) or type(handler).__name__
    if where in _log_write_failed:
        return
    _log_write_failed.add(where)
    with contextlib.suppress(Exception):  # stderr may be on the same full disk
        sys.stderr.write(f"sweeplab: cannot write the log {where}: {exc}; its later lines may be lost\n")
        sys.stderr.flush()


def quiet_log_write_errors() -> None:
    """For every handler, now and later (Hydra makes new ones per job): see _handle_log_error."""
    logging.Handler.handleError = _handle_log_error
