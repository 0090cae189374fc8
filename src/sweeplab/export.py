"""Merge a run's LoRA adapter into its base: a standalone Hugging Face model any client can load.

python -m sweeplab.export outputs/runs/<run_name>                  # -> outputs/runs/<run_name>/merged/
python -m sweeplab.export outputs/runs/<run_name>/adapter --out merged --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16")


def find_adapter(path: Path) -> Path:
    adapter = path / "adapter" if (path / "adapter").is_dir() else path
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{path}: no adapter_config.json here or in {path / 'adapter'}")
    return adapter


def export(adapter: Path, out: Path, dtype: str = "float32") -> Path:
    """Merge in full precision: folding the update into re-quantized 4-bit weights would blur it."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_path = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=getattr(torch, dtype))
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        merged.save_pretrained(str(tmp))
        AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(str(tmp))
        os.replace(tmp, out)  # a crash never leaves a half-written model under the final name
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sweeplab.export", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="a run dir or its adapter/ dir")
    parser.add_argument("--out", type=Path, default=None, help="default: <run dir>/merged")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    args = parser.parse_args(argv)
    try:
        adapter = find_adapter(args.path)
    except FileNotFoundError as err:
        sys.exit(f"sweeplab.export: error: {err}")
    out = args.out or adapter.parent / "merged"
    if out.exists():
        sys.exit(f"sweeplab.export: error: {out} exists; pass another --out")
    print(f"merged model written to {export(adapter, out, args.dtype)}")


if __name__ == "__main__":
    main()
