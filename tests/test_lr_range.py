"""The lr range test: where it puts a sweep's lr range, and that the real entry point runs it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sweeplab.training.lr_range import SPAN, lr_at, smooth, suggest
from tests.conftest import TINY, run_train


def test_lr_rises_exponentially_from_min_to_max() -> None:
    lrs = [lr_at(k, 5, 1e-4, 1e-0) for k in range(5)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(1.0)
    assert all(b / a == pytest.approx(10.0) for a, b in zip(lrs, lrs[1:], strict=False))


def test_smoothing_is_bias_corrected() -> None:
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # a plain EMA would start near 0


def valley(lrs: list[float], best: float) -> list[float]:
    """A loss that falls until `best` and blows up past it (in log lr)."""
    return [1.0 + (math.log10(lr) - math.log10(best)) ** 2 * (1 if lr < best else 6) for lr in lrs]


@pytest.mark.parametrize("best", [3e-4, 3e-3, 3e-2])
def test_the_range_sits_below_the_lowest_loss(best: float) -> None:
    lrs = [lr_at(k, 25, 1e-5, 1e-1) for k in range(25)]
    s = suggest(lrs, valley(lrs, best), 1e-5, 1e-1)
    # The EMA lags: its minimum comes at most a few steps after the true one.
    assert best <= s["lr_at_min_loss"] <= best * 10 ** (4 * 4 / 24)
    assert s["high"] == s["lr_at_min_loss"]
    assert s["low"] == pytest.approx(s["high"] / SPAN)
    assert s["low"] < s["centre"] < s["high"]
    assert s["edge"] is None


def test_a_loss_still_falling_at_the_top_says_so_and_stays_in_bounds() -> None:
    lrs = [lr_at(k, 10, 1e-5, 1e-3) for k in range(10)]
    s = suggest(lrs, [5.0 - 0.3 * k for k in range(10)], 1e-5, 1e-3)
    assert s["edge"] == "last" and s["high"] == pytest.approx(1e-3)


def test_a_diverged_step_is_ignored_and_too_few_points_refused() -> None:
    lrs = [1e-4, 1e-3, 1e-2, 1e-1]
    s = suggest(lrs, [3.0, 2.0, 1.5, math.inf], 1e-4, 1e-1)
    assert s["lr_at_min_loss"] == 1e-2
    with pytest.raises(ValueError, match="at least 3"):
        suggest(lrs, [3.0, math.nan, math.inf, math.inf], 1e-4, 1e-1)


def test_the_entry_point_runs_a_range_test_instead_of_a_run(tmp_path: Path) -> None:
    done = run_train(
        *TINY,
        "run_name=lr",
        "lr_range_test={steps: 12, min_lr: 1e-4, max_lr: 1.0}",
        output_root=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "runs" / "lr"
    result = json.loads((run_dir / "lr_range.json").read_text())
    assert 3 <= result["steps"] <= 12 and len(result["losses"]) <= 12
    assert 1e-4 <= result["low"] < result["high"] <= 1.0
    # lr 1.0 on a LoRA adapter destroys the loss: the lowest point is well inside the range.
    assert result["lr_at_min_loss"] < 1.0 and result["edge"] is None
    assert not (run_dir / "adapter").exists() and not (run_dir / "metrics.json").exists()
