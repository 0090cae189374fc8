"""The study's side of a sweep: open or resume it, configure its trials, queue the recipes, summarize it."""

from __future__ import annotations

import collections
import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any

import optuna
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from hydra_plugins.sweeplab_sweeper import checks
from hydra_plugins.sweeplab_sweeper.grid import is_grid
from hydra_plugins.sweeplab_sweeper.phases import centre_point
from sweeplab.secrets import redact_text
from sweeplab.sweep.best_card import write_best_card
from sweeplab.sweep.pruners import build_pruner
from sweeplab.trust import oneline

log = logging.getLogger(__name__)

RECIPE_OVERRIDES = "recipe_overrides"
FIXED_ATTR = "fixed"  # a trial's values of the keys the sweep does not search (the command's overrides)
SAMPLER_WHITELIST = ("hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*")


def open_study(
    storage,
    url: str,
    study_name: str,
    directions: list[str],
    sampler_cfg: Any,
    pruner: DictConfig,
    max_steps: int | None,
    grid: dict[str, list[Any]] | None = None,
) -> optuna.Study:
    """Create or resume the study; resuming one made for the other direction is refused."""
    try:
        existing = [
            d.name.lower() for d in storage.get_study_directions(storage.get_study_id_from_name(study_name))
        ]
    except KeyError:  # no such study yet
        existing = directions
    if existing != directions:
        checks.fail(
            "cannot resume the study",
            [
                f"study {study_name} in {redact_text(url)} was created to {' and '.join(existing)}, but this "
                f"sweep would {' and '.join(directions)}; choose a new hydra.sweeper.study_name"
            ],
        )
    if (
        pruner._target_ == "optuna.pruners.HyperbandPruner"
        and pruner.get("max_resource") == "auto"
        and max_steps
    ):
        log.info("hyperband pruner: max_resource=auto is trainer.max_steps=%d", max_steps)
    return optuna.create_study(
        study_name=study_name,
        storage=storage,
        sampler=sampler_for(sampler_cfg, 0, grid),
        pruner=build_pruner(pruner, max_steps),
        directions=directions,
        load_if_exists=True,
    )


def sampler_for(
    sampler_cfg: Any, n: int, grid: dict[str, list[Any]] | None = None
) -> optuna.samplers.BaseSampler:
    """Seed mixed with the trial number: a fixed seed would make workers and resumed studies repeat
    params; plain seed + n would make seed s+1 replay seed s shifted by one trial. A grid sampler
    keeps its seed: it orders the grid, and every worker and resume must number it the same way.
    A sampler built in code (upstream's tests pass one) is used as it is."""
    if isinstance(sampler_cfg, optuna.samplers.BaseSampler):
        return sampler_cfg
    if isinstance(sampler_cfg, functools.partial):  # upstream's built GridSampler partial
        return sampler_cfg(grid or {})
    seed = sampler_cfg.get("seed")
    kwargs = {"seed": (seed * 1_000_003 + n) % 2**32} if seed is not None and grid is None else {}
    try:
        sampler = instantiate(sampler_cfg, **kwargs, _execution_whitelist_=SAMPLER_WHITELIST)
    except InstantiationException as exc:
        checks.fail("invalid sweeper config", [f"hydra.sweeper.sampler: {oneline(exc)}"])
    return sampler(grid) if is_grid(sampler) else sampler


def configure_trials(config, extender, trials, search_space_distributions, fixed_params, fixed_overrides):
    """Upstream's, with the fixed values stored as one user attr: upstream stores each (every
    command-line override is one), a commit apiece: 15 on the quick bench, ~20 ms per trial."""
    overrides = []
    for trial in trials:
        for name, distribution in search_space_distributions.items():
            trial._suggest(name, distribution)
        if extender:
            extender(config, trial)
            if overlap := trial.params.keys() & fixed_params.keys():
                raise ValueError(f"the custom search space suggests fixed keys: {sorted(overlap)}")
        trial.set_user_attr(FIXED_ATTR, dict(fixed_params))
        params = {**trial.params, **fixed_params}
        overrides.append(tuple(f"{name}={val}" for name, val in params.items()) + tuple(fixed_overrides))
    return overrides


def set_metric(study: optuna.Study, metrics: list[str]) -> None:
    """Name the study's metrics; resuming one made for other metrics is refused."""
    if study.metric_names is None:
        study.set_metric_names(list(metrics))
    elif study.metric_names != list(metrics):
        made = study.metric_names[0] if len(study.metric_names) == 1 else f"[{','.join(study.metric_names)}]"
        given = metrics[0] if len(metrics) == 1 else f"[{','.join(metrics)}]"
        checks.fail(
            "cannot resume the study",
            [
                f"study {study.study_name} optimizes {made}, but objective.metric={given}; set "
                f"objective.metric={made} to resume it, or choose a new hydra.sweeper.study_name"
            ],
        )


