"""The optional knobs in a real run: what the run leaves behind shows each one was used, not only parsed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open

from tests.conftest import TINY, make_cfg, run_train

KNOBS = [
    "optim.schedule=constant",
    "optim.warmup_steps=4",
    "optim.warmup_start_ratio=0.25",
    "optim.loraplus_lr_ratio=16",
    "lora.use_dora=true",
    "lora.layers_to_transform=[-1]",  # the last of the tiny base's 2 layers
    "lora.targets=[q_proj,v_proj]",
    "trainer.log_every_n_steps=1",
]


def train(out: Path, logger: str) -> Path:
    result = run_train(*TINY, *KNOBS, f"logger={logger}", f"run_name={logger}", output_root=out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out / "runs" / logger


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("out")
    return {logger: train(out, logger) for logger in ("tensorboard", "csv")}


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the run's TensorBoard event files (one per fit or validate call)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[tuple[int, float]]] = {}
    for events in sorted((run / "tensorboard").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            found.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return found


def test_tensorboard_logs_what_csv_logs(runs: dict[str, Path]) -> None:
    tags = set(scalars(runs["tensorboard"]))
    header = next((runs["csv"] / "csv").rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    assert {"val/loss", "train/loss", "lr", "val/tool_exact", "test/tool_exact"} <= tags
    assert tags == set(header) - {"step"}


def test_schedule_and_warmup_start_shape_the_logged_lr(runs: dict[str, Path]) -> None:
    lr = [value for _, value in sorted(scalars(runs["tensorboard"])["lr"])]
    peak = 3e-3  # TINY's optim.lr
    assert lr[0] == pytest.approx(0.25 * peak)  # the first step: warmup_start_ratio * lr
    assert lr[:5] == pytest.approx([peak * (0.25 + 0.75 * k / 4) for k in range(5)])
    assert lr[4:] == pytest.approx([peak] * (len(lr) - 4))  # constant: flat after warmup
    assert len(lr) == 24


def test_the_adapter_is_dora_on_the_last_layer_only(runs: dict[str, Path]) -> None:
    adapter = runs["tensorboard"] / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["use_dora"] is True
    assert config["layers_to_transform"] == [1]  # -1 resolved against the depth
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    assert all(".layers.1." in k for k in keys), keys
    assert sum("lora_magnitude_vector" in k for k in keys) == 2  # q_proj and v_proj


def test_loraplus_lr_survives_in_the_checkpoint(runs: dict[str, Path]) -> None:
    ckpt = torch.load(runs["tensorboard"] / "checkpoints" / "last.ckpt", weights_only=False)
    groups = ckpt["optimizer_states"][0]["param_groups"]
    a_lr = groups[0]["lr"]  # lora_A
    assert sorted(g["lr"] / a_lr for g in groups) == pytest.approx([1.0, 1.0, 16.0])  # A, magnitudes, B


@pytest.mark.parametrize(
    ("space", "problem"),
    [
        (
            {
                "lora.use_dora": "choice(true,false)",
                "lora.use_rslora": "choice(true,false)",
                "optim.loraplus_lr_ratio": "choice(1,4,16)",  # Hydra has no null in choice(); 1 is off
                "optim.schedule": "choice(cosine,linear,constant)",
                "optim.warmup_start_ratio": "interval(0.0,0.5)",
            },
            None,
        ),
        (
            {"optim.loraplus_lr_ratio": "choice(-1,4)"},
            "optim.loraplus_lr_ratio: Input should be greater than 0",
        ),
        ({"optim.schedule": "choice(cosine,step)"}, "optim.schedule: Input should be 'cosine'"),
    ],
)
def test_the_sweeper_searches_the_knobs(space: dict[str, str], problem: str | None) -> None:
    from hydra_plugins.sweeplab_sweeper.checks import space_problems

    problems = space_problems(OmegaConf.create(space), [], make_cfg("model=tiny"))
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0], problems
