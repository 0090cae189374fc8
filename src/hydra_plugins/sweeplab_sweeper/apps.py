"""Sweeping any Hydra app: what is sweeplab's task only, the study's defaults, and how workers restart.

For an app other than sweeplab's training task (sweeplab.sweep.task says which), the sweeper runs as
upstream's does (the app's own config, values and directions), plus pruning (when the app reports,
sweeplab.sweep.job), resume to the total, workers, storage retries and the report. The options that
only make sense for sweeplab's training are refused for other apps, naming the key.
"""

from __future__ import annotations

import re
import sys
from typing import Any

# key -> why it needs sweeplab's training task
SWEEPLAB_ONLY = {
    "lr_range_test": "it runs sweeplab's training with a rising learning rate",
    "budget": "it counts compute in runs of sweeplab's trainer.max_steps",
    "max_memory_gb": "it sizes each trial's sweeplab model config with sweeplab.estimate",
}


def task_name(task_function: Any) -> str:
    module = getattr(task_function, "__module__", None) or "?"
    name = getattr(task_function, "__qualname__", None) or type(task_function).__qualname__
    return f"{module}.{name}"


def directions_of(direction: Any) -> list[str]:
    """hydra.sweeper.direction as a list of names (a string, an upstream Direction, or a list of them)."""
    names = list(direction) if isinstance(direction, list | tuple) or hasattr(direction, "_content") else None
    if names is None:
        names = [direction]
    return [getattr(d, "name", d) for d in names]


def other_app_problems(options: dict[str, Any], direction: Any, task: str) -> list[str]:
    """sweeplab-only options set on another app, and `auto` (which reads sweeplab's objective.metric)."""
    problems = [
        f"hydra.sweeper.{key}={options[key]}: only for sweeplab's training task ({why}); this sweep runs "
        f"{task}: remove it"
        for key, why in SWEEPLAB_ONLY.items()
        if options.get(key) is not None
    ]
    if "auto" in directions_of(direction):
        problems.append(
            f"hydra.sweeper.direction=auto takes its sense from sweeplab's objective.metric, but this sweep "
            f"runs {task}: set minimize or maximize (a list, e.g. [minimize, maximize], for several "
            "objectives)"
        )
    return problems


def multi_objective_problems(options: dict[str, Any], direction: Any) -> list[str]:
    if len(directions_of(direction)) > 1 and options.get("patience") is not None:
        return [
            f"hydra.sweeper.patience={options['patience']}: stops once the best stops improving, but a study "
            f"of several objectives ({directions_of(direction)}) has a Pareto front, not one best: remove it"
        ]
    return []


def hydra_value(text: str) -> str:
    """A string as a Hydra override value: quoted when Hydra's grammar would read it otherwise."""
    if re.fullmatch(r"[\w./@:+-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def program(own_task: bool) -> str:
    """How the sweep's app was started, for the best trial's command in the report."""
    if own_task:
        return "python -m sweeplab.train"
    head = sys.orig_argv[: len(sys.orig_argv) - len(sys.argv) + 1]  # interpreter, its options, script/-m mod
    if "-m" in head:
        return f"python -m {head[head.index('-m') + 1]}"
    return f"python {head[-1]}" if len(head) > 1 else "python"


def worker_argv(sweep_dir: str, study_name: str) -> list[str]:
    """This command for a worker, pinned to the sweep dir and study this process resolved: Hydra's
    default sweep dir holds ${now:...}, which a worker started later would resolve differently."""
    pinned = ("hydra.sweep.dir=", "hydra.sweeper.study_name=")
    argv = [a for a in sys.orig_argv if not a.startswith(pinned)]
    return [
        *argv,
        f"hydra.sweep.dir={hydra_value(sweep_dir)}",
        f"hydra.sweeper.study_name={hydra_value(study_name)}",
    ]


def started_from_command_line(config: Any) -> bool:
    """True when this process's argv holds the sweep's overrides, so a copy of it is another worker.
    False when Hydra was driven from Python (a test runner): a copy would run something else."""
    given = [
        o
        for o in (*config.hydra.overrides.hydra, *config.hydra.overrides.task)
        if not o.startswith("hydra.mode=")
    ]
    return all(o in sys.orig_argv for o in given)  # sys.argv is redacted by now
