"""A peft LoRA adapter alone as a llama.cpp LoRA GGUF (`llama-cli -m base.gguf --lora this.gguf`).

Laid out as llama.cpp's convert_lora_to_gguf.py lays it out: general.type=adapter, adapter.type=lora,
adapter.lora.alpha, and `<llama.cpp tensor name>.lora_a` (rank x in) / `.lora_b` (out x rank) per
adapted layer. llama.cpp applies W + (alpha / rank) * B @ A with one alpha for the whole file, so:
- rsLoRA (scale alpha / sqrt(r)) is written with alpha x sqrt(r), the alpha that gives its real scale;
- a module whose scale differs from the file's (peft rank_pattern / alpha_pattern) has it folded into B;
- q_proj / k_proj B rows get the same permutation llama.cpp's HF -> GGUF conversion gives their weights.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from sweeplab.errors import ExportError
from sweeplab.models.gguf_export import ARCH, check_llama, gguf_name, permute_rows
from sweeplab.models.merge import adapter_config, base_path
from sweeplab.outputs import atomic_path

LORA_QUANTS = ("f32", "f16")  # B's rows are `rank` wide: too narrow for Q8_0's 32-value blocks
LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


def module_scale(config: dict[str, Any], module: str, rank: int) -> float:
    """The scale peft multiplies B @ A by for this module."""
    from peft.utils.other import get_pattern_key

    alpha = config["lora_alpha"]
    patterns = config.get("alpha_pattern") or {}
    if patterns:
        alpha = patterns.get(get_pattern_key(list(patterns), module), alpha)
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def lora_pairs(adapter: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """HF module name -> (A, B) as float32 arrays; anything but LoRA A/B weights is refused by name."""
    from safetensors.numpy import load_file

    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise ExportError(f"{adapter}: no adapter_model.safetensors")
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, value in load_file(str(weights)).items():
        match = LORA_KEY.match(key)
        if match is None:
            raise ExportError(
                f"{weights}: {key} is not a LoRA A/B weight; a llama.cpp LoRA GGUF holds only those "
                "(no DoRA magnitudes, biases, embeddings or modules_to_save): use --format gguf to merge"
            )
        parts.setdefault(match["module"], {})[match["part"]] = value.astype(np.float32)
    incomplete = sorted(m for m, p in parts.items() if set(p) != {"A", "B"})
    if incomplete:
        raise ExportError(f"{weights}: {incomplete[0]} has lora_A or lora_B but not both")
    return {module: (p["A"], p["B"]) for module, p in sorted(parts.items())}


def write_lora_gguf(adapter: Path, out: Path, quant: str = "f32") -> dict[str, Any]:
    """Write the adapter to `out` (atomically); returns the alpha and tensor count written."""
    import gguf

    if quant not in LORA_QUANTS:
        raise ExportError(f"--quant {quant}: a LoRA GGUF is written in {' or '.join(LORA_QUANTS)}")
    config = adapter_config(adapter)
    if config.get("peft_type") != "LORA":
        raise ExportError(
            f"{adapter}: a {config.get('peft_type')} adapter; --format gguf-lora writes LoRA only"
        )
    if config.get("use_dora"):
        raise ExportError(
            f"{adapter}: a DoRA adapter; llama.cpp's LoRA has no magnitude vector: "
            "use --format gguf to merge it"
        )
    base_config = check_llama(base_path(adapter))
    pairs = lora_pairs(adapter)
    if not pairs:
        raise ExportError(f"{adapter}: the adapter holds no LoRA weights")
    first, (first_a, _) = next(iter(pairs.items()))
    # The file's alpha gives the first module its exact scale; llama.cpp divides by each tensor's rank.
    alpha = module_scale(config, first, first_a.shape[0]) * first_a.shape[0]
    dtype = np.float32 if quant == "f32" else np.float16
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, ARCH)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(out.stem)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32 if quant == "f32" else gguf.LlamaFileType.MOSTLY_F16)
        for module, (a, b) in pairs.items():
            name = gguf_name(f"{module}.weight", base_config)
            if name is None or (module.endswith("lm_head") and base_config.tie_word_embeddings):
                raise ExportError(f"{module}: llama.cpp has no separate tensor for it to adapt in this base")
            rank = a.shape[0]
            fold = module_scale(config, module, rank) / (alpha / rank)
            b = permute_rows(f"{module}.weight", b if fold == 1.0 else b * fold, base_config)
            writer.add_tensor(f"{name}.lora_a", a.astype(dtype))
            writer.add_tensor(f"{name}.lora_b", np.ascontiguousarray(b).astype(dtype))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return {"path": out, "alpha": alpha, "modules": len(pairs)}
