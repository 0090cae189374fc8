"""Warmup + cosine to a floor: the values a user expects at the landmarks."""

from __future__ import annotations

import pytest
import torch

from sweeplab.config import OptimConfig
from sweeplab.module import build_optimizer, build_scheduler, warmup_steps


def lr_at(step: int, optim: OptimConfig, max_steps: int) -> float:
    param = torch.nn.Parameter(torch.zeros(2, 2))
    optimizer = build_optimizer([param], optim)
    scheduler = build_scheduler(optimizer, optim, max_steps)
    for _ in range(step):
        optimizer.step()
        scheduler.step()
    return optimizer.param_groups[0]["lr"]


def test_warmup_end_midpoint_and_end() -> None:
    optim = OptimConfig(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, optim, 110) == 0.0
    assert lr_at(5, optim, 110) == pytest.approx(0.5e-3)
    assert lr_at(10, optim, 110) == pytest.approx(1e-3)
    assert lr_at(60, optim, 110) == pytest.approx(0.1e-3 + 0.9e-3 * 0.5)  # cosine midpoint
    assert lr_at(110, optim, 110) == pytest.approx(0.1e-3)  # the floor, not zero


def test_warmup_ratio_and_explicit_steps() -> None:
    assert warmup_steps(OptimConfig(warmup_ratio=0.1), 200) == 20
    assert warmup_steps(OptimConfig(warmup_ratio=0.1, warmup_steps=7), 200) == 7


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
