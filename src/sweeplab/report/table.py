"""The trial table (CSV + Markdown), its header, the recipe comparison and the best trial's command."""

from __future__ import annotations

import collections
import csv
import io
import math
import shlex
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

FIXED_COLUMNS = ("number", "state", "value", "steps", "duration_s")
TAIL_COLUMNS = ("recipe", "retry_of", "fail_kind", "fail_reason")
DEFAULT_COMMAND = "python -m sweeplab.train"
STATE_ORDER = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
TEST_METRICS = (
    "test/tool_exact",
    "test/args_acc",
    "test/tool_name_acc",
    "test/json_valid",
    "base/tool_exact",
)


def metric_name(study: optuna.Study) -> str:
    """The (first) objective's name: sweeplab's task names its metrics; another app's value is 'value'."""
    return objective_names(study)[0]


def objective_names(study: optuna.Study) -> list[str]:
    if study.metric_names:
        return list(study.metric_names)
    if not study.user_attrs.get("command", DEFAULT_COMMAND).startswith(DEFAULT_COMMAND):
        n = len(study.directions)
        return ["value"] if n == 1 else [f"value {i}" for i in range(n)]
    return ["val/loss"]  # sweeplab's studies from before metric names were stored


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """None while no trial is COMPLETE (Optuna raises instead), and for a study of several objectives
    (it has a Pareto front instead: sweeplab.report.pareto)."""
    if len(study.directions) > 1:
        return None
    try:
        return study.best_trial
    except ValueError:
        return None


def value_cell(trial: FrozenTrial) -> str:
    """A trial's value for a Markdown cell; a multi-objective trial's values joined."""
    values = trial.values
    if not values:
        return ""
    return md_cell(values[0]) if len(values) == 1 else ", ".join(md_cell(v) for v in values)


def param_keys(trials: list[FrozenTrial]) -> list[str]:
    """In the order the sweeper suggests them (first appearance), so columns read like the config."""
    keys: dict[str, None] = {}
    for trial in trials:
        keys.update(dict.fromkeys(trial.params))
    return list(keys)


def duration_s(trial: FrozenTrial) -> float | None:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def test_columns(trials: list[FrozenTrial]) -> list[str]:
    """Only the test metrics some trial recorded (runs with eval.test=false have none)."""
    return [m for m in TEST_METRICS if any(m in t.user_attrs for t in trials)]


def rows(
    trials: list[FrozenTrial], keys: list[str], objectives: list[str] | None = None
) -> list[dict[str, Any]]:
    """One dict per trial; steps fall back to the last reported step (pruned trials often lack it).
    objectives: the names of a multi-objective study's values, one column each instead of `value`."""
    out = []
    for t in sorted(trials, key=lambda t: t.number):
        if objectives:
            values = dict(zip(objectives, t.values or [None] * len(objectives), strict=True))
        else:
            values = {"value": t.value}
        out.append(
            {
                "number": t.number,
                "state": t.state.name,
                **values,
                "steps": t.user_attrs.get("steps", t.last_step),
                "duration_s": duration_s(t),
                **{key: t.params.get(key) for key in keys},
                **{m: t.user_attrs.get(m) for m in test_columns(trials)},
                "recipe": t.user_attrs.get("recipe"),
                "retry_of": t.system_attrs.get("failed_trial"),  # a killed or interrupted trial, run again
                "fail_kind": t.user_attrs.get("fail_kind"),
                # a trial pruned before launch (hydra.sweeper.max_memory_gb) says why here too
                "fail_reason": t.user_attrs.get("fail_reason") or t.user_attrs.get("pruned_reason"),
            }
        )
    return out


def columns(table: list[dict[str, Any]], keys: list[str], objectives: list[str] | None = None) -> list[str]:
    """Fixed ones, the searched params, held-out test accuracy where trials have it, then bookkeeping."""
    tests = [c for c in (table[0] if table else {}) if c.startswith(("test/", "base/"))]
    fixed = [*FIXED_COLUMNS]
    if objectives:
        fixed[2:3] = objectives
    return [*fixed, *keys, *tests, *TAIL_COLUMNS]


def to_csv(table: list[dict[str, Any]], keys: list[str], objectives: list[str] | None = None) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(table, keys, objectives), lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


def shell_value(value: Any) -> str:
    """A Hydra override value that survives a shell paste: floats as repr, strings quoted if needed."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return shlex.quote(str(value))


def best_command(study: optuna.Study, best: FrozenTrial) -> str:
    base = study.user_attrs.get("command") or DEFAULT_COMMAND
    # the fixed values the trial ran with (the study's, for trials stored before each kept its own), the
    # drawn params, then a recipe's own keys: later ones win
    values = {
        **best.user_attrs.get("fixed", study.user_attrs.get("fixed", {})),
        **best.params,
        **best.user_attrs.get("recipe_overrides", {}),
    }
    # The command's own overrides are in base already, and a sweep's own keys would make a run refuse.
    given = {arg.split("=", 1)[0] for arg in base.split()[3:]}
    values = {
        k: v for k, v in values.items() if k not in given and not k.startswith(("hparams_search", "hydra"))
    }
    return " ".join([base, *(f"{key}={shell_value(value)}" for key, value in values.items())])


def rung_value(study: optuna.Study, trial: FrozenTrial) -> str | None:
    """A pruned trial's value in its rung metric's words ("val/loss 5.70"), when that is not the
    objective (objective.intermediate); None when its value is in the objective's own units."""
    rung = study.user_attrs.get("rung_metric")
    if not rung or trial.state.name != "PRUNED" or trial.value is None:
        return None
    return f"{rung['name']} {rung['sign'] * trial.value:.4f}"


