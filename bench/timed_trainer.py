"""The Lightning Trainer the benches time a training loop with: training steps only, nothing else."""

from __future__ import annotations

from typing import Any


def training_only_trainer(
    max_steps: int,
    callbacks: list[Any],
    grad_clip: float,
    accelerator: str = "cpu",
    precision: str = "32-true",
) -> Any:
    """No logger, checkpoints, progress bar, summary or validation: what is timed is the step."""
    import lightning as L  # lazily: bench_trl's TRL arms never load it

    return L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_steps=max_steps,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=grad_clip,
        inference_mode=False,
    )
