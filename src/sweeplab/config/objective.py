"""The objective group: the metric a run is judged by, and which metrics exist and their sense."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from sweeplab.config.base import Schema

# What each validation metric measures and which way is better. The generation metrics come from
# greedy-decoding validation chats and scoring their tool calls (sweeplab.eval).
OBJECTIVE_METRICS: dict[str, str] = {
    "val/loss": "minimize",
    "val/ppl": "minimize",
    "val/acc": "maximize",  # next-token accuracy on assistant tokens
    "val/json_valid": "maximize",
    "val/tool_name_acc": "maximize",
    "val/args_acc": "maximize",
    "val/tool_exact": "maximize",
}
GENERATION_METRICS = ("val/json_valid", "val/tool_name_acc", "val/args_acc", "val/tool_exact")


class ObjectiveConfig(Schema):
    """The one number a run is judged by: early stopping, best checkpoint, adapter, pruning, the sweep."""

    metric: str = "val/loss"
    direction: Literal["auto", "minimize", "maximize"] = "auto"  # auto: the metric's own sense
    # What validations before the last are judged by (pruning rungs, early stopping, best.ckpt); the
    # last one, and so the adapter and the trial's value, by `metric`. null: `metric` throughout.
    # val/loss lets a tool-call objective decode answers once, at the end, instead of at every rung.
    intermediate: str | None = None

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in OBJECTIVE_METRICS:
            raise ValueError(f"must be one of {list(OBJECTIVE_METRICS)}")
        return metric

    @field_validator("intermediate")
    @classmethod
    def _cheap_metric(cls, metric: str | None) -> str | None:
        cheap = [m for m in OBJECTIVE_METRICS if m not in GENERATION_METRICS]
        if metric is not None and metric not in cheap:
            raise ValueError(f"must be null or one of {cheap} (measured without decoding)")
        return metric

    @model_validator(mode="after")
    def _direction_fits_metric(self) -> ObjectiveConfig:
        sense = OBJECTIVE_METRICS[self.metric]
        if self.direction not in ("auto", sense):
            better = "lower" if sense == "minimize" else "higher"
            raise ValueError(
                f"direction={self.direction} contradicts metric={self.metric} "
                f"({better} is better); use objective.direction={sense} or auto"
            )
        return self

    @property
    def resolved_direction(self) -> str:
        return OBJECTIVE_METRICS[self.metric]

    @property
    def mode(self) -> Literal["min", "max"]:
        """Lightning's word for the direction."""
        return "min" if self.resolved_direction == "minimize" else "max"

    @property
    def needs_generation(self) -> bool:
        return self.metric in GENERATION_METRICS

    @property
    def watched(self) -> str:
        """The metric of the validations before the last one."""
        return self.intermediate or self.metric

    @property
    def watched_mode(self) -> Literal["min", "max"]:
        return "min" if OBJECTIVE_METRICS[self.watched] == "minimize" else "max"

    @property
    def generates_last_only(self) -> bool:
        """A generation objective judged by a cheap metric until the end: decode at the last validation."""
        return self.needs_generation and self.intermediate is not None
