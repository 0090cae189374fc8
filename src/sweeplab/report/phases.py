"""Who won, and for how much: the range test, the centre point, each recipe and the best, with compute."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sweeplab.report.table import md_cell, rung_value, value_cell

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


def steps_of(trial: FrozenTrial) -> int:
    """Optimizer steps the trial trained: its own count, else its last report (a pruned or killed one)."""
    return int(trial.user_attrs.get("steps", max(trial.intermediate_values, default=0)))


def phases_section(study: optuna.Study, trials: list[FrozenTrial], best: FrozenTrial | None) -> list[str]:
    """Empty for a study with no range test, centre point or recipe: there is nothing to compare then."""
    test: dict[str, Any] | None = study.user_attrs.get("lr_range_test")
    picked = [t for t in trials if t.user_attrs.get("role") or t.user_attrs.get("recipe")]
    if not test and not picked:
        return []
    if best is not None and best not in picked:
        picked.append(best)
    metric = study.metric_names[0] if study.metric_names else "value"
    max_steps = study.user_attrs.get("max_steps")
    total = sum(steps_of(t) for t in trials) + int((test or {}).get("steps", 0))
    lines = [
        "## The search against its anchors",
        "",
        "Compute in optimizer steps (every trial's, pruned and failed ones too).",
        "",
        f"| phase | trial | optim.lr | state | {metric} | test/tool_exact | steps |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    if test:
        if "failed" in test:
            what = f"failed ({md_cell(test['failed'], 80)}): optim.lr searched over its whole range"
        else:
            edge = {"last": ", still falling at the top", "first": ", rising from the start"}.get(
                test["edge"], ""
            )
            lowest, span = test["lr_at_min_loss"], f"[{test['low']:.3g}, {test['high']:.3g}]"
            what = f"lowest loss at {lowest:.3g}{edge}; searched {span}"
        lines.append(f"| lr range test | | {what} | | | | {test.get('steps', 0)} |")
    for t in sorted(picked, key=lambda t: t.number):
        role = t.user_attrs.get("role") or (
            f"recipe {t.user_attrs['recipe']}" if t.user_attrs.get("recipe") else ""
        )
        if best is not None and t.number == best.number:
            role = f"**best**, {role}".rstrip(", ")
        lr = t.params.get("optim.lr")
        lr_cell = "" if lr is None else f"{lr:.3g}"
        if t.user_attrs.get("lr_vs_range"):
            lr_cell += f" ({t.user_attrs['lr_vs_range']})"
        cells = [
            role,
            str(t.number),
            lr_cell,
            t.state.name,
            rung_value(study, t) or value_cell(t),
            md_cell(t.user_attrs.get("test/tool_exact")),
        ]
        lines.append("| " + " | ".join(cells) + f" | {steps_of(t)} |")
    runs = f" = {total / max_steps:.2f} runs of {max_steps} steps" if max_steps else ""
    budget = study.user_attrs.get("budget")
    lines += [
        "",
        f"Whole study: {total} steps{runs}" + (f" (budget {budget:g} runs)." if budget else "."),
        "",
    ]
    return lines
