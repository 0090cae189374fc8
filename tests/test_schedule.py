"""Warmup, then cosine / linear / constant: the values a user expects at the landmarks; LoRA+ groups."""

from __future__ import annotations

import pytest
import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from sweeplab.config import OptimConfig
from sweeplab.training.module import build_optimizer, build_scheduler


def lrs(optim: OptimConfig, max_steps: int) -> list[float]:
    """The lr of each optimizer step 0..max_steps (the last is where the run ends)."""
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(2, 2))], optim)
    scheduler = build_scheduler(optimizer, optim, max_steps)
    out = []
    for _ in range(max_steps + 1):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def lr_at(step: int, optim: OptimConfig, max_steps: int) -> float:
    return lrs(optim, max_steps)[step]


def test_warmup_end_midpoint_and_end() -> None:
    optim = OptimConfig(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, optim, 110) == 0.0
    assert lr_at(5, optim, 110) == pytest.approx(0.5e-3)
    assert lr_at(10, optim, 110) == pytest.approx(1e-3)
    assert lr_at(60, optim, 110) == pytest.approx(0.1e-3 + 0.9e-3 * 0.5)  # cosine midpoint
    assert lr_at(110, optim, 110) == pytest.approx(0.1e-3)  # the floor, not zero


def test_warmup_ratio_and_explicit_steps() -> None:
    assert OptimConfig(warmup_ratio=0.1).warmup_for(200) == 20
    assert OptimConfig(warmup_ratio=0.1, warmup_steps=7).warmup_for(200) == 7


def test_weight_decay_only_on_matrices() -> None:
    matrix, bias = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))
    optimizer = build_optimizer([matrix, bias], OptimConfig(weight_decay=0.1))
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decay == {id(matrix): 0.1, id(bias): 0.0}


def test_paged_adamw_8bit_is_bitsandbytes() -> None:
    import bitsandbytes as bnb

    optimizer = build_optimizer(
        [torch.nn.Parameter(torch.zeros(64, 64))], OptimConfig(name="paged_adamw_8bit")
    )
    assert isinstance(optimizer, bnb.optim.PagedAdamW8bit)


@pytest.mark.parametrize(("warmup", "floor"), [(10, 0.1), (0, 0.0), (3, 0.5)])
def test_default_cosine_is_the_transformers_schedule(warmup: int, floor: float) -> None:
    """The default schedule is unchanged: step for step what earlier runs used."""
    optim = OptimConfig(lr=1e-3, warmup_steps=warmup, min_lr_ratio=floor)
    reference = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2, 2))], lr=1e-3)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(reference, warmup, 50, min_lr_rate=floor)
    expected = []
    for _ in range(51):
        expected.append(reference.param_groups[0]["lr"])
        reference.step()
        scheduler.step()
    assert lrs(optim, 50) == pytest.approx(expected)


def test_constant_holds_lr_after_warmup() -> None:
    got = lrs(OptimConfig(lr=1e-3, schedule="constant", warmup_steps=4, min_lr_ratio=0.1), 40)
    assert got[:5] == pytest.approx([0.0, 0.25e-3, 0.5e-3, 0.75e-3, 1e-3])
    assert got[4:] == pytest.approx([1e-3] * 37)  # no decay, and min_lr_ratio plays no part


def test_linear_decays_to_the_floor() -> None:
    got = lrs(OptimConfig(lr=1e-3, schedule="linear", warmup_steps=10, min_lr_ratio=0.1), 110)
    assert got[10] == pytest.approx(1e-3)
    assert got[60] == pytest.approx(0.1e-3 + 0.9e-3 * 0.5)  # halfway down a straight line
    assert got[110] == pytest.approx(0.1e-3)
    assert all(a >= b for a, b in zip(got[10:-1], got[11:], strict=True))


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_warmup_starts_at_warmup_start_ratio(schedule: str) -> None:
    optim = OptimConfig(lr=1e-3, schedule=schedule, warmup_steps=10, warmup_start_ratio=0.2)
    got = lrs(optim, 100)
    assert got[0] == pytest.approx(0.2e-3)  # the first step's lr
    assert got[5] == pytest.approx(0.2e-3 + 0.8e-3 * 0.5)
    assert got[10] == pytest.approx(1e-3)


def test_loraplus_gives_b_ratio_times_a_lr_through_the_schedule() -> None:
    a, b = torch.nn.Parameter(torch.zeros(4, 2)), torch.nn.Parameter(torch.zeros(2, 4))
    bias = torch.nn.Parameter(torch.zeros(2))
    named = [("m.q_proj.lora_A.default.weight", a), ("m.q_proj.lora_B.default.weight", b), ("m.bias", bias)]
    optim = OptimConfig(lr=1e-3, weight_decay=0.1, loraplus_lr_ratio=16, warmup_steps=2)
    optimizer = build_optimizer(named, optim)
    scheduler = build_scheduler(optimizer, optim, 10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    group = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert group[id(b)]["lr"] == pytest.approx(16 * group[id(a)]["lr"])
    assert group[id(bias)]["lr"] == pytest.approx(group[id(a)]["lr"])  # only B is sped up
    assert (group[id(a)]["weight_decay"], group[id(b)]["weight_decay"], group[id(bias)]["weight_decay"]) == (
        0.1,
        0.1,
        0.0,
    )
    assert optimizer.param_groups[0] is group[id(a)]  # the logged lr is A's


def test_loraplus_off_keeps_one_lr() -> None:
    named = [("x.lora_A.default.weight", torch.nn.Parameter(torch.zeros(4, 2)))]
    named.append(("x.lora_B.default.weight", torch.nn.Parameter(torch.zeros(2, 4))))
    optimizer = build_optimizer(named, OptimConfig(lr=1e-3))
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3]


def test_loraplus_needs_parameter_names() -> None:
    with pytest.raises(ValueError, match="named_parameters"):
        build_optimizer([torch.nn.Parameter(torch.zeros(2, 2))], OptimConfig(loraplus_lr_ratio=4))


def test_loraplus_ratio_1_trains_as_off() -> None:
    """What lets a sweep offer 'off' as choice(1, ...): Hydra's choice() cannot hold null."""
    final = []
    for ratio in (None, 1.0):
        torch.manual_seed(0)
        a, b = torch.nn.Parameter(torch.randn(4, 2)), torch.nn.Parameter(torch.randn(2, 4))
        optim = OptimConfig(lr=1e-2, weight_decay=0.1, loraplus_lr_ratio=ratio, warmup_steps=2)
        optimizer = build_optimizer([("x.lora_A.default.weight", a), ("x.lora_B.default.weight", b)], optim)
        scheduler = build_scheduler(optimizer, optim, 10)
        for _ in range(5):
            optimizer.zero_grad()
            (b @ a).square().sum().backward()
            optimizer.step()
            scheduler.step()
        final.append((a.detach(), b.detach()))
    assert torch.equal(final[0][0], final[1][0]) and torch.equal(final[0][1], final[1][1])
