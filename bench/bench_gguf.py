"""Tool-call accuracy of a run's GGUF exports inside llama.cpp, beside what transformers computes.

    make install-llama                     # once, opt-in: builds llama-cpp-python (~25 min on 2 cores)
    .venv/bin/python bench/bench_gguf.py outputs/runs/<run> [--quant q8_0] [--out BENCHMARKS.md]

For a finished run whose base came from a .gguf file (model=smollm2-135m): exports what is missing
(`python -m sweeplab.export --format gguf` and `--format gguf-lora`), then greedy-decodes the run's test
chats and scores every answer with the scorer training uses, for:
  transformers  the run's adapter on the 4-bit base, and the base alone   (metrics.json test/*, base/*)
  transformers  the merged GGUF, read back through transformers' GGUF loader (fp32 compute)
  llama.cpp     the merged GGUF
  llama.cpp     the source GGUF (the file users have) + the LoRA GGUF
  llama.cpp     the source GGUF alone
llama.cpp tokenizes each prompt itself, as a llama.cpp user's client would; the table says on how many
chats its prompt tokens differ from transformers'. Figures come from the files; nothing is typed in.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

try:
    import llama_cpp
except ImportError:
    sys.exit("bench_gguf: llama_cpp is not installed; run `make install-llama` (builds llama-cpp-python)")

from benchmarks_md import cpu_name, replace_section  # bench/ is sys.path[0] when run as a script

START, END = "<!-- bench_gguf:start -->", "<!-- bench_gguf:end -->"
METRICS = ("tool_exact", "args_acc", "tool_name_acc", "json_valid")


def run_inputs(run: Path):
    """(run config, tokenizer, test cases, max new tokens) exactly as the run scored its test split."""
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from sweeplab.config import validate
    from sweeplab.data import eval_chats
    from sweeplab.eval.generate import ToolCallEvaluator, build_cases

    rc = validate(OmegaConf.load(run / "config.yaml"))
    tokenizer = AutoTokenizer.from_pretrained(run / "adapter")
    cases = build_cases(tokenizer, eval_chats(rc.data)[1])
    if not cases:
        sys.exit(f"bench_gguf: {run} has no test chat ending in a tool call (data.n_test, data.test_path)")
    evaluator = ToolCallEvaluator(tokenizer, cases, rc.eval.batch_size, rc.eval.max_new_tokens)
    return rc, tokenizer, evaluator


def exported(run: Path, quant: str) -> tuple[Path, Path, Path]:
    """(merged GGUF, LoRA GGUF, source GGUF), exporting what is not there yet."""
    from sweeplab.export import main as export
    from sweeplab.models.gguf_export import source_gguf
    from sweeplab.models.merge import base_path, find_adapter

    source = source_gguf(base_path(find_adapter(run)))
    if source is None:
        sys.exit(f"bench_gguf: {run}'s base did not come from a .gguf file; train with model=smollm2-135m")
    merged, lora = run / "gguf" / f"{run.name}-{quant}.gguf", run / "gguf" / f"{run.name}-lora-f32.gguf"
    if not merged.exists():
        export([str(run), "--format", "gguf", "--quant", quant])
    if not lora.exists():
        export([str(run), "--format", "gguf-lora"])
    return merged, lora, source


def llama_cpp_scores(model: Path, lora: Path | None, tokenizer, evaluator) -> dict:
    """Greedy answers from llama.cpp for every case, scored; prompt tokens from llama.cpp's tokenizer."""
    from sweeplab.eval.toolcall import aggregate, score

    started = time.perf_counter()
    longest = max(len(c.prompt) for c in evaluator.cases) + evaluator.max_new_tokens
    llm = llama_cpp.Llama(
        model_path=str(model),
        lora_path=str(lora) if lora else None,
        n_ctx=longest + 8,
        n_threads=os.cpu_count(),
        seed=0,
        verbose=False,
    )
    verdicts, differ = [], 0
    for case in evaluator.cases:
        text = tokenizer.decode(case.prompt, skip_special_tokens=False)
        tokens = llm.tokenize(text.encode(), add_bos=False, special=True)
        differ += tokens != case.prompt
        out = llm.create_completion(
            prompt=tokens,
            max_tokens=evaluator.max_new_tokens,
            temperature=0.0,
            top_k=1,
            repeat_penalty=1.0,
            stop=["<|im_end|>", "<|eot_id|>", "<|endoftext|>"],
        )
        verdicts.append(score(case.expected, out["choices"][0]["text"])[1])
    return {**aggregate(verdicts), "prompts_differ": differ, "seconds": time.perf_counter() - started}


def transformers_gguf_scores(model: Path, evaluator) -> dict:
    """The same merged GGUF read back by transformers (dequantized, fp32), through the run's own decoding."""
    import torch
    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    loaded = AutoModelForCausalLM.from_pretrained(model.parent, gguf_file=model.name, dtype=torch.float32)
    scores, _ = evaluator.run(loaded.eval())
    return {**scores, "prompts_differ": 0, "seconds": time.perf_counter() - started}


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run dir (adapter/, config.yaml, metrics.json)")
    parser.add_argument("--quant", default="q8_0", choices=("f16", "q8_0"), help="the merged GGUF's")
    parser.add_argument("--out", type=Path, default=None, help="write the table into this BENCHMARKS.md")
    args = parser.parse_args()
    run = args.run.resolve()
    metrics = json.loads((run / "metrics.json").read_text())
    rc, tokenizer, evaluator = run_inputs(run)
    merged, lora, source = exported(run, args.quant)

    rows = [
        ("adapter on the 4-bit base (the run's test figure)", "transformers", metrics, "test/"),
        ("base alone, 4-bit (the run's base figure)", "transformers", metrics, "base/"),
        (f"merged GGUF {args.quant}", "transformers", transformers_gguf_scores(merged, evaluator), ""),
        (f"merged GGUF {args.quant}", "llama.cpp", llama_cpp_scores(merged, None, tokenizer, evaluator), ""),
        (
            f"{source.name} + LoRA GGUF",
            "llama.cpp",
            llama_cpp_scores(source, lora, tokenizer, evaluator),
            "",
        ),
        (f"{source.name} alone", "llama.cpp", llama_cpp_scores(source, None, tokenizer, evaluator), ""),
    ]
    n = len(evaluator.cases)
    lines = [
        "| model | engine | " + " | ".join(METRICS) + " | prompts tokenized differently | s |",
        "|---|---|" + "---:|" * (len(METRICS) + 2),
    ]
    for label, engine, scores, prefix in rows:
        cells = [pct(scores.get(prefix + m)) for m in METRICS]
        differ = scores.get("prompts_differ")
        seconds = scores.get("seconds")
        lines.append(
            f"| {label} | {engine} | {' | '.join(cells)} | {'-' if differ is None else f'{differ}/{n}'} | "
            f"{'-' if seconds is None else f'{seconds:.0f}'} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        section = f"""{START}
## GGUF export: tool calls in llama.cpp vs transformers

`bench/bench_gguf.py {args.run}`: run `{run.name}` (model `{rc.model.gguf.file if rc.model.gguf else "?"}`),
{n} test chats, greedy, {evaluator.max_new_tokens} new tokens at most; llama-cpp-python
{llama_cpp.__version__}.

{table}

Machine: {os.cpu_count()} cores, {cpu_name()}; measured {time.strftime("%Y-%m-%d")}.
{END}"""
        replace_section(args.out, START, END, section)


if __name__ == "__main__":
    main()
