"""The Lightning Trainer and its callbacks, built from the trainer and callbacks config groups."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import Logger
from lightning.pytorch.strategies import Strategy

from sweeplab.config import RunConfig
from sweeplab.models.precision import Placement
from sweeplab.training.resume import AtomicCheckpointIO


class StepProgressBar(TQDMProgressBar):
    """One bar over optimizer steps up to max_steps: runs are sized in steps, not epochs."""

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        if self.train_progress_bar.total != trainer.max_steps:  # first epoch, or a resumed run
            self.train_progress_bar.reset(total=trainer.max_steps)
            self.train_progress_bar.initial = trainer.global_step
            self.train_progress_bar.set_description("step")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        step = trainer.global_step
        if self._should_update(step, trainer.max_steps):
            self.train_progress_bar.n = step
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))  # also refreshes

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version id says nothing about training
        return metrics


def build_callbacks(rc: RunConfig, run_dir: Path) -> list[Callback]:
    callbacks: list[Callback] = [StepProgressBar()] if rc.trainer.enable_progress_bar else []
    es = rc.callbacks.early_stopping
    objective = rc.objective
    if es.enabled:
        callbacks.append(
            EarlyStopping(
                monitor=objective.watched,
                mode=objective.watched_mode,
                patience=es.patience,
                min_delta=es.min_delta,
                check_on_train_epoch_end=False,  # judge on validations, not epoch ends
            )
        )
    ck = rc.callbacks.checkpoint
    if ck.save_best or ck.save_last:
        callbacks.append(
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints",
                filename="best",
                monitor=objective.watched,
                mode=objective.watched_mode,
                save_top_k=1 if ck.save_best else 0,
                save_last=ck.save_last,
                auto_insert_metric_name=False,
                enable_version_counter=False,
            )
        )
    return callbacks


def _not_an_advert(record: logging.LogRecord) -> bool:
    """Lightning 2.6 prints a product tip on every Trainer; it buries the lines that matter."""
    return "Tip:" not in str(record.msg)


def build_trainer(
    rc: RunConfig,
    placement: Placement,
    logger: Logger | bool,
    run_dir: Path,
    extra: list[Callback] = (),
    strategy: Strategy | str = "auto",
) -> L.Trainer:
    # Hydra's root handler already prints Lightning's messages; its own handlers would double them.
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _not_an_advert not in rank_zero.filters:
        rank_zero.addFilter(_not_an_advert)
    accumulate = rc.trainer.accumulate_grad_batches
    return L.Trainer(
        accelerator=placement.accelerator,
        devices=rc.trainer.devices,
        num_nodes=rc.trainer.num_nodes,
        strategy=strategy,  # sweeplab.training.distributed.build_strategy
        precision=placement.precision,
        max_steps=rc.trainer.max_steps,
        max_epochs=-1,  # max_steps decides; small datasets simply take several epochs
        val_check_interval=rc.trainer.val_every_n_steps * accumulate,  # Lightning counts batches
        check_val_every_n_epoch=None,
        limit_val_batches=rc.trainer.limit_val_batches,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=rc.trainer.grad_clip,
        logger=logger,
        callbacks=[*build_callbacks(rc, run_dir), *extra],
        plugins=[AtomicCheckpointIO()],  # checkpoints appear whole or not at all; loaded weights-only
        log_every_n_steps=rc.trainer.log_every_n_steps,
        enable_progress_bar=rc.trainer.enable_progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        inference_mode=False,  # validate() before fit would leave metric states as inference tensors
        default_root_dir=str(run_dir),
    )
