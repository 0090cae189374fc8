"""The objective group: the metric(s) a run is judged by, and which metrics exist and their sense."""

from __future__ import annotations

from typing import Any, Literal

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
# What a whole run costs, from its metrics.json: objectives after the first of a multi-objective sweep
# (an adapter's accuracy against its size, memory or speed). They judge no validation.
RUN_METRICS: dict[str, str] = {
    "trainable_params": "minimize",
    "peak_mem_mb": "minimize",
    "tokens_per_s": "maximize",
}
Direction = Literal["auto", "minimize", "maximize"]


class ObjectiveConfig(Schema):
    """What a run is judged by: early stopping, best checkpoint, adapter, pruning, the sweep.

    `metric` may be a list (a multi-objective sweep: the study keeps the Pareto front). Its first
    metric judges the validations (best checkpoint, early stopping); the others are read at that best
    validation (val/*) or from the finished run (RUN_METRICS)."""

    metric: str | list[str] = "val/loss"
    # auto: each metric's own sense; a list gives one per metric (each must agree with its metric)
    direction: Direction | list[Direction] = "auto"
    # What validations before the last are judged by (pruning rungs, early stopping, best.ckpt); the
    # last one, and so the adapter and the trial's value, by `metric`. null: `metric` throughout.
    # val/loss lets a tool-call objective decode answers once, at the end, instead of at every rung.
    intermediate: str | None = None

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: Any) -> Any:
        names = metric if isinstance(metric, list) else [metric]
        if not names:
            raise ValueError(
                f"must be a metric or a non-empty list of metrics from {list(OBJECTIVE_METRICS)}"
            )
        if names[0] not in OBJECTIVE_METRICS:
            first = "the first of a list " if isinstance(metric, list) else ""
            raise ValueError(f"{first}must be one of {list(OBJECTIVE_METRICS)} (it judges each validation)")
        for name in names[1:]:
            if name not in OBJECTIVE_METRICS and name not in RUN_METRICS:
                raise ValueError(f"{name!r}: each metric must be one of {[*OBJECTIVE_METRICS, *RUN_METRICS]}")
        if len(set(names)) != len(names):
            raise ValueError(f"names a metric twice: {names}")
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
        given = self.direction if isinstance(self.direction, list) else [self.direction] * len(self.metrics)
        if len(given) != len(self.metrics):
            raise ValueError(
                f"direction has {len(given)} entries for {len(self.metrics)} metrics {self.metrics}; "
                "give one per metric, or auto"
            )
        for metric, direction in zip(self.metrics, given, strict=True):
            sense = sense_of(metric)
            if direction not in ("auto", sense):
                better = "lower" if sense == "minimize" else "higher"
                raise ValueError(
                    f"direction={direction} contradicts metric={metric} "
                    f"({better} is better); use objective.direction={sense} or auto"
                )
        return self

    @property
    def metrics(self) -> list[str]:
        """Every objective, the first judging the validations."""
        return list(self.metric) if isinstance(self.metric, list) else [self.metric]

    @property
    def primary(self) -> str:
        """The metric that judges each validation (the only one outside a multi-objective sweep)."""
        return self.metrics[0]

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1

    @property
    def resolved_directions(self) -> list[str]:
        return [sense_of(m) for m in self.metrics]

    @property
    def resolved_direction(self) -> str:
        return OBJECTIVE_METRICS[self.primary]

    @property
    def mode(self) -> Literal["min", "max"]:
        """Lightning's word for the primary metric's direction."""
        return "min" if self.resolved_direction == "minimize" else "max"

    @property
    def needs_generation(self) -> bool:
        return any(m in GENERATION_METRICS for m in self.metrics)

    @property
    def watched(self) -> str:
        """The metric of the validations before the last one."""
        return self.intermediate or self.primary

    @property
    def watched_mode(self) -> Literal["min", "max"]:
        return "min" if OBJECTIVE_METRICS[self.watched] == "minimize" else "max"

    @property
    def generates_last_only(self) -> bool:
        """A generation objective judged by a cheap metric until the end: decode at the last validation."""
        return self.primary in GENERATION_METRICS and self.intermediate is not None

    def values(self, best: dict[str, Any], run: dict[str, Any]) -> list[float]:
        """Each objective's value: validation metrics at the best validation, run metrics from the run."""
        return [float(best[m] if m in OBJECTIVE_METRICS else run[m]) for m in self.metrics]


def sense_of(metric: str) -> str:
    return OBJECTIVE_METRICS.get(metric) or RUN_METRICS[metric]
