"""python -m sweeplab.report on a real SQLite study built with optuna, as the sweeper writes it."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from sweeplab.report.storage import mask
from sweeplab.report.table import best_trial, recipe_lines, shell_value

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STUDY = "qlora-base-toolcalls"

SPACE = {  # as conf/hparams_search/qlora.yaml declares them
    "optim.lr": FloatDistribution(1e-5, 3e-3, log=True),
    "lora.r": CategoricalDistribution([8, 16, 32, 64]),
    "lora.alpha": CategoricalDistribution([8, 16, 32, 64, 128]),
    "optim.weight_decay": CategoricalDistribution([0.0, 0.01, 0.1]),
    "lora.targets": CategoricalDistribution(["all-linear", "attention", "qv", "mlp"]),
    "lora.dropout": CategoricalDistribution([0.0, 0.05, 0.1]),
}


def params(lr, r, alpha, wd, targets, dropout=0.05):
    return dict(zip(SPACE, (lr, r, alpha, wd, targets, dropout), strict=True))


# (params, recipe, state, val/loss at steps 10, 20, 30, fail reason)
TRIALS = [
    (params(2e-4, 8, 16, 0.01, "all-linear"), "qlora-toolcall", "COMPLETE", [1.50, 1.30, 1.25], None),
    (params(2e-4, 64, 16, 0.0, "all-linear"), "guanaco", "COMPLETE", [1.55, 1.40, 1.35], None),
    (params(1e-3, 16, 32, 0.1, "attention", 0.0), None, "COMPLETE", [1.40, 1.20, 1.10], None),
    (params(2e-5, 8, 8, 0.0, "qv"), None, "PRUNED", [2.00, 1.90], None),
    (params(5e-4, 32, 64, 0.01, "all-linear", 0.1), None, "COMPLETE", [1.30, 1.10, 1.05], None),
    (params(3e-3, 64, 128, 0.1, "mlp"), None, "FAIL", [], "RuntimeError: loss is nan | step 3"),
    (params(1e-5, 16, 16, 0.0, "qv", 0.0), None, "PRUNED", [2.20], None),
    (params(8e-4, 16, 64, 0.01, "attention"), None, "COMPLETE", [1.45, 1.30, 1.33], None),
]
BEST = 4


def build_study(db: Path, name: str = STUDY, trials=TRIALS) -> optuna.Study:
    """Enqueue + ask + report + tell, as the sweeper and its jobs do."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{db}", direction="minimize")
    study.set_user_attr("command", "python -m sweeplab.train model=base")
    for fixed, recipe, state, losses, reason in trials:
        study.enqueue_trial(fixed, user_attrs={"recipe": recipe} if recipe else {})
        trial = study.ask(SPACE)
        for step, loss in zip((10, 20, 30), losses, strict=False):
            trial.report(loss, step)
        if reason:
            trial.set_user_attr("fail_reason", reason)
        if state == "COMPLETE":
            trial.set_user_attr("steps", 30)
            study.tell(trial, min(losses))
        else:
            study.tell(trial, state=TrialState[state])
    return study