def state_counts(trials: list[FrozenTrial]) -> str:
    counts = collections.Counter(t.state.name for t in trials)
    order = sorted(counts, key=lambda s: STATE_ORDER.index(s) if s in STATE_ORDER else len(STATE_ORDER))
    return ", ".join(f"{state} {counts[state]}" for state in order) or "none"


def recipe_lines(study: optuna.Study, trials: list[FrozenTrial], best: FrozenTrial | None) -> list[str]:
    """How far the search got past each known-good recipe it ran first."""
    import optuna

    if len(study.directions) > 1:
        return []  # a recipe against the Pareto front: the front's table says whether it is on it
    metric = metric_name(study)
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
    lines = []
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    for t in sorted(trials, key=lambda t: t.number):
        recipe = t.user_attrs.get("recipe")
        if not recipe or t.number in retried:  # its retry speaks for the recipe
            continue
        label = f"{recipe} (trial {t.number})"
        if (rung := rung_value(study, t)) is not None:
            lines.append(f"{label} was pruned at step {t.last_step} ({rung}), behind the trials at its rung")
        elif t.value is None or not math.isfinite(t.value):
            lines.append(f"{label} ended {t.state.name} with no {metric} to compare")
        elif best is None:
            lines.append(f"{label} ended {t.state.name} at {metric} {t.value:.4f}; no trial is complete yet")
        elif t.number == best.number:
            lines.append(f"the best trial is the {label} recipe: no searched trial beat it yet")
        else:
            diff = sign * (t.value - best.value)
            pct = 100.0 * diff / abs(t.value) if t.value else float("nan")
            note = f", pruned at step {t.last_step}" if t.state.name == "PRUNED" else ""
            if diff == 0:  # accuracies tie often; "beats by -0.0000" would say the opposite
                lines.append(
                    f"best ties {recipe} at {metric} {t.value:.4f} (trial {t.number} and {best.number})"
                )
                continue
            lines.append(
                f"best beats {recipe} by {diff:.4f} ({pct:.1f}%) in {metric}: "
                f"{t.value:.4f}{note} (trial {t.number}) -> {best.value:.4f} (trial {best.number})"
            )
    return lines


def header(study: optuna.Study, url: str, trials: list[FrozenTrial], best: FrozenTrial | None) -> list[str]:
    from sweeplab.report.storage import mask

    metric = metric_name(study)
    goals = [
        f"{d.name.lower()} {name}" for d, name in zip(study.directions, objective_names(study), strict=True)
    ]
    lines = [
        f"- storage: `{mask(url)}`",
        f"- objective{'s' if len(goals) > 1 else ''}: {', '.join(goals)}",
        f"- trials: {len(trials)} ({state_counts(trials)})",
    ]
    if len(goals) > 1:
        front = sorted(t.number for t in study.best_trials)
        shown = ", ".join(map(str, front)) if front else "none yet (no trial is COMPLETE)"
        lines.append(f"- Pareto front: {f'trials {shown}' if front else shown} (see below)")
    elif best is None:
        lines.append("- best: none yet (no trial is COMPLETE)")
    else:
        recipe = best.user_attrs.get("recipe")
        lines.append(
            f"- best: trial {best.number}{f' ({recipe})' if recipe else ''}, {metric} {best.value:.4f}"
        )
    lines += [f"- {line}" for line in recipe_lines(study, trials, best)]
    return lines


def md_cell(value: Any, limit: int = 100) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    text = " ".join(str(value).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def to_markdown(
    table: list[dict[str, Any]],
    keys: list[str],
    best: FrozenTrial | None,
    objectives: list[str] | None = None,
) -> str:
    cols = columns(table, keys, objectives)
    numeric = ("number", "value", "steps", "duration_s", *(objectives or []))
    align = ["---:" if c in numeric else "---" for c in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(align) + "|"]
    for row in table:
        cells = [md_cell(row[c]) for c in cols]
        if not objectives:
            cells[2] = "" if row["value"] is None else f"{row['value']:.4f}"
        if row["duration_s"] is not None:
            cells[cols.index("duration_s")] = f"{row['duration_s']:.1f}"
        if best is not None and row["number"] == best.number:
            cells[0], cells[2] = f"**{row['number']}** (best)", f"**{cells[2]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def trials_md(study: optuna.Study, url: str, trials: list[FrozenTrial], best: FrozenTrial | None) -> str:
    keys = param_keys(trials)
    objectives = objective_names(study) if len(study.directions) > 1 else None
    value = (
        f"{', '.join(objectives)}: the trial's objectives"
        if objectives
        else (f"value: the trial's best {metric_name(study)} (a pruned trial: its last reported one)")
    )
    note = (
        f"{value}; steps: optimizer steps trained (else the last reported step); duration in seconds; "
        "test/*: the adapter on the held-out test split, base/*: the untouched base on it."
    )
    return "\n".join(
        [
            f"# Trials of study {study.study_name}",
            "",
            *header(study, url, trials, best),
            "",
            to_markdown(rows(trials, keys, objectives), keys, best, objectives),
            note,
            "",
        ]
    )
