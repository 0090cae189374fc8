"""Per-trial overhead of a sweep worker: reloading every trial (before) against reuse (after), in one run.

    .venv/bin/python bench/bench_reuse.py --out BENCHMARKS.md      # 6 trials x 30 steps on model=toy
    .venv/bin/python bench/bench_reuse.py --trials 3 --steps 10     # a quick look

The sweeps run the real entry point (`python -m sweeplab.train --multirun hparams_search=qlora`, one
worker, no pruning) on the same sampler seed, so they run the same trials. "reload" is this tree with
SWEEPLAB_REUSE=0 (every trial loads base, tokenizer and data: the code before reuse, otherwise equal);
"after" is this tree; --before REF adds that git ref, run from a temporary worktree. The clock is
the same for all: bench/first_step.py, added through `callbacks.extra`, writes the time of each
trial's first optimizer step into its run dir.
Overhead = (first step - Optuna's trial start) / (trial end - trial start), summed over the trials.
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
# What bench_sweep.py runs on model=toy: decoding-based scoring off, so wall time is training.
COMMON = [
    "model=toy",
    "model.gradient_checkpointing=false",
    "data.batch_size=4",
    "data.n_val=32",
    "data.packing=false",
    "logger=none",
    "trainer.enable_progress_bar=false",
    "eval.n_generate=0",
    "eval.test=false",
    "hparams_search=qlora",
    "hydra/sweeper/pruner=none",
    "hydra.sweeper.study_name=reuse",
]
CLOCK = "+callbacks.extra=[{_target_: first_step.FirstStep}]"


def run_sweep(
    code: Path, root: Path, env: dict[str, str], trials: int, steps: int
) -> tuple[list[optuna.trial.FrozenTrial], list[float], list[float]]:
    """(trials, seconds from each trial's start to its first optimizer step, and to its first batch)."""
    cmd = [
        sys.executable, "-m", "sweeplab.train", "--multirun", *COMMON, CLOCK, f"paths.output_root={root}",
        f"hydra.sweeper.n_trials={trials}", f"trainer.max_steps={steps}",
        f"trainer.val_every_n_steps={max(1, steps // 3)}",
    ]  # fmt: skip
    path = os.pathsep.join([str(code / "src"), str(ROOT / "bench")])
    done = subprocess.run(
        cmd, cwd=code, env={**os.environ, **env, "PYTHONPATH": path}, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")
    storage = f"sqlite:///{root / 'sweeps' / 'optuna.db'}"
    finished = optuna.load_study(study_name="reuse", storage=storage).trials

    def since_start(t: optuna.trial.FrozenTrial, name: str) -> float:
        return (
            float((root / "sweeps" / "reuse" / str(t.number) / name).read_text())
            - t.datetime_start.timestamp()
        )

    starts = [since_start(t, "first_step.txt") for t in finished]
    setups = [since_start(t, "first_batch.txt") for t in finished]
    return finished, starts, setups


def row(mode: str, trials: list[optuna.trial.FrozenTrial], starts: list[float], setups: list[float]) -> dict:
    walls = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    return {
        "mode": mode,
        "trials": len(trials),
        "reused": sum(bool(t.user_attrs.get("base_reused")) for t in trials),
        "startup_first": starts[0],
        "startup_later": statistics.median(starts[1:]) if len(starts) > 1 else float("nan"),
        "wall_median": statistics.median(walls),
        "overhead": sum(starts) / sum(walls),
        "overhead_later": sum(starts[1:]) / sum(walls[1:]) if len(starts) > 1 else float("nan"),
        # the same without the first step's own forward and backward: set-up only
        "setup_later": sum(setups[1:]) / sum(walls[1:]) if len(setups) > 1 else float("nan"),
    }


def table(rows: list[dict], trials: int, steps: int) -> str:
    lines = [
        START,
        "## Per-trial overhead: before vs after keeping the base (bench/bench_reuse.py)",
        "",
        f"`hparams_search=qlora` on `model=toy` ({trials} trials x {steps} steps, one worker, pruner none, "
        "no W&B, no decoding), the modes one after another in one run on the same sampler seed. startup = "
        "Optuna's trial start to the trial's first optimizer step (bench/first_step.py, the same clock for "
        "all); overhead = sum of startups / sum of trial wall times; the last column stops the clock at the "
        "start of the first batch instead (set-up without the first step's own work). `SWEEPLAB_REUSE=0` "
        f"loads base, tokenizer and data from disk in every trial. CPU: {cpu_name()}, {os.cpu_count()} "
        "cores shared with whatever else ran, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; target <= 0.05.",
        "",
        "| mode | trials | base reused | startup trial 0 (s) | startup later (s, median) | trial wall (s, "
        "median) | overhead | overhead, trials 1+ | to first batch, trials 1+ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['trials']} | {r['reused']} | {r['startup_first']:.2f} | "
            f"{r['startup_later']:.2f} | {r['wall_median']:.1f} | {r['overhead']:.3f} | "
            f"{r['overhead_later']:.3f} | {r['setup_later']:.3f} |"
        )
    return "\n".join([*lines, END])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--before", help="also a git ref (e.g. the commit before reuse), from a worktree")
    parser.add_argument("--out", type=Path, help="write the table into this BENCHMARKS.md section")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-reuse-") as tmp:
        before = Path(tmp) / "before-code"
        modes = [("reload (SWEEPLAB_REUSE=0)", ROOT, {"SWEEPLAB_REUSE": "0"}), ("after", ROOT, {})]
        if args.before:
            add = ["git", "worktree", "add", "--detach", str(before), args.before]
            subprocess.run(add, cwd=ROOT, check=True)
            modes.insert(0, (f"before ({args.before})", before, {}))
        try:
            for i, (mode, code, env) in enumerate(modes):
                rows.append(row(mode, *run_sweep(code, Path(tmp) / str(i), env, args.trials, args.steps)))
                print(rows[-1], flush=True)
        finally:
            if args.before:
                subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False)
    text = table(rows, args.trials, args.steps)
    print(text)
    if args.out:
        replace_section(args.out, START, END, text)


if __name__ == "__main__":
    main()
