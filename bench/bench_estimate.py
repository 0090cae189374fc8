"""The memory estimate beside what a few CPU training steps really hold.

    .venv/bin/python bench/bench_estimate.py --out BENCHMARKS.md          # what `make bench` runs
    .venv/bin/python bench/bench_estimate.py "model=toy data.batch_size=4"   # one row, printed

Each configuration runs in its own process (a fresh RSS baseline): one warm-up step at batch 1 x 16
tokens (code pages, weights and optimizer state become resident), then 3 steps of forward, backward
and AdamW on random tokens at the configured batch. Two measurements:
- **saved for backward**: every tensor autograd saves during the forward (saved_tensors_hooks, each
  storage once, weights excluded) — exactly what the estimate's activation formula models;
- **peak RSS growth** over the baseline: also backward's transient gradients and what the allocator
  keeps, so an upper bound on what the activations cost in practice.
With gradient checkpointing the forward saves only the layer inputs; the recomputed layer's tensors
are saved inside backward, so "saved" covers the checkpoints only and is marked so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench_estimate:start -->", "<!-- bench_estimate:end -->"
CONFIGS = [
    "model=tiny data.batch_size=8 data.max_seq_len=256",
    "model=toy model.gradient_checkpointing=false data.batch_size=8 data.max_seq_len=256",
    "model=toy data.batch_size=8 data.max_seq_len=256",
    "model=smollm2-135m model.gradient_checkpointing=false data.batch_size=4 data.max_seq_len=256",
]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(overrides: list[str]) -> dict:
    import torch

    from sweeplab.estimate import compose_run, estimate
    from sweeplab.models.build import build_model, resolve_model_dir
    from sweeplab.training.module import build_optimizer

    rc = compose_run(["trainer.accelerator=cpu", *overrides])  # as `train` composes it; fp32 on CPU
    e = estimate(rc)
    model_dir = resolve_model_dir(rc.model, rc.paths.cache_dir)  # built before the baseline
    torch.manual_seed(0)
    model = build_model(model_dir, rc.model, rc.lora, torch.float32, "cpu")
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], rc.optim)
    vocab = model.get_input_embeddings().weight.shape[0]
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:  # stored weights are not activations; all else is
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    for step in range(4):
        shape = (1, 16) if step == 0 else (rc.data.batch_size, e.seq_len)
        ids = torch.randint(0, vocab, shape)
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step == 0:
            base_mib = rss_mib()
    ckpt = rc.model.gradient_checkpointing
    return {
        "config": " ".join(overrides),
        "checkpointing": ckpt,
        "estimate_mib": ((e.activations_ckpt if ckpt else e.activations) + e.gradients) / 2**20,
        "saved_mib": sum(saved.values()) / 2**20,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_mib,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", help="quoted train overrides, one row each (default: CONFIGS)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--out", type=Path, default=None, help="BENCHMARKS.md to update")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.configs[0].split())))
        return
    rows = []
    for config in args.configs or CONFIGS:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        done = subprocess.run(
            [sys.executable, __file__, "--one", config], cwd=ROOT, env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            sys.exit(f"{config}: failed\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"{config}: estimate {r['estimate_mib']:.1f} MiB, saved {r['saved_mib']:.1f}, "
            f"RSS {r['rss_mib']:.1f}"
        )
    if args.out:
        write_section(args.out, rows)


def write_section(out: Path, rows: list[dict]) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import time

    from benchmarks_md import cpu_name, replace_section

    table = "\n".join(
        f"| `{r['config']}` | {'on' if r['checkpointing'] else 'off'} | {r['estimate_mib']:.1f} | "
        f"{r['saved_mib']:.1f}{' (checkpoints only)' if r['checkpointing'] else ''} | {r['rss_mib']:.1f} | "
        f"{r['rss_mib'] / r['estimate_mib']:.2f} |"
        for r in rows
    )
    section = f"""{START}
## Memory estimate against measurement (CPU)

`python bench/bench_estimate.py`: `python -m sweeplab.estimate`'s activations + gradients for a
config, beside the tensors autograd really saves in its forward (exact, weights excluded) and the
peak RSS growth over 3 training steps (also backward's transient gradients and allocator slack).
fp32 on CPU; on a GPU (fp16 activations) the estimate halves the matmul outputs.

| config | checkpointing | estimate (MiB) | saved in forward (MiB) | peak RSS growth (MiB) | RSS / estimate |
|---|---|---|---|---|---|
{table}

Machine: {os.cpu_count()} cores, {cpu_name()}; {time.strftime("%Y-%m-%d")}.
{END}"""
    replace_section(out, START, END, section)


if __name__ == "__main__":
    main()
