"""Take a run's adapter out: merged into a Hugging Face model, a GGUF for llama.cpp / ollama, or a LoRA GGUF.

python -m sweeplab.export outputs/runs/<run>                        # -> <run>/merged/ (HF, any client)
python -m sweeplab.export outputs/runs/<run> --format gguf          # -> <run>/gguf/<run>-f16.gguf + Modelfile
python -m sweeplab.export outputs/runs/<run> --format gguf --quant q8_0
python -m sweeplab.export outputs/runs/<run> --format gguf-lora     # -> <run>/gguf/<run>-lora-f32.gguf
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from sweeplab.errors import ExportError, SweeplabError
from sweeplab.models.gguf_export import QUANTS
from sweeplab.models.gguf_lora import LORA_QUANTS
from sweeplab.models.merge import find_adapter, merge

DTYPES = ("float32", "bfloat16", "float16")
FORMATS = ("hf", "gguf", "gguf-lora")
DEFAULT_QUANT = {"gguf": "f16", "gguf-lora": "f32"}


def export(adapter: Path, out: Path, dtype: str = "float32") -> Path:
    """The merged model and the run's tokenizer as a Hugging Face dir, never half-written under `out`."""
    merged, tokenizer = merge(adapter, dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def export_gguf(adapter: Path, out_dir: Path, quant: str) -> Path:
    """The merged model as one GGUF file, and an ollama Modelfile beside it."""
    from sweeplab.models.gguf_export import check_llama, write_gguf
    from sweeplab.models.merge import base_path
    from sweeplab.models.ollama import modelfile
    from sweeplab.outputs import atomic_write_text

    path = out_dir / f"{adapter.parent.name}-{quant}.gguf"
    if path.exists():
        raise ExportError(f"{path} exists; pass another --out")
    base = base_path(adapter)
    check_llama(base)  # before the weights load: a Qwen base fails in a second, not after a merge
    merged, tokenizer = merge(adapter)
    written = write_gguf(merged, tokenizer, base, path, quant)
    atomic_write_text(out_dir / "Modelfile", modelfile(path.name, tokenizer, written["chat_template"]))
    types = ", ".join(f"{n} {t}" for t, n in sorted(written["tensor_types"].items()))
    print(f"GGUF written to {path} ({types} tensors; metadata from {written['source'] or 'the base config'})")
    print(f"ollama: cd {out_dir} && ollama create {adapter.parent.name} -f Modelfile")
    return path


def export_gguf_lora(adapter: Path, out_dir: Path, quant: str) -> Path:
    from sweeplab.models.gguf_lora import write_lora_gguf

    path = out_dir / f"{adapter.parent.name}-lora-{quant}.gguf"
    if path.exists():
        raise ExportError(f"{path} exists; pass another --out")
    written = write_lora_gguf(adapter, path, quant)
    print(
        f"LoRA GGUF written to {path} ({written['modules']} layers, adapter.lora.alpha={written['alpha']:g})"
    )
    print(f"llama.cpp: llama-cli -m BASE.gguf --lora {path}")
    return path


def check_quant(fmt: str, quant: str | None) -> str:
    """--quant for the format, or a one-line refusal naming what it takes."""
    allowed = {"hf": (), "gguf": QUANTS, "gguf-lora": LORA_QUANTS}[fmt]
    if quant is None:
        return DEFAULT_QUANT.get(fmt, "")
    if quant not in allowed:
        takes = f"takes one of {', '.join(allowed)}" if allowed else "takes no --quant (see --dtype)"
        raise ExportError(f"--quant {quant}: --format {fmt} {takes}")
    return quant


def write_export_card(run_dir: Path, out: Path, library_name: str) -> None:
    """The run's model card beside the export; an adapter dir outside a finished run has none to give."""
    from sweeplab.training.model_card import write_run_card

    if (run_dir / "metrics.json").is_file() and (run_dir / "config.yaml").is_file():
        print(f"model card written to {write_run_card(run_dir, out, library_name=library_name)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sweeplab.export", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="a run dir or its adapter/ dir")
    parser.add_argument("--format", default="hf", help=f"one of {', '.join(FORMATS)} (default hf)")
    parser.add_argument("--quant", default=None, help=f"gguf: {', '.join(QUANTS)} (default f16); "
                        f"gguf-lora: {', '.join(LORA_QUANTS)} (default f32)")  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=None, help="default: <run dir>/merged (hf), <run dir>/gguf"
    )
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="hf only")
    args = parser.parse_args(argv)
    try:
        if args.format not in FORMATS:
            raise ExportError(f"--format {args.format}: not one of {', '.join(FORMATS)}")
        quant = check_quant(args.format, args.quant)
        adapter = find_adapter(args.path)
        if args.format == "hf":
            out = args.out or adapter.parent / "merged"
            if out.exists():
                raise ExportError(f"{out} exists; pass another --out")
            print(f"merged model written to {export(adapter, out, args.dtype)}")
        elif args.format == "gguf":
            out = args.out or adapter.parent / "gguf"
            export_gguf(adapter, out, quant)
        else:
            out = args.out or adapter.parent / "gguf"
            export_gguf_lora(adapter, out, quant)
        write_export_card(adapter.parent, out, "transformers" if args.format == "hf" else "gguf")
    except SweeplabError as err:
        sys.exit(f"sweeplab.export: error: {err}")


if __name__ == "__main__":
    main()
