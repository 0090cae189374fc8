"""Compute to the best: optimizer steps a sweep spends before a trial gets within 1% of the best val/loss.

    .venv/bin/python bench/bench_sweep.py --out BENCHMARKS.md      # what `make bench` runs

TPE + median pruning against random search without pruning: the same `hparams_search=qlora` space,
trial budget and trial length, each method run through the real entry point and sweeper plugin,
seeds interleaved (seed 0 TPE, seed 0 random, seed 1 TPE, ...) so machine drift hits both.
best = min val/loss over every COMPLETE trial of every run; a run's cost is the sum of its trials'
`steps` in trial order up to the first COMPLETE trial with value <= 1.01 * best (a pruned trial never
counts as the hit). The enqueued hand-set recipes are off for both methods: this compares search.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench_sweep:start -->", "<!-- bench_sweep:end -->"
TOLERANCE = 1.01
# Random search = TPE whose random start-up phase covers every trial: it then samples with its own
# RandomSampler. `hydra/sweeper/sampler=random` does not compose with hparams_search=qlora, which
# sets sampler.n_startup_trials (a TPE-only key).
METHODS = {
    "tpe+median": ["hydra.sweeper.pruner=median", "hydra.sweeper.sampler.n_startup_trials={startup}"],
    "random": ["hydra.sweeper.pruner=none", "hydra.sweeper.sampler.n_startup_trials=1000000"],
}


def sweep(method: str, seed: int, out: Path, args: argparse.Namespace) -> list[FrozenTrial]:
    """One sweep in its own output root, so no two runs share a study; returns its trials."""
    overrides = [
        "hparams_search=qlora",
        f"model={args.model}",
        "logger=none",
        f"trainer.max_steps={args.max_steps}",
        f"trainer.val_every_n_steps={args.val_every}",
        "trainer.enable_progress_bar=false",
        f"data.n_val={args.n_val}",
        f"paths.output_root={out}",
        "hydra.sweeper.study_name=bench",
        f"hydra.sweeper.n_trials={args.trials}",
        "hydra.sweeper.enqueue=[]",
        # Trials reseed with seed + trial number: seeds 1000 apart keep runs from sharing trials.
        f"hydra.sweeper.sampler.seed={1000 * seed}",
        "hydra.sweeper.pruner_kwargs.n_startup_trials=4",  # complete trials before any pruning
        f"hydra.sweeper.pruner_kwargs.n_warmup_steps={args.val_every}",  # prunable from the 1st val
        *(o.format(startup=args.startup) for o in METHODS[method]),
    ]
    # One thread per process: the tiny model's ops are too small to split, and an OpenMP pool that
    # shares 2 cores with any other process runs ~80x slower (measured 4 s vs 0.05 s per step).
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    out.mkdir(parents=True)
    with open(out / "sweep.log", "w") as log:
        cmd = [sys.executable, "-m", "sweeplab.train", "--multirun", *overrides]
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(
            f"{method} seed {seed} failed ({out / 'sweep.log'}):\n{(out / 'sweep.log').read_text()[-3000:]}"
        )
    storage = f"sqlite:///{out / 'sweeps' / 'optuna.db'}"
    return sorted(optuna.load_study(study_name="bench", storage=storage).trials, key=lambda t: t.number)


def to_best(trials: list[FrozenTrial], target: float) -> dict:
    """Steps and trials spent up to and including the first COMPLETE trial within the target."""
    steps = 0
    for n, t in enumerate(trials, start=1):
        steps += t.user_attrs.get("steps", 0)  # a FAIL trial may have none
        if t.state == TrialState.COMPLETE and t.value <= target:
            return {"steps": steps, "trials": n, "hit": True}
    return {"steps": steps, "trials": len(trials), "hit": False}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="model config choice (tiny, base, ...)")
    parser.add_argument("--trials", type=int, default=20, help="trial budget per sweep, both methods")
    parser.add_argument("--seeds", type=int, default=3, help="sweeps per method")
    parser.add_argument("--max-steps", type=int, default=50, help="optimizer steps per trial")
    parser.add_argument("--val-every", type=int, default=10, help="steps between validations (and reports)")
    parser.add_argument("--n-val", type=int, default=64, help="validation examples")
    parser.add_argument("--startup", type=int, default=6, help="TPE's random trials before it models")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each sweep")
    parser.add_argument("--out", type=Path, default=None, help="BENCHMARKS.md to update")
    args = parser.parse_args()

    started = time.perf_counter()
    runs: dict[tuple[str, int], list[FrozenTrial]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        for seed in range(args.seeds):
            for method in METHODS:
                t0 = time.perf_counter()
                runs[method, seed] = sweep(method, seed, Path(tmp) / f"{method}-{seed}", args)
                print(
                    f"{method:10s} seed {seed}: {len(runs[method, seed])} trials in {time.perf_counter() - t0:.0f} s"
                )
    minutes = (time.perf_counter() - started) / 60

    best = min(t.value for ts in runs.values() for t in ts if t.state == TrialState.COMPLETE)
    rows = []
    for (method, seed), trials in runs.items():
        hit = to_best(trials, TOLERANCE * best)
        done = [t.value for t in trials if t.state == TrialState.COMPLETE]
        rows.append(
            {
                "method": method,
                "seed": seed,
                **hit,
                "best": min(done),
                "total": sum(t.user_attrs.get("steps", 0) for t in trials),
                "pruned": sum(t.state == TrialState.PRUNED for t in trials),
            }
        )
    mean = {m: statistics.mean(r["steps"] for r in rows if r["method"] == m) for m in METHODS}
    ratio = mean["tpe+median"] / mean["random"]
    table = "\n".join(
        f"| {r['method']} | {r['seed']} | {r['steps']}{'' if r['hit'] else ' (never)'} | {r['trials']} "
        f"| {r['best']:.4f} | {r['pruned']} | {r['total']} |"
        for r in sorted(rows, key=lambda r: (r["method"] != "tpe+median", r["seed"]))
    )
    print(f"best val/loss {best:.4f}, target {TOLERANCE * best:.4f}\n{table}")
    print(
        f"mean steps to within 1%: {mean}; ratio tpe+median / random {ratio:.3f} (target <= 0.25); "
        f"{minutes:.1f} min"
    )
    if args.out:
        write_section(args, best, table, mean, ratio, minutes)


def write_section(args, best: float, table: str, mean: dict, ratio: float, minutes: float) -> None:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    section = f"""{START}
## Sweep: optimizer steps to a trial within 1% of the best

