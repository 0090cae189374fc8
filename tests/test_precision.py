"""trainer.precision=auto: what each device gets, decided without a GPU (the decision is a pure function)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml

from sweeplab.config import TrainerConfig
from sweeplab.models.precision import choose_precision, resolve_placement

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("requested", "on_gpu", "bf16", "expected"),
    [
        ("auto", True, True, "bf16-mixed"),  # Ampere and newer: QLoRA's compute dtype
        ("auto", True, False, "16-mixed"),  # T4, V100: fp16 mixed
        ("auto", False, False, "32-true"),  # CPU: fp32 (bf16 autocast is up to 20x slower on some CPUs)
        ("16-mixed", True, True, "16-mixed"),  # forcing fp16 on a bf16 GPU is honoured
        ("bf16-mixed", True, False, "16-mixed"),  # no bf16 on this GPU: fp16, with a warning
        ("32-true", True, True, "32-true"),
        ("bf16-mixed", False, False, "bf16-mixed"),  # CPU: honoured, with a warning
    ],
)
def test_precision_per_device(requested: str, on_gpu: bool, bf16: bool, expected: str) -> None:
    assert choose_precision(requested, on_gpu, bf16) == expected


def test_a_downgrade_is_said(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sweeplab.models.precision"):
        choose_precision("bf16-mixed", on_gpu=True, bf16_supported=False)
    assert "not supported by this GPU; using 16-mixed" in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU side of auto")
def test_auto_on_this_cpu_machine_is_fp32() -> None:
    placement = resolve_placement(TrainerConfig())
    assert (placement.device, placement.precision) == ("cpu", "32-true")
    assert placement.compute_dtype == torch.float32


def test_the_config_comment_says_what_auto_does() -> None:
    """The YAML note is what users read: it must name the same choice as choose_precision."""
    line = next(
        raw
        for raw in (ROOT / "conf" / "trainer" / "default.yaml").read_text().splitlines()
        if raw.startswith("precision:")
    )
    assert yaml.safe_load(line)["precision"] == "auto"
    for words in ("bf16 mixed", "fp16 mixed", "fp32 on CPU"):
        assert words in line, f"conf/trainer/default.yaml's precision comment lacks {words!r}: {line}"
