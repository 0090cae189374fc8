"""A trained model on disk (a run dir, its adapter/ or a merged export) found and loaded for inference."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sweeplab.config import ModelConfig, QuantConfig, TrainerConfig
from sweeplab.errors import ConfigError


@dataclass(frozen=True)
class Saved:
    model_dir: str  # an adapter's base (its base_model_name_or_path), or the merged model's dir
    adapter: Path | None  # None: a merged model
    tokenizer_dir: str  # the run's own tokenizer and chat template
    run_dir: Path | None  # the run dir holding config.yaml, when there is one

    def run_config(self) -> dict | None:
        """The run's resolved config.yaml, or None outside a run dir."""
        if self.run_dir is None:
            return None
        return yaml.safe_load((self.run_dir / "config.yaml").read_text(encoding="utf-8"))


def find_saved(path: Path) -> Saved:
    """What PATH holds; a path that holds no model is refused with what was expected there."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(
            f"{path}: no such directory; give a run dir, its adapter/ dir or a merged model dir"
        )
    if (path / "adapter_config.json").is_file():
        return _adapter(path)
    if (path / "adapter").is_dir() and (path / "adapter" / "adapter_config.json").is_file():
        return _adapter(path / "adapter")
    if (path / "config.json").is_file():  # a merged model (python -m sweeplab.export) or any HF model dir
        run_dir = path.parent if (path.parent / "config.yaml").is_file() else None
        return Saved(model_dir=str(path), adapter=None, tokenizer_dir=str(path), run_dir=run_dir)
    if (path / "config.yaml").is_file():
        raise ConfigError(
            f"{path}: this run dir has no adapter (adapter/adapter_config.json): the run did not finish; "
            "resume it with ckpt_path=last, or give a finished run"
        )
    raise ConfigError(
        f"{path}: not a run dir (no adapter/), an adapter (no adapter_config.json) or a model dir "
        "(no config.json)"
    )


def _adapter(adapter: Path) -> Saved:
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    local = Path(base).expanduser()
    if (local.is_absolute() or base.startswith(".")) and not (local / "config.json").is_file():
        raise ConfigError(
            f"{adapter}: its base model {base} is missing (base_model_name_or_path in adapter_config.json); "
            "restore the base there, or point that key at a copy of it"
        )
    tokenizer_dir = adapter if (adapter / "tokenizer_config.json").is_file() else base
    run_dir = adapter.parent if (adapter.parent / "config.yaml").is_file() else None
    return Saved(model_dir=base, adapter=adapter, tokenizer_dir=str(tokenizer_dir), run_dir=run_dir)


def load_saved(saved: Saved, use_adapter: bool = True) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode: an adapter's base in 4 bits as the run trained it, with the adapter
    unless use_adapter is False; a merged model at full precision (4 bits would blur the merged update)."""
    from peft import PeftModel

    from sweeplab.models.build import load_quantized, load_tokenizer
    from sweeplab.models.precision import resolve_placement

    run = saved.run_config() or {}
    model = run.get("model") or {}
    quant = QuantConfig(**model["quant"]) if model.get("quant") else QuantConfig()
    trust = bool(model.get("trust_remote_code", False))
    if saved.adapter is None:
        quant = QuantConfig(load_in_4bit=False)
    placement = resolve_placement(TrainerConfig())
    cfg = ModelConfig(name_or_path=saved.model_dir, quant=quant, trust_remote_code=trust)
    try:
        base = load_quantized(saved.model_dir, cfg, placement.compute_dtype, placement.device)
    except OSError as exc:  # a hub id that is not cached here, with the hub unreachable
        raise ConfigError(
            f"{saved.adapter or saved.model_dir}: its base model {saved.model_dir} could not be loaded "
            f"({type(exc).__name__}); point base_model_name_or_path in adapter_config.json at a local copy"
        ) from None
    tokenizer = load_tokenizer(saved.tokenizer_dir, trust)
    if saved.adapter is not None and use_adapter:
        base = PeftModel.from_pretrained(base, str(saved.adapter))
    return base.eval(), tokenizer
