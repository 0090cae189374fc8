"""Real sweeps through the real entry point: SQLite storage, enqueued recipes, resume, pruning, failures."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from omegaconf import OmegaConf
from optuna.trial import TrialState

from sweeplab.trust import TRUST_ENV
from tests.conftest import ROOT, run_train

SMALL = [
    "model=tiny",
    "logger=csv",
    "data.n_train=64",
    "data.n_val=16",
    "data.max_seq_len=160",
    "data.batch_size=8",  # as the tests were written (the defaults before they moved to the real model)
    "data.packing=false",
    "trainer.max_steps=12",
    "trainer.val_every_n_steps=4",
    "trainer.enable_progress_bar=false",
]
TEST_CONF = f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]"


def sweep(out: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_train("--multirun", *SMALL, *overrides, output_root=out, env=env, timeout=900)


def load(out: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'sweeps' / 'optuna.db'}")


QLORA = ["hparams_search=qlora", "hydra.sweeper.study_name=s", "hydra/sweeper/pruner=none"]
# The tool-call search, small: a short range test, few decoded chats.
TOOL_SEARCH = [
    "hparams_search=qlora_tool_exact",
    "eval.n_generate=8",
    "eval.max_new_tokens=24",
    "data.n_test=8",
]


@pytest.fixture(scope="module")
def five_trials(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    result = sweep(out, *QLORA, "hydra.sweeper.n_trials=5")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_sweep_stores_every_trial(five_trials: Path) -> None:
    trials = load(five_trials, "s").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    # the two hand-set recipes run first, with exactly their parameters
    assert trials[0].user_attrs["recipe"] == "qlora-toolcall"
    assert trials[0].params == {"lora.r": 8, "optim.lr": 2e-4, "optim.weight_decay": 0.01}
    # keys outside the space (the recipe's alpha/r scaling) reach the recipe's trial, and only it
    assert trials[0].user_attrs["recipe_overrides"] == {"lora.alpha": 16, "lora.use_rslora": False}
    assert trials[1].user_attrs["recipe"] == "guanaco" and trials[1].params["lora.r"] == 64
    lora = [
        yaml.safe_load((five_trials / "sweeps" / "s" / str(n) / "config.yaml").read_text())["lora"]
        for n in (0, 4)
    ]
    assert (lora[0]["use_rslora"], lora[0]["alpha"]) == (False, 16)
    assert (lora[1]["use_rslora"], lora[1]["alpha"]) == (True, 16)  # the space's fixed values
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 5
    for t in trials:  # the stored value is the job's own best val/loss, reported at every validation
        metrics = json.loads((five_trials / "sweeps" / "s" / str(t.number) / "metrics.json").read_text())
        assert t.value == pytest.approx(metrics["best_val_loss"])
        assert sorted(t.intermediate_values) == [4, 8, 12]
        assert t.user_attrs["steps"] == 12
        # the values it ran with that the sweep does not search, stored once per trial: the command's
        # overrides and the space's fixed keys
        assert t.user_attrs["fixed"]["model"] == "tiny" and "lora.use_rslora" in t.user_attrs["fixed"]
        assert not {k for k in t.user_attrs if k in t.user_attrs["fixed"]}  # not one attr per value


def test_best_trial_card_names_the_study(five_trials: Path) -> None:
    """When the study ends, the best trial's adapter card says which trial of which study it is."""
    study = load(five_trials, "s")
    best = study.best_trial
    beaten = sum(t.value > best.value for t in study.trials if t.number != best.number)
    for t in study.trials:
        card = (five_trials / "sweeps" / "s" / str(t.number) / "adapter" / "README.md").read_text()
        assert ("## Sweep" in card) == (t.number == best.number)
        if t.number == best.number:
            assert f"The best trial (number {best.number}) of the Optuna study `s`" in card
            assert f"It beat {beaten} of the study's 4 other finished trials (4 complete, 0 pruned)" in card


def test_rerun_resumes_to_the_total(five_trials: Path) -> None:
    before = {t.number: t.datetime_complete for t in load(five_trials, "s").trials}
    again = sweep(five_trials, *QLORA, "hydra.sweeper.n_trials=5")
    assert again.returncode == 0, again.stderr[-3000:]
    assert {t.number: t.datetime_complete for t in load(five_trials, "s").trials} == before  # nothing reran
    more = sweep(five_trials, *QLORA, "hydra.sweeper.n_trials=6")
    assert more.returncode == 0, more.stderr[-3000:]
    trials = load(five_trials, "s").trials
    assert len(trials) == 6 and {t.number: t.datetime_complete for t in trials[:5]} == before
    # a fixed sampler seed must not make the resumed study propose a finished trial's params again
    assert tuple(sorted(trials[5].params.items())) not in {
        tuple(sorted(t.params.items())) for t in trials[:5]
    }


