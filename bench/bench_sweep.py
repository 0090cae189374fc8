"""Compute to the best: optimizer steps a sweep spends before a trial gets within 1% of the best val/loss.

    .venv/bin/python bench/bench_sweep.py --out BENCHMARKS.md      # what `make bench` runs

TPE + median pruning against random search without pruning: the same `hparams_search=qlora` space,
trial budget and trial length, each sweep run through the real entry point and sweeper plugin in its
own output root, seeds interleaved (seed 0 TPE, seed 0 random, seed 1 TPE, ...) so drift hits both.
best = min val/loss over every COMPLETE trial of every sweep; a sweep's cost is the sum of its trials'
`steps` in trial order up to the first COMPLETE trial with value <= 1.01 * best (a pruned trial is never
the hit). The enqueued hand-set recipes are off for both methods: this compares search, not recipes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from benchmarks_md import cpu_name, replace_section  # bench/ is sys.path[0] when run as a script

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench_sweep:start -->", "<!-- bench_sweep:end -->"
TOLERANCE = 1.01
SEARCH, BASELINE = "tpe+median", "random"
METHODS = {
    SEARCH: [
        "hydra.sweeper.sampler.n_startup_trials={startup}",
        "hydra.sweeper.pruner=median",
        "hydra.sweeper.pruner_kwargs.n_startup_trials=4",  # complete trials before any pruning
        "hydra.sweeper.pruner_kwargs.n_warmup_steps={val_every}",  # prunable from the first validation
    ],
    # TPE samples with its own RandomSampler until n_startup_trials are done: this is random search.
    # (`hydra/sweeper/sampler=random` does not compose with hparams_search=qlora, which sets the
    # TPE-only key sampler.n_startup_trials.)
    BASELINE: ["hydra.sweeper.sampler.n_startup_trials=1000000", "hydra.sweeper.pruner=none"],
}


def sweep(method: str, seed: int, out: Path, args: argparse.Namespace) -> list[FrozenTrial]:
    """One sweep through `python -m sweeplab.train --multirun`; returns its trials in trial order."""
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
        "eval.n_generate=0",  # val/loss is this benchmark's objective: no answers to decode
        "eval.test=false",
        # Trials reseed with seed + trial number: seeds 1000 apart keep two sweeps from sharing trials.
        f"hydra.sweeper.sampler.seed={1000 * seed}",
        *(o.format(startup=args.startup, val_every=args.val_every) for o in METHODS[method]),
    ]
    # One thread: the tiny model's ops are too small to split, and an OpenMP pool sharing 2 cores with
    # another busy process ran ~80x slower here (4 s against 0.05 s per step).
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    out.mkdir(parents=True)
    log = out / "sweep.log"
    with open(log, "w") as f:
        cmd = [sys.executable, "-m", "sweeplab.train", "--multirun", *overrides]
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"{method} seed {seed} failed; the end of {log}:\n{log.read_text()[-3000:]}")
    study = optuna.load_study(study_name="bench", storage=f"sqlite:///{out / 'sweeps' / 'optuna.db'}")
    return sorted(study.trials, key=lambda t: t.number)


def row(method: str, seed: int, trials: list[FrozenTrial], target: float) -> dict:
    """One table row: steps and trials up to and including the first COMPLETE trial <= target."""
    spent, hit = 0, None
    for n, t in enumerate(trials, start=1):
        spent += t.user_attrs.get("steps", 0)  # a FAIL trial may have none
        if t.state == TrialState.COMPLETE and t.value <= target:
            hit = n
            break
    return {
        "method": method,
        "seed": seed,
        "steps": spent,
        "trials": hit or len(trials),
        "hit": hit is not None,
        "best": min(t.value for t in trials if t.state == TrialState.COMPLETE),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "total": sum(t.user_attrs.get("steps", 0) for t in trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="model config choice (tiny, base, ...)")
    parser.add_argument("--trials", type=int, default=20, help="trial budget of every sweep")
    parser.add_argument("--seeds", type=int, default=4, help="sweeps per method")
    parser.add_argument("--max-steps", type=int, default=50, help="optimizer steps per trial")
    parser.add_argument("--val-every", type=int, default=10, help="steps between validations (= reports)")
    parser.add_argument("--n-val", type=int, default=64, help="validation examples")
    parser.add_argument("--startup", type=int, default=6, help="TPE's random trials before it models")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every sweep")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the sweeps here (default: temp)")
    parser.add_argument("--out", type=Path, default=None, help="BENCHMARKS.md to update")
    args = parser.parse_args()

    started = time.perf_counter()
    runs: dict[tuple[str, int], list[FrozenTrial]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        for seed in range(args.seeds):
            for method in METHODS:
                t0, out = time.perf_counter(), (args.workdir or Path(tmp)) / f"{method}-{seed}"
                trials = runs[method, seed] = sweep(method, seed, out, args)
                print(
                    f"{method} seed {seed}: {len(trials)} trials, {time.perf_counter() - t0:.0f} s",
                    flush=True,
                )
    minutes = (time.perf_counter() - started) / 60

    complete = [(t, m, s) for (m, s), ts in runs.items() for t in ts if t.state == TrialState.COMPLETE]
    best, best_method, best_seed = min(complete, key=lambda c: c[0].value)
    rows = [row(method, seed, trials, TOLERANCE * best.value) for (method, seed), trials in runs.items()]
    rows.sort(key=lambda r: (list(METHODS).index(r["method"]), r["seed"]))
    mean = {m: statistics.mean(r["steps"] for r in rows if r["method"] == m) for m in METHODS}
    never = {m: sum(not r["hit"] for r in rows if r["method"] == m) for m in METHODS}
    # What each method found with the same budget: the other half of "best adapter, least compute".
    found = {m: statistics.mean(r["best"] for r in rows if r["method"] == m) for m in METHODS}
    table = "\n".join(
        f"| {r['method']} | {r['seed']} | {r['steps']}{'' if r['hit'] else ' (never)'} | "
        f"{r['trials'] if r['hit'] else '-'} | {r['best']:.4f} | {r['pruned']} | {r['total']} |"
        for r in rows
    )
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
    summary = {
        "best": f"{best.value:.4f} ({best_method} seed {best_seed} trial {best.number}: {params})",
        "target": f"{TOLERANCE * best.value:.4f}",
        "mean": mean,
        "never": never,
        "found": found,
        "ratio": mean[SEARCH] / mean[BASELINE],
        "minutes": minutes,
    }
    print(f"{table}\n{summary}")
    if args.out:
        write_section(args, table, summary)


def write_section(args: argparse.Namespace, table: str, s: dict) -> None:
    cpu = cpu_name()
    censored = ", ".join(f"{m} {n} of {args.seeds}" for m, n in s["never"].items())
    section = f"""{START}
