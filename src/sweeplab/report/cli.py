"""python -m sweeplab.report: load the study, write table + plots + index.md, print the best command."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sweeplab.outputs import atomic_write_text
from sweeplab.report.pareto import front, is_multi, pareto_section
from sweeplab.report.phases import phases_section
from sweeplab.report.storage import ReportError, default_storage, load, output_root
from sweeplab.report.table import (
    best_command,
    best_trial,
    header,
    metric_name,
    objective_names,
    param_keys,
    rows,
    to_csv,
    trials_md,
)
from sweeplab.report.task import failures_section, test_section

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from sweeplab.report.plots import Plot


def default_out(study_name: str) -> Path:
    """Beside the sweep's trial dirs (hydra.sweep.dir); odd names get a safe directory name."""
    safe = study_name
    if not re.fullmatch(r"[\w.=+-]+", study_name) or study_name in (".", ".."):
        safe = re.sub(r"[^\w.=+-]", "_", study_name).strip(".") or "study"
    return output_root() / "sweeps" / safe / "report"


def index_md(
    study: optuna.Study,
    url: str,
    trials: list[FrozenTrial],
    best: FrozenTrial | None,
    command: str | None,
    plots: list[Plot],
    importance: tuple[dict[str, float], str] | None,
) -> str:
    metric = metric_name(study)
    lines = [f"# Sweep report: {study.study_name}", "", *header(study, url, trials, best), ""]
    lines += ["All trials: [trials.md](trials.md) · [trials.csv](trials.csv)", ""]
    if command:
        lines += ["## Best trial's command", "", "```sh", command, "```", ""]
    if is_multi(study):
        lines += pareto_section(study, trials)
    lines += phases_section(study, trials, best)
    lines += test_section(metric, trials, best, study)
    lines += failures_section(best)
    if importance:
        values, method = importance
        lines += [f"## What mattered for {metric} ({method})", "", "| parameter | importance |", "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in sorted(values.items(), key=lambda kv: -kv[1])]
        lines.append("")
    for plot in plots:
        lines += [f"## {plot.title}", ""]
        if plot.note:
            lines += [f"_Skipped: {plot.note}._", ""]
        else:
            lines += [f"![{plot.title}]({plot.stem}.png)", "", f"[interactive version]({plot.stem}.html)", ""]
    return "\n".join(lines)


def report(study: optuna.Study, url: str, out: Path) -> str | None:
    """Write everything into `out`; return the best trial's command (None before any COMPLETE)."""
    from sweeplab.report.plots import write_plots

    out.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    best = best_trial(study)
    keys = param_keys(trials)
    objectives = objective_names(study) if is_multi(study) else None
    atomic_write_text(out / "trials.csv", to_csv(rows(trials, keys, objectives), keys, objectives))
    atomic_write_text(out / "trials.md", trials_md(study, url, trials, best))
    command = best_command(study, best) if best is not None else None
    if command:
        atomic_write_text(out / "best.txt", command + "\n")
    else:
        (out / "best.txt").unlink(missing_ok=True)  # never a stale best from an earlier report
    plots, importance = write_plots(study, trials, best, out)
    atomic_write_text(out / "index.md", index_md(study, url, trials, best, command, plots, importance))
    return command


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sweeplab.report",
        description="Report on a sweep's Optuna study: trials.md/csv, plots (PNG + HTML), index.md, and "
        "the best trial's command (best.txt, also printed to stdout).",
    )
    parser.add_argument(
        "target",
        nargs="?",
        help="a study name, or a storage URL (sqlite:///path.db) holding exactly one study; "
        "default: the only study in the default storage",
    )
    parser.add_argument(
        "--storage", help=f"storage URL to look the study name up in (default: {default_storage()})"
    )
    parser.add_argument(
        "--out", type=Path, help="report directory (default: <output_root>/sweeps/<study>/report)"
    )
    args = parser.parse_args(argv)
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        study, url = load(args.target, args.storage)
        out = args.out or default_out(study.study_name)
        command = report(study, url, out)
    except ReportError as err:
        print(f"sweeplab.report: error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # the study was read; the report directory could not be written
        print(f"sweeplab.report: error: cannot write the report: {err}", file=sys.stderr)
        sys.exit(1)
    if is_multi(study):
        print(
            f"sweeplab.report: a study of {len(study.directions)} objectives has no single best: "
            f"{len(front(study))} Pareto-optimal trials, their commands in index.md",
            file=sys.stderr,
        )
    elif command is None:
        print("sweeplab.report: no COMPLETE trial yet, so no best command", file=sys.stderr)
    else:
        print(command)
    print(f"sweeplab.report: report written to {out / 'index.md'}", file=sys.stderr)
