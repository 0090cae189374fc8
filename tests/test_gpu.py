"""The CUDA path: fp16 mixed precision and a 4-bit base on the GPU (skipped without one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, run_train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_auto_precision_trains_fp16_mixed_on_cuda(tmp_path: Path) -> None:
    result = run_train(*TINY, "run_name=g", output_root=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs" / "g" / "metrics.json").read_text())
    assert metrics["precision"] == "16-mixed" and metrics["device"].startswith("cuda")
    assert metrics["best_val_loss"] < metrics["base_val_loss"]
    # greedy decoding of tool calls on the GPU, with and without the adapter (TINY keeps it small)
    assert metrics["test_chats"] == 8 and 0.0 <= metrics["test/json_valid"] <= 1.0 and metrics["eval_s"] > 0
