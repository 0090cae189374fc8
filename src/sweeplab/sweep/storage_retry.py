"""Optuna storage that rides out a database restart: every call is retried until storage_timeout.

Used by the sweeper (its loop and heartbeat thread) and by each job (its reports), so a PostgreSQL
restart of a few seconds costs nothing, and a longer outage ends the sweep with one line.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage

from sweeplab.errors import SweeplabError
from sweeplab.secrets import redact_text

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_DELAY_S = 4.0  # backoff cap: a restarted server is noticed within a few seconds


class StorageUnreachable(SweeplabError):
    """The storage stayed down longer than hydra.sweeper.storage_timeout."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = redact_text(url)
        super().__init__(
            f"storage {self.url} unreachable for over {timeout:g} s (hydra.sweeper.storage_timeout); "
            "once it is back, run the same command again to resume"
        )


# Set by a thread that gave up (the heartbeat, a pruning report): training saves last.ckpt and stops
# at the next step boundary (sweeplab.training.interrupt.GracefulStop), then the sweep exits with LOST_ERROR.
LOST = threading.Event()
LOST_ERROR: list[StorageUnreachable] = []


def give_up(exc: StorageUnreachable) -> None:
    """For threads and callbacks that cannot stop training themselves."""
    if not LOST.is_set():
        LOST_ERROR.append(exc)
        LOST.set()


class StorageDown(Exception):
    """Raised instead of waiting, inside no_wait(): the caller keeps working and tries later."""


def transient(exc: BaseException) -> bool:
    """A lost or refused connection; not a bug, a constraint or a missing row."""
    if isinstance(exc, optuna.exceptions.StorageInternalError):
        exc = exc.__cause__ or exc
    if isinstance(exc, sqlalchemy.exc.PendingRollbackError) and exc.__context__ is not None:
        # A second query in the transaction a lost connection broke (optuna's _get_trials falls back to
        # one): the first error says what happened. optuna rolled the session back, so a retry is clean.
        return transient(exc.__context__)
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError)


class _Outage:
    """One per storage URL and process: threads share it, so an outage is logged once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.since: float | None = None

    def begin(self, url: str, timeout: float) -> float:
        with self.lock:
            if self.since is None:
                self.since = time.monotonic()
                log.warning("storage %s unreachable, retrying for up to %g s", redact_text(url), timeout)
            return time.monotonic() - self.since

    def end(self) -> None:
        with self.lock:
            if self.since is not None:
                log.warning("storage reachable again after %.1f s", time.monotonic() - self.since)
                self.since = None


_outages: dict[str, _Outage] = {}
_local = threading.local()


@contextlib.contextmanager
def no_wait() -> Iterator[None]:
    """Storage calls in this block raise StorageDown at once instead of waiting for the storage."""
    _local.no_wait = True
    try:
        yield
    finally:
        _local.no_wait = False


def call_with_retry(fn: Callable[[], T], url: str, timeout: float) -> T:
    """fn(), retried with backoff while the storage is unreachable, for up to `timeout` s per outage."""
    outage = _outages.setdefault(url, _Outage())
    delay = 0.25
    while True:
        try:
            result = fn()
        except Exception as exc:
            if not transient(exc):
                raise
            elapsed = outage.begin(url, timeout)
            if elapsed >= timeout:
                raise StorageUnreachable(url, timeout) from None
            if getattr(_local, "no_wait", False):
                raise StorageDown(str(exc)) from None
            time.sleep(min(delay, timeout - elapsed))
            delay = min(delay * 2, MAX_DELAY_S)
            continue
        outage.end()
        return result


class RetryingRDBStorage(RDBStorage):
    """RDBStorage whose every public call (and the private ones Optuna calls) goes through call_with_retry.

    pool_pre_ping: a pooled connection killed by a restart is replaced before use, not failed on.
    """

    def __init__(self, url: str, *, timeout: float, **kwargs: Any) -> None:
        self.timeout = timeout
        engine_kwargs = {"pool_pre_ping": True, **kwargs.pop("engine_kwargs", {})}
        self._depth = threading.local()
        call_with_retry(
            lambda: RDBStorage.__init__(self, url, engine_kwargs=engine_kwargs, **kwargs), url, timeout
        )

    def _set_trial_param(self, trial_id: int, name: str, value: float, *args: Any) -> None:
        """Optuna's cache calls this private one for every suggested param: retried like the public calls.
        A commit cut by a restart may have landed all the same: a retry that finds the param stored is done
        (storing it again would break the one-param-per-name constraint)."""
        tried: list[bool] = []

        def once() -> None:
            if tried and self._param_stored(trial_id, name):
                return
            tried.append(True)
            RDBStorage._set_trial_param(self, trial_id, name, value, *args)

        self._retried(once)

    def _retried(self, fn: Callable[[], T]) -> T:
        if getattr(self._depth, "n", 0):  # a call from inside another one: the outer call retries the whole
            return fn()
        self._depth.n = 1
        try:
            return call_with_retry(fn, self.url, self.timeout)
        finally:
            self._depth.n = 0

    def _param_stored(self, trial_id: int, name: str) -> bool:
        try:
            RDBStorage.get_trial_param(self, trial_id, name)
        except KeyError:
            return False
        return True

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_depth", None)  # thread-local, rebuilt on unpickling
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._depth = threading.local()


def _retrying(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self._retried(lambda: method(self, *args, **kwargs))

    return wrapper


for _name, _member in inspect.getmembers(RDBStorage, inspect.isfunction):
    # And the private ones Optuna's own cache calls (_set_trial_param has its own retry, above). A commit
    # of _create_new_trial cut by a restart may have made the trial all the same, and the retry (as
    # Optuna's own on a deadlock) makes a second: the sweeper fails such an unclaimed one (recovery.py).
    private = ("_get_trials", "_get_stale_trial_ids", "_get_best_trial_id", "_create_new_trial")
    if (not _name.startswith("_") or _name in private) and _name not in (
        "get_heartbeat_interval",
        "upgrade",
        "get_current_version",
        "get_head_version",
        "get_all_versions",
        "remove_session",
    ):
        setattr(RetryingRDBStorage, _name, _retrying(_member))
