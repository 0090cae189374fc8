"""What a run and an lr range test both start from: tokenizer, tokenized data, the 4-bit LoRA model.

Each is held for a sweep worker's next trial (sweeplab.reuse) when that trial would load the same one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sweeplab import reuse
from sweeplab.config import RunConfig


def load_data(rc: RunConfig, keep: bool) -> tuple[str, Any, tuple[Any, Any, Any]]:
    """(model dir, tokenizer, (train set, val set, data stats)); the model dir is built or found here."""
    from sweeplab.data import build_datasets
    from sweeplab.data.datasets import cache_key
    from sweeplab.models.build import load_tokenizer, model_context, resolve_model_dir

    model_dir = resolve_model_dir(rc.model, rc.paths.cache_dir)
    trust = rc.model.trust_remote_code
    tokenizer = reuse.held("tokenizer", (model_dir, trust), lambda: load_tokenizer(model_dir, trust), keep)
    cache_dir = Path(rc.paths.cache_dir)
    context = model_context(model_dir, trust) if rc.data.max_seq_len is None else None
    data = reuse.held(
        "data",
        cache_key(rc.data, tokenizer, context),
        lambda: build_datasets(rc.data, tokenizer, cache_dir, context),
        keep,
    )
    return model_dir, tokenizer, data


def load_model(rc: RunConfig, model_dir: str, placement: Any, keep: bool) -> Any:
    """The base in 4 bits (or the held one), wrapped with a fresh LoRA adapter."""
    from sweeplab.models.build import build_model
    from sweeplab.training.distributed import quant_storage

    return build_model(
        model_dir,
        rc.model,
        rc.lora,
        placement.compute_dtype,
        placement.device,
        quant_storage(rc.trainer),
        keep,
    )
