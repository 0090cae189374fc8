"""Compare two runs so "which change mattered" is read off, not guessed.

python -m sweeplab.compare outputs/runs/a outputs/runs/b        # two finished run dirs
python -m sweeplab.compare qlora-base-toolcalls:3 qlora-base-toolcalls:7 --storage sqlite:///x.db
python -m sweeplab.compare experiments/seed_report_a.yaml experiments/seed_report_b.yaml  # configs only

A or B is a run dir (holds config.yaml; metrics.json once finished), a trial `STUDY:NUMBER` in
--storage (or `STORAGE_URL#STUDY:NUMBER`), or an experiment file in experiments/ (composed with
Hydra, so configs only). Prints compare.md and writes it with compare.png into --out.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from sweeplab.report.compare import (
    ACCEPTED,
    BOOKKEEPING_KEYS,
    BOOKKEEPING_PREFIXES,
    CompareError,
    Side,
    bins,
    differing,
    load_side,
    metric_value,
)

# (metrics.json key, label); test/* and base/* follow when eval ran, in the order they were written.
METRIC_ROWS = (
    ("best_val_loss", "best val/loss"),
    ("final_val_loss", "final val/loss"),
    ("final_val_acc", "final val/acc (next-token)"),
    ("best_step", "best step"),
    ("steps", "steps"),
    ("stopped_early", "stopped early"),
    ("wall_s", "wall time (s)"),
    ("peak_mem_mb", "peak memory (MiB)"),
    ("trainable_params", "trainable parameters"),
    ("total_params", "total parameters"),
    ("lora_scaling", "LoRA scaling"),
    ("device", "device"),
)


def cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def config_section(a: Side, b: Side, keys: list[str]) -> list[str]:
    lines = ["## Config keys that differ", ""]
    if not keys:
        return [*lines, "None: the two configs agree (bookkeeping keys aside).", ""]
    lines += ["| key | A | B |", "|---|---|---|"]
    lines += [f"| {k} | {cell(a.config.get(k))} | {cell(b.config.get(k))} |" for k in keys]
    ignored = ", ".join([*BOOKKEEPING_KEYS, *(p + "*" for p in BOOKKEEPING_PREFIXES)])
    return [*lines, "", f"_Not compared (bookkeeping): {ignored}._", ""]


def metrics_section(a: Side, b: Side) -> list[str]:
    lines = ["## Metrics", ""]
    if a.metrics is None and b.metrics is None and a.trial is None and b.trial is None:
        return [*lines, "No metrics: neither side is a finished run.", ""]
    rows: list[tuple[str, Any, Any]] = []
    objectives = [s.metrics["objective"] for s in (a, b) if s.metrics and "objective" in s.metrics]
    if objectives:
        label = f"objective: {objectives[0]['metric']} ({objectives[0]['direction']})"
        rows.append((label, *((s.metrics or {}).get("objective", {}).get("value") for s in (a, b))))
    elif a.trial is not None or b.trial is not None:
        rows.append(("objective", *(s.trial.value if s.trial else None for s in (a, b))))
    extra = [k for s in (a, b) for k in (s.metrics or {}) if k.startswith(("test/", "base/"))]
    for key, label in [*METRIC_ROWS[:3], *((k, k) for k in dict.fromkeys(extra)), *METRIC_ROWS[3:]]:
        rows.append((label, metric_value(a, key), metric_value(b, key)))
    lines += ["| metric | A | B | B − A |", "|---|---:|---:|---:|"]
    for label, va, vb in rows:
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (va, vb))
        lines.append(f"| {label} | {cell(va)} | {cell(vb)} | {cell(vb - va) if numeric else ''} |")
    return [*lines, ""]


def study_section(a: Side, b: Side, keys: list[str]) -> list[str]:
    """Only when both are trials of one study: its importance and objective along each key."""
    import optuna

    from sweeplab.report.plots import importances

    if a.study is None or b.study is None:
        return []
    if (a.url, a.study.study_name) != (b.url, b.study.study_name):
        return ["## What the study says", "", "_A and B come from different studies: nothing to pool._", ""]
    study = a.study
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    lines = [f"## What study '{study.study_name}' says about each differing key", ""]
    lines.append(
        f"{len(complete)} COMPLETE trials; objective: {(study.metric_names or ['value'])[0]} "
        f"({study.direction.name.lower()})."
    )
    lines.append("")
    values, method = {}, "n/a"
    if len(complete) >= 2:
        try:
            values, method = importances(study, len(complete))
        except Exception as err:  # noqa: BLE001 - few or identical trials: say so instead of failing
            method = f"not computable: {type(err).__name__}: {err}"
    for key in keys:
        if not any(key in t.params for t in complete):
            lines += [f"### {key}", "", "Not in the study's search space: it says nothing about it.", ""]
            continue
        imp = f"{values[key]:.2f}" if key in values else "—"
        lines += [f"### {key}", "", f"importance: {imp} ({method})", ""]
        lines += ["| value | trials | mean objective | best objective | holds |", "|---|---:|---:|---:|---|"]
        pick = min if study.direction == optuna.study.StudyDirection.MINIMIZE else max
        for lo, hi in bins([t.params[key] for t in complete if key in t.params]):
            group = [t.value for t in complete if key in t.params and lo <= t.params[key] <= hi]
            holds = [n for n, s in (("A", a), ("B", b)) if lo <= s.trial.params.get(key, math.nan) <= hi]
            label = cell(lo) if lo == hi else f"{cell(lo)} – {cell(hi)}"
            mean = sum(group) / len(group)
            lines.append(f"| {label} | {len(group)} | {mean:.4g} | {pick(group):.4g} | {' '.join(holds)} |")
        lines.append("")
    return lines


def write_png(a: Side, b: Side, path: Path) -> bool:
    """Both learning curves on shared axes, one panel per metric both sides report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sweeplab.report.plots import BLUE, RED, save_png

    metrics = [m for m in a.curve if m in b.curve and m in ("val/loss", *_objectives(a, b))]
    metrics = list(dict.fromkeys(metrics)) or [m for m in a.curve if m in b.curve][:1]
    if not metrics:
        path.unlink(missing_ok=True)  # no stale plot from an earlier comparison
        return False
    fig, axes = plt.subplots(1, len(metrics), figsize=(7 * len(metrics), 4.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for side, name, colour in ((a, "A", BLUE), (b, "B", RED)):
            steps, values = zip(*side.curve[metric], strict=True)
            ax.plot(steps, values, marker="o", markersize=3, color=colour, label=f"{name}: {side.arg}")
        ax.set(xlabel="optimizer step", ylabel=metric, title=f"{metric} per validation")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_png(fig, path)
    return True


def _objectives(a: Side, b: Side) -> list[str]:
    return [s.metrics["objective"]["metric"] for s in (a, b) if s.metrics and "objective" in s.metrics]


def compare(a: Side, b: Side, out: Path) -> str:
    """Write compare.md and compare.png into `out`; return the markdown."""
    from sweeplab.outputs import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    keys = differing(a, b)
    lines = ["# Compare A and B", ""]
    for name, side in (("A", a), ("B", b)):
        lines.append(f"- **{name}** ({side.kind}): `{side.arg}`" + (f" — {side.note}" if side.note else ""))
    lines.append("")
    lines += config_section(a, b, keys)
    lines += metrics_section(a, b)
    lines += ["## Learning curves", ""]
    if write_png(a, b, out / "compare.png"):
        lines += ["![learning curves](compare.png)", ""]
    else:
        lines += ["_No curve: both sides need a validation history._", ""]
    lines += study_section(a, b, keys)
    text = "\n".join(lines)
    atomic_write_text(out / "compare.md", text + "\n")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sweeplab.compare",
        description="Compare two runs: differing config keys, metrics side by side, learning curves, "
        "and what their study says about each difference. Writes compare.md and compare.png.",
    )
    parser.add_argument("a", help=ACCEPTED)
    parser.add_argument("b", help="the same kinds as A")
    parser.add_argument("--storage", help="storage URL for STUDY:NUMBER (default: the sweeps' SQLite file)")
    parser.add_argument("--out", type=Path, default=Path("compare"), help="output dir (default: ./compare)")
    args = parser.parse_args(argv)
    try:
        a, b = load_side(args.a, args.storage), load_side(args.b, args.storage)
        text = compare(a, b, args.out)
    except CompareError as err:
        print(f"sweeplab.compare: error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        print(f"sweeplab.compare: error: cannot write {args.out}: {err}", file=sys.stderr)
        sys.exit(1)
    print(text)
    print(f"sweeplab.compare: written to {args.out / 'compare.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
