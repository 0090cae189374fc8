"""The callbacks group: early stopping, checkpointing and extra Lightning callbacks."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from sweeplab.config.base import Schema


class EarlyStoppingConfig(Schema):
    enabled: bool = True
    patience: int = Field(default=3, ge=1)  # validations without improvement
    min_delta: float = Field(default=0.0, ge=0)


class CheckpointConfig(Schema):
    save_best: bool = True
    save_last: bool = True


class CallbacksConfig(Schema):
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    # More Lightning callbacks, each built by hydra.utils.instantiate from {_target_: module.Class, ...}.
    extra: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("extra")
    @classmethod
    def _each_has_a_target(cls, extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, item in enumerate(extra):
            if "_target_" not in item:
                raise ValueError(f"item {i} has no _target_ (e.g. {{_target_: my_pkg.MyCallback}})")
        return extra
