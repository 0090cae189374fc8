"""The lora group: adapter rank, scale, targets and layers, and the named target sets."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from sweeplab.config.base import Schema
from sweeplab.errors import ConfigError

# Named LoRA target sets the sweeper chooses among. "all-linear" is peft's own keyword
# (every linear layer but the output head); the others are Llama/Qwen module names.
TARGET_SETS: dict[str, str | list[str]] = {
    "all-linear": "all-linear",
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qv": ["q_proj", "v_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
}


class LoraConfig(Schema):
    r: int = Field(default=16, gt=0)
    alpha: float = Field(default=32, gt=0)
    # rsLoRA (Kalajdzievski 2023): scale by alpha/sqrt(r) instead of alpha/r, so the best learning
    # rate moves less with the rank and a sweep over r needs no matching sweep over alpha.
    use_rslora: bool = False
    # DoRA (Liu et al. 2024): a trained magnitude per output row beside the low-rank direction.
    use_dora: bool = False
    dropout: float = Field(default=0.05, ge=0, lt=1)
    bias: Literal["none", "all", "lora_only"] = "none"
    targets: str | list[str] = "all-linear"
    # Decoder layers that get adapters; None: all. Negative indices count from the last (-1).
    layers_to_transform: list[int] | int | None = None

    @field_validator("layers_to_transform")
    @classmethod
    def _some_layer(cls, layers: list[int] | int | None) -> list[int] | int | None:
        if isinstance(layers, list) and not layers:
            raise ValueError("must name at least one layer, or be null for every layer")
        return layers

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, targets: str | list[str]) -> str | list[str]:
        if isinstance(targets, str) and targets not in TARGET_SETS:
            raise ValueError(f"must be one of {sorted(TARGET_SETS)} or a list of module names")
        if isinstance(targets, list) and not targets:
            raise ValueError("must name at least one module")
        return targets

    @property
    def target_modules(self) -> str | list[str]:
        return TARGET_SETS[self.targets] if isinstance(self.targets, str) else list(self.targets)

    @property
    def scaling(self) -> float:
        """Logged per run: sweeping r alone silently changes the update scale alpha/r."""
        return self.alpha / (self.r**0.5 if self.use_rslora else self.r)

    def resolve_layers(self, depth: int, model: str) -> list[int] | None:
        """layers_to_transform as peft wants it: non-negative, each once; -1 is layer depth - 1."""
        if self.layers_to_transform is None:
            return None
        layers = self.layers_to_transform
        given = [layers] if isinstance(layers, int) else layers
        out_of_range = [k for k in given if not -depth <= k < depth]
        if out_of_range:
            raise ConfigError(
                f"lora.layers_to_transform ({self.layers_to_transform}): {out_of_range} out of range: "
                f"{model} has num_layers={depth}, so use 0..{depth - 1}, or -{depth}..-1 from the last"
            )
        resolved = sorted({k % depth for k in given})
        if len(resolved) < len(given):
            raise ConfigError(
                f"lora.layers_to_transform ({self.layers_to_transform}) names a layer twice: with "
                f"num_layers={depth} they are layers {[k % depth for k in given]}"
            )
        return resolved
