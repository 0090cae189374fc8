"""Experiment loggers: W&B (offline by itself without a key), CSV, TensorBoard, or none."""

from __future__ import annotations

import importlib.util
import logging
import netrc
import os
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger

from sweeplab.config import LoggerConfig
from sweeplab.errors import ConfigError

log = logging.getLogger(__name__)


def wandb_has_key() -> bool:
    """A key in the environment or ~/.netrc; without one, init would prompt or wait on the network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def build_logger(cfg: LoggerConfig, run_dir: Path, config: dict[str, Any]) -> Logger | bool:
    if cfg.backend == "none":
        return False
    if cfg.backend == "csv":
        logger = CSVLogger(save_dir=str(run_dir), name="csv", version="")
        logger.log_hyperparams(config)
        return logger
    if cfg.backend == "tensorboard":
        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("logger=tensorboard needs the tensorboard package: make install, or logger=csv")
        # default_hp_metric off: a constant hp_metric=-1 would sit beside the real curves.
        logger = TensorBoardLogger(
            save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False
        )
        logger.log_hyperparams(config)
        return logger
    offline = cfg.mode == "offline" or (cfg.mode == "auto" and not wandb_has_key())
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        offline = True
    if offline:
        log.info("W&B offline (no API key): sync later with `wandb sync %s/wandb/offline-run-*`", run_dir)
    logger = WandbLogger(
        project=cfg.project,
        group=cfg.group,
        name=cfg.name,
        tags=list(cfg.tags),
        save_dir=str(run_dir),
        offline=offline,
        config=config,
    )
    # Lightning 2.6 always passes anonymous=None, and wandb 0.31 warns that the setting is gone.
    logger._wandb_init.pop("anonymous", None)
    return logger


def finish_wandb_run(failed: bool) -> None:
    """Lightning's WandbLogger leaves its run open: the next trial in this process would log into it."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        try:
            wandb.finish(exit_code=1 if failed else 0)
        except Exception as exc:  # noqa: BLE001 - a logging hiccup must not fail a finished run
            log.warning("could not close the W&B run: %s", exc)


ARTIFACT_METRICS = ("best_val_loss", "base_val_loss", "test/tool_exact", "base/tool_exact", "test/json_valid")


def log_adapter_artifact(loggers: list, adapter_dir: Path, config: dict, metrics: dict) -> None:
    """The run's best adapter as a W&B artifact of type "model"; offline runs record it for `wandb sync`.

    W&B copies the files into its staging dir at log time, so a later sync uploads this version even
    if the run dir changes."""
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        try:
            import wandb

            run = logger.experiment
            metadata = {key: metrics[key] for key in ARTIFACT_METRICS if metrics.get(key) is not None}
            metadata |= {"base_model": metrics.get("base_model"), "data_sha256": metrics.get("data_sha256")}
            metadata |= {f"lora.{k}": v for k, v in config["lora"].items()}
            artifact = wandb.Artifact(
                name=f"adapter-{run.id}",
                type="model",
                description=f"LoRA adapter of run {config.get('run_name')} (its best validation)",
                metadata=metadata,
            )
            artifact.add_dir(str(adapter_dir))
            run.log_artifact(artifact, aliases=["best"])
        except Exception as exc:  # noqa: BLE001 - a dashboard hiccup must not fail a finished run
            log.warning("could not log the adapter as a W&B artifact: %s", exc)
