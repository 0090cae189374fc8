"""bench/bench_gpu.py: skips cleanly without CUDA, and its measuring code runs end to end (tiny shape)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "bench_gpu.py"
TINY_RUN = ["--shape=tiny", "--batch-size=2", "--seq-len=32", "--steps=2", "--warmup=1"]


def bench(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def load_script():
    sys.path.insert(0, str(SCRIPT.parent))  # it imports its neighbour benchmarks_md
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peak_flops_are_looked_up_by_gpu_name() -> None:
    peak = load_script().peak_tflops
    assert peak("NVIDIA H200") == 989 and peak("NVIDIA H100 80GB HBM3") == 989
    assert peak("NVIDIA H100 PCIe") == 756 and peak("NVIDIA A100-SXM4-80GB") == 312
    assert peak("NVIDIA L40S") == 362 and peak("NVIDIA L4") == 121
    assert peak("Some Future GPU") is None  # MFU shows n/a rather than a guess


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA path")
def test_without_cuda_it_says_so_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n")
    result = bench(f"--out={out}", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "skipped: no CUDA device"
    assert out.read_text() == "# Benchmarks\n"


@pytest.mark.slow
def test_cpu_smoke_run_measures_and_writes_its_section(tmp_path: Path) -> None:
    """The real load (4-bit from a saved random Qwen2), Lightning fit and estimate, on a tiny shape."""
    out, raw = tmp_path / "BENCHMARKS.md", tmp_path / "bench_gpu.json"
    out.write_text("# Benchmarks\n\n<!-- other:start -->\nkept\n<!-- other:end -->\n")
    result = bench("--device=cpu", "--variants=qlora-fp16", *TINY_RUN, f"--out={out}", f"--json={raw}")
    assert result.returncode == 0, result.stderr[-3000:]
    [row] = json.loads(raw.read_text())["results"]
    assert row["tokens_per_s"] > 0 and row["estimate_bytes"] > 0 and row["flops_per_token"] > 0
    assert row["trainable"] > 0
    text = out.read_text()
    assert "kept" in text and "| qlora-fp16 | 32-true |" in text and text.count("bench_gpu:end") == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_variant_runs_on_cuda(tmp_path: Path) -> None:
    """The tiny shape on the GPU: what `make bench-gpu` does at full size, in seconds."""
    raw = tmp_path / "bench_gpu.json"
    result = bench(*TINY_RUN, f"--json={raw}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads(raw.read_text())["results"]
    assert {r["variant"] for r in results} >= {"qlora-fp16", "lora-fp16"}
    for r in results:
        assert "error" not in r, r
        assert r["peak_bytes"] >= r["loaded_bytes"] > 0 and r["tokens_per_s"] > 0
    precisions = {r["variant"]: r["precision"] for r in results}
    assert precisions["qlora-fp16"] == "16-mixed"
