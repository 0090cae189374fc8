"""The sweep against a person on a real model: which adapter each arm picks, for how much compute.

    .venv/bin/python bench/bench_search_real.py --out BENCHMARKS.md           (make bench-search-real)
    .venv/bin/python bench/bench_search_real.py --arms search --seeds 1       # rerun one arm

SmolLM2-135M-Instruct (its PyPI wheel, 4-bit NF4), the default tool-call chats, one test split of
--test chats that no arm trains or selects on, greedy decoding. Every arm runs through the real entry
point (`python -m sweeplab.train`, `--multirun` for the searches) in its own output root. Arms:
- **qlora-toolcall**, **guanaco**: the two hand-set recipes the default sweep enqueues (read from
  conf/hparams_search/qlora.yaml, so they are what the sweep runs), one full run each;
- **hand-tuned**: `experiment=smollm2_toolcalls`'s recipe (r=16, alpha=32, lr 1e-3, 5 warmup steps):
  a person who knows that LoRA wants ~10x a full fine-tune's learning rate; one full run;
- **first-run**: the defaults' recipe, what `make train` runs (lora=r16, optim.lr and warmup_ratio read from
  conf/optim/adamw.yaml: 2e-3, 10%), chosen after this bench's range tests; one full run;
- **search**: the default tool-call search (`hparams_search=qlora_tool_exact`) given BUDGET full runs
  of compute, its lr range test, pruned trials and recipes included;
- **random** (optional, `--arms random`): random search over the same space, same budget, no range test.
A full run is --steps optimizer steps of --batch packed rows (data.max_seq_len tokens each), so compute
is counted in optimizer steps at one batch: every arm trains on the same rows per step.

Each (arm, seed) result is written to --keep as one JSON file; a rerun only runs what is missing (the
hand-set arms do not change while the search does: delete search-*.json to rerun that arm). Seeds
vary the data order, LoRA init and dropout (`seed`) and the sampler (`hydra.sweeper.sampler.seed`);
the chats themselves (data.seed) and the test split stay fixed. Units run --jobs at a time, seeds
interleaved across arms, one thread each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from benchmarks_md import cpu_name, replace_section  # bench/ is sys.path[0] when run as a script

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench_search_real:start -->", "<!-- bench_search_real:end -->"
METRICS = ("tool_exact", "args_acc", "tool_name_acc", "json_valid")
HAND_SET = ("qlora-toolcall", "guanaco", "hand-tuned", "first-run")
BUDGET = 4  # the search's compute, in full runs
OBJECTIVE = "val/tool_exact"


def common(args: argparse.Namespace, seed: int) -> list[str]:
    """What every arm shares: the model, the data, the batch, the run length, the eval sizes."""
    return [
        "model=smollm2-135m",
        "model.gradient_checkpointing=false",  # CPU memory is plenty at batch 4; recomputing costs ~30%
        "data.packing=true",
        "data.max_seq_len=256",  # rows of 256 tokens, as the kept results ran (unset: the longest chat)
        f"data.batch_size={args.batch}",
        f"data.n_val={args.val}",
        f"data.n_test={args.test}",
        "data.eval_batch_size=16",
        f"eval.n_generate={args.val}",
        "eval.batch_size=32",
        f"trainer.max_steps={args.steps}",
        "optim.warmup_ratio=0.03",  # the default when the kept results ran (0.1 since the first-run defaults)
        f"objective.metric={OBJECTIVE}",
        f"seed={seed}",
        "logger=none",
        "trainer.enable_progress_bar=false",
    ]


def recipes() -> dict[str, list[str]]:
    """The hand-set arms as overrides: the sweep's own enqueued recipes, and the committed experiment's."""
    cfg = yaml.safe_load((ROOT / "conf/hparams_search/qlora.yaml").read_text())
    arms = {
        r["recipe"]: [f"{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in r["params"].items()]
        for r in cfg["hydra"]["sweeper"]["enqueue"]
    }
    exp = yaml.safe_load((ROOT / "experiments/smollm2_toolcalls.yaml").read_text())
    arms["hand-tuned"] = [
        "lora=r16",
        f"optim.lr={exp['optim']['lr']}",
        f"optim.warmup_steps={exp['optim']['warmup_steps']}",
    ]
    optim = yaml.safe_load((ROOT / "conf/optim/adamw.yaml").read_text())
    arms["first-run"] = ["lora=r16", f"optim.lr={optim['lr']}", f"optim.warmup_ratio={optim['warmup_ratio']}"]
    return arms


SEARCHES = {
    "search": ["hparams_search=qlora_tool_exact"],
    "random": [
        "hparams_search=qlora_tool_exact",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.lr_range_test=null",
    ],
}


def run(cmd: list[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # units share the cores; compute is counted in steps
    with open(out / "bench.log", "a") as f:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[3:])} failed; the end of {out / 'bench.log'}:\n"
            f"{(out / 'bench.log').read_text()[-3000:]}"
        )


def hand_set(arm: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    """One full run; its adapter is what the person gets. One validation, at the end."""
    t0 = time.perf_counter()
    overrides = [*common(args, seed), *recipes()[arm], f"trainer.val_every_n_steps={args.steps}"]
    done = out / "runs" / "run" / "metrics.json"
    if not done.exists():
        subprocess.run(["rm", "-rf", str(out / "runs" / "run")], check=True)  # an unfinished run: again
        run(
            [sys.executable, "-m", "sweeplab.train", *overrides, f"paths.output_root={out}", "run_name=run"],
            out,
        )
    m = json.loads(done.read_text())
    return {
        "arm": arm,
        "seed": seed,
        "overrides": recipes()[arm],
        "steps": m["steps"],
        "train_tokens": m["train_tokens"],
        "val": m["best"].get(OBJECTIVE),
        "test": {k: m[f"test/{k}"] for k in METRICS},
        "base": {k: m[f"base/{k}"] for k in METRICS},
        "test_chats": m["test_chats"],
        "curve": [[m["steps"], m["best"].get(OBJECTIVE)]],
        "minutes": (time.perf_counter() - t0) / 60,
    }


def search(arm: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    """One sweep with BUDGET full runs of compute; the arm's adapter is the study's best trial's."""
    t0 = time.perf_counter()
    overrides = [
        *SEARCHES[arm],
        *common(args, seed),
        f"paths.output_root={out}",
        "hydra.sweeper.study_name=bench",
        f"hydra.sweeper.budget={BUDGET}",
        f"hydra.sweeper.sampler.seed={1000 * seed}",
        # Three validations a run: successive halving's first rung at a third of it.
        f"trainer.val_every_n_steps={args.steps // 3}",
    ]
    run([sys.executable, "-m", "sweeplab.train", "--multirun", *overrides], out)
    study = optuna.load_study(study_name="bench", storage=f"sqlite:///{out / 'sweeps' / 'optuna.db'}")
    trials = sorted(study.trials, key=lambda t: t.number)
    best = study.best_trial
    range_steps = int((study.user_attrs.get("lr_range_test") or {}).get("steps", 0))
    spent, best_so_far, curve = range_steps, None, [[range_steps, None]]  # the range test comes first
    for t in trials:
        spent += t.user_attrs.get("steps", 0)
        if t.state == TrialState.COMPLETE and (best_so_far is None or t.value > best_so_far):
            best_so_far = t.value
        curve.append([spent, best_so_far])
    return {
        "arm": arm,
        "seed": seed,
        "steps": spent,
        "val": best.value,
        "test": {k: best.user_attrs[f"test/{k}"] for k in METRICS},
        "base": {k: best.user_attrs.get(f"base/{k}") for k in METRICS},
        "selected": best.number,
        "range_test": study.user_attrs.get("lr_range_test"),
        "trials": [
            {
                "number": t.number,
                "role": t.user_attrs.get("role") or t.user_attrs.get("recipe") or "searched",
                "params": t.params,
                "state": t.state.name,
                "value": t.value,
                "steps": t.user_attrs.get("steps"),
                "test_tool_exact": t.user_attrs.get("test/tool_exact"),
            }
            for t in trials
        ],
        "curve": curve,
        "minutes": (time.perf_counter() - t0) / 60,
    }


