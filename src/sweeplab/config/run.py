"""The whole run's config (RunConfig) and validate, which names every bad dotted key in one error."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from pydantic import BaseModel, Field, ValidationError, model_validator

from sweeplab.config.base import Schema
from sweeplab.config.callbacks import CallbacksConfig
from sweeplab.config.data import DataConfig
from sweeplab.config.eval import EvalConfig
from sweeplab.config.logger import LoggerConfig
from sweeplab.config.lora import LoraConfig
from sweeplab.config.model import ModelConfig
from sweeplab.config.objective import ObjectiveConfig
from sweeplab.config.optim import OptimConfig
from sweeplab.config.trainer import TrainerConfig
from sweeplab.errors import ConfigError


class PathsConfig(Schema):
    output_root: str
    cache_dir: str


class LrRangeTestConfig(Schema):
    """Set (a sweep's first phase does): the job runs an lr range test instead of training."""

    steps: int = Field(default=20, ge=3)  # optimizer steps, lr rising exponentially from min_lr to max_lr
    min_lr: float = Field(default=1e-5, gt=0)
    max_lr: float = Field(default=1e-1, gt=0)

    @model_validator(mode="after")
    def _rising(self) -> LrRangeTestConfig:
        if self.max_lr <= self.min_lr:
            raise ValueError(
                f"lr_range_test.max_lr ({self.max_lr}) must be > lr_range_test.min_lr ({self.min_lr})"
            )
        return self


class RunConfig(Schema):
    seed: int = 42
    run_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:=,+-]*$")  # one directory under runs/
    ckpt_path: str | None = None  # "last", a .ckpt file, or a run dir
    model: ModelConfig
    lora: LoraConfig
    optim: OptimConfig
    data: DataConfig
    trainer: TrainerConfig
    callbacks: CallbacksConfig
    logger: LoggerConfig
    paths: PathsConfig
    objective: ObjectiveConfig = ObjectiveConfig()
    eval: EvalConfig = EvalConfig()
    lr_range_test: LrRangeTestConfig | None = None

    @property
    def generate_every(self) -> int:
        """eval.generate_every, resolved: a generation objective needs answers at every validation,
        or only at the last one when objective.intermediate judges the others (0: the last only)."""
        if self.eval.generate_every is not None:
            return self.eval.generate_every
        if self.objective.generates_last_only:
            return 0
        return 1 if self.objective.needs_generation else 3

    @model_validator(mode="after")
    def _groups_agree(self) -> RunConfig:
        """Options that are each valid but contradict one another."""
        problems = []
        if self.optim.warmup_steps is not None and self.optim.warmup_steps >= self.trainer.max_steps:
            problems.append(
                f"optim.warmup_steps ({self.optim.warmup_steps}) must be < trainer.max_steps "
                f"({self.trainer.max_steps}): the learning rate would never leave warmup"
            )
        recipe = self.model.embedded
        if (
            recipe is not None
            and self.data.max_seq_len is not None
            and self.data.max_seq_len > recipe.max_position_embeddings
        ):
            problems.append(
                f"data.max_seq_len ({self.data.max_seq_len}) must be <= "
                f"model.embedded.max_position_embeddings ({recipe.max_position_embeddings})"
            )
        if recipe is not None:  # a hub model's depth is known once it loads (sweeplab.models.build.wrap_lora)
            try:
                self.lora.resolve_layers(recipe.num_layers, "model.embedded")
            except ConfigError as err:
                problems.append(str(err))
        if self.optim.warmup_start_ratio > 0 and self.optim.warmup_for(self.trainer.max_steps) == 0:
            problems.append(
                f"optim.warmup_start_ratio ({self.optim.warmup_start_ratio}) sets where warmup starts, but "
                "there is no warmup (optim.warmup_steps or optim.warmup_ratio * trainer.max_steps is 0)"
            )
        if self.objective.needs_generation:
            metric = self.objective.metric
            if self.data.source == "text":
                problems.append(
                    f"objective.metric={metric} scores generated tool calls, but data.source=text has no "
                    "chats: use data=toolcalls or data=jsonl, or objective.metric=val/loss"
                )
            if self.eval.n_generate == 0 or self.eval.generate_every not in (None, 1):
                problems.append(
                    f"objective.metric={metric} is measured only at validations that generate: set "
                    f"eval.n_generate > 0 (got {self.eval.n_generate}) and eval.generate_every=1 or null "
                    f"(got {self.eval.generate_every})"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _key_of(loc: tuple, root: type[BaseModel]) -> str:
    """Field names and list indices only: pydantic adds union branch tags such as 'constrained-int'."""
    parts: list[str] = []
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int):
            parts.append(str(part))
        elif model is not None:
            parts.append(part)
            field = model.model_fields.get(part)
            model = _model_in(field.annotation) if field is not None else None
    return ".".join(parts)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
    return next((a for a in candidates if issubclass(a, BaseModel)), None)


def _format_error(key: str, errors: list[dict[str, Any]], root: type[BaseModel]) -> str:
    """One line per key; a union's branches ('int or float') are merged into that line."""
    first = errors[0]
    if not key:  # a check across groups (RunConfig): its message names every key it involves
        return first["msg"].removeprefix("Value error, ").replace("; ", "\n  ")
    if first["type"] == "extra_forbidden":
        allowed = sorted(_fields_at(root, key.split(".")[:-1]))
        return f"{key} is not a key; expected one of {allowed}"
    if first["type"] == "missing":
        return f"{key} is required"
    messages = list(dict.fromkeys(err["msg"].removeprefix("Value error, ") for err in errors))
    message = "; or: ".join(messages)
    if "input" not in first or isinstance(first["input"], dict):
        return f"{key}: {message}"
    return f"{key}: {message} (got {first['input']!r})"


def _fields_at(model: type[BaseModel], path: list[str]) -> list[str]:
    for part in path:
        model = _model_in(model.model_fields[part].annotation)
    return list(model.model_fields)


def validate(cfg: DictConfig) -> RunConfig:
    """Check the whole composed config at once and raise one ConfigError listing every problem."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)  # Hydra's own node; only resolvable inside a running job
    try:
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as exc:  # interpolation and missing-value errors from OmegaConf
        raise ConfigError(f"config does not resolve: {exc}") from None
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        by_key: dict[str, list[dict[str, Any]]] = {}
        for err in exc.errors():
            by_key.setdefault(_key_of(err["loc"], RunConfig), []).append(err)
        problems = [_format_error(key, errors, RunConfig) for key, errors in by_key.items()]
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems)) from None
