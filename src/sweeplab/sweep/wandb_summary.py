"""One W&B run per sweep, in the trials' group: a table of every trial and the best one's params."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import optuna

from sweeplab.training.loggers import wandb_has_key

log = logging.getLogger(__name__)


def log_sweep_summary(study: optuna.Study, project: str, sweep_dir: Path, mode: str = "auto") -> None:
    import wandb

    offline = mode == "offline" or (mode == "auto" and not wandb_has_key())
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        offline = True
    params = sorted({k for t in study.trials for k in t.params})
    multi = len(study.directions) > 1  # several objectives: their values as one cell, and no single best
    names = study.metric_names or ["val/loss"]
    columns = ["trial", "state", ", ".join(names) if multi else names[0], "steps", "recipe", *params]
    rows = [
        [
            t.number,
            t.state.name,
            str(t.values) if multi else t.value,
            t.user_attrs.get("steps"),
            t.user_attrs.get("recipe"),
            *[t.params.get(p) for p in params],
        ]  # fmt: skip
        for t in study.trials
    ]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    run = wandb.init(
        project=project,
        group=study.study_name,
        name=f"{study.study_name}-summary",
        job_type="sweep-summary",
        dir=str(sweep_dir),
        mode="offline" if offline else "online",
        config={"study": study.study_name, "n_trials": len(study.trials)},
    )
    try:
        run.log({"trials": wandb.Table(columns=columns, data=rows)})
        states = {s.name: sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState}
        run.summary.update({f"trials/{k.lower()}": v for k, v in states.items() if v})
        if complete and not multi:
            best = study.best_trial
            run.summary.update({"best/trial": best.number, "best/val_loss": best.value,
                                **{f"best/{k}": v for k, v in best.params.items()}})  # fmt: skip
    finally:
        run.finish()
    log.info("W&B sweep summary logged (%s), group %s", "offline" if offline else "online", study.study_name)
