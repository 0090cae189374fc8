"""bench_trl.py: every arm (TRL's SFTTrainer and sweeplab, padded and packed) trains and is counted."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARGS = dict(model="tiny", steps=2, batch=4, max_seq_len=256, n_val=4, lr=1e-3)
ARMS = [
    f"{trainer}-{layout}"
    for trainer in ("trl", "sweeplab")
    for layout in ("padded", "padding-free", "packed")
]


@pytest.fixture(scope="module")
def bench(hermetic_cache: Path):
    sys.path.insert(0, str(ROOT / "bench"))  # the bench scripts import their neighbours by name
    try:
        import bench_trl

        yield bench_trl
    finally:
        sys.path.remove(str(ROOT / "bench"))


@pytest.fixture(scope="module")
def results(bench) -> dict[str, dict]:
    return {arm: bench.run_arm(argparse.Namespace(arm=arm, round=0, **ARGS)) for arm in ARMS}


@pytest.mark.parametrize("arm", ARMS)
def test_every_arm_trains_and_counts_its_useful_tokens(results, arm: str) -> None:
    result = results[arm]
    assert math.isfinite(result["train_loss"]) and math.isfinite(result["val_loss"])
    assert 4.0 < result["val_loss"] < 12.0  # a cross-entropy over a 4k vocabulary, not a 0 from no labels
    assert 0 < result["useful_tokens"] <= result["processed_tokens"]
    assert result["seconds"] > 0 and result["tokens_per_s"] > 0
    if arm.endswith("padding-free") or arm == "trl-packed":
        assert result["useful_tokens"] == result["processed_tokens"]  # flattened: no pad token at all


def test_every_arm_of_a_round_trains_one_epoch_over_the_same_chats(bench, results) -> None:
    """Same useful tokens in every arm: the losses compare like for like, and so do the speeds."""
    assert len({r["epoch_tokens"] for r in results.values()}) == 1
    other_round = bench.run_arm(argparse.Namespace(arm="sweeplab-padded", round=1, **ARGS))
    assert other_round["epoch_tokens"] != results["sweeplab-padded"]["epoch_tokens"]  # its own chats


def test_the_table_and_verdict_name_each_arm(bench) -> None:
    def run(speed: float, loss: float) -> dict:
        return {"tokens_per_s": speed, "val_loss": loss, "useful_tokens": 90, "processed_tokens": 100}

    results = {
        "trl-padded": [run(10, 2.0), run(12, 2.0)],
        "trl-packed": [run(16, 1.8), run(16, 1.9)],
        "sweeplab-padded": [run(20, 1.81), run(22, 1.9)],
        "sweeplab-packed": [run(30, 1.9), run(24, 1.9)],  # faster, but 0.05 worse than trl-packed
    }
    med = bench.summary(results)
    table = bench.table(results, med)
    assert "| trl-padded | 10.0 / 12.0 | 11.0 | 0.90 | 2.0000 |" in table
    assert "| sweeplab-packed | 30.0 / 24.0 | 27.0 |" in table
    line = bench.verdict(results, med)
    assert line.startswith("**sweeplab / TRL best at equal or better loss: 1.31x** (sweeplab-padded 21.0 vs ")
    assert "sweeplab-packed / trl-packed: 1.69x, val loss +0.0500." in line
    results["sweeplab-padded"] = [run(20, 1.9), run(22, 2.0)]
    assert bench.verdict(results, bench.summary(results)).startswith("**No sweeplab arm reached")


@pytest.mark.slow
def test_the_race_runs_each_arm_in_its_own_process_and_writes_its_section(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    cmd = [sys.executable, "bench/bench_trl.py", "--rounds=1", "--out", str(out)]
    cmd += [f"--{k.replace('_', '-')}={v}" for k, v in ARGS.items()] + [
        "--arms",
        "trl-padded",
        "sweeplab-packed",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert (
        "<!-- bench_trl:start -->" in text and "| sweeplab-packed |" in text and "sweeplab / TRL best" in text
    )
