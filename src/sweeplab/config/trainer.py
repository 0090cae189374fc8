"""The trainer group: steps, precision, devices and strategy, and which strategies can run where."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from sweeplab.config.base import Schema


class TrainerConfig(Schema):
    max_steps: int = Field(default=300, gt=0)  # optimizer steps
    precision: Literal["auto", "32-true", "16-mixed", "bf16-mixed"] = "auto"
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"
    # One trial on several devices: each process trains on its own batches, LoRA grads are averaged.
    strategy: Literal["auto", "ddp", "fsdp", "deepspeed_stage_2", "deepspeed_stage_2_offload"] = "auto"
    devices: Annotated[int, Field(ge=1)] | Literal["auto"] = 1  # processes per node; auto: every GPU
    num_nodes: int = Field(default=1, ge=1)
    val_every_n_steps: int = Field(default=50, gt=0)  # optimizer steps between validations
    # None: every val batch; an int: that many batches; a float in (0, 1]: that fraction of them.
    limit_val_batches: Annotated[int, Field(gt=0)] | Annotated[float, Field(gt=0, le=1)] | None = None
    accumulate_grad_batches: int = Field(default=1, ge=1)
    grad_clip: float | None = Field(default=1.0, ge=0)
    val_at_start: bool = True  # the base's val loss, so the gain is visible
    log_every_n_steps: int = Field(default=5, gt=0)
    enable_progress_bar: bool = True

    @model_validator(mode="after")
    def _strategy_fits(self) -> TrainerConfig:
        """A strategy that cannot run here fails now, not after the model has loaded."""
        problems = strategy_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


DEEPSPEED_PIN = "deepspeed==0.19.8"
# Lightning runs FSDP and DeepSpeed on CUDA only; DDP also runs on CPU processes (gloo).
GPU_ONLY_STRATEGIES = ("fsdp", "deepspeed_stage_2", "deepspeed_stage_2_offload")


def strategy_problems(trainer: TrainerConfig) -> list[str]:
    """What is wrong with trainer.strategy / devices / num_nodes together (no torch import)."""
    import importlib.util

    strategy, problems = trainer.strategy, []
    several = trainer.devices != 1 or trainer.num_nodes > 1
    if strategy == "auto" and several:
        problems.append(
            f"trainer.strategy=auto runs one process, but trainer.devices={trainer.devices} and "
            f"trainer.num_nodes={trainer.num_nodes}: set trainer.strategy=ddp (or fsdp, deepspeed_stage_2, "
            "deepspeed_stage_2_offload) to train one trial on several devices"
        )
    if strategy in GPU_ONLY_STRATEGIES and trainer.accelerator == "cpu":
        problems.append(
            f"trainer.strategy={strategy} needs CUDA GPUs (bitsandbytes' 4-bit layers and the strategy); "
            "with trainer.accelerator=cpu use trainer.strategy=ddp"
        )
    if trainer.devices == "auto" and trainer.accelerator == "cpu":
        problems.append(
            "trainer.devices=auto counts GPUs; with trainer.accelerator=cpu give a number of processes"
        )
    if strategy.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        problems.append(
            f"trainer.strategy={strategy} needs DeepSpeed, which is not installed: "
            f"pip install {DEEPSPEED_PIN}"
        )
    return problems
