"""The optim group: optimizer, learning rate and its warmup/decay schedule."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from sweeplab.config.base import Schema


class OptimConfig(Schema):
    name: Literal["adamw", "paged_adamw_8bit"] = "adamw"
    lr: float = Field(default=2e-4, gt=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    # After warmup: cosine or linear decay to min_lr_ratio * lr at max_steps, or constant at lr
    # (the QLoRA paper's). Warmup rises linearly from warmup_start_ratio * lr to lr.
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    warmup_steps: int | None = Field(default=None, ge=0)  # when set, wins over warmup_ratio
    warmup_start_ratio: float = Field(default=0.0, ge=0, le=1)  # DeepSpeed's warmup_min_ratio
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)  # decay floor as a fraction of lr; constant has none
    # LoRA+ (Hayou et al. 2024): lora_B's learning rate is this times lr (lora_A's). None: off, and so
    # is 1 (the same updates), which a sweep can offer: choice(1, 4, 16); Hydra's choice() has no null.
    loraplus_lr_ratio: float | None = Field(default=None, gt=0)

    def warmup_for(self, max_steps: int) -> int:
        """Warmup length in optimizer steps: warmup_steps if set, else warmup_ratio of the run."""
        return self.warmup_steps if self.warmup_steps is not None else round(self.warmup_ratio * max_steps)