def enqueue_recipes(
    study: optuna.Study,
    recipes: Any,
    distributions: dict[str, Any],
    fixed: dict[str, Any],
    notes: dict[str, str] | None = None,
    program: str = "python -m sweeplab.train",
) -> None:
    """Once per study: queue the recipes, and store the command and fixed values every trial shares.
    notes: recipe -> where its lr lies against the range test's range, kept on its trial.
    program: how the app is started (the start of the best trial's command)."""
    if not study.user_attrs.get("enqueued"):
        for recipe in recipes:
            params = dict(recipe["params"])
            # Keys outside the search space (lora.use_rslora: false for a recipe written with
            # alpha/r) are set by override for that trial only, so the recipe means what it says.
            outside = {k: v for k, v in params.items() if k not in distributions}
            # Searched keys the recipe does not name take the centre point's value (each choice's first),
            # not a random draw: a recipe written for all linear layers must not train on attention.
            params = {**centre_point(distributions), **params}
            attrs = {"recipe": recipe["recipe"], RECIPE_OVERRIDES: outside}
            if notes and notes.get(recipe["recipe"]):
                attrs["lr_vs_range"] = notes[recipe["recipe"]]
            study.enqueue_trial({k: v for k, v in params.items() if k in distributions}, user_attrs=attrs)
        study.set_user_attr("enqueued", True)
        study.set_user_attr("command", base_command(program))
        study.set_user_attr("fixed", fixed)  # the space's fixed values: part of every trial's command


def trials_since_best(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> int:
    """Finished trials after the first one holding the best value (0 while none is COMPLETE)."""
    finished = [
        t
        for t in sorted(trials, key=lambda t: t.number)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    ]
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    if not complete:
        return 0
    pick = min if study.direction == optuna.study.StudyDirection.MINIMIZE else max
    best = pick(complete, key=lambda t: t.value)  # the first of equal values: a tie is no improvement
    return len(finished) - 1 - finished.index(best)


def with_recipe(overrides: list[str], trial: optuna.Trial) -> list[str]:
    """A recipe's keys outside the search space replace the space's fixed values for its trial."""
    extra = trial.user_attrs.get(RECIPE_OVERRIDES) or {}
    kept = [o for o in overrides if o.split("=", 1)[0] not in extra]
    return kept + [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in extra.items()]


def base_command(program: str = "python -m sweeplab.train") -> str:
    """The sweep command without the sweep, as the start of the best trial's command."""
    args = [
        a
        for a in sys.argv[1:]
        if not a.startswith(("--multirun", "-m", "hparams_search=", "hydra.", "hydra/"))
    ]
    return redact_text(" ".join([program, *args]))


def summarize(study: optuna.Study, sweep_dir: Path) -> None:
    states = collections.Counter(t.state.name for t in study.trials)
    log.info("study %s: %s", study.study_name, dict(states))
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not done:
        log.error(
            "no trial completed; see the trials' fail_reason (python -m sweeplab.report %s)", study.study_name
        )
        return
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if len(study.directions) > 1:  # upstream's file: the Pareto front's params and values
        front = study.best_trials
        log.info("Pareto front of %d objectives: %d trials", len(study.directions), len(front))
        for t in front:
            log.info("  trial %d: values %s with %s", t.number, t.values, t.params)
        solutions = [{"params": t.params, "values": t.values, "trial": t.number} for t in front]
        results = {"name": "optuna", "solutions": solutions}
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        return
    best = study.best_trial
    metric = study.metric_names[0] if study.metric_names else "value"
    log.info("best trial %d: %s %.4f with %s", best.number, metric, best.value, best.params)
    results = {
        "name": "optuna",
        "best_params": best.params,
        "best_value": best.value,
        "best_trial": best.number,
    }
    OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
    try:
        write_best_card(study)
    except Exception as exc:  # noqa: BLE001 - a model card must not fail a finished sweep
        log.warning("could not rewrite the best trial's model card: %s", exc)


def log_to_wandb(study: optuna.Study, config: DictConfig, sweep_dir: Path) -> None:
    logger = config.get("logger")
    if logger is None or logger.get("backend") != "wandb":
        return
    from sweeplab.sweep.wandb_summary import log_sweep_summary

    try:
        log_sweep_summary(study, logger.project, sweep_dir, logger.get("mode", "auto"))
    except Exception as exc:  # noqa: BLE001 - a dashboard hiccup must not fail a finished sweep
        log.warning("could not log the W&B sweep summary: %s", exc)


def record_settings(study: optuna.Study, max_steps: int, budget: float | None, objective: Any) -> None:
    """Once per study: what the report needs to count compute in runs and to read pruned values."""
    if study.user_attrs.get("max_steps") is None:
        study.set_user_attr("max_steps", max_steps)
        study.set_user_attr("budget", budget)
    if objective.intermediate and study.user_attrs.get("rung_metric") is None:
        # A pruned trial's value is its last rung's, in this metric's units (negated when it runs
        # against the study's direction): the report must not read it as the objective.
        sign = 1 if objective.watched_mode == objective.mode else -1
        study.set_user_attr("rung_metric", {"name": objective.watched, "sign": sign})
