"""LightningModule around a peft model: loss, assistant-token metrics, AdamW (LoRA+), warmup + decay."""

from __future__ import annotations

import math
import time
from functools import partial
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics.aggregation import MeanMetric

from sweeplab.config import OBJECTIVE_METRICS, ObjectiveConfig, OptimConfig
from sweeplab.data.packing import real_tokens
from sweeplab.errors import DivergedError
from sweeplab.models.label_head import LabelLogits
from sweeplab.rng import rng_state, set_rng_state


def build_optimizer(
    params: list[torch.nn.Parameter] | list[tuple[str, torch.nn.Parameter]], optim: OptimConfig
) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; LoRA+ needs their names (model.named_parameters())."""
    named = [item if isinstance(item, tuple) else ("", item) for item in params]
    ratio = optim.loraplus_lr_ratio
    if ratio is not None and not all(name for name, _ in named):
        raise ValueError("optim.loraplus_lr_ratio needs parameter names: pass model.named_parameters()")

    def is_b(name: str) -> bool:  # peft names B "...q_proj.lora_B.default.weight"
        return ratio is not None and ".lora_B." in name

    # Decay the LoRA matrices only; biases, norms (bias="all") and DoRA magnitudes keep their scale.
    # peft's create_loraplus_optimizer would decay DoRA magnitudes and give them B's lr, hence our own.
    groups = [
        {"params": [p for n, p in named if p.ndim >= 2 and not is_b(n)], "weight_decay": optim.weight_decay},
        {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0},
        {
            "params": [p for n, p in named if p.ndim >= 2 and is_b(n)],
            "weight_decay": optim.weight_decay,
            "lr": optim.lr * (ratio or 1.0),
        },
    ]
    groups = [g for g in groups if g["params"]]  # group 0 holds lora_A: its lr is the one logged
    kwargs = {"lr": optim.lr, "betas": optim.betas, "eps": optim.eps}
    if optim.name == "paged_adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(groups, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def lr_factor(step: int, *, schedule: str, warmup: int, total: int, start: float, floor: float) -> float:
    """The learning rate at optimizer step `step` as a fraction of each group's peak lr."""
    if step < warmup:
        return start + (1.0 - start) * step / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return floor + (1.0 - floor) * decay


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, max_steps: int) -> LambdaLR:
    """Linear warmup from warmup_start_ratio * lr to lr, then optim.schedule (cosine: as transformers')."""
    factor = partial(
        lr_factor,
        schedule=optim.schedule,
        warmup=optim.warmup_for(max_steps),
        total=max_steps,
        start=optim.warmup_start_ratio,
        floor=optim.min_lr_ratio,
    )
    return LambdaLR(optimizer, factor)


