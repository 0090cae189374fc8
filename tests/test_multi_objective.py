"""sweeplab's own task with several objectives: objective.metric as a list, an Optuna multi-objective
study (pruning off, said once), each trial's values from its run, and the Pareto front in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from optuna.study import StudyDirection

from sweeplab.report.cli import report
from tests.test_sweep import QLORA, load, sweep


@pytest.mark.slow
def test_loss_against_adapter_size_gives_a_pareto_front(tmp_path: Path) -> None:
    result = sweep(
        tmp_path,
        *QLORA,
        "objective.metric=[val/loss,trainable_params]",
        "hydra/sweeper/pruner=successive_halving",  # asked for, but a multi-objective study cannot prune
        "hydra.sweeper.enqueue=[{recipe:small,params:{lora.r:2}},{recipe:big,params:{lora.r:16}}]",
        "hydra.sweeper.n_trials=2",
        "lora.r=choice(2,16)",
        "eval.n_generate=0",  # neither objective decodes: keep the trials short
        "eval.test=false",
    )
    logs = result.stdout + result.stderr
    assert result.returncode == 0, logs[-5000:]
    assert logs.count("pruning is off") == 1
    study = load(tmp_path, "s")
    assert study.directions == [StudyDirection.MINIMIZE, StudyDirection.MINIMIZE]
    assert study.metric_names == ["val/loss", "trainable_params"]
    for t in study.trials:
        metrics = json.loads((tmp_path / "sweeps" / "s" / str(t.number) / "metrics.json").read_text())
        assert t.values == [metrics["best_val_loss"], metrics["trainable_params"]]
        assert metrics["objective"]["metric"] == ["val/loss", "trainable_params"]
        assert not t.intermediate_values  # Optuna's report is single-objective only
    assert len({t.values[1] for t in study.trials}) == len(study.trials)  # the rank sets the size
    solutions = OmegaConf.load(tmp_path / "sweeps" / "s" / "optimization_results.yaml").solutions
    assert {s.trial for s in solutions} == {t.number for t in study.best_trials}

    out = tmp_path / "report"
    assert report(study, f"sqlite:///{tmp_path / 'sweeps' / 'optuna.db'}", out) is None  # no single best
    index = (out / "index.md").read_text()
    assert "- objectives: minimize val/loss, minimize trainable_params" in index
    assert "## Pareto front" in index and (out / "pareto_front.png").is_file()
    assert "python -m sweeplab.train" in index  # each Pareto-optimal trial's command
    header = (out / "trials.csv").read_text().splitlines()[0]
    assert header.startswith("number,state,val/loss,trainable_params,steps")


def test_directions_follow_each_metric() -> None:
    from sweeplab.config import validate
    from tests.conftest import make_cfg

    rc = validate(make_cfg("objective.metric=[val/tool_exact,trainable_params,tokens_per_s]"))
    assert rc.objective.resolved_directions == ["maximize", "minimize", "maximize"]
    assert rc.objective.primary == "val/tool_exact" and rc.objective.needs_generation
    values = rc.objective.values({"val/tool_exact": 0.5}, {"trainable_params": 10, "tokens_per_s": 3.0})
    assert values == [0.5, 10.0, 3.0]