## Sweep: optimizer steps until a trial is within 1% of the best val/loss

`python bench/bench_sweep.py --model {args.model} --trials {args.trials} --seeds {args.seeds} \
--max-steps {args.max_steps}`: `hparams_search=qlora` (its search space), `data=toolcalls`
({args.n_val} val examples), `model={args.model}`; {args.trials} trials per sweep of at most \
{args.max_steps} optimizer steps, val/loss every {args.val_every} steps; enqueued recipes off for both.
**{SEARCH}**: multivariate TPE ({args.startup} random start-up trials) + median pruner (after 4 complete
trials, from the first validation). **{BASELINE}**: random sampler, no pruning. Sweeps with the same
seed start with the same random trials, so seeds pair up; seeds interleaved, each sweep its own study.

Best val/loss of any complete trial: {s["best"]}. A hit is a complete trial <= {s["target"]}.
Steps to within 1% = optimizer steps of every trial, pruned ones included, up to and including the
hit; "(never)" = no hit within the budget, counted as all the sweep's steps.

| method | seed | steps to within 1% | trials to within 1% | best val/loss | pruned | total steps |
|---|---|---|---|---|---|---|
{table}

Mean steps to within 1%: {", ".join(f"{m} {v:.0f}" for m, v in s["mean"].items())}. No hit: {censored}
(a no-hit mean is a lower bound on that method's real cost). Mean best val/loss a sweep found:
{", ".join(f"{m} {v:.4f}" for m, v in s["found"].items())}.

**Ratio {SEARCH} / {BASELINE}: {s["ratio"]:.3f}** (target <= 0.25). Whole benchmark: {s["minutes"]:.1f} min.
Machine: {os.cpu_count()} cores, {cpu}; optuna {optuna.__version__}; measured {time.strftime("%Y-%m-%d")}.
{END}"""
    replace_section(args.out, START, END, section)


if __name__ == "__main__":
    main()