`python bench/bench_sweep.py --model {args.model} --trials {args.trials} --seeds {args.seeds} --max-steps \
{args.max_steps}`: `hparams_search=qlora` on `data=toolcalls` ({args.n_val} val examples), `model={args.model}`,
{args.trials} trials per sweep of at most {args.max_steps} optimizer steps, val/loss every {args.val_every} steps;
enqueued recipes off for both. **tpe+median**: TPE ({args.startup} random start-up trials) + median pruner
(after 4 complete trials, from the first validation). **random**: random sampler, no pruning.
Seeds interleaved, each sweep in its own study. Best val/loss over every complete trial of every
sweep: {best:.4f}; hit = a complete trial <= {TOLERANCE * best:.4f}. Steps to within 1% = optimizer steps of
every trial (pruned ones included) up to and including the hit; "never" = the run's total.

| method | seed | steps to within 1% | trials to within 1% | best val/loss | pruned | total steps |
|---|---|---|---|---|---|---|
{table}

Mean steps to within 1%: tpe+median {mean["tpe+median"]:.0f}, random {mean["random"]:.0f}.

**Ratio tpe+median / random: {ratio:.3f}** (target <= 0.25). Whole benchmark: {minutes:.1f} min.
Machine: {os.cpu_count()} cores, {cpu}; optuna {optuna.__version__}; measured {time.strftime("%Y-%m-%d")}.
{END}"""
    text = args.out.read_text() if args.out.exists() else "# Benchmarks\n\nWritten by `make bench`.\n"
    if START in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    args.out.write_text(text)


if __name__ == "__main__":
    main()
