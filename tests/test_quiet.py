"""A first run prints no warning a newcomer cannot act on (sweeplab.quiet, and current library APIs)."""

from __future__ import annotations

import logging
import re
import sys
import warnings
from pathlib import Path

from sweeplab.quiet import quiet_library_noise
from tests.conftest import TINY, run_train

NOISE = re.compile(r"warn|deprecat", re.IGNORECASE)


def test_a_short_default_run_prints_no_warnings(tmp_path: Path) -> None:
    """W&B (the default logger) offline and not silenced, as a user without a key sees it."""
    overrides = [o for o in TINY if not o.startswith("logger=")]
    result = run_train(
        *overrides, "logger=wandb", "run_name=q", output_root=tmp_path, env={"WANDB_SILENT": "false"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = (result.stdout + "\n" + result.stderr).splitlines()
    assert any(line.startswith("wandb:") for line in output)  # W&B did speak: it was not silenced
    found = [line for line in output if NOISE.search(line)]
    assert not found, "warnings in a default run:\n" + "\n".join(found)


def test_only_the_named_messages_are_silenced(caplog) -> None:
    """The filters match by message: another warning or log record from the same source still shows."""
    quiet_library_noise()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_library_noise()  # catch_warnings reset the filters; installed again inside
        warnings.warn(
            "`is_gradient_checkpointing` is deprecated and will be removed in v6.",
            FutureWarning,
            stacklevel=1,
        )
        warnings.warn("some other deprecation", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["some other deprecation"]
    ops = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger=ops.name):
        ops.warning("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'")
        ops.warning("another bitsandbytes warning")
    assert [r.getMessage() for r in caplog.records] == ["another bitsandbytes warning"]
    assert len(ops.filters) == 1  # installing twice adds no second filter


def test_a_pruned_or_interrupted_job_leaves_no_traceback_in_its_log_file(tmp_path: Path) -> None:
    """Hydra logs "Job failed" with the exception to the job's log file; a crash keeps its traceback."""
    import optuna

    from sweeplab.errors import Interrupted
    from sweeplab.quiet import quiet_job_stops

    handler = logging.FileHandler(tmp_path / "train.log")
    logging.getLogger().addHandler(handler)
    try:
        quiet_job_stops()
        stops = [optuna.TrialPruned("pruned at step 4"), Interrupted("SIGTERM at step 2")]
        for exc in [*stops, ValueError("x")]:
            try:
                raise exc
            except Exception:  # noqa: BLE001 - logged as Hydra's run_job logs a job's exception
                record = logging.getLogger("hydra.core.utils").makeRecord(
                    "hydra.core.utils", logging.ERROR, __file__, 0, "Job failed", (), sys.exc_info()
                )
                handler.handle(record)  # Hydra calls the file handlers directly
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    text = (tmp_path / "train.log").read_text()
    assert text.count("Traceback") == 1 and "ValueError: x" in text and "Pruned" not in text
