"""Storage with heartbeats, and one lock per study around the steps that must not interleave.

Without the lock, workers starting together race on creating the schema ("table studies already
exists") and on counting + asking (n_trials=9 gave 10 trials with 8 workers in a prototype).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy

from sweeplab.sweep.storage_retry import MAX_DELAY_S, RetryingRDBStorage, call_with_retry, transient


def absolute_url(url: str) -> str:
    """sqlite:///relative.db resolved against the cwd, so jobs and workers open the same file."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return url
    path = Path(url[len(prefix) :]).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return prefix + str(path)


def min_grace_period(heartbeat_interval: int, storage_timeout: int) -> int:
    """The longest a live worker can go without a stored heartbeat: its last beat up to one interval
    before an outage, the outage it rides out (up to storage_timeout), and one backoff step after it.
    A shorter grace period lets another machine fail that worker's trial as lost meanwhile."""
    return storage_timeout + heartbeat_interval + math.ceil(MAX_DELAY_S)


def grace_period_for(grace_period: int | None, heartbeat_interval: int, storage_timeout: int) -> int:
    """hydra.sweeper.grace_period, or (null) the shortest safe one plus one more heartbeat of margin."""
    if grace_period is not None:
        return grace_period
    return min_grace_period(heartbeat_interval, storage_timeout) + heartbeat_interval


def open_storage(
    url: str, heartbeat_interval: int, grace_period: int | None, timeout: float
) -> RetryingRDBStorage:
    return RetryingRDBStorage(
        url, timeout=timeout, heartbeat_interval=heartbeat_interval, grace_period=grace_period
    )


class HeldLock:
    """What `with study_lock(...) as held` gives: still_held() says whether the lock lasted so far."""

    def still_held(self) -> bool:
        return True  # a flock lives as long as this process's open file: it cannot be lost


class PostgresLock(HeldLock):
    """A session-level advisory lock lasts as long as its server session. A server restart ends the
    session and frees the lock, and the section's own storage calls, retried, then go on without it
    while another worker takes it: the section must ask, before it relies on its reads, whether the
    session that took the lock is still the one it talks to."""

    def __init__(self, engine: sqlalchemy.Engine, key: int) -> None:
        self.key = key
        self.conn = engine.connect()
        try:
            self.conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            self.pid = self._backend_pid()
        except BaseException:
            self.conn.close()  # retried with a new connection
            raise
        self.lost = False

    def _backend_pid(self) -> int:
        return self.conn.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar_one()

    def still_held(self) -> bool:
        if not self.lost:
            try:  # a new session (SQLAlchemy reconnects an invalidated connection) holds no lock
                self.lost = self._backend_pid() != self.pid
            except Exception:  # noqa: BLE001 - a dead connection fails in driver-specific ways
                self.lost = True
        return not self.lost

    def release(self) -> None:
        if not self.lost:  # else the connection is known dead (and SQLAlchemy would refuse to use it)
            try:
                self.conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            except Exception as exc:
                # A server restart ended the session, and with it the lock: nothing left to release.
                if not transient(exc):
                    raise
        self.conn.close()


@contextlib.contextmanager
def study_lock(url: str, study_name: str, lock_dir: Path, timeout: float = 0) -> Iterator[HeldLock]:
    """flock beside an SQLite file; a PostgreSQL advisory lock; else a local lock file."""
    if url.startswith("postgresql"):
        key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        held = call_with_retry(lambda: PostgresLock(engine, key), url, timeout)
        try:
            yield held
        finally:
            held.release()
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
            yield HeldLock()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def default_storage(storage: Any, sweep_dir: Path) -> str:
    """hydra.sweeper.storage, or (null, upstream's in-memory study) an SQLite file in the sweep dir: the
    study sits with its trials, workers share it, and a rerun into the same sweep dir resumes it."""
    return str(storage or f"sqlite:///{sweep_dir / 'optuna.db'}")