def unit(arm: str, seed: int, args: argparse.Namespace) -> dict:
    kept = args.keep / f"{arm}-{seed}.json"
    if kept.exists():
        return json.loads(kept.read_text())
    # An interrupted unit goes on where it was: a finished run is read, a sweep resumes its study.
    out = args.workdir / f"{arm}-{seed}"
    print(f"{arm} seed {seed}: running", flush=True)
    result = (hand_set if arm in HAND_SET else search)(arm, seed, args, out)
    result["settings"] = {"steps": args.steps, "batch": args.batch, "val": args.val, "test": args.test}
    args.keep.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{arm} seed {seed}: test tool_exact {result['test']['tool_exact']:.3f}", flush=True)
    return result


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def table(results: dict[str, list[dict]], args: argparse.Namespace) -> list[str]:
    rows = [
        "| arm | seeds | test tool_exact median (worst) | args_acc | tool_name_acc | json_valid "
        "| compute (full runs) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, rs in results.items():
        if not rs:
            continue
        med = {k: statistics.median(r["test"][k] for r in rs) for k in METRICS}
        worst = min(r["test"]["tool_exact"] for r in rs)
        compute = statistics.median(r["steps"] for r in rs) / args.steps
        rows.append(
            f"| {arm} | {len(rs)} | {pct(med['tool_exact'])} ({pct(worst)}) | {pct(med['args_acc'])} | "
            f"{pct(med['tool_name_acc'])} | {pct(med['json_valid'])} | {compute:.2f} |"
        )
    return rows


def plot(results: dict[str, list[dict]], args: argparse.Namespace, path: Path) -> None:
    """Best val objective so far against compute: the searches' median and band, the runs as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.2))
    grid = np.linspace(0, BUDGET * 1.25, 101)
    for arm, rs in results.items():
        if not rs:
            continue
        if arm in HAND_SET:
            xs = [r["steps"] / args.steps for r in rs]
            ys = [100 * (r["val"] or 0) for r in rs]
            ax.scatter(xs, ys, label=f"{arm} (one run)", s=24)
            continue
        curves = []
        for r in rs:
            pts = [(s / args.steps, v) for s, v in r["curve"]]
            spent = r["steps"] / args.steps  # the line ends where the arm stopped spending
            ys = [
                max([100 * v for s, v in pts if s <= x and v is not None], default=np.nan)
                if x <= spent
                else np.nan
                for x in grid
            ]
            curves.append(ys)
        arr = np.array(curves, dtype=float)
        with np.errstate(all="ignore"):
            ax.plot(grid, np.nanmedian(arr, axis=0), label=f"{arm} (median of {len(rs)} seeds)")
            ax.fill_between(grid, np.nanmin(arr, axis=0), np.nanmax(arr, axis=0), alpha=0.2)
    ax.axvline(BUDGET, color="grey", linestyle=":", linewidth=1)  # the search's budget
    ax.set_xlabel(f"compute (full runs of {args.steps} steps x {args.batch} packed rows)")
    ax.set_ylabel(f"best {OBJECTIVE} so far (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default="qlora-toolcall,guanaco,hand-tuned,first-run,search")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of a full run")
    parser.add_argument("--batch", type=int, default=4, help="packed rows per step")
    parser.add_argument("--val", type=int, default=48, help="val chats (loss, and decoded for selection)")
    parser.add_argument("--test", type=int, default=200, help="held-out test chats")
    parser.add_argument("--jobs", type=int, default=2, help="units at a time")
    parser.add_argument("--keep", type=Path, default=ROOT / "bench" / "search_real", help="kept results")
    parser.add_argument("--workdir", type=Path, default=ROOT / "outputs" / "bench_search_real")
    parser.add_argument("--out", type=Path, default=None, help="BENCHMARKS.md to update")
    parser.add_argument("--kept-only", action="store_true", help="run nothing: table the kept results")
    args = parser.parse_args()
    arms = args.arms.split(",")
    if args.kept_only:
        results = {
            a: [json.loads(f.read_text()) for f in sorted(args.keep.glob(f"{a}-*.json"))] for a in arms
        }
        rows = table(results, args)
        print("\n".join(rows))
        if args.out:
            png = ROOT / "bench" / "search_real.png"
            plot(results, args, png)
            write_section(args, results, rows, png)
        return
    units = [(arm, seed) for seed in range(args.seeds) for arm in arms]  # seeds interleaved across arms
    results: dict[str, list[dict]] = {arm: [] for arm in arms}
    failed = []
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(unit, arm, seed, args): (arm, seed) for arm, seed in units}
        for fut, (arm, seed) in futures.items():
            try:
                results[arm].append(fut.result())
            except RuntimeError as exc:
                failed.append(f"{arm} seed {seed}: {exc}")
    rows = table(results, args)
    print("\n".join(rows))
    for line in failed:
        print(line, file=sys.stderr)
    if args.out and not failed:
        png = ROOT / "bench" / "search_real.png"
        plot(results, args, png)
        write_section(args, results, rows, png)
    sys.exit(1 if failed else 0)


def selection_line(r: dict) -> str:
    """Which trial a search picked and what happened to the others: where its lead comes from."""
    picked = next(t for t in r["trials"] if t["number"] == r["selected"])
    pruned = sum(t["state"] == "PRUNED" for t in r["trials"])
    rng = r.get("range_test") or {}
    span = ""
    if rng:
        span = f"range test {rng.get('steps', 0)} steps -> lr [{rng['low']:.2g}, {rng['high']:.2g}]; "
    return (
        f"{r['arm']} seed {r['seed']}: {span}{len(r['trials'])} trials, {pruned} pruned; picked trial "
        f"{picked['number']} ({picked['role']}, lr {picked['params'].get('optim.lr', float('nan')):.2g}, "
        f"r {picked['params'].get('lora.r')}, {picked['params'].get('lora.targets')})."
    )


def write_section(
    args: argparse.Namespace, results: dict[str, list[dict]], rows: list[str], png: Path
) -> None:
    hand = {
        a: statistics.median(r["test"]["tool_exact"] for r in results[a]) for a in HAND_SET if results.get(a)
    }
    lines = []
    if hand and results.get("search"):
        best_arm = max(hand, key=hand.get)
        s = [r["test"]["tool_exact"] for r in results["search"]]
        lead = 100 * (statistics.median(s) - hand[best_arm])
        lines.append(
            f"Search vs the best hand-set arm ({best_arm}, median {pct(hand[best_arm])}%): "
            f"{lead:+.1f} points of test tool_exact (median over seeds; target >= +10), worst search seed "
            f"{pct(min(s))}% (target: not below {pct(hand[best_arm])}%)."
        )
    for rs in results.values():
        for r in rs:
            if r.get("budget_rule"):
                lines.append(f"{r['arm']} seed {r['seed']}: {r['budget_rule']}.")
            if r.get("trials"):
                lines.append(selection_line(r))
    base = next(
        (
            r["base"]["tool_exact"]
            for rs in results.values()
            for r in rs
            if r["base"]["tool_exact"] is not None
        ),
        None,
    )
    section = f"""{START}
## The sweep against a person on a real model (SmolLM2-135M-Instruct, tool calls)

`python bench/bench_search_real.py` (`make bench-search-real`): each arm's selected adapter scored on
{args.test} held-out test chats (base model: {pct(base)}% exact); a full run is {args.steps} steps of
{args.batch} packed rows; the search gets {BUDGET} full runs, everything it trains counted. Selection
by {OBJECTIVE} on {args.val} val chats. Median and worst over seeds; percentages.

{chr(10).join(rows)}

{chr(10).join(lines)}

![best val objective against compute]({png.relative_to(ROOT)})

Machine: {os.cpu_count()} cores, {cpu_name()}; one thread per unit, units beside other work (compute
is counted in steps, not time); tabled {time.strftime("%Y-%m-%d")}. Per-seed results:
`bench/search_real/*.json`.
{END}"""
    replace_section(args.out, START, END, section)


if __name__ == "__main__":
    main()
