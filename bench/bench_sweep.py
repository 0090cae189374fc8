"""Compute to the best: how much training a search spends to reach what random search reaches.

    .venv/bin/python bench/bench_sweep.py --out BENCHMARKS.md                 # what `make bench` runs
    .venv/bin/python bench/bench_sweep.py --problem tiny --seeds 2 --jobs 2    # a quick look
    .venv/bin/python bench/bench_sweep.py --problem "mine=model=smollm2-135m data.batch_size=4"

Every sweep runs through the real entry point (`python -m sweeplab.train --multirun`) and sweeper
plugin, in its own output root. Methods (METHODS below):
- **default**: `hparams_search=qlora` exactly as a user gets it (its space, sampler and pruner), minus
  the enqueued hand-set recipes: this compares search, not recipes.
- **random**: random search without pruning over `hparams_search=qlora_wide`, the wide space one
  writes by hand. Its median best over seeds with its whole budget is the quality bar.
- **random-same-space**: random search without pruning over the default's own space, to show how much
  of the gain is the space and how much the sampler and pruner.
Compute = optimizer steps of every trial, pruned and failed ones included, at the problem's fixed batch
(so tokens up to padding). Trial order = trial number (one worker per sweep).

Headline (the HPO literature's): the compute a method needs until a complete trial is at least as good
as random's median final best, median over seeds, over random's whole budget (n_trials * max_steps).
Stricter: compute until within 1% of the best value any sweep of the problem found; seeds that never
got there are counted and make the median "never" once they are half. Sweeps of one seed share the
sampler seed, seeds are interleaved across methods, and a finished sweep's trials are kept in
--workdir (trials.json), so a rerun only runs what is missing and the same seeds give the same table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
from optuna.trial import TrialState

from benchmarks_md import cpu_name, replace_section  # bench/ is sys.path[0] when run as a script

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench_sweep:start -->", "<!-- bench_sweep:end -->"
TOLERANCE = 0.01
COMMON = ["logger=none", "trainer.enable_progress_bar=false", "eval.n_generate=0", "eval.test=false"]
# Two landscapes: a 2-layer toy and the 4-layer embedded toy base (4.5M parameters), both on the
# default tool-call chats, padded (the defaults these were measured with before the default run moved
# to SmolLM2: packing off, lr searched). toy drops gradient checkpointing and halves the batch so a
# trial takes ~15 s here.
PROBLEMS = {
    "tiny": {
        "trials": 20,
        "max_steps": 50,
        "val_every": 10,
        "overrides": ["model=tiny", "data.n_val=64", "data.batch_size=8", "data.packing=false"],
    },
    "toy": {
        "trials": 16,
        "max_steps": 30,
        "val_every": 10,
        "overrides": [
            "model=toy",
            "model.gradient_checkpointing=false",
            "data.batch_size=4",
            "data.n_val=32",
            "data.packing=false",
        ],
    },
}
METHODS = {
    "default": ["hparams_search=qlora"],
    "random": ["hparams_search=qlora_wide", "hydra/sweeper/sampler=random", "hydra/sweeper/pruner=none"],
    "random-same-space": [
        "hparams_search=qlora",
        "hydra/sweeper/sampler=random",
        "hydra/sweeper/pruner=none",
    ],
}
# Candidates measured against the default before choosing it (kept so the choice can be re-checked).
MEDIAN = [
    "hydra/sweeper/pruner=median",
    "hydra.sweeper.pruner.n_startup_trials=4",
    "hydra.sweeper.pruner.n_warmup_steps=${trainer.val_every_n_steps}",
]
CANDIDATES = {
    "median": ["hparams_search=qlora", *MEDIAN],  # the default's space and sampler, median pruning
    "asha-wide": ["hparams_search=qlora_wide"],  # the default's sampler and pruner on the wide space
    "old-default": ["hparams_search=qlora_wide", *MEDIAN],  # the default before bench_sweep chose
}
METHODS |= CANDIDATES
BASELINE = "random"


def sweep(problem: str, method: str, seed: int, out: Path, args: argparse.Namespace) -> dict:
    """One sweep (or its kept result); returns {direction, trials: [{number, state, value, steps}]}."""
    kept = out / "trials.json"
    if kept.exists():
        return json.loads(kept.read_text())
    p = PROBLEMS[problem]
    overrides = [
        *METHODS[method],
        *COMMON,
        *p["overrides"],
        f"trainer.max_steps={p['max_steps']}",
        f"trainer.val_every_n_steps={p['val_every']}",
        f"paths.output_root={out}",
        "hydra.sweeper.study_name=bench",
        f"hydra.sweeper.n_trials={p['trials']}",
        "hydra.sweeper.enqueue=[]",
        # Trials reseed with seed + trial number: seeds 1000 apart keep two sweeps from sharing trials.
        f"hydra.sweeper.sampler.seed={1000 * seed}",
    ]
    # One thread per sweep: two sweeps share the 2 cores, and an OpenMP pool sharing cores with another
    # busy process ran ~80x slower here. Compute is counted in steps, so sharing does not bias it.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if out.exists():  # an unfinished sweep from an interrupted bench: start it over, not resume it
        subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    with open(out / "sweep.log", "w") as f:
        cmd = [sys.executable, "-m", "sweeplab.train", "--multirun", *overrides]
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"{problem} {method} seed {seed} failed; the end of {out / 'sweep.log'}:\n"
                 f"{(out / 'sweep.log').read_text()[-3000:]}")  # fmt: skip
    study = optuna.load_study(study_name="bench", storage=f"sqlite:///{out / 'sweeps' / 'optuna.db'}")
    trials = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value if t.state == TrialState.COMPLETE else None,
            # a pruned trial records its steps; a failed one may not: its last report, else nothing
            "steps": t.user_attrs.get("steps", max(t.intermediate_values, default=0)),
            "params": t.params,
        }
        for t in sorted(study.trials, key=lambda t: t.number)
    ]
    result = {
        "direction": study.direction.name.lower(),
        "startup_steps": study.user_attrs.get("startup_steps", 0),  # work before the first trial
        "trials": trials,
        "seconds": time.perf_counter() - t0,
    }
    kept.write_text(json.dumps(result, indent=1))
    print(f"{problem} {method} seed {seed}: {len(trials)} trials, {result['seconds']:.0f} s", flush=True)
    return result


def curve(result: dict) -> list[tuple[int, float]]:
    """(compute so far, best complete value so far) after each trial, startup cost first."""
    sign = 1 if result["direction"] == "minimize" else -1
    spent, best, points = result["startup_steps"], math.inf, []
    for t in result["trials"]:
        spent += t["steps"]
        if t["state"] == "COMPLETE":
            best = min(best, sign * t["value"])
        points.append((spent, sign * best if math.isfinite(best) else math.nan))
    return points


def compute_to(result: dict, target: float) -> int | None:
    """Compute until a complete trial is at least as good as target; None if none is."""
    sign = 1 if result["direction"] == "minimize" else -1
    for spent, best in curve(result):
        if not math.isnan(best) and sign * best <= sign * target + 1e-12:
            return spent
    return None


def median_or_never(values: list[int | None]) -> float:
    """Median with never = infinity: 'never' once half the seeds never got there."""
    return statistics.median(math.inf if v is None else v for v in values)


def summarize(problem: str, runs: dict[tuple[str, int], dict], methods: list[str]) -> dict:
    p = PROBLEMS[problem]
    budget = p["trials"] * p["max_steps"]
    direction = next(iter(runs.values()))["direction"]
    sign = 1 if direction == "minimize" else -1
    finals = {k: curve(r)[-1][1] for k, r in runs.items()}
    bar = statistics.median(finals[m, s] for m, s in runs if m == BASELINE)
    best = sign * min(sign * v for v in finals.values() if not math.isnan(v))
    near = best + sign * TOLERANCE * abs(best)  # within 1% of the best any sweep found
    rows = {}
    for m in methods:
        seeds = sorted(s for mm, s in runs if mm == m)
        to_bar = [compute_to(runs[m, s], bar) for s in seeds]
        to_near = [compute_to(runs[m, s], near) for s in seeds]
        rows[m] = {
            "seeds": len(seeds),
            "ratio": median_or_never(to_bar) / budget,
            "bar_never": sum(v is None for v in to_bar),
            "near_ratio": median_or_never(to_near) / budget,
            "near_never": sum(v is None for v in to_near),
            "found": statistics.median(finals[m, s] for s in seeds),
            "spent": statistics.median(curve(runs[m, s])[-1][0] for s in seeds) / budget,
            "pruned": statistics.median(
                sum(t["state"] == "PRUNED" for t in runs[m, s]["trials"]) for s in seeds
            ),
        }
    return {"budget": budget, "bar": bar, "best": best, "near": near, "rows": rows, "direction": direction}


def plot(problem: str, runs: dict[tuple[str, int], dict], s: dict, path: Path) -> None:
    """Best-so-far against compute: median over seeds, band = 25th-75th percentile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.linspace(0, s["budget"], 201)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for m, row in s["rows"].items():
        ys = []
        for seed in sorted(k for mm, k in runs if mm == m):
            pts = curve(runs[m, seed])
            # the best known at each compute level: a step function of the trials finished by then
            ys.append([next((b for c, b in reversed(pts) if c <= g), math.nan) for g in grid])
        ys = np.array(ys, dtype=float)
        with np.errstate(all="ignore"):
            med = np.nanmedian(ys, axis=0)
            lo, hi = np.nanpercentile(ys, 25, axis=0), np.nanpercentile(ys, 75, axis=0)
        ax.plot(grid / s["budget"], med, label=f"{m} ({row['seeds']} seeds)")
        ax.fill_between(grid / s["budget"], lo, hi, alpha=0.2)
    ax.axhline(s["bar"], color="grey", ls="--", lw=1, label="random's median final best")
    ax.set_xlabel("compute (fraction of random search's whole budget)")
    ax.set_ylabel(f"best objective so far ({s['direction']})")
    ax.set_title(f"bench_sweep: {problem}")
    # Zoomed on where the methods end and the bar: the first, poor trials would squash the plot.
    ends = [s["bar"], *(r["found"] for r in s["rows"].values())]
    lo_y, hi_y = min(ends), max(ends)
    pad = 0.6 * (hi_y - lo_y or 1)
    ax.set_ylim(lo_y - pad / 3, hi_y + pad) if s["direction"] == "minimize" else ax.set_ylim(
        lo_y - pad, hi_y + pad / 3
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--problem",
        action="append",
        help="tiny, base, or NAME=OVERRIDES (space-separated train overrides; 16 trials of 30 steps)",
    )
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated, from METHODS; METHOD@PROBLEM runs that method on that problem only",
    )
    parser.add_argument("--seeds", type=int, default=8, help="sweeps per method and problem")
    parser.add_argument("--jobs", type=int, default=2, help="sweeps at once (each gets one thread)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "results" / "sweep")
    parser.add_argument("--out", type=Path, default=None, help="BENCHMARKS.md to update")
    args = parser.parse_args()
    problems = []
    for spec in args.problem or ["tiny", "toy"]:
        name, _, overrides = spec.partition("=")
        if overrides:
            PROBLEMS[name] = {"trials": 16, "max_steps": 30, "val_every": 10, "overrides": overrides.split()}
        elif name not in PROBLEMS:
            sys.exit(f"--problem {name}: not one of {list(PROBLEMS)}; or give NAME=OVERRIDES")
        problems.append(name)
    only = dict(m.partition("@")[::2] for m in args.methods.split(","))  # method -> problem or ""
    methods = list(only)
    if BASELINE not in methods or any(m not in METHODS for m in methods):
        sys.exit(f"--methods must include {BASELINE} and name only {list(METHODS)}")

    # Interleaved: seed 0 of every problem and method, then seed 1, ... so drift hits every method.
    tasks = [(p, m, s) for s in range(args.seeds) for p in problems for m in methods if only[m] in ("", p)]
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {t: pool.submit(sweep, *t, args.workdir / t[0] / f"{t[1]}-{t[2]}", args) for t in tasks}
        results = {t: f.result() for t, f in futures.items()}
    # the sweeps' own wall time, kept ones included: what the whole table cost (two sweeps at a time)
    minutes = sum(r["seconds"] for r in results.values()) / 60
    sections = []
    for problem in problems:
        runs = {(m, s): r for (p, m, s), r in results.items() if p == problem}
        summary = summarize(problem, runs, [m for m in methods if only[m] in ("", problem)])
        png = (args.out.parent if args.out else args.workdir) / "bench" / f"sweep_{problem}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        plot(problem, runs, summary, png)
        sections.append(render(problem, summary, png, args))
        print(sections[-1], flush=True)
    if args.out:
        write_section(args, sections, minutes)


def render(problem: str, s: dict, png: Path, args: argparse.Namespace) -> str:
    p = PROBLEMS[problem]
    rows = "\n".join(
        f"| {m} | {fmt(r['ratio'])}{never(r['bar_never'], r['seeds'])} | "
        f"{fmt(r['near_ratio'])}{never(r['near_never'], r['seeds'])} | {r['found']:.4f} | "
        f"{r['spent']:.2f} | {r['pruned']:g} |"
        for m, r in s["rows"].items()
    )
    rel = png.relative_to(args.out.parent) if args.out else png
    return f"""### {problem}: `{" ".join(p["overrides"])}`, {p["trials"]} trials of {p["max_steps"]} steps

Random's median final best (the bar): {s["bar"]:.4f}. Best of any sweep: {s["best"]:.4f}; within 1%:
{s["near"]:.4f}. Budget = {p["trials"]} x {p["max_steps"]} = {s["budget"]} optimizer steps.

| method | compute to random's bar | to within 1% of best | median best found | compute spent | pruned |
|---|---|---|---|---|---|
{rows}

![best so far against compute, {problem}]({rel})
"""


def fmt(ratio: float) -> str:
    return "never" if math.isinf(ratio) else f"{ratio:.3f}"


def never(n: int, seeds: int) -> str:
    return f" ({n} of {seeds} never)" if n else ""


def write_section(args: argparse.Namespace, sections: list[str], minutes: float) -> None:
    body = "\n".join(sections)
    section = f"""{START}
## Sweep: compute to reach random search's best

`python bench/bench_sweep.py --seeds {args.seeds} --methods {args.methods}`
({", ".join(args.problem or ["tiny", "toy"])}; the method definitions are in the script's docstring).
Compute is in optimizer steps at a fixed batch, pruned and failed trials included, as a fraction
of random search's whole budget; each figure is the median over {args.seeds} seeds. "compute to
random's bar" is the headline: the compute until a complete trial is as good as random search's
median final best (target <= 0.25); random itself stays above its own median in half its seeds,
so its row reads "never" there by construction. "compute spent" is what the whole sweep used.
Seeds interleaved across methods; enqueued recipes off; val/loss is the objective.

{body}
The sweeps took {minutes:.0f} min of wall time in all, {args.jobs} at a time.
Machine: {os.cpu_count()} cores, {cpu_name()}; optuna {optuna.__version__}; {time.strftime("%Y-%m-%d")}.
{END}"""
    replace_section(args.out, START, END, section)


if __name__ == "__main__":
    main()