def test_hopeless_lr_corner_is_pruned(tmp_path: Path) -> None:
    result = sweep(tmp_path, TEST_CONF, "hparams_search=hopeless_corner")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Error executing job" not in result.stderr  # pruning is no error
    trials = load(tmp_path, "hopeless").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    for t in trials[1:]:
        assert max(t.intermediate_values) < 12  # stopped before max_steps
        assert t.value == t.intermediate_values[max(t.intermediate_values)]  # stored with its last value


def test_diverging_trial_fails_and_the_sweep_goes_on(tmp_path: Path) -> None:
    result = sweep(tmp_path, TEST_CONF, "hparams_search=diverging")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = load(tmp_path, "diverging").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "nan" in trials[0].user_attrs["fail_reason"] and trials[0].user_attrs["fail_kind"] == "diverged"


def test_trial_predicted_over_max_memory_is_pruned_before_launch(tmp_path: Path) -> None:
    """model=tiny predicts ~0.02 GB at lora.r=8 and ~0.15 GB at lora.r=2048 (sweeplab.estimate)."""
    recipes = "[{recipe:big,params:{lora.r:2048}},{recipe:small,params:{lora.r:8}}]"
    result = sweep(
        tmp_path,
        *QLORA,
        "hydra.sweeper.n_trials=3",
        f"hydra.sweeper.enqueue={recipes}",
        "lora.r=choice(8,2048)",
        "hydra.sweeper.max_memory_gb=0.05",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = load(tmp_path, "s").trials
    assert [t.params["lora.r"] for t in trials[:2]] == [2048, 8]
    assert len(trials) == 3  # a pruned-by-prediction trial counts toward n_trials
    for t in trials:
        run_dir = tmp_path / "sweeps" / "s" / str(t.number)
        if t.params["lora.r"] == 2048:
            assert t.state == TrialState.PRUNED
            assert t.user_attrs["pruned_reason"] == (
                f"predicted {t.user_attrs['predicted_memory_gb']:.2g} GB > 0.05 GB"
            )
            assert 0.05 < t.user_attrs["predicted_memory_gb"] < 1
            assert (t.datetime_complete - t.datetime_start).total_seconds() < 30  # no job: imports + sizing
            assert not run_dir.exists() and not t.intermediate_values
            assert f"trial {t.number} PRUNED before launch" in result.stderr + result.stdout
        else:
            assert t.state == TrialState.COMPLETE and run_dir.is_dir()
            assert "pruned_reason" not in t.user_attrs


def test_memory_limit_runs_a_trial_it_cannot_estimate(caplog: pytest.LogCaptureFixture) -> None:
    """An estimate that fails must not kill the sweep: one warning, and every such trial runs."""
    from hydra_plugins.sweeplab_sweeper.memory import MemoryGate, gb

    gate = MemoryGate(6.0)
    for _ in range(2):
        assert gate.reason(None, None, ["lora.r=8"]) is None  # no config loader: cannot compose
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "cannot estimate a trial" in caplog.text
    assert MemoryGate(None).reason(None, None, []) is None
    assert f"predicted {gb(7.123)} GB > {6.0:g} GB" == "predicted 7.1 GB > 6 GB"


def test_two_workers_share_one_study(tmp_path: Path) -> None:
    result = sweep(tmp_path, *QLORA, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = load(tmp_path, "s").trials
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert (tmp_path / "sweeps" / "s" / "worker-1.log").is_file()
    assert len({t.number for t in trials}) == 4 and len({t.params["optim.lr"] for t in trials[2:]}) == 2


@pytest.mark.slow
def test_two_workers_run_one_range_test_and_wait_for_it(tmp_path: Path) -> None:
    """The first worker claims and runs the range test; the other asks no trial until its range exists."""
    result = sweep(
        tmp_path,
        *TOOL_SEARCH,
        "hydra.sweeper.study_name=w",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.budget=2",
        "hydra.sweeper.lr_range_test.steps=6",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = load(tmp_path, "w")
    test = study.user_attrs["lr_range_test"]
    logs = result.stderr + result.stdout + (tmp_path / "sweeps" / "w" / "worker-1.log").read_text()
    assert logs.count("lr range test: lowest loss") == 1  # one test for the study, not one per worker
    first = min(t.datetime_start for t in study.trials if t.datetime_start is not None)
    assert (
        first.timestamp() >= (tmp_path / "sweeps" / "w" / "lr_range_test" / "lr_range.json").stat().st_mtime
    )
    searched = [t for t in study.trials if t.params and not t.user_attrs.get("recipe")]
    assert all(test["low"] <= t.params["optim.lr"] <= test["high"] for t in searched)


def test_each_trial_is_its_own_wandb_run(tmp_path: Path) -> None:
    """Trials share one process; each must still get its own W&B run, plus one summary run."""
    overrides = [o for o in SMALL if not o.startswith(("logger=", "trainer.max_steps"))]
    result = subprocess.run(
        [sys.executable, "-m", "sweeplab.train", "--multirun", *overrides, *QLORA, "logger=wandb",
         "trainer.max_steps=4", "hydra.sweeper.n_trials=2", f"paths.output_root={tmp_path}"],
        cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for number in (0, 1):
        [run] = (tmp_path / "sweeps" / "s" / str(number) / "wandb").glob("offline-run-*")
        [record] = run.glob("*.wandb")  # W&B's own binary log: named after its trial, not the first one
        assert f"trial-{number}".encode() in record.read_bytes()
    assert len(list((tmp_path / "sweeps" / "s" / "wandb").glob("offline-run-*"))) == 1  # the summary


# Every pruner, set so it can act on a 10-step trial (validations at 4 and 8; the final one at 10).
ARGS = "hydra.sweeper.pruner."
PRUNERS = {
    "median": ("MedianPruner", [f"{ARGS}n_startup_trials=1", f"{ARGS}n_warmup_steps=4"]),
    "successive_halving": ("SuccessiveHalvingPruner", [f"{ARGS}min_resource=4", f"{ARGS}reduction_factor=2"]),
    "hyperband": ("HyperbandPruner", [f"{ARGS}min_resource=4", f"{ARGS}reduction_factor=2"]),
}


@pytest.mark.parametrize("pruner", sorted(PRUNERS))
def test_every_pruner_runs_a_sweep(pruner: str, tmp_path: Path) -> None:
    """max_steps=10 is no multiple of val_every_n_steps=4: the final validation at 10 is reported too."""
    pruner_class, kwargs = PRUNERS[pruner]
    result = sweep(
        tmp_path, "hparams_search=qlora", "hydra.sweeper.study_name=p", f"hydra/sweeper/pruner={pruner}",
        *kwargs, "hydra.sweeper.n_trials=2", "trainer.max_steps=10",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = load(tmp_path, "p").trials
    assert len(trials) == 2 and {t.user_attrs["pruner"] for t in trials} == {pruner_class}
    assert trials[0].state == TrialState.COMPLETE and sorted(trials[0].intermediate_values) == [4, 8, 10]
    for t in trials[1:]:  # the second may be pruned, at a validation before the end
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        expected = [4, 8, 10] if t.state == TrialState.COMPLETE else [4, 8][: len(t.intermediate_values)]
        assert sorted(t.intermediate_values) == expected
    if pruner == "hyperband":  # max_resource=auto: the trial's length, known before any trial ends
        assert "max_resource=auto is trainer.max_steps=10" in result.stdout + result.stderr


def test_random_sampler_custom_space_and_a_trial_shorter_than_val_every(tmp_path: Path) -> None:
    """hydra/sweeper/sampler=random composes with the qlora search; custom_search_space adds a param;
    a 3-step trial (val_every_n_steps=4) reports its only validation, the final one."""
    result = sweep(
        tmp_path, *QLORA, "hydra/sweeper/sampler=random", "hydra.sweeper.enqueue=[]",
        "hydra.sweeper.custom_search_space=tests.search_space.warmup", "hydra.sweeper.n_trials=2",
        "trainer.max_steps=3", env={TRUST_ENV: "tests.search_space.warmup"},  # the user trusts their hook
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = load(tmp_path, "s").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        assert t.intermediate_values == {3: pytest.approx(t.value)}
        assert "optim.warmup_ratio" in t.params
        config = (tmp_path / "sweeps" / "s" / str(t.number) / "config.yaml").read_text()
        assert f"warmup_ratio: {t.params['optim.warmup_ratio']}" in config


def test_bad_sweeper_options_fail_cleanly(tmp_path: Path) -> None:
    result = sweep(tmp_path, *QLORA, "hydra.sweeper.pruner=nope", "hydra.sweeper.n_jobs=0")
    assert result.returncode != 0
    assert "hydra.sweeper.pruner=nope: the pruner is a config group" in result.stderr
    assert "hydra.sweeper.n_jobs" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "sweeps" / "optuna.db").exists()


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("hydra.sweeper.budget=0", "hydra.sweeper.budget must be > 0"),
        ("hydra.sweeper.lr_range_test.steps=2", "hydra.sweeper.lr_range_test.steps must be an integer >= 3"),
        ("+hydra.sweeper.lr_range_test.max_lr=1", "hydra.sweeper.lr_range_test: ['max_lr'] not keys"),
        ("objective.intermediate=val/tool_exact", "objective.intermediate: must be null or one of"),
    ],
)
def test_bad_tool_search_options_name_the_key(override: str, says: str) -> None:
    from hydra_plugins.sweeplab_sweeper.checks import option_problems
    from sweeplab.config import validate
    from sweeplab.errors import ConfigError
    from tests.conftest import make_cfg

    cfg = make_cfg("hparams_search=qlora_tool_exact", override)
    if override.startswith("objective."):
        with pytest.raises(ConfigError, match=re.escape(says)):
            validate(cfg)
        return
    options = OmegaConf.to_container(cfg.hydra.sweeper, resolve=False)
    assert any(says in p for p in option_problems(options)), option_problems(options)


def test_patience_stops_a_study_whose_best_stopped_moving(tmp_path: Path) -> None:
    """The good recipe first, then two hopeless trials: with patience=2 the sweep ends after 3 of 6."""
    args = [
        TEST_CONF,
        "hparams_search=hopeless_corner",
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.patience=2",
    ]
    result = sweep(tmp_path, *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(load(tmp_path, "hopeless").trials) == 3
    assert "(hydra.sweeper.patience=2): stopping the sweep" in result.stdout + result.stderr
    again = sweep(tmp_path, *args)  # a rerun agrees instead of running more
    assert again.returncode == 0 and len(load(tmp_path, "hopeless").trials) == 3


def test_tool_search_range_test_centre_recipes_and_budget(tmp_path: Path) -> None:
    """hparams_search=qlora_tool_exact: a range test narrows optim.lr, the centre point runs first, then
    the recipes; rungs are judged by val/loss, answers decoded at the end only; the budget stops it."""
    result = sweep(
        tmp_path,
        *TOOL_SEARCH,
        "hydra.sweeper.study_name=t",
        "hydra.sweeper.budget=3",
        "hydra.sweeper.lr_range_test.steps=8",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = load(tmp_path, "t")
    test = study.user_attrs["lr_range_test"]
    assert 1e-5 <= test["low"] < test["centre"] < test["high"] <= 1e-1 and test["steps"] <= 8
    assert (tmp_path / "sweeps" / "t" / "lr_range_test" / "lr_range.json").is_file()
    trials = sorted(study.trials, key=lambda t: t.number)
    centre = trials[0]
    assert centre.user_attrs["role"] == "centre"
    assert centre.params["optim.lr"] == pytest.approx(test["centre"])
    assert (centre.params["lora.r"], centre.params["lora.alpha"], centre.params["lora.targets"]) == (
        16,
        16,
        "all-linear",
    )
    assert [t.user_attrs.get("recipe") for t in trials[1:3]] == ["qlora-toolcall", "guanaco"]
    for t in trials[3:]:  # searched trials draw lr inside the range the test found
        assert test["low"] <= t.params["optim.lr"] <= test["high"]
    # Rungs are -val/loss (the study maximizes tool calls); a finished trial's value is tool_exact.
    for t in trials:
        run = tmp_path / "sweeps" / "t" / str(t.number)
        if t.state == TrialState.COMPLETE:
            metrics = json.loads((run / "metrics.json").read_text())
            assert t.value == pytest.approx(metrics["best"]["val/tool_exact"])
            generated = [h for h in metrics["val_history"] if "val/tool_exact" in h]
            assert [h["step"] for h in generated] == [12]  # decoded once, at the end
            assert t.intermediate_values[12] == pytest.approx(-metrics["final"]["val/loss"])
        assert all(v < 0 for v in t.intermediate_values.values())
    spent = sum(t.user_attrs["steps"] for t in trials) + test["steps"]
    # A hard cap: a trial starts only if it fits whole, so the study never trains past the budget.
    assert 3 * 12 - 12 < spent <= 3 * 12
    assert "one more trial would pass hydra.sweeper.budget=3" in result.stderr + result.stdout
    # The report: the range test, the centre, each recipe and the best, with the compute each used.
    from sweeplab.report.cli import report

    command = report(study, f"sqlite:///{tmp_path / 'sweeps' / 'optuna.db'}", tmp_path / "report")
    index = (tmp_path / "report" / "index.md").read_text()
    assert f"| lr range test | | lowest loss at {test['lr_at_min_loss']:.3g}" in index
    assert "| 0 | " in index and "centre" in index and "recipe qlora-toolcall" in index
    assert f"Whole study: {spent} steps = {spent / 12:.2f} runs of 12 steps (budget 3 runs)." in index
    for t in trials[1:3]:  # a pruned recipe's value is its rung's val/loss, said so, not a tool_exact
        if t.state == TrialState.PRUNED:
            assert f"val/loss {-t.value:.4f}" in index
    words = command.split()
    keys = [w.split("=", 1)[0] for w in words[3:]]
    assert len(keys) == len(set(keys)) and not any(k.startswith(("hparams_search", "hydra")) for k in keys)