def run_report(*args: str, root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SWEEPLAB_OUTPUT_ROOT": str(root / "outputs")}
    return subprocess.run(
        [sys.executable, "-m", "sweeplab.report", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    """One report from the default storage and default --out, shared by the checks below."""
    root = tmp_path_factory.mktemp("report")
    db = root / "outputs" / "sweeps" / "optuna.db"
    db.parent.mkdir(parents=True)
    study = build_study(db)
    proc = run_report(STUDY, root=root)
    assert proc.returncode == 0, proc.stderr
    return study, proc, root / "outputs" / "sweeps" / STUDY / "report"


def test_writes_every_file(report):
    _, _, out = report
    for name in ("trials.md", "trials.csv", "best.txt", "index.md"):
        assert (out / name).is_file(), name
    stems = ["learning_curves", "optimization_history", "param_importances", "parallel_coordinate", "slice"]
    index = (out / "index.md").read_text()
    for stem in stems:
        assert (out / f"{stem}.png").read_bytes()[:8] == PNG_MAGIC, stem
        html = (out / f"{stem}.html").read_text()
        assert '<script src="http' not in html and len(html) > 1_000_000, f"{stem}.html must embed plotly.js"
        assert f"]({stem}.png)" in index and f"]({stem}.html)" in index
    assert not list(out.glob(".*.tmp")), "temp files left behind"


def test_csv_matches_study(report):
    study, _, out = report
    with open(out / "trials.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    trials = study.get_trials()
    assert len(table) == len(trials) == len(TRIALS)
    assert list(table[0])[:5] == ["number", "state", "value", "steps", "duration_s"]
    for row, trial in zip(table, trials, strict=True):
        assert int(row["number"]) == trial.number
        assert row["state"] == trial.state.name
        assert (float(row["value"]) if row["value"] else None) == trial.value
        assert float(row["optim.lr"]) == trial.params["optim.lr"]
        assert row["lora.targets"] == trial.params["lora.targets"]
        assert row["recipe"] == (trial.user_attrs.get("recipe") or "")
    assert table[5]["fail_reason"] == "RuntimeError: loss is nan | step 3"
    assert table[3]["steps"] == "20"  # a pruned trial: its last reported step
    assert float(table[3]["value"]) == 1.90  # optuna stores a pruned trial's last report as its value


def test_best_command_is_printed_and_pastes(report):
    _, proc, out = report
    command = (out / "best.txt").read_text().strip()
    assert proc.stdout.strip() == command
    assert command == (
        "python -m sweeplab.train model=base optim.lr=0.0005 lora.r=32 lora.alpha=64 "
        "optim.weight_decay=0.01 lora.targets=all-linear lora.dropout=0.1"
    )


def test_header_compares_best_with_each_recipe(report):
    _, _, out = report
    md = (out / "trials.md").read_text()
    assert f"trial {BEST}, val/loss 1.0500" in md
    assert "COMPLETE 5, PRUNED 2, FAIL 1" in md
    assert "best beats qlora-toolcall by 0.2000 (16.0%)" in md
    assert "best beats guanaco by 0.3000 (22.2%)" in md
    assert "loss is nan \\| step 3" in md  # a pipe would break the Markdown table


def test_study_without_complete_trials_still_gets_a_table(tmp_path):
    db = tmp_path / "pruned.db"
    build_study(db, "all-pruned", [t for t in TRIALS if t[2] in ("PRUNED", "FAIL")])
    proc = run_report(f"sqlite:///{db}", "--out", str(tmp_path / "r"), root=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "r"
    assert len((out / "trials.csv").read_text().splitlines()) == 1 + 3
    assert not (out / "best.txt").exists() and proc.stdout == ""
    assert (out / "learning_curves.png").read_bytes()[:8] == PNG_MAGIC
    index = (out / "index.md").read_text()
    assert "_Skipped: needs 1 COMPLETE trial, the study has 0._" in index
    assert not (out / "slice.png").exists()


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr


def test_unknown_study_lists_the_names(report, tmp_path):
    _, _, out = report
    db = out.parents[2] / "sweeps" / "optuna.db"
    proc = run_report("nope", "--storage", f"sqlite:///{db}", root=tmp_path)
    assert_clean_error(proc, "no study 'nope'", STUDY)


def test_several_studies_need_a_name(tmp_path):
    db = tmp_path / "two.db"
    build_study(db, "a", TRIALS[:1])
    build_study(db, "b", TRIALS[:1])
    proc = run_report(f"sqlite:///{db}", root=tmp_path)
    assert_clean_error(proc, "2 studies: a, b", "NAME --storage")


def test_missing_sqlite_file_is_not_created(tmp_path):
    proc = run_report("some-study", root=tmp_path)  # the default storage does not exist here
    assert_clean_error(proc, "does not exist", "optuna.db")
    missing = tmp_path / "nowhere" / "x.db"
    proc = run_report(f"sqlite:///{missing}", root=tmp_path)
    assert_clean_error(proc, str(missing), "does not exist")
    assert not missing.exists() and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("url", ["redis://localhost/0", "http://user:secret@host/db", "sqlite:/x.db://"])
def test_bad_scheme_names_what_is_allowed(tmp_path, url):
    proc = run_report(url, root=tmp_path)
    assert_clean_error(proc, "sqlite:///path/to/optuna.db")
    assert "secret" not in proc.stderr


def test_mask_hides_passwords():
    assert mask("postgresql://me:s3cret@db:5432/optuna") == "postgresql://me:***@db:5432/optuna"
    assert mask("sqlite:///outputs/sweeps/optuna.db") == "sqlite:///outputs/sweeps/optuna.db"


def test_shell_values_paste_back():
    assert shell_value(2e-05) == "2e-05" and shell_value(0.0) == "0.0" and shell_value(16) == "16"
    assert shell_value("all-linear") == "all-linear"
    assert shell_value("[q_proj, v_proj]") == "'[q_proj, v_proj]'"
    assert shell_value(True) == "true" and shell_value(None) == "null"


def test_recipe_lines_when_a_recipe_wins_or_is_pruned(tmp_path):
    recipe_best = (
        params(2e-4, 8, 16, 0.01, "all-linear"),
        "qlora-toolcall",
        "COMPLETE",
        [1.2, 1.0, 0.9],
        None,
    )
    recipe_pruned = (params(2e-4, 64, 16, 0.0, "all-linear"), "guanaco", "PRUNED", [2.0, 1.8], None)
    study = build_study(tmp_path / "r.db", "recipes", [recipe_best, recipe_pruned, TRIALS[2]])
    lines = recipe_lines(study, study.trials, best_trial(study))
    assert lines[0] == "the best trial is the qlora-toolcall (trial 0) recipe: no searched trial beat it yet"
    assert lines[1].startswith("best beats guanaco by 0.9000 (50.0%) in val/loss: 1.8000, pruned at step 20")


def test_task_accuracy_and_failures_of_a_tool_exact_study(tmp_path: Path) -> None:
    """A study maximizing val/tool_exact: test accuracy beside the objective, the best's failures listed."""
    import json

    from sweeplab.report.cli import report as write_report

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="tool", storage=f"sqlite:///{tmp_path / 'o.db'}", direction="maximize"
    )
    study.set_metric_names(["val/tool_exact"])
    run_dir = tmp_path / "trial-2"
    run_dir.mkdir()
    wrong = {
        "request": "Delete node 7.",
        "expected": {"name": "DELETE /db/node", "arguments": {"id": 7}},
        "output": '{"name": "DELETE /db/node", "arguments": {"id": 8}}',
        "parsed": {"name": "DELETE /db/node", "arguments": {"id": 8}},
        "format": "json",
        "parse_error": None,
        "verdict": {
            "json_valid": True,
            "tool_name": True,
            "args": False,
            "exact": False,
            "fields": {"id": "wrong: got 8, expected 7"},
        },
    }
    right = {
        **wrong,
        "output": "{}",
        "verdict": {**wrong["verdict"], "args": True, "exact": True, "fields": {}},
    }
    (run_dir / "predictions.jsonl").write_text(json.dumps(right) + "\n" + json.dumps(wrong) + "\n")
    for value, recipe, test_exact in ((0.40, "qlora-toolcall", 0.35), (0.10, None, 0.05), (0.60, None, 0.55)):
        study.enqueue_trial(
            params(2e-4, 8, 16, 0.0, "all-linear"), user_attrs={"recipe": recipe} if recipe else {}
        )
        trial = study.ask(SPACE)
        trial.set_user_attr("test/tool_exact", test_exact)
        trial.set_user_attr("base/tool_exact", 0.0)
        if trial.number == 2:
            trial.set_user_attr("run_dir", str(run_dir))
        study.tell(trial, value)
    write_report(study, f"sqlite:///{tmp_path / 'o.db'}", tmp_path / "report")
    index = (tmp_path / "report" / "index.md").read_text()
    assert "maximize val/tool_exact" in index
    assert "best beats qlora-toolcall by 0.2000" in index  # 0.4 -> 0.6, a maximized metric
    section = index.split("## Held-out test split")[1].split("##")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r.split(" | ")[:3] for r in rows] == [
        ["| 2", "best", "0.6"],
        ["| 0", "recipe qlora-toolcall", "0.4"],
    ]
    assert "0.55" in rows[0] and "0.35" in rows[1]
    failures = index.split("## What the best trial gets wrong (1 of 2 test chats)")[1]
    assert "Delete node 7." in failures and "id: wrong: got 8, expected 7" in failures
    header = (tmp_path / "report" / "trials.csv").read_text().splitlines()[0].split(",")
    assert "test/tool_exact" in header and "base/tool_exact" in header


def test_a_recipe_that_ties_the_best_is_called_a_tie(tmp_path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", direction="maximize")
    study.set_metric_names(["val/tool_exact"])
    for recipe in ("qlora-toolcall", None):
        study.enqueue_trial(
            params(2e-4, 8, 16, 0.0, "all-linear"), user_attrs={"recipe": recipe} if recipe else {}
        )
        study.tell(study.ask(SPACE), 0.5)
    lines = recipe_lines(study, study.trials, study.trials[1])
    assert lines == ["best ties qlora-toolcall at val/tool_exact 0.5000 (trial 0 and 1)"]


def test_best_command_takes_the_fixed_values_the_best_trial_ran_with() -> None:
    """The sweeper stores each trial's fixed values (the command's overrides) with it: a resumed sweep
    may have changed one since the study stored its own."""
    from sweeplab.report.table import best_command

    study = optuna.create_study(direction="minimize")
    study.set_user_attr("fixed", {"model": "base", "data.batch_size": "8"})
    trial = study.ask({"optim.lr": FloatDistribution(1e-5, 1e-2, log=True)})
    trial.set_user_attr("fixed", {"model": "tiny", "data.batch_size": "8"})
    study.tell(trial, 1.0)
    assert "model=tiny data.batch_size=8 optim.lr=" in best_command(study, study.best_trial)
    old = study.best_trial  # a copy: as a trial stored before trials kept their own
    old.user_attrs.pop("fixed")
    assert "model=base" in best_command(study, old)
