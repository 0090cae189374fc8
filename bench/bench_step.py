"""Tokens/s of a sweeplab training step against a bare torch + peft loop: same model, data, batch.

    .venv/bin/python bench/bench_step.py --out BENCHMARKS.md      # what `make bench` runs

Both sides run in this one process, alternating A/B then B/A each round, so machine noise hits both;
the result is the median of per-round ratios, never an absolute figure to assert on. Measured padded
(data.packing=false), padding-free (data.padding_free=true: the padded layout's batches, one row each)
and packed (data.packing=true: batch_size rows of max_seq_len). The bare loop takes
the model's own loss (full logits); sweeplab's step projects only labelled positions through the head.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader

from benchmarks_md import cpu_name, replace_section  # bench/ is sys.path[0] when run as a script
from sweeplab.config import RunConfig, validate
from sweeplab.data import PadCollator, build_datasets
from sweeplab.data.packing import (
    PackCollator,
    PaddingFreeCollator,
    pack_examples,
    packed_forward,
    real_tokens,
)
from sweeplab.models.build import build_model, load_tokenizer, resolve_model_dir
from sweeplab.training.module import QLoRAModule, build_optimizer, build_scheduler
from timed_trainer import training_only_trainer

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench_step:start -->", "<!-- bench_step:end -->"


class StepTimer(L.Callback):
    """Times optimizer steps after the warmup ones, the same span the bare loop times."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.tokens, self.start, self.seconds = warmup, 0, 0.0, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()
        if batch_idx >= self.warmup:
            self.tokens += real_tokens(batch)

    def on_train_end(self, trainer, module) -> None:
        self.seconds = time.perf_counter() - self.start


def sweeplab_step(rc: RunConfig, model_dir: str, batches: list, warmup: int) -> float:
    torch.manual_seed(rc.seed)
    module = QLoRAModule(build_model(model_dir, rc.model, rc.lora, torch.float32), rc.optim, len(batches))
    timer = StepTimer(warmup)
    trainer = training_only_trainer(len(batches), [timer], rc.trainer.grad_clip)
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return timer.tokens / timer.seconds


