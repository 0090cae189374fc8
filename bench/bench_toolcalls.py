"""Tool-call accuracy of SmolLM2-135M-Instruct on held-out chats: the base, a recipe, a small sweep.

    .venv/bin/python bench/bench_toolcalls.py --out BENCHMARKS.md     (CPU: about an hour)

1. `experiment=smollm2_toolcalls` through the real entry point: the base's test tool_exact (the same
   model with the adapter off) and the adapter's, on the same held-out test chats.
2. A small sweep, `hparams_search=qlora_tool_exact` on top of that experiment: the two hand-set recipes
   (trials 0 and 1) and then TPE, every trial the same steps, data and batch as the recipe run, each
   selected by val/tool_exact and then scored once on the test split. Equal compute per trial, so the
   recipes and the searched trials compare one to one; the sweep as a whole spent --trials times that.
Figures are read from each run's metrics.json and the study; nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from benchmarks_md import cpu_name, replace_section  # bench/ is sys.path[0] when run as a script

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench_toolcalls:start -->", "<!-- bench_toolcalls:end -->"
METRICS = ("tool_exact", "args_acc", "tool_name_acc", "json_valid")
COMMON = ["experiment=smollm2_toolcalls", "logger=none", "trainer.enable_progress_bar=false"]


def train(out: Path, *overrides: str) -> None:
    """One `python -m sweeplab.train` (a run or a --multirun) into its own output root."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / "bench.log"
    cmd = [sys.executable, "-m", "sweeplab.train", *COMMON, f"paths.output_root={out}", *overrides]
    with open(log, "a") as f:
        done = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"{' '.join(overrides)} failed; the end of {log}:\n{log.read_text()[-3000:]}")


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def sweep_rows(study: optuna.Study) -> list[str]:
    trials = sorted(study.trials, key=lambda t: t.number)
    best = study.best_trial if any(t.state == TrialState.COMPLETE for t in trials) else None
    rows = []
    for t in trials:
        role = t.user_attrs.get("recipe") or "searched"
        if best is not None and t.number == best.number:
            role += ", **best by val/tool_exact**"
        params = ", ".join(
            f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
            for k, v in t.params.items()
        )
        cells = [str(t.number), role, params, t.state.name, pct(t.value)]
        cells += [pct(t.user_attrs.get(f"test/{m}")) for m in METRICS]
        cells.append(str(t.user_attrs.get("steps", "-")))
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4, help="sweep trials, the two recipes included")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs here (default: temp)")
    parser.add_argument("--out", type=Path, default=None, help="BENCHMARKS.md to update")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_toolcalls_") as tmp:
        work = args.workdir or Path(tmp)
        t0 = time.perf_counter()
        train(work / "recipe", "run_name=recipe")
        run_dir = work / "recipe" / "runs" / "recipe"
        recipe = json.loads((run_dir / "metrics.json").read_text())
        recipe["minutes"] = (time.perf_counter() - t0) / 60
        recipe["n_generate"] = yaml.safe_load((run_dir / "config.yaml").read_text())["eval"]["n_generate"]
        print(
            f"recipe: test tool_exact {recipe['test/tool_exact']:.3f}, base {recipe['base/tool_exact']:.3f}"
        )
        t0 = time.perf_counter()
        train(
            work / "sweep",
            "--multirun",
            "hparams_search=qlora_tool_exact",
            "hydra.sweeper.study_name=bench",
            f"hydra.sweeper.n_trials={args.trials}",
        )
        sweep_minutes = (time.perf_counter() - t0) / 60
        storage = f"sqlite:///{work / 'sweep' / 'sweeps' / 'optuna.db'}"
        rows = sweep_rows(optuna.load_study(study_name="bench", storage=storage))
    print("\n".join(rows), flush=True)
    if args.out:
        write_section(args, recipe, rows, sweep_minutes, (time.perf_counter() - started) / 60)


def write_section(args, recipe: dict, rows: list[str], sweep_minutes: float, minutes: float) -> None:
    before = " / ".join(pct(recipe[f"base/{m}"]) for m in METRICS)
    after = " / ".join(pct(recipe[f"test/{m}"]) for m in METRICS)
    steps = recipe["steps"]
    section = f"""{START}
## Tool calls on a real model: SmolLM2-135M-Instruct before and after

`python bench/bench_toolcalls.py --trials {args.trials}`: the model from its PyPI wheel, 4-bit NF4,
{recipe["test_chats"]} held-out test chats of the default data (never trained or selected on), greedy
decoding. Metrics: tool_exact / args_acc / tool_name_acc / json_valid (docs/EVALUATION.md).

| | tool_exact / args_acc / tool_name_acc / json_valid |
|---|---|
| base (adapter off) | {before} |
| after `experiment=smollm2_toolcalls` ({steps} steps, {recipe["minutes"]:.1f} min) | {after} |

A small sweep on top of that experiment (`hparams_search=qlora_tool_exact`, {args.trials} trials):
the two hand-set recipes first, then TPE (random draws until its start-up trials are done); every
trial the same {steps} steps, data and batch,
selected by val/tool_exact on {recipe["n_generate"]} generated val answers, then scored once on the
test split. Equal compute per trial; the whole sweep took {sweep_minutes:.1f} min.

| trial | role | params | state | val/tool_exact | test tool_exact | args | name | json | steps |
|---:|---|---|---|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

Whole benchmark: {minutes:.1f} min. Machine: {os.cpu_count()} cores, {cpu_name()};
measured {time.strftime("%Y-%m-%d")}.
{END}"""
    replace_section(args.out, START, END, section)


if __name__ == "__main__":
    main()
