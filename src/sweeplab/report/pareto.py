"""A study of several objectives: its Pareto front as a table (with each trial's command) and a plot.

Such a study has no single best trial: a trial is on the front when no other trial is at least as good
in every objective and better in one. Optuna computes the front (study.best_trials).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sweeplab.report.table import best_command, md_cell, objective_names

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


def is_multi(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def front(study: optuna.Study) -> list[FrozenTrial]:
    """The Pareto-optimal COMPLETE trials, in trial order."""
    return sorted(study.best_trials, key=lambda t: t.number)


def senses(study: optuna.Study) -> list[str]:
    return [d.name.lower() for d in study.directions]


def pareto_section(study: optuna.Study, trials: list[FrozenTrial]) -> list[str]:
    names = objective_names(study)
    best = front(study)
    lines = ["## Pareto front", ""]
    if not best:
        return [*lines, "No trial is COMPLETE yet.", ""]
    goals = ", ".join(f"{sense} {name}" for sense, name in zip(senses(study), names, strict=True))
    lines += [
        f"{len(best)} of {len(trials)} trials are Pareto-optimal ({goals}): no other trial is as good in "
        "every objective and better in one. Choose among them by what matters most.",
        "",
        "| trial | " + " | ".join(names) + " | params | command |",
        "|---:|" + "---:|" * len(names) + "---|---|",
    ]
    for t in best:
        params = ", ".join(f"{k}={md_cell(v)}" for k, v in t.params.items())
        values = " | ".join(md_cell(v) for v in t.values)
        lines.append(f"| {t.number} | {values} | {params} | `{best_command(study, t)}` |")
    return [*lines, ""]


def pareto_plots(study: optuna.Study) -> tuple[Any, Any]:
    """Optuna's Pareto front plot, matplotlib and plotly; 2 or 3 objectives."""
    from sweeplab.report.plots import optuna_plots

    return optuna_plots("plot_pareto_front", study, target_names=objective_names(study))
