"""Per-trial overhead of a sweep worker, with and without keeping the base, tokenizer and data in memory.

    .venv/bin/python bench/bench_reuse.py --out BENCHMARKS.md      # 6 trials x 30 steps on model=base
    .venv/bin/python bench/bench_reuse.py --trials 3 --steps 10     # a quick look

Both sweeps run the real entry point (`python -m sweeplab.train --multirun hparams_search=qlora`, one
worker, no pruning) on the same sampler seed, so they run the same trials; "reload" sets
SWEEPLAB_REUSE=0, which loads everything from disk in every trial as before sweeplab.reuse.
Overhead = startup_s (Optuna's trial start to the trial's first optimizer step, a trial user attr)
over the trial's wall time (datetime_complete - datetime_start), summed over the sweep's trials.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna

from benchmarks_md import cpu_name, replace_section  # bench/ is sys.path[0] when run as a script

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench_reuse:start -->", "<!-- bench_reuse:end -->"
# What bench_sweep.py runs on model=base: decoding-based scoring off, so wall time is training.
COMMON = [
    "model=base",
    "model.gradient_checkpointing=false",
    "data.batch_size=4",
    "data.n_val=32",
    "logger=none",
    "trainer.enable_progress_bar=false",
    "eval.n_generate=0",
    "eval.test=false",
    "hparams_search=qlora",
    "hydra.sweeper.pruner=none",
    "hydra.sweeper.study_name=reuse",
]
MODES = {"reload": {"SWEEPLAB_REUSE": "0"}, "reuse": {}}


def run_sweep(root: Path, env: dict[str, str], trials: int, steps: int) -> list[optuna.trial.FrozenTrial]:
    cmd = [
        sys.executable, "-m", "sweeplab.train", "--multirun", *COMMON, f"paths.output_root={root}",
        f"hydra.sweeper.n_trials={trials}", f"trainer.max_steps={steps}",
        f"trainer.val_every_n_steps={max(1, steps // 3)}",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")
    storage = f"sqlite:///{root / 'sweeps' / 'optuna.db'}"
    return optuna.load_study(study_name="reuse", storage=storage).trials


def row(mode: str, trials: list[optuna.trial.FrozenTrial]) -> dict:
    walls = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    starts = [t.user_attrs["startup_s"] for t in trials]
    return {
        "mode": mode,
        "trials": len(trials),
        "reused": sum(bool(t.user_attrs.get("base_reused")) for t in trials),
        "startup_first": starts[0],
        "startup_later": statistics.median(starts[1:]) if len(starts) > 1 else float("nan"),
        "wall_median": statistics.median(walls),
        "overhead": sum(starts) / sum(walls),
        "overhead_later": sum(starts[1:]) / sum(walls[1:]) if len(starts) > 1 else float("nan"),
    }


def table(rows: list[dict], trials: int, steps: int) -> str:
    lines = [
        START,
        "## Per-trial overhead: reload vs reuse (bench/bench_reuse.py)",
        "",
        f"`hparams_search=qlora` on `model=base` ({trials} trials x {steps} steps, one worker, pruner none, "
        "no W&B, no decoding), both sweeps in one run on the same sampler seed. startup = Optuna's trial "
        "start to the trial's first optimizer step (user attr `startup_s`); overhead = sum of startups / "
        "sum of trial wall times. `reload` is SWEEPLAB_REUSE=0: every trial loads base, tokenizer and "
        f"data from disk. CPU: {cpu_name()}, {os.cpu_count()} cores shared with other jobs; target <= 0.05.",
        "",
        "| mode | trials | base reused | startup trial 0 (s) | startup later (s, median) | trial wall (s, "
        "median) | overhead | overhead, trials 1+ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['trials']} | {r['reused']} | {r['startup_first']:.2f} | "
            f"{r['startup_later']:.2f} | {r['wall_median']:.1f} | {r['overhead']:.3f} | "
            f"{r['overhead_later']:.3f} |"
        )
    return "\n".join([*lines, END])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, help="write the table into this BENCHMARKS.md section")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-reuse-") as tmp:
        for mode, env in MODES.items():
            rows.append(row(mode, run_sweep(Path(tmp) / mode, env, args.trials, args.steps)))
            print(rows[-1], flush=True)
    text = table(rows, args.trials, args.steps)
    print(text)
    if args.out:
        replace_section(args.out, START, END, text)


if __name__ == "__main__":
    main()
