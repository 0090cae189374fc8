"""Pick device, Lightning precision and the 4-bit compute dtype, and say what was picked."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from sweeplab.config import GPU_ONLY_STRATEGIES, TrainerConfig
from sweeplab.errors import ConfigError

log = logging.getLogger(__name__)

COMPUTE_DTYPES = {"32-true": torch.float32, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


@dataclass(frozen=True)
class Placement:
    device: str  # "cpu" or "cuda:<local rank>": each process of a multi-device trial has its own GPU
    accelerator: str  # Lightning's name: "cpu" or "gpu"
    precision: str  # Lightning precision flag
    compute_dtype: torch.dtype  # bitsandbytes 4-bit matmul dtype


def choose_precision(requested: str, on_gpu: bool, bf16_supported: bool) -> str:
    """Lightning's precision flag for trainer.precision on this device (pure: testable without CUDA).

    auto on a GPU: bf16 mixed where the GPU has bf16 (Ampere and newer), the QLoRA recipe's compute dtype;
    fp16's narrow range overflows more often with 4-bit weights (QLoRA's authors saw fp16 runs diverge).
    Older GPUs get fp16 mixed; trainer.precision=16-mixed forces it anywhere. auto on CPU: fp32.
    """
    if requested == "auto":
        if not on_gpu:
            return "32-true"
        return "bf16-mixed" if bf16_supported else "16-mixed"
    if requested == "bf16-mixed" and on_gpu and not bf16_supported:
        log.warning("trainer.precision=bf16-mixed is not supported by this GPU; using 16-mixed")
        return "16-mixed"
    if requested != "32-true" and not on_gpu:
        # Lightning would turn 16-mixed into bf16 on CPU, which is up to 20x slower on some CPUs.
        log.warning(
            "trainer.precision=%s on CPU runs bf16 autocast and may be much slower than 32-true", requested
        )
    return requested


def resolve_placement(trainer: TrainerConfig) -> Placement:
    cuda = torch.cuda.is_available()
    if trainer.accelerator in ("gpu", "cuda") and not cuda:
        raise ConfigError(
            f"trainer.accelerator={trainer.accelerator} but no CUDA device is visible; "
            "use trainer.accelerator=auto or cpu"
        )
    on_gpu = cuda and trainer.accelerator != "cpu"
    precision = choose_precision(trainer.precision, on_gpu, on_gpu and bf16_native())
    check_devices(trainer, on_gpu)
    placement = Placement(
        device=f"cuda:{local_rank()}" if on_gpu else "cpu",
        accelerator="gpu" if on_gpu else "cpu",
        precision=precision,
        compute_dtype=COMPUTE_DTYPES[precision] if on_gpu or precision != "16-mixed" else torch.bfloat16,
    )
    log.info(
        "device %s, precision %s, 4-bit compute dtype %s (trainer.precision=%s)",
        placement.device,
        placement.precision,
        str(placement.compute_dtype).removeprefix("torch."),
        trainer.precision,
    )
    return placement


def local_rank() -> int:
    """This process's index on its node: set by torchrun and by Lightning's launcher (0 in the first)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def check_devices(trainer: TrainerConfig, on_gpu: bool) -> None:
    """A GPU strategy without a GPU, or more processes per node than GPUs (two ranks on one device)."""
    if not on_gpu and trainer.strategy in GPU_ONLY_STRATEGIES:
        raise ConfigError(
            f"trainer.strategy={trainer.strategy} needs CUDA GPUs and none is visible; "
            "use trainer.strategy=ddp (it runs CPU processes too)"
        )
    if not on_gpu or trainer.devices == "auto":
        return
    visible = torch.cuda.device_count()
    if trainer.devices > visible:
        raise ConfigError(
            f"trainer.devices={trainer.devices} but this node has {visible} visible GPU(s): "
            f"use trainer.devices<={visible} (or trainer.devices=auto)"
        )


def bf16_native() -> bool:
    """Ampere or newer: pre-Ampere GPUs (T4, V100) only emulate bf16, which torch counts as supported."""
    return torch.cuda.is_bf16_supported(including_emulation=False)
