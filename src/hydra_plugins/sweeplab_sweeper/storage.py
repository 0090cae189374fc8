"""Storage with heartbeats, and one lock per study around the steps that must not interleave.

Without the lock, workers starting together race on creating the schema ("table studies already
exists") and on counting + asking (n_trials=9 gave 10 trials with 8 workers in a prototype).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy

from sweeplab.sweep.storage_retry import RetryingRDBStorage, call_with_retry, transient


def absolute_url(url: str) -> str:
    """sqlite:///relative.db resolved against the cwd, so jobs and workers open the same file."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return url
    path = Path(url[len(prefix) :]).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return prefix + str(path)


def open_storage(
    url: str, heartbeat_interval: int, grace_period: int | None, timeout: float
) -> RetryingRDBStorage:
    return RetryingRDBStorage(
        url, timeout=timeout, heartbeat_interval=heartbeat_interval, grace_period=grace_period
    )


@contextlib.contextmanager
def study_lock(url: str, study_name: str, lock_dir: Path, timeout: float = 0) -> Iterator[None]:
    """flock beside an SQLite file; a PostgreSQL advisory lock; else a local lock file."""
    if url.startswith("postgresql"):
        key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)

        def connect() -> sqlalchemy.Connection:
            conn = engine.connect()
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            return conn

        conn = call_with_retry(connect, url, timeout)
        try:
            yield
        finally:
            try:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            except Exception as exc:
                # A server restart ended the session, and with it the lock: nothing left to release.
                if not transient(exc):
                    raise
            conn.close()
            engine.dispose()
        return
    if url.startswith("sqlite:///"):
        lock_path = Path(url[len("sqlite:///") :] + ".lock")
    else:
        lock_dir.mkdir(parents=True, exist_ok=True)
        lock_path = lock_dir / f".{hashlib.sha256((url + study_name).encode()).hexdigest()[:16]}.lock"
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def default_storage(storage: Any, sweep_dir: Path) -> str:
    """hydra.sweeper.storage, or (null, upstream's in-memory study) an SQLite file in the sweep dir: the
    study sits with its trials, workers share it, and a rerun into the same sweep dir resumes it."""
    return str(storage or f"sqlite:///{sweep_dir / 'optuna.db'}")
