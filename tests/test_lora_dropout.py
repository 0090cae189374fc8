"""FastCPUDropout: nn.Dropout's distribution and gradients, from a quarter of the random draws."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sweeplab.models.lora_dropout import FastCPUDropout, use_fast_dropout
from tests.conftest import make_cfg


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_keeps_each_element_with_probability_one_minus_p_and_scales_kept_ones(p: float) -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 256, 577) + 1.0  # odd size: the last 64-bit draw is only partly used
    y = FastCPUDropout(p).train()(x)
    kept = y != 0
    n = x.numel()
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    q = round(p * 65536) / 65536  # the keep probability actually used
    torch.testing.assert_close(y[kept], x[kept] / (1 - q))
    assert abs(y.mean().item() / x.mean().item() - 1) < 0.01  # unbiased: E[y] = x


def test_masks_are_independent_across_lanes_and_positions() -> None:
    """Neighbours (the four lanes of one draw, and the next draw) drop together only by chance."""
    torch.manual_seed(1)
    p = 0.5
    dropped = (FastCPUDropout(p).train()(torch.ones(1 << 20)) == 0).float()
    for shift in (1, 2, 3, 4, 5):
        both = (dropped[:-shift] * dropped[shift:]).mean().item()
        assert abs(both - p * p) < 0.005, shift


def test_gradient_is_the_mask_times_the_scale_and_seeding_reproduces_it() -> None:
    x = torch.randn(3, 40, 64, requires_grad=True)
    torch.manual_seed(7)
    y = FastCPUDropout(0.1).train()(x)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, torch.where(y != 0, 1 / (1 - round(0.1 * 65536) / 65536), 0.0))
    torch.manual_seed(7)
    torch.testing.assert_close(FastCPUDropout(0.1).train()(x.detach()), y.detach())  # same seed, same mask


def test_eval_mode_and_p_zero_or_one_behave_as_nn_dropout() -> None:
    x = torch.randn(8, 16)
    assert torch.equal(FastCPUDropout(0.3).eval()(x), x)
    assert torch.equal(FastCPUDropout(0.0).train()(x), x)
    assert torch.equal(FastCPUDropout(1.0).train()(x), torch.zeros_like(x))


def test_checkpoint_recompute_draws_the_same_mask() -> None:
    """Activation checkpointing re-runs the forward in backward: the mask must be the one used forward."""
    from torch.utils.checkpoint import checkpoint

    lin, drop = nn.Linear(32, 32), FastCPUDropout(0.2).train()
    x = torch.randn(16, 32, requires_grad=True)
    torch.manual_seed(3)
    checkpoint(lambda t: lin(drop(t)), x, use_reentrant=False).sum().backward()
    with_ckpt = x.grad.clone()
    x.grad = None
    torch.manual_seed(3)
    lin(drop(x)).sum().backward()
    torch.testing.assert_close(x.grad, with_ckpt)


def test_build_model_gives_every_lora_layer_the_fast_dropout(hermetic_cache) -> None:
    from sweeplab.config import validate
    from sweeplab.models.build import build_model, resolve_model_dir

    rc = validate(make_cfg("model=tiny", "lora.dropout=0.05"))
    model = build_model(resolve_model_dir(rc.model, hermetic_cache), rc.model, rc.lora, torch.float32)
    dropouts = [d for m in model.modules() if hasattr(m, "lora_dropout") for d in m.lora_dropout.values()]
    assert dropouts and all(type(d) is FastCPUDropout and d.p == 0.05 for d in dropouts)
    assert use_fast_dropout(model) == 0  # nothing left to swap
