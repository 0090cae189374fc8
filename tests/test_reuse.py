"""A sweep worker's held base comes back as a fresh load: same weights, no hooks, the same next trial."""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from sweeplab import reuse
from sweeplab.config import validate
from sweeplab.models.build import build_model, load_quantized, resolve_model_dir
from tests.conftest import make_cfg
from tests.test_model import fixed_batch
from tests.test_sweep import QLORA, load, sweep

# Checkpointing on: its hooks are what would pile up on a held base.
OVERRIDES = ("model=tiny", "model.gradient_checkpointing=true", "lora.targets=all-linear")


@pytest.fixture(autouse=True)
def nothing_held() -> Iterator[None]:
    reuse.drop()
    yield
    reuse.drop()


@pytest.fixture(scope="module")
def tiny_dir(hermetic_cache: Path) -> str:
    return resolve_model_dir(validate(make_cfg("model=tiny")).model, hermetic_cache)


def trial(
    tiny_dir: str, keep: bool, *overrides: str, steps: int = 2
) -> tuple[list[float], list[torch.Tensor]]:
    """A trial in miniature: seed, build, a few AdamW steps on LoRA; (losses, first-step LoRA grads)."""
    rc = validate(make_cfg(*OVERRIDES, *overrides))
    torch.manual_seed(0)
    model = build_model(tiny_dir, rc.model, rc.lora, torch.float32, keep=keep)
    batch = fixed_batch(tiny_dir)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    losses, grads = [], []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        grads = grads or [p.grad.clone() for p in trainable]
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses, grads


def embedding_hooks(model: torch.nn.Module) -> int:
    return len(model.get_input_embeddings()._forward_hooks)


def test_held_base_is_bit_identical_to_a_fresh_load_after_a_trial(tiny_dir: str) -> None:
    trial(tiny_dir, True, "lora.r=8")
    reuse.end_trial(clean=True)
    rc = validate(make_cfg(*OVERRIDES))
    held = reuse._held["base"][1]
    fresh = load_quantized(tiny_dir, rc.model, torch.float32)
    assert not any(isinstance(m, BaseTunerLayer) for m in held.modules())
    assert embedding_hooks(held) == 0 and not held.is_activation_checkpointing and not held.training
    held_state, fresh_state = held.state_dict(), fresh.state_dict()
    assert held_state.keys() == fresh_state.keys()
    for name, tensor in fresh_state.items():
        assert torch.equal(held_state[name], tensor), name


def test_second_trial_on_a_held_base_equals_the_same_trial_on_a_fresh_one(tiny_dir: str) -> None:
    trial(tiny_dir, True, "lora.r=16")
    reuse.end_trial(clean=True)
    reused_losses, reused_grads = trial(tiny_dir, True, "lora.r=8", steps=3)
    assert reuse.reused["base"]
    model = reuse._held["base"][1]
    assert embedding_hooks(model) <= 1  # the current trial's only; the first trial's was removed
    reuse.drop()
    alone_losses, alone_grads = trial(tiny_dir, False, "lora.r=8", steps=3)
    assert not reuse.reused["base"]
    assert reused_losses == alone_losses
    assert all(torch.equal(a, b) for a, b in zip(reused_grads, alone_grads, strict=True))


def test_a_new_key_frees_the_old_base_and_a_failure_drops_everything(tiny_dir: str) -> None:
    trial(tiny_dir, True, steps=1)
    reuse.end_trial(clean=True)
    old = weakref.ref(reuse._held["base"][1])
    trial(tiny_dir, True, "model.quant.double_quant=false", steps=1)  # another base: loaded, old one freed
    assert not reuse.reused["base"]
    gc.collect()
    assert old() is None
    reuse.end_trial(clean=False)  # e.g. an OOM mid-step: the base may be half-wrapped
    assert reuse._held == {}


def test_a_single_run_holds_nothing(tiny_dir: str) -> None:
    trial(tiny_dir, False, steps=1)
    reuse.end_trial(clean=True)
    assert reuse._held == {}


@pytest.mark.slow
def test_trial_two_of_a_worker_equals_the_same_params_alone(tmp_path: Path) -> None:
    """The sweep's second trial runs on the first's base, tokenizer and data; alone, it loads them."""
    first = "{recipe:first,params:{lora.r:16,optim.lr:0.003,optim.weight_decay:0.0}}"
    second = "{recipe:second,params:{lora.r:8,optim.lr:0.001,optim.weight_decay:0.1}}"
    # val_at_start on (qlora turns it off): the untouched base's validation is run once per worker.
    common = [*QLORA, "model.gradient_checkpointing=true", "data.num_workers=0", "trainer.val_at_start=true"]
    both = sweep(
        tmp_path / "both", *common, "hydra.sweeper.n_trials=2", f"hydra.sweeper.enqueue=[{first},{second}]"
    )
    assert both.returncode == 0, both.stdout[-3000:] + both.stderr[-3000:]
    alone = sweep(
        tmp_path / "alone", *common, "hydra.sweeper.n_trials=1", f"hydra.sweeper.enqueue=[{second}]"
    )
    assert alone.returncode == 0, alone.stdout[-3000:] + alone.stderr[-3000:]
    trials = load(tmp_path / "both", "s").trials
    [solo] = load(tmp_path / "alone", "s").trials
    assert [t.user_attrs["base_reused"] for t in trials] == [False, True]
    assert solo.user_attrs["base_reused"] is False
    # The untouched base's validation (tool calls decoded too) ran once: trial 2 got trial 1's.
    assert [t.user_attrs["start_validation_reused"] for t in trials] == [False, True]
    assert solo.user_attrs["start_validation_reused"] is False
    assert trials[1].params == solo.params
    assert trials[1].value == solo.value  # exactly: same weights, same LoRA init, same dropout draws
    assert trials[1].intermediate_values == solo.intermediate_values

    def history(root: Path, number: int) -> list[dict]:
        metrics = json.loads((root / "sweeps" / "s" / str(number) / "metrics.json").read_text())
        return metrics["val_history"]

    assert history(tmp_path / "both", 1) == history(tmp_path / "alone", 0)  # step 0 and decoding included
    assert "val/tool_exact" in history(tmp_path / "both", 1)[0]
    assert all(0 < t.user_attrs["startup_s"] < t.user_attrs["wall_s"] + 60 for t in [*trials, solo])
