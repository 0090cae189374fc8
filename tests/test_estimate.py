"""sweeplab.estimate: exact counts on the meta device, the quantization arithmetic, the real entry point."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sweeplab.config import validate
from sweeplab.models.estimate import Estimate, estimate, quant_constant_bytes
from tests.conftest import make_cfg

QWEN = ["model=qwen2.5-1.5b", "data.batch_size=1", "data.max_seq_len=2048"]


def qwen(*overrides: str) -> Estimate:
    return estimate(validate(make_cfg(*QWEN, *overrides)))


def test_qwen_all_linear_r8_is_exact() -> None:
    e = qwen("lora=r8")
    assert e.trainable_params == 9_232_384 == 1_154_048 * 8
    assert e.lora_modules == 196
    assert e.total_params == 1_543_714_304 + 9_232_384  # tied head counted once
    assert e.source == "built-in shape table"  # no download, no config.json needed


@pytest.mark.parametrize(
    ("r", "millions"), [(4, "4.6"), (8, "9.2"), (16, "18.5"), (32, "36.9"), (64, "73.9")]
)
def test_qwen_trainable_matches_the_guide_table(r: int, millions: str) -> None:
    assert f"{qwen(f'lora.r={r}').trainable_params / 1e6:.1f}" == millions


@pytest.mark.parametrize(
    ("targets", "modules"), [("all-linear", 196), ("attention", 112), ("qv", 56), ("mlp", 84)]
)
def test_qwen_lora_modules_per_target_set(targets: str, modules: int) -> None:
    assert qwen(f"lora.targets={targets}").lora_modules == modules


def test_layers_to_transform_wraps_only_those_layers() -> None:
    assert qwen("lora.targets=qv", "lora.layers_to_transform=[0,1]").lora_modules == 4


def test_quantization_constants_are_fp32_absmax_not_fp16() -> None:
    n = 64 * 256 * 100  # whole blocks and whole second-level blocks
    assert 8 * quant_constant_bytes(n, double_quant=False) / n == 0.5  # fp32 per 64 weights
    assert 8 * quant_constant_bytes(n, double_quant=True) / n == pytest.approx(8 / 64 + 32 / (64 * 256))
    assert f"{qwen().constant_bits:.3f}" == "0.127"
    assert f"{qwen('model.quant.double_quant=false').constant_bits:.3f}" == "0.500"


def test_embeddings_head_and_norms_stay_out_of_4bit() -> None:
    e = qwen()
    assert e.quantized_params == 28 * (1536 * (1536 + 256 + 256 + 1536) + 3 * 1536 * 8960)
    assert e.kept_params == e.total_params - e.trainable_params - e.quantized_params
    assert e.kept_params > 151936 * 1536  # the embedding alone: 233M params not in 4 bits


def test_checkpointing_and_8bit_optimizer_shrink_the_estimate() -> None:
    e = qwen()
    assert e.activations_ckpt < e.activations
    assert qwen("optim=paged_adamw_8bit").optimizer < e.optimizer / 3
    assert e.flops_per_token > 2 * e.forward_flops_per_token  # backward + recompute


def run_estimate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sweeplab.estimate", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )


def test_multirun_prints_one_row_per_configuration() -> None:
    result = run_estimate("--multirun", "lora.r=4,8", "model=qwen2.5-1.5b")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3, result.stdout  # header + 2 rows
    assert lines[1].startswith("lora.r=4") and "4,616,192" in lines[1]
    assert lines[2].startswith("lora.r=8") and "9,232,384" in lines[2]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["model=nope"], "Could not find 'model/nope'; available: base,"),
        (["lora.rank=8"], "lora.rank"),
        (["+lora.rank=8"], "lora.rank is not a key"),
        (["lora.r=4,8"], "add --multirun"),
        (["model=toy", "lora.layers_to_transform=[-9]"], "out of range"),  # the toy base has 4 layers
        (["--multirun", "hparams_search=qlora"], "comma lists"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args: list[str], needle: str) -> None:
    result = run_estimate(*args)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("sweeplab: error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
