"""A Hydra app that is not sweeplab's, swept with hydra/sweeper=sweeplab: as under upstream, plus pruning
(the app reports through sweeplab.sweep.job), resume to the total, workers and the report."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from tests.conftest import ROOT

DESCENT = ROOT / "docs" / "examples" / "prunable_app" / "descent.py"
MULTI = ROOT / "tests" / "upstream" / "hydra_optuna_sweeper" / "example" / "multi-objective.py"
# a good lr first, then two that lag it from the first step: the median pruner stops those at once
RECIPES = (
    "hydra.sweeper.enqueue=[{recipe:good,params:{lr:0.3}},{recipe:slow,params:{lr:0.001}},"
    "{recipe:slower,params:{lr:0.002}}]"
)
PRUNE_AFTER_ONE = "hydra.sweeper.pruner.n_startup_trials=1"


def run_app(script: Path, *overrides: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, str(script), "--multirun", *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow  # ~17 s on quiet cores, 37 s on busy ones
def test_another_app_is_pruned_resumed_and_reported(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    args = [f"hydra.sweep.dir={sweep_dir}", RECIPES, PRUNE_AFTER_ONE]
    result = run_app(DESCENT, *args, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "run_name" not in result.stderr  # sweeplab's training schema is not this app's
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"  # storage null: the study sits in the sweep dir
    trials = optuna.load_study(study_name="descent", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    assert sorted(trials[0].intermediate_values) == list(range(20))  # the app reported every step
    for t in trials[1:]:
        assert max(t.intermediate_values) < 19  # stopped before its last step
        assert t.value == t.intermediate_values[max(t.intermediate_values)]
    assert trials[1].params == {"lr": 0.001}
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert results.best_params.lr == 0.3 and results.best_value == trials[0].value

    # rerun with a larger total: only the missing trial runs
    before = [t.datetime_complete for t in trials]
    again = run_app(DESCENT, *args, "hydra.sweeper.n_trials=4", cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    trials = optuna.load_study(study_name="descent", storage=storage).trials
    assert len(trials) == 4 and [t.datetime_complete for t in trials[:3]] == before

    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeplab.report",
            "descent",
            "--storage",
            storage,
            "--out",
            str(tmp_path / "r"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    # The resumed 4th trial is TPE's draw and may beat the recipe: the report names whichever is best.
    best = optuna.load_study(study_name="descent", storage=storage).best_trial
    expected = f"python {DESCENT} lr={best.params['lr']}"  # the app's own command, not sweeplab.train
    assert report.stdout.strip() == expected
    index = (tmp_path / "r" / "index.md").read_text()
    assert "- objective: minimize value\n" in index
    # "trial 0 (recipe), value ..." for the enqueued recipe, "trial 3, value ..." for a sampled one
    assert re.search(rf"^- best: trial {best.number}[ ,]", index, re.MULTILINE), index
    assert (tmp_path / "r" / "learning_curves.png").is_file()


def test_sweeplab_only_options_are_refused_for_another_app(tmp_path: Path) -> None:
    result = run_app(
        DESCENT,
        "hydra.sweeper.budget=2",
        "+hydra.sweeper.lr_range_test={steps:5}",
        "hydra.sweeper.max_memory_gb=1",
        "hydra.sweeper.direction=auto",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    for key in ("budget=2", "lr_range_test=", "max_memory_gb=1", "direction=auto"):
        assert f"hydra.sweeper.{key}" in result.stderr, result.stderr
    assert "only for sweeplab's training task" in result.stderr and "__main__.descend" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "multirun").exists() or not list((tmp_path / "multirun").rglob("optuna.db"))


def test_two_workers_share_hydras_default_timestamped_sweep_dir(tmp_path: Path) -> None:
    """Hydra's default sweep dir holds ${now:...}: a worker started later must still join this sweep."""
    result = run_app(DESCENT, "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2", "steps=40", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [db] = list((tmp_path / "multirun").rglob("optuna.db"))  # one sweep dir, one study
    trials = optuna.load_study(study_name="descent", storage=f"sqlite:///{db}").trials
    assert len(trials) == 6 and {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert (db.parent / "worker-1.log").is_file()
    log = (db.parent / "worker-1.log").read_text()
    # It opened this sweep's study (whether it gets a trial depends on how fast the first one runs them)
    assert f"study descent in sqlite:///{db}" in log, log[-3000:]


def test_another_apps_objectives_make_a_pareto_front(tmp_path: Path) -> None:
    """Upstream's multi-objective example (it returns a tuple), under sweeplab: the front, no pruning."""
    sweep_dir = tmp_path / "sweep"
    result = run_app(
        MULTI,
        "hydra/sweeper=sweeplab",
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweeper.n_trials=8",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.sampler.seed=1",
        cwd=MULTI.parent.parent,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (result.stdout + result.stderr).count("pruning is off") == 1  # said once, not per trial
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    study = optuna.load_study(study_name="multi-objective", storage=storage)
    assert len(study.directions) == 2 and len(study.trials) == 8
    assert all(len(t.values) == 2 and not t.intermediate_values for t in study.trials)
    solutions = OmegaConf.load(sweep_dir / "optimization_results.yaml").solutions
    assert sorted(s.trial for s in solutions) == sorted(t.number for t in study.best_trials)

    report = subprocess.run(
        [sys.executable, "-m", "sweeplab.report", storage, "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    index = (tmp_path / "r" / "index.md").read_text()
    assert "## Pareto front" in index and (tmp_path / "r" / "pareto_front.png").is_file()
    for t in study.best_trials:  # each Pareto-optimal trial is a row of the front's table
        assert f"| {t.number} | " in index
    assert "Pareto-optimal" in report.stderr and not report.stdout.strip()  # no single best command


def test_objective_values_follow_upstreams_rules() -> None:
    from hydra_plugins.sweeplab_sweeper.outcome import objective_values

    assert objective_values(1, 1) == [1.0] and objective_values((1, 2.5), 2) == [1.0, 2.5]
    with pytest.raises(ValueError, match="returned 1 values"):
        objective_values([1.0], 2)
    with pytest.raises(ValueError, match="float-castable"):
        objective_values("x", 1)


def test_the_sweeper_loads_no_training_stack() -> None:
    """Every sweep process (and each worker) imports the sweeper: a sweep of another app must not pay
    for Lightning or torch (importing them once cost ~4 s per process and doubled the upstream suite)."""
    code = (
        "import sys, hydra_plugins.sweeplab_sweeper.sweeper; "
        "print(sorted(m for m in ('lightning', 'torch', 'transformers', 'peft') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]", result.stdout
