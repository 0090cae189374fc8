"""The sweeper's config as the upstream Optuna sweeper's users write it: the pruner group, the grid
sampler, max_failure_rate, the execution whitelist, and search-space errors told by key."""

from __future__ import annotations

import functools
from pathlib import Path

import optuna
import pytest
from hydra.errors import InstantiationException
from hydra.utils import execution_whitelist
from optuna.trial import TrialState

from hydra_plugins.sweeplab_sweeper import checks
from hydra_plugins.sweeplab_sweeper.sweeper import SweeplabSweeperImpl
from sweeplab.sweep.pruners import PRUNERS, build_pruner
from tests.conftest import make_cfg
from tests.test_sweep import QLORA, TEST_CONF, load, sweep

EXPECTED = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
}


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_one_override_switches_the_pruner_of_the_qlora_search(name: str) -> None:
    """qlora's successive-halving arguments go with it: the new node holds only its own pruner's."""
    cfg = make_cfg("hparams_search=qlora", f"hydra/sweeper/pruner={name}")
    node = cfg.hydra.sweeper.pruner
    pruner = build_pruner(node, cfg.trainer.max_steps)
    assert type(pruner) is EXPECTED[name]
    own = set(PRUNERS[name].__dataclass_fields__)
    assert set(node) == own, f"{name}: keys of another pruner left behind: {set(node) - own}"
    assert checks.pruner_problems(node, cfg) == []


def test_sweeplab_train_rungs_start_at_the_first_validation() -> None:
    """conf/hydra/sweeper/pruner/ shadows the generic options for sweeplab.train: its first rung is
    the first validation, and Hyperband's brackets reach trainer.max_steps."""
    cfg = make_cfg("hparams_search=qlora", "hydra/sweeper/pruner=hyperband", "trainer.val_every_n_steps=7")
    pruner = build_pruner(cfg.hydra.sweeper.pruner, cfg.trainer.max_steps)
    assert pruner._min_resource == 7 and pruner._max_resource == cfg.trainer.max_steps
    cfg = make_cfg("experiment=toolcall_sweep_gpu")  # a GPU experiment picks Hyperband by the group
    assert cfg.hydra.sweeper.pruner.min_resource == cfg.trainer.val_every_n_steps


def test_upstream_constructor_and_execution_whitelist() -> None:
    """Built as upstream's tests build OptunaSweeperImpl: the hook is resolved by instantiate(), so the
    app's execution whitelist applies, and a refusal names the key."""

    def impl(custom_search_space: str | None, **extra) -> SweeplabSweeperImpl:
        return SweeplabSweeperImpl(
            sampler=optuna.samplers.RandomSampler(), direction="minimize", storage=None, study_name=None,
            n_trials=20, n_jobs=1, max_failure_rate=0.0, custom_search_space=custom_search_space,
            params=None, **extra,
        )  # fmt: skip

    with pytest.raises(
        InstantiationException, match="hydra.sweeper.custom_search_space=os.system: .*os.system"
    ):
        impl("os.system")
    hook = "tests.search_space.warmup"
    with execution_whitelist([]), pytest.raises(InstantiationException, match="not in the Hydra execution"):
        impl(hook)
    with execution_whitelist(hook):
        extender = impl(hook).custom_search_space_extender
    assert isinstance(extender, functools.partial) and extender.func.__name__ == "warmup"
    # upstream's rate as a count of failures, out of n_trials; max_failures as it is; else n_trials
    assert impl(None).max_failures == 0
    assert impl(None, max_failures=3).max_failures == 3
    assert SweeplabSweeperImpl(None, "minimize", None, None, 20, 1, 0.25, None, None).max_failures == 5
    assert SweeplabSweeperImpl(None, "minimize", None, None, 20, 1, None, None, None).max_failures == 20


@pytest.mark.parametrize(
    ("line", "key", "about"),
    [
        ("x is not a key; expected one of ['a', 'b']", "y", False),  # `y` inside "key"
        ("lora.rank is not a key; expected one of ['alpha', 'r']", "lora.r", False),
        ("foo is not a key; expected one of ['run_name', 'seed']", "seed", False),  # a quoted allowed key
        ("lora.r: Input should be greater than 0 (got -1)", "lora.r", True),
        (
            "optim.warmup_steps (40) must be < trainer.max_steps (20): never leaves warmup",
            "trainer.max_steps",
            True,
        ),
        ("objective.metric=val/tool_exact needs eval.n_generate > 0", "eval.n_generate", True),
    ],
)
def test_search_space_errors_are_told_by_key(line: str, key: str, about: bool) -> None:
    assert checks.names_key(line, key) is about


def test_another_keys_error_is_not_given_to_a_searched_key() -> None:
    """The config every trial starts from is wrong elsewhere (foo): seed's values are not to blame."""
    cfg = make_cfg("+foo=1")
    assert checks._values_problem("seed", [1, 2], cfg) is None
    assert "lora.r would be given invalid values: 0" in checks._values_problem("lora.r", [8, 0], cfg)


GRID = [
    *QLORA,
    "hydra/sweeper/sampler=grid",
    "hydra.sweeper.enqueue=[]",
    "optim.lr=3e-3",
    "optim.weight_decay=0.0",
    "lora.r=choice(4, 8)",
    "trainer.max_steps=4",
]


def test_grid_sampler_runs_each_point_once(tmp_path: Path) -> None:
    """The grid comes from the search space (here lora.r's two values); n_trials is capped to it, and
    a rerun finds the grid done."""
    result = sweep(tmp_path, *GRID, "hydra.sweeper.n_trials=5")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "grid sampler: n_trials 5 -> 2" in result.stdout + result.stderr
    trials = load(tmp_path, "s").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert sorted(t.params["lora.r"] for t in trials) == [4, 8]
    again = sweep(tmp_path, *GRID, "hydra.sweeper.n_trials=5")
    assert again.returncode == 0 and len(load(tmp_path, "s").trials) == 2


def test_max_failure_rate_zero_stops_at_the_first_failure(tmp_path: Path) -> None:
    """Upstream's default spelled out: the diverging recipe fails, the sane one never starts, and the
    failure's reason is on stderr (test_sweep's default run of this search goes on)."""
    result = sweep(tmp_path, TEST_CONF, "hparams_search=diverging", "hydra.sweeper.max_failure_rate=0.0")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    trials = load(tmp_path, "diverging").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]  # the sane recipe, queued
    assert "1 trials failed, more than 0 (hydra.sweeper.max_failure_rate=0.0 of n_trials=1)" in result.stderr
    assert "trial 0: " in result.stderr and "nan" in result.stderr.lower()