class QLoRAModule(L.LightningModule):
    """Runs the model; keeps the val history and the best LoRA weights for the outputs."""

    def __init__(
        self,
        model: torch.nn.Module,
        optim: OptimConfig,
        max_steps: int,
        objective: ObjectiveConfig | None = None,
        evaluator: Any = None,  # sweeplab.eval.generate.ToolCallEvaluator: tool calls scored at validations
        generate_every: int = 1,
    ) -> None:
        super().__init__()
        self.model = model
        self.optim = optim
        self.max_steps = max_steps
        self.objective = objective or ObjectiveConfig()
        self.evaluator = evaluator
        self.generate_every = generate_every
        self.predictions: list[dict] = []  # the last generating validation's, one record per chat
        self.strict_loading = False  # checkpoints hold the trainable (LoRA) weights only
        self.val_loss = MeanMetric()  # token-weighted over the whole val set
        self.val_acc = MeanMetric()
        self.val_history: list[dict[str, float]] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.train_tokens = 0  # non-pad tokens trained on
        self.processed_tokens = 0
        self.train_seconds = 0.0
        self._batch_start = 0.0
        self._rng_to_restore: dict[str, Any] | None = None
        self.label_logits = LabelLogits(model)  # the loss's logits, at labelled positions only

    # --- training -----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits, targets = self.label_logits(batch)
        # Mean over labelled tokens, as model(labels=...) computes it; a batch with none trains nothing.
        loss = F.cross_entropy(logits, targets) if len(targets) else logits.sum() * 0.0
        if not torch.isfinite(loss):
            raise DivergedError(
                f"training loss became {loss.item()} at step {self.global_step}; "
                "lower optim.lr or clip gradients (trainer.grad_clip=1.0)"
            )
        self.log("train/loss", loss, prog_bar=True)
        self.log("lr", self.optimizers().param_groups[0]["lr"], prog_bar=True)
        return loss

    def on_train_batch_start(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if self._rng_to_restore is not None:  # first step after a resume: LoRA dropout as if never stopped
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # Forward + backward + optimizer step, excluding validation and data loading.
        self.train_seconds += time.perf_counter() - self._batch_start
        self.train_tokens += real_tokens(batch)
        self.processed_tokens += batch["input_ids"].numel()  # pads included: what the model computed
        self.log("data/useful_fraction", self.useful_fraction)
        self.log("tokens_per_s", self.tokens_per_s, prog_bar=True)

    @property
    def useful_fraction(self) -> float:
        """Non-pad tokens over tokens the model processed: what padding (or packing) costs."""
        return self.train_tokens / self.processed_tokens if self.processed_tokens else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.train_tokens / self.train_seconds if self.train_seconds else 0.0

    # --- validation ---------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        picked, wanted = self.label_logits(batch)  # (N, vocab), (N,) over assistant tokens only
        n = len(wanted)
        if n == 0:
            return
        self.val_loss.update(F.cross_entropy(picked, wanted), weight=n)
        self.val_acc.update((picked.argmax(-1) == wanted).float().mean(), weight=n)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        loss = float(self.val_loss.compute())
        acc = float(self.val_acc.compute())
        self.val_loss.reset()
        self.val_acc.reset()
        ppl = math.exp(min(loss, 50.0))
        entry = {"step": self.global_step, "val/loss": loss, "val/ppl": ppl, "val/acc": acc}
        if self._generation_due():
            scores, self.predictions = self.evaluator.run(self.model)
            entry |= {f"val/{name}": value for name, value in scores.items()}
        shown = {
            "val/loss",
            self.objective.primary,
            self.objective.watched,
        }  # the progress bar: the loss and what the run is judged by
        self.log_dict({k: v for k, v in entry.items() if k in shown}, prog_bar=True)
        self.log_dict({k: v for k, v in entry.items() if k not in shown and k != "step"})
        trained = self.global_step > 0
        if trained and all(self.better(entry, h) for h in self.val_history if h["step"] > 0):
            self.best_state = {k: v.detach().clone() for k, v in self._trainable_state().items()}
        self.val_history.append(entry)

    def _generation_due(self) -> bool:
        """Every generate_every-th validation (the first included), and always the last one (0: only it)."""
        if self.evaluator is None:
            return False
        final = self.global_step >= self.max_steps or (
            self.trainer.state.fn == "validate" and self.global_step > 0  # the run's closing validation
        )
        return final or (self.generate_every > 0 and len(self.val_history) % self.generate_every == 0)

    def better(self, a: dict[str, float], b: dict[str, float]) -> bool:
        """a beats b on the objective; an accuracy tie goes to the lower val/loss.

        With objective.intermediate, only the last validation measures the objective: one that does
        beats one that does not, and two that do not compare by the intermediate metric."""
        metric = self.objective.primary
        if metric not in a or metric not in b:
            if (metric in a) != (metric in b):
                return metric in a
            metric = self.objective.watched
            if OBJECTIVE_METRICS[metric] == "minimize":
                return a[metric] < b[metric]
            return a[metric] > b[metric]
        if a[metric] != b[metric]:
            return a[metric] < b[metric] if self.objective.mode == "min" else a[metric] > b[metric]
        return a["val/loss"] < b["val/loss"]

    # --- best weights and checkpoints ---------------------------------------------------------
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in names}

    def load_best(self) -> None:
        if self.best_state is not None:
            self.load_state_dict(self.best_state, strict=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in names}
        checkpoint["sweeplab"] = {
            "val_history": self.val_history,
            "best_state": self.best_state,
            "train_tokens": self.train_tokens,
            "processed_tokens": self.processed_tokens,
            "train_seconds": self.train_seconds,
            "rng": rng_state(),  # restored at the next training step, so nothing drawn before it counts
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("sweeplab", {})
        self.val_history = list(saved.get("val_history", []))
        self.best_state = saved.get("best_state")
        self.train_tokens = saved.get("train_tokens", 0)
        self.processed_tokens = saved.get("processed_tokens", 0)
        self.train_seconds = saved.get("train_seconds", 0.0)
        self._rng_to_restore = saved.get("rng")

    # --- optimizer ----------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        optimizer = build_optimizer(params, self.optim)
        scheduler = build_scheduler(optimizer, self.optim, self.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
