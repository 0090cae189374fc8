"""The CUDA path: 4-bit base on the GPU, fp16/bf16 mixed precision, packing (skipped without a GPU).

Run on a GPU machine with `make test-gpu` (scripts/gpu-check.sh runs it first).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bitsandbytes.nn import Linear4bit

from sweeplab.config import validate
from sweeplab.models.build import build_model, resolve_model_dir
from sweeplab.models.precision import bf16_native
from tests.conftest import TINY, make_cfg, run_train
from tests.test_model import fixed_batch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def metrics_of(tmp_path: Path, *overrides: str) -> dict:
    result = run_train(*TINY, *overrides, "run_name=g", output_root=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((tmp_path / "runs" / "g" / "metrics.json").read_text())


def test_auto_precision_on_cuda_is_bf16_where_the_gpu_has_it(tmp_path: Path) -> None:
    metrics = metrics_of(tmp_path)
    assert metrics["precision"] == ("bf16-mixed" if bf16_native() else "16-mixed")
    assert metrics["device"].startswith("cuda") and metrics["peak_mem_mb"] > 0
    assert metrics["best_val_loss"] < metrics["base_val_loss"]
    # greedy decoding of tool calls on the GPU, with and without the adapter (TINY keeps it small)
    assert metrics["test_chats"] == 8 and 0.0 <= metrics["test/json_valid"] <= 1.0 and metrics["eval_s"] > 0


def test_fp16_mixed_qlora_trains_packed_rows_on_cuda(tmp_path: Path) -> None:
    """trainer.precision=16-mixed forces fp16 on any GPU; packed rows go through sdpa on CUDA."""
    metrics = metrics_of(tmp_path, "trainer.precision=16-mixed", "data.packing=true")
    assert metrics["precision"] == "16-mixed" and metrics["device"].startswith("cuda")
    assert metrics["best_val_loss"] < metrics["base_val_loss"]
    assert 0.5 < metrics["data/useful_fraction"] <= 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_4bit_layers_sit_on_cuda_and_lora_gets_finite_grads(hermetic_cache: Path, dtype: torch.dtype) -> None:
    if dtype == torch.bfloat16 and not bf16_native():
        pytest.skip("this GPU has no native bf16")
    rc = validate(make_cfg("model=tiny"))
    model_dir = resolve_model_dir(rc.model, hermetic_cache)
    model = build_model(model_dir, rc.model, rc.lora, dtype, "cuda:0")
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    assert layers and all(m.weight.device.type == "cuda" and m.compute_dtype == dtype for m in layers)
    batch = {k: v.to("cuda:0") for k, v in fixed_batch(model_dir).items()}
    with torch.autocast("cuda", dtype=dtype):
        loss = model(**batch, use_cache=False).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]
    assert torch.isfinite(loss) and grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
