"""An lr range test: a few dozen steps with an exponentially rising lr, to place a sweep's lr range.

Hand-rolled rather than Lightning's `Tuner.lr_find`: that one reads the loss Lightning logs, swaps in
its own scheduler, and in exponential mode takes its slope against lr instead of log lr (Lightning
issue #21141), which made its suggestion jump on a noisy loss. This loop trains the run's own model on
its own batches with its own optimizer and loss, and only the lr differs from a run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sweeplab.config import OptimConfig
from sweeplab.models.label_head import LabelLogits
from sweeplab.training.module import build_optimizer

log = logging.getLogger(__name__)
SMOOTHING = 0.6  # EMA weight of the past: one batch's loss is noisy, a few batches' trend is not
DIVERGED = 4.0  # the smoothed loss this many times its minimum: the lr is past any use, stop
# The searched range below the lr of the lowest smoothed loss. That lr is where a constant-lr run stops
# improving, the largest stable lr rather than the best one: fastai's lr_find rule takes a tenth of it
# as the single best lr (Howard & Gugger 2020, "Fastai: a layered API for deep learning"), and Smith's
# range test (arXiv 1506.01186) a bound between a third and a quarter of it. 1.5 decades below it keeps
# both rules near the middle of the range (log scale), where the sampler starts.
SPAN = 10**1.5


def lr_at(step: int, steps: int, min_lr: float, max_lr: float) -> float:
    """Exponential from min_lr (step 0) to max_lr (the last step)."""
    return min_lr * (max_lr / min_lr) ** (step / max(1, steps - 1))


def smooth(losses: list[float]) -> list[float]:
    """Bias-corrected exponential moving average (fastai's): the first values are not pulled to 0."""
    out, avg = [], 0.0
    for k, loss in enumerate(losses, start=1):
        avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
        out.append(avg / (1 - SMOOTHING**k))
    return out


def suggest(lrs: list[float], losses: list[float], min_lr: float, max_lr: float) -> dict[str, Any]:
    """The searched lr range from a range test: [best / SPAN, best], best = lr of the lowest smoothed loss.

    `edge` says when the minimum fell on the test's last step (the loss still fell: the range may reach
    higher) or its first (every lr tried was too high). Bounds never leave [min_lr, max_lr].
    """
    finite = [(lr, loss) for lr, loss in zip(lrs, losses, strict=True) if math.isfinite(loss)]
    if len(finite) < 3:
        raise ValueError(f"the lr range test produced {len(finite)} finite losses; it needs at least 3")
    curve = smooth([loss for _, loss in finite])
    k = min(range(len(curve)), key=curve.__getitem__)
    best = finite[k][0]
    high = min(max_lr, best)
    low = max(min_lr, high / SPAN)
    edge = "last" if k == len(finite) - 1 else "first" if k == 0 else None
    return {
        "lr_at_min_loss": best,
        "low": low,
        "high": high,
        "centre": math.sqrt(low * high),
        "edge": edge,
        "steps": len(lrs),
        "lrs": lrs,
        "losses": losses,
        "smoothed": curve,
    }


def lr_range_test(
    model: torch.nn.Module,
    loader: Any,
    optim: OptimConfig,
    steps: int,
    min_lr: float,
    max_lr: float,
    device: str,
    autocast_dtype: torch.dtype | None = None,
    grad_clip: float | None = None,
) -> dict[str, Any]:
    """Train `steps` optimizer steps at exponentially rising lr; stop early once the loss has diverged."""
    label_logits = LabelLogits(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    optimizer = build_optimizer(named, optim)
    ratios = [group["lr"] / optim.lr for group in optimizer.param_groups]  # LoRA+ keeps B's ratio
    model.train()
    lrs: list[float] = []
    losses: list[float] = []
    batches = iter(loader)
    lowest = math.inf
    for step in range(steps):
        lr = lr_at(step, steps, min_lr, max_lr)
        for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
            group["lr"] = lr * ratio
        try:
            batch = next(batches)
        except StopIteration:  # a short train set: go round again
            batches = iter(loader)
            batch = next(batches)
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        cast = (
            torch.autocast(device.split(":")[0], dtype=autocast_dtype)
            if autocast_dtype
            else contextlib.nullcontext()
        )
        with cast:
            logits, targets = label_logits(batch)
            loss = F.cross_entropy(logits.float(), targets) if len(targets) else None
        if loss is None:
            continue
        lrs.append(lr)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        current = smooth(losses)[-1]
        lowest = min(lowest, current)
        if current > DIVERGED * lowest:
            break
    return suggest(lrs, losses, min_lr, max_lr)


def run_range_test(rc: Any, run_dir: Path, keep: bool = False) -> float:
    """The job side of a sweep's range test: the run's model, data and optimizer; lr_range.json, no adapter.

    Returns the centre of the suggested range (the sweeper reads the whole result from the file)."""
    import lightning as L

    from sweeplab.data import loaders
    from sweeplab.models.precision import resolve_placement
    from sweeplab.outputs import write_json
    from sweeplab.training.inputs import load_data, load_model

    test = rc.lr_range_test
    started = time.perf_counter()
    L.seed_everything(rc.seed, workers=True, verbose=False)
    placement = resolve_placement(rc.trainer)
    model_dir, tokenizer, (train_set, _, _) = load_data(rc, keep)
    model = load_model(rc, model_dir, placement, keep)
    loader, _ = loaders.train_loader(rc.data, train_set, tokenizer.pad_token_id)
    autocast = (
        placement.compute_dtype if placement.device != "cpu" and "mixed" in placement.precision else None
    )
    result = lr_range_test(
        model,
        loader,
        rc.optim,
        test.steps,
        test.min_lr,
        test.max_lr,
        placement.device,
        autocast,
        rc.trainer.grad_clip,
    )
    result["wall_s"] = time.perf_counter() - started
    result["batch_size"] = rc.data.batch_size
    write_json(run_dir / "lr_range.json", result)
    edge = {"last": " (the loss still fell at max_lr)", "first": " (it rose from min_lr on)"}.get(
        result["edge"], ""
    )
    log.info(
        "lr range test, %d steps: lowest loss at lr %.3g%s; searched range [%.3g, %.3g]",
        result["steps"],
        result["lr_at_min_loss"],
        edge,
        result["low"],
        result["high"],
    )
    return result["centre"]
