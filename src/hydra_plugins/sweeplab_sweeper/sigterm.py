"""SIGTERM in the sweep loop (SLURM and Kubernetes stop jobs with it): stop like Ctrl-C instead of dying
at once with the workers left running, but never inside a storage section (ask and claim, the tell).
Cut there, a trial stays RUNNING, and the rerun calls it killed and spends a retry on it: such a section
ends first, then the loop stops. Inside a training step, GracefulStop takes both signals over."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from collections.abc import Iterator
from typing import Any


class SigtermGuard:
    def __init__(self) -> None:
        self.received: list[int] = []  # the SIGTERM this process got, if any
        self.deferring = False  # in a storage section that a SIGTERM must not cut
        self._previous: Any = None

    def install(self) -> None:
        """Only the main thread may set handlers; a sweep driven from another thread keeps the default."""
        self.received.clear()
        self.deferring = False
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self.handle)

    def restore(self) -> None:
        """A sweep driven from Python leaves its caller's handler in place."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def handle(self, signum: int, frame: Any) -> None:
        if self.received:
            return  # one is enough: the first is being handled
        self.received.append(signum)
        if not self.deferring:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False


class WorkerSignals:
    """Passes a stop on to a sweep's worker processes (their own sessions: a signal reaches the main
    process only), once each: a second signal would stop a worker at once, without its checkpoint."""

    def __init__(self, workers: list[subprocess.Popen]) -> None:
        self.workers = workers
        self._sent: set[int] = set()

    def send(self, sig: int) -> None:
        for worker in self.workers:
            if worker.poll() is None and worker.pid not in self._sent:
                self._sent.add(worker.pid)
                worker.send_signal(sig)
