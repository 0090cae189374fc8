"""A run's adapter folded into its full-precision base: what every export format starts from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sweeplab.errors import ExportError


def find_adapter(path: Path) -> Path:
    """The adapter dir of a run dir (path/adapter) or the adapter dir itself."""
    adapter = path / "adapter" if (path / "adapter").is_dir() else path
    if not (adapter / "adapter_config.json").is_file():
        raise ExportError(
            f"{path}: no adapter_config.json here or in {path / 'adapter'}; is it a finished run?"
        )
    return adapter


def adapter_config(adapter: Path) -> dict[str, Any]:
    return json.loads((adapter / "adapter_config.json").read_text())


def base_path(adapter: Path) -> str:
    """The base the adapter was trained on: a local dir (embedded, converted GGUF) or a hub id."""
    base = adapter_config(adapter).get("base_model_name_or_path")
    if not base:
        raise ExportError(f"{adapter / 'adapter_config.json'}: no base_model_name_or_path")
    if base.startswith(("/", ".", "~")) and not Path(base).expanduser().is_dir():
        raise ExportError(
            f"{adapter}: its base {base} is gone (a cleared cache?); rebuild it with the run's model "
            "config (a train run with the same model= does) and export again"
        )
    return base


def merge(adapter: Path, dtype: str = "float32") -> tuple[Any, Any]:
    """(merged model, tokenizer). Merged in full precision: folding the update into re-quantized 4-bit
    weights would blur it."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_path(adapter), dtype=getattr(torch, dtype))
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    return merged.eval(), AutoTokenizer.from_pretrained(str(adapter))
