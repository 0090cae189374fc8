"""Silence, by message, the library notices a user cannot act on; everything else still prints.

Each entry names who emits it and why it is noise. Where a current API exists sweeplab uses it instead
(activation_checkpointing_enable, use_cache=False in training forwards, no `anonymous` passed to W&B);
tests/test_quiet.py fails on any warning a short default run prints, so a new one gets looked at.
"""

from __future__ import annotations

import logging
import warnings

# (category, message regex) for warnings.filterwarnings.
WARNINGS = [
    # peft 0.21's get_peft_model reads transformers 5's deprecated `is_gradient_checkpointing` property.
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
    # Lightning 2.6's _pytree builds torch's deprecated LeafSpec on every batch transfer.
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
]

# (logger name, message prefix) for log records.
LOG_RECORDS = [
    # bitsandbytes 0.50 tries an optional `kernels` package on CPU at import and falls back to its own
    # kernel; installing `kernels` would fetch kernels from the hub at run time, which sweeplab avoids.
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
]


class DropMessage(logging.Filter):
    """Drops the records of one logger whose message starts with `prefix`."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def quiet_library_noise() -> None:
    """Install the filters; call before bitsandbytes is imported (its notice comes at import)."""
    for category, message in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, prefix in LOG_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessage) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(DropMessage(prefix))


class DropStopTraceback(logging.Filter):
    """Hydra writes "Job failed" and a traceback to the job's log file for any exception its job raises.
    A pruned trial (optuna.TrialPruned) and a stop on a signal (sweeplab's Interrupted, resumed by the
    rerun) are no failures: the job's own lines say what happened, and a traceback reads like a crash."""

    def filter(self, record: logging.LogRecord) -> bool:
        from sweeplab.errors import Interrupted

        exc = record.exc_info[1] if record.exc_info else None
        stopped = isinstance(exc, Interrupted) or type(exc).__name__ == "TrialPruned"
        return not (stopped and record.getMessage() == "Job failed")


def quiet_job_stops() -> None:
    """On the job's log files; Hydra sets them up per job, so each job calls this."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and not any(
            isinstance(f, DropStopTraceback) for f in handler.filters
        ):
            handler.addFilter(DropStopTraceback())
