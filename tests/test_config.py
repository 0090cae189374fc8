"""Every group choice composes and validates; bad values name their dotted key."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sweeplab.config import TARGET_SETS, validate
from sweeplab.errors import ConfigError
from tests.conftest import CONF, make_cfg

GROUPS = ["model", "lora", "optim", "data", "trainer", "logger", "callbacks", "paths"]
NEEDS = {"data=jsonl": ["data.path=x.jsonl"], "data=text": ["data.path=x.txt"]}
# Presets for a package this venv lacks: refused, saying what to install.
MISSING = (
    {}
    if importlib.util.find_spec("deepspeed")
    else {"trainer=zero2_offload": "pip install deepspeed==0.19.8"}
)


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "override",
    [f"{g}={c}" for g in GROUPS for c in choices(g)]
    + [f"experiment={p.stem}" for p in (Path(CONF).parent / "experiments").glob("*.yaml")],
)
def test_every_group_choice_validates(override: str) -> None:
    cfg = make_cfg(override, *NEEDS.get(override, []))
    if override in MISSING:
        with pytest.raises(ConfigError, match=re.escape(MISSING[override])):
            validate(cfg)
        return
    rc = validate(cfg)
    group, choice = override.split("=")
    assert cfg.hydra.runtime.choices.get(group) == choice or group == "experiment"
    assert rc.seed == cfg.seed


def test_required_presets_exist() -> None:
    assert {"r8", "r16", "r32", "r64"} <= set(choices("lora"))
    presets = {"base", "toy", "tiny", "smollm2-135m", "qwen2.5-0.5b", "qwen2.5-1.5b", "llama-3.2-1b"}
    assert presets <= set(choices("model"))
    for rank in (8, 16, 32, 64):
        lora = validate(make_cfg(f"lora=r{rank}")).lora
        assert (lora.r, lora.alpha) == (rank, 2 * rank)


def test_default_is_base_r16_and_experiment_overrides_groups() -> None:
    cfg = make_cfg()
    assert cfg.hydra.runtime.choices.model == "base" and cfg.hydra.runtime.choices.lora == "r16"
    assert validate(cfg).model.gguf.file == "SmolLM2-135M-Instruct.Q4_1.gguf"  # base: the real model
    quick = make_cfg("experiment=toolcall_quick")
    assert quick.hydra.runtime.choices.model == "toy" and validate(quick).lora.r == 8


@pytest.mark.parametrize("name", sorted(TARGET_SETS))
def test_named_target_sets(name: str) -> None:
    assert validate(make_cfg(f"lora.targets={name}")).lora.target_modules == TARGET_SETS[name]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["lora.r=-3"], "lora.r"),
        (["optim.lr=abc"], "optim.lr"),
        (["lora.targets=nope"], "lora.targets"),
        (["+lora.rank=8"], "lora.rank"),
        (["lora.dropout=1.5"], "lora.dropout"),
        (["optim.name=sgd"], "optim.name"),
        (["trainer.precision=fp8"], "trainer.precision"),
        (["trainer.max_steps=0"], "trainer.max_steps"),
        (["data.batch_size=two"], "data.batch_size"),
        (["model=toy", "model.embedded.num_heads=3"], "model.embedded"),
        (["model.name_or_path=some/model"], "model.name_or_path"),
        (["data=jsonl", "data.path=null"], "data.path"),
        (["+trainer.max_epoch=3"], "trainer.max_epoch"),
    ],
)
def test_bad_value_names_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        validate(make_cfg(*overrides))


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        validate(make_cfg("lora.r=-3", "optim.lr=abc", "lora.targets=nope"))
    for key in ("lora.r", "optim.lr", "lora.targets"):
        assert key in str(info.value)


def test_unknown_key_lists_allowed_keys() -> None:
    with pytest.raises(ConfigError, match=r"lora\.rank is not a key; expected one of \['alpha'"):
        validate(make_cfg("+lora.rank=8"))


def test_config_validation_imports_nothing_heavy() -> None:
    """--help and bad configs must answer in well under the ~7 s a torch/bnb import costs."""
    import subprocess
    import sys

    code = (
        "import sys; import sweeplab.config, sweeplab.train; "
        "heavy = [m for m in ('torch', 'transformers', 'bitsandbytes', 'lightning', 'peft') "
        "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_resolved_config_has_no_missing_values() -> None:
    cfg = make_cfg()
    assert {k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra.")} == set()


@pytest.mark.parametrize(("sampler", "target"), [("tpe_warm", "TPESampler"), ("random", "RandomSampler")])
def test_sweep_sampler_can_be_swapped(sampler: str, target: str) -> None:
    """TPE-only keys live in the sampler's own file, so choosing another sampler drops them."""
    cfg = make_cfg("hparams_search=qlora", f"hydra/sweeper/sampler={sampler}")
    assert cfg.hydra.sweeper.sampler._target_.endswith(target)
    assert cfg.hydra.sweeper.sampler.seed == 1234
    assert ("n_startup_trials" in cfg.hydra.sweeper.sampler) == (target == "TPESampler")
    for key in cfg.hydra.sweeper.params:  # the search space names only real keys
        assert OmegaConf.select(cfg, key) is not None, key
