"""The two sides of python -m sweeplab.compare: a run dir, a trial or an experiment, and what differs."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeplab.config import CONF_DIR
from sweeplab.errors import SweeplabError

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

ACCEPTED = (
    "a run dir holding config.yaml, a trial STUDY:NUMBER (with --storage URL, or URL#STUDY:NUMBER), "
    "or an experiment file experiments/NAME.yaml"
)
# Bookkeeping: these differ between any two runs and change nothing that is trained or measured.
# run_name and paths.* name directories; ckpt_path points at a resume checkpoint; logger.* picks
# where metrics are recorded (backend, W&B project/name/tags), never what they are.
BOOKKEEPING_KEYS = ("run_name", "ckpt_path")
BOOKKEEPING_PREFIXES = ("paths.", "logger.")
N_BINS = 4  # float parameters with more distinct values than this are binned by quantile


class CompareError(SweeplabError):
    """One argument cannot be read; the CLI prints the message as one line and exits 2."""


@dataclass
class Side:
    arg: str
    kind: str  # "run", "trial" or "experiment"
    config: dict[str, Any]  # flat, dotted keys
    metrics: dict[str, Any] | None = None
    curve: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> [(step, value)]
    study: optuna.Study | None = None
    url: str | None = None
    trial: FrozenTrial | None = None
    note: str | None = None


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> dotted keys; lists stay whole values (a layer list is one setting)."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return {k.removesuffix("."): v for k, v in out.items()}


def is_bookkeeping(key: str) -> bool:
    return key in BOOKKEEPING_KEYS or key.startswith(BOOKKEEPING_PREFIXES)


def curves_of(history: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for h in history:
        for key, value in h.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                out.setdefault(key, []).append((int(h["step"]), float(value)))
    return out


def load_run_dir(arg: str, path: Path, kind: str = "run") -> Side:
    import json

    import yaml

    if not (path / "config.yaml").is_file():
        raise CompareError(f"{arg}: {path} holds no config.yaml, so it is not a run dir; give {ACCEPTED}")
    config = flatten(yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {})
    side = Side(arg, kind, config)
    if (path / "metrics.json").is_file():
        side.metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
        side.curve = curves_of(side.metrics.get("val_history", []))
    else:
        side.note = "unfinished (no metrics.json): config only"
    return side


def load_experiment(arg: str, path: Path) -> Side:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    experiments = (Path(CONF_DIR) / "experiment").resolve()
    if path.resolve().parent != experiments:
        raise CompareError(f"{arg}: an experiment file must live in {experiments}; give {ACCEPTED}")
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR)):
            cfg = compose("train", overrides=[f"experiment={path.stem}"])
            config = flatten(OmegaConf.to_container(cfg, resolve=True))
    except Exception as err:  # noqa: BLE001 - Hydra's and OmegaConf's errors alike, as one line
        raise CompareError(
            f"{arg}: cannot compose experiment={path.stem}: {str(err).splitlines()[0]}"
        ) from None
    return Side(arg, "experiment", config, note="experiment file: config only, nothing was run")


def load_trial(arg: str, spec: str, storage: str | None) -> Side:
    from sweeplab.report.storage import ReportError, load

    url, _, ref = spec.rpartition("#")
    if url and storage:
        raise CompareError(f"{arg}: names a storage and --storage is given too; give one")
    study_name, _, number = ref.rpartition(":")
    try:
        study, url = load(study_name, url or storage)
    except ReportError as err:
        raise CompareError(f"{arg}: {err}") from None
    trials = study.get_trials(deepcopy=False)
    if not 0 <= int(number) < len(trials):
        raise CompareError(
            f"{arg}: study '{study_name}' has trials 0..{len(trials) - 1}, not {number}"
            if trials
            else f"{arg}: study '{study_name}' has no trials yet"
        )
    trial = trials[int(number)]
    run_dir = Path(trial.user_attrs.get("run_dir", ""))
    if trial.user_attrs.get("run_dir") and (run_dir / "config.yaml").is_file():
        side = load_run_dir(arg, run_dir, kind="trial")
    else:  # run dir moved or deleted: the study still knows the swept values and the curve
        side = Side(arg, "trial", dict(trial.params), note=f"run dir {run_dir} not found: study params only")
    metric = (study.metric_names or ["val/loss"])[0]
    if metric not in side.curve and trial.intermediate_values:
        side.curve[metric] = sorted(trial.intermediate_values.items())
    side.study, side.url, side.trial = study, url, trial
    return side


def load_side(arg: str, storage: str | None) -> Side:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    path = Path(arg)
    if path.is_dir():
        return load_run_dir(arg, path)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return load_experiment(arg, path)
    if re.fullmatch(r"(.+#)?[^#]+:\d+", arg) and not path.exists():
        return load_trial(arg, arg, storage)
    reason = "does not exist" if not path.exists() else "is neither a run dir nor an experiment .yaml"
    raise CompareError(f"{arg} {reason}; give {ACCEPTED}")


def differing(a: Side, b: Side) -> list[str]:
    keys = [k for k in dict.fromkeys([*a.config, *b.config]) if not is_bookkeeping(k)]
    return [k for k in keys if a.config.get(k, ...) != b.config.get(k, ...)]


def metric_value(side: Side, key: str) -> Any:
    if side.metrics is not None:
        return side.metrics.get(key)
    if side.trial is not None:  # config-only trial: what the sweep stored
        return side.trial.value if key == "objective" else side.trial.user_attrs.get(key)
    return None


def bins(values: list[Any]) -> list[tuple[Any, Any]]:
    """(low, high) groups: each distinct value, or quantile ranges for many distinct floats."""
    distinct = sorted(set(values), key=lambda v: (str(type(v)), v))
    if len(distinct) <= N_BINS or not all(isinstance(v, float) for v in distinct):
        return [(v, v) for v in distinct]
    edges = [distinct[round(i * (len(distinct) - 1) / N_BINS)] for i in range(N_BINS + 1)]
    return [(lo, hi) for lo, hi in zip(edges, edges[1:], strict=False) if lo != hi]
