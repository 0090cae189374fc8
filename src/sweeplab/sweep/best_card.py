"""When a study ends, its best trial's adapter card says so: the study, the trial and how many it beat."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
from optuna.trial import TrialState

from sweeplab.training.model_card import write_run_card

log = logging.getLogger(__name__)


def sweep_summary(study: optuna.Study, best: optuna.trial.FrozenTrial) -> dict:
    """What card_text's sweep section reads. A pruned trial counts as beaten (it was stopped for being
    worse at a rung); a complete one only if its value is strictly worse; failed trials not at all."""
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    others = [
        t
        for t in study.trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.number != best.number
    ]
    complete = [t for t in others if t.state == TrialState.COMPLETE]
    worse = [t for t in complete if (t.value > best.value if minimize else t.value < best.value)]
    return {
        "study": study.study_name,
        "trial": best.number,
        "metric": study.metric_names[0] if study.metric_names else "value",
        "direction": "minimize" if minimize else "maximize",
        "value": best.value,
        "beat": len(worse) + len(others) - len(complete),
        "others": len(others),
        "complete": len(complete),
        "pruned": len(others) - len(complete),
    }


def write_best_card(study: optuna.Study) -> Path | None:
    """Rewrite the best trial's adapter card with the study's verdict; None when it has no finished run."""
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not complete:
        return None
    best = study.best_trial
    run_dir = best.user_attrs.get("run_dir")
    if not run_dir or not (Path(run_dir) / "metrics.json").is_file():
        log.warning("best trial %d has no finished run dir here, so its model card is unchanged", best.number)
        return None
    path = write_run_card(Path(run_dir), sweep=sweep_summary(study, best))
    log.info("best trial %d: its adapter's model card names the study (%s)", best.number, path)
    return path
