"""Build a cache directory once: sweep workers start together, one builds, the others wait and reuse it."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)


def build_once(final: Path, build: Callable[[Path], None], done_file: str, what: str) -> Path:
    """Return `final`, first running build(tmp) unless a finished copy (one holding done_file) is there.

    `build` fills an empty temp dir beside `final` and writes done_file last; the temp dir is then
    renamed to `final` atomically, so a crash never leaves a directory that looks finished.
    """
    if (final / done_file).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{final}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process to finish building %s at %s", what, final)
        lock.acquire()
    try:
        if (final / done_file).is_file():
            return final
        if final.exists():  # not made by os.replace below (it always holds done_file): discard
            log.warning("removing incomplete %s at %s", what, final)
            shutil.rmtree(final)
        for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a killed builder
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        tmp.mkdir()  # unlike mkdtemp (0700) it honours the umask, so a shared cache stays readable
        try:
            build(tmp)
            if not (tmp / done_file).is_file():
                raise RuntimeError(f"building {what} wrote no {done_file} in {tmp}")
            _readable_as_dir(tmp)
            os.replace(tmp, final)  # atomic: a crash never leaves a finished-looking dir
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        lock.release()
    return final


def _readable_as_dir(root: Path) -> None:
    """transformers saves model.safetensors as 0600: give files the read bits the dir got from the umask."""
    read_bits = root.stat().st_mode & 0o444
    for path in root.rglob("*"):
        if path.is_file():
            path.chmod(path.stat().st_mode | read_bits)