def bare_step(rc: RunConfig, model_dir: str, batches: list, warmup: int) -> float:
    torch.manual_seed(rc.seed)
    model = build_model(model_dir, rc.model, rc.lora, torch.float32)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, rc.optim)
    scheduler = build_scheduler(optimizer, rc.optim, len(batches))
    tokens, start = 0, 0.0
    for i, batch in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        if i >= warmup:
            tokens += real_tokens(batch)
        loss = packed_forward(model, batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, rc.trainer.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy", help="model config choice (toy, tiny, base, ...)")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=6)
    layouts = ["padded", "padding-free", "packed"]
    parser.add_argument("--layouts", nargs="+", choices=layouts, default=layouts)
    parser.add_argument("--out", type=Path, default=None, help="BENCHMARKS.md to update")
    args = parser.parse_args()

    with initialize_config_dir(config_dir=str(ROOT / "conf")):
        rc = validate(
            compose(
                "train",
                overrides=[f"model={args.model}", "logger=none", "data.max_seq_len=256", "data.batch_size=8"],
            )
        )
    model_dir = resolve_model_dir(rc.model, rc.paths.cache_dir)
    tokenizer = load_tokenizer(model_dir)
    train_set, _, _ = build_datasets(rc.data, tokenizer, Path(rc.paths.cache_dir))
    n = args.warmup + args.steps
    layouts = {
        "padded": first_batches(train_set, PadCollator(tokenizer.pad_token_id), rc.data.batch_size, n),
        # the same chats per batch as padded (same rows, same shuffle), each batch one row
        "padding-free": first_batches(
            train_set, PaddingFreeCollator(tokenizer.pad_token_id), rc.data.batch_size, n
        ),
        "packed": first_batches(
            pack_examples(train_set, rc.data.max_seq_len),
            PackCollator(tokenizer.pad_token_id),
            rc.data.batch_size,
            n,
        ),
    }
    runs = {layout: race(rc, model_dir, layouts[layout], args) for layout in args.layouts}
    if args.out:
        write_section(args, rc, runs)


def first_batches(rows: list, collate, batch_size: int, n: int) -> list[dict]:
    """The first n batches of a seeded shuffle: every arm and round trains on the very same ones."""
    loader = DataLoader(
        rows,
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(0),
    )
    return [b for _, b in zip(range(n), loader, strict=False)]


def race(rc: RunConfig, model_dir: str, batches: list, args) -> tuple[dict, dict, list[float]]:
    """(tokens/s per loop and round, medians, per-round ratios sweeplab / bare)."""
    results: dict[str, list[float]] = {"sweeplab": [], "bare": []}
    runners = {"sweeplab": sweeplab_step, "bare": bare_step}
    for round_ in range(args.rounds):
        order = ["sweeplab", "bare"] if round_ % 2 == 0 else ["bare", "sweeplab"]
        for name in order:
            results[name].append(runners[name](rc, model_dir, batches, args.warmup))
            print(f"round {round_ + 1} {name:8s} {results[name][-1]:9.0f} tokens/s", flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    # Each round's pair ran back to back, so its ratio cancels the slow drift these machines show.
    ratios = [s / b for s, b in zip(results["sweeplab"], results["bare"], strict=True)]
    print(
        f"median sweeplab {med['sweeplab']:.0f}, bare {med['bare']:.0f} tokens/s; per-round ratios "
        f"{', '.join(f'{r:.3f}' for r in ratios)}; median ratio {statistics.median(ratios):.3f}"
        " (target >= 0.97)"
    )
    return results, med, ratios


def write_section(args, rc: RunConfig, runs: dict[str, tuple[dict, dict, list[float]]]) -> None:
    cpu = cpu_name()
    rows, verdicts = [], []
    for layout, (results, med, ratios) in runs.items():
        rows += [
            f"| {layout} | {name} | {' / '.join(f'{v:.0f}' for v in vals)} | {med[name]:.0f} |"
            for name, vals in results.items()
        ]
        verdicts.append(
            f"- {layout}: per-round ratios {', '.join(f'{r:.3f}' for r in ratios)}; "
            f"**sweeplab / bare: {statistics.median(ratios):.3f}**"
        )
    table, verdict = "\n".join(rows), "\n".join(verdicts)
    section = f"""{START}
## Training step: sweeplab vs a bare torch + peft loop

`python bench/bench_step.py --model {args.model}`: the same 4-bit `{args.model}` base with LoRA
r={rc.lora.r} ({rc.lora.targets}), the same {args.warmup + args.steps} batches of {rc.data.batch_size}
tool-call chats (padded; padding-free: the same batches, each one row) or {rc.data.batch_size} rows of
<= {rc.data.max_seq_len} tokens (packed), AdamW +
warmup/cosine + grad clip {rc.trainer.grad_clip}, fp32 on CPU; {args.warmup} untimed warmup steps;
{args.rounds} rounds alternating the order. sweeplab = `QLoRAModule` under a Lightning `Trainer` (loss
from the LM head at labelled positions only); bare = a hand-written loop over the same model taking
`model(..., labels=...).loss` (full logits). Tokens/s counts non-pad tokens. Both build the model with
`sweeplab.models.build.build_model`, so both draw LoRA dropout's CPU mask with `FastCPUDropout`.

| layout | loop | tokens/s per round | median |
|---|---|---|---|
{table}

Ratios sweeplab / bare (median of per-round ratios, each pair back to back; target >= 0.97):
{verdict}

Machine: {os.cpu_count()} cores, {cpu}, shared with other jobs; torch {torch.__version__}; measured
{time.strftime("%Y-%m-%d")}.
{END}"""
    replace_section(args.out, START, END, section)


if __name__ == "__main__":
    main()
