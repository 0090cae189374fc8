"""What rank 0 writes and reports for a run: config.yaml, adapter, predictions, test scores, metrics.json."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hydra.types import RunMode
from omegaconf import OmegaConf

from sweeplab.config import RunConfig
from sweeplab.outputs import atomic_write_text, save_adapter, write_json
from sweeplab.secrets import redact_file

log = logging.getLogger("sweeplab.train")  # the run's own lines, under the entry point's name as before


def write_config(run_dir: Path, resolved: dict, hydra_cfg: Any) -> None:
    """The resolved config (secrets already redacted) as config.yaml; Hydra's own copies redacted."""
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(resolved))
    redact_hydra_files(run_dir, hydra_cfg)


def redact_hydra_files(run_dir: Path, hydra_cfg: Any) -> None:
    """Hydra saved the overrides as typed (a storage password, a token) before this job started."""
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        redact_file(run_dir / str(hydra_cfg.output_subdir or ".hydra") / name)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        redact_file(Path(hydra_cfg.sweep.dir) / "multirun.yaml")


def write_outputs(
    rc: RunConfig,
    run_dir: Path,
    trainer: Any,
    module: Any,
    tokenizer: Any,
    adapter_state: dict | None,
    *,
    best: dict,
    final: dict,
    trained: list[dict],
    evaluators: tuple[Any, Any],
    model_dir: str,
    placement: Any,
    stats: Any,
    lora_sha256: str,
    started: float,
    trial: Any = None,
    clock: Any = None,
) -> list[float]:
    """Rank 0 after fit: the adapter, predictions, test split, metrics.json (last), the trial's attrs.
    Returns the objective's values (one per objective.metric)."""
    import torch

    from sweeplab.data.datasets import data_sha256
    from sweeplab.models.build import count_parameters

    val_eval, test_eval = evaluators
    metric = rc.objective.primary
    save_adapter(module.model, tokenizer, run_dir / "adapter", adapter_state)
    if module.predictions:  # the last generating validation's answers, for reading the failures
        from sweeplab.eval.splits import write_jsonl

        write_jsonl(run_dir / "predictions_val.jsonl", module.predictions)
    test = {}
    if test_eval is not None:
        test = score_test_split(rc, run_dir, trainer, module, test_eval, model_dir, placement)
    trainable, total = count_parameters(module.model)
    base_val = [h for h in module.val_history if h["step"] == 0]
    peak_mem_mb = torch.cuda.max_memory_allocated() / 2**20 if placement.device != "cpu" else _peak_rss_mb()
    metrics = {
        "objective": {"metric": metric, "direction": rc.objective.resolved_direction, "value": best[metric]},
        "best": best,  # the validation whose weights are the adapter
        "final": final,
        **test,  # test/* (the adapter) and base/* (the untouched base) on the held-out test split
        "best_val_loss": min(h["val/loss"] for h in trained),
        "best_step": best["step"],
        "final_val_loss": final["val/loss"],
        "final_val_ppl": final["val/ppl"],
        "final_val_acc": final["val/acc"],
        "base_val_loss": base_val[0]["val/loss"] if base_val else None,
        "steps": trainer.global_step,
        "stopped_early": trainer.global_step < rc.trainer.max_steps,
        "tokens_per_s": module.tokens_per_s,
        "train_tokens": module.train_tokens,  # non-pad
        "data/useful_fraction": module.useful_fraction,  # non-pad over processed tokens
        "peak_mem_mb": peak_mem_mb,
        "trainable_params": trainable,
        "total_params": total,
        "lora_scaling": rc.lora.scaling,
        "precision": placement.precision,
        "device": placement.device,
        "strategy": rc.trainer.strategy,
        "world_size": trainer.world_size,  # processes; tokens_per_s is rank 0's share
        "lora_sha256": lora_sha256,
        "base_model": model_dir,
        "wall_s": time.perf_counter() - started,
        "eval_s": sum(e.seconds for e in (val_eval, test_eval) if e is not None),  # decoding, not training
        "data": stats.__dict__ if hasattr(stats, "__dict__") else dict(stats),
        "val_history": module.val_history,
        "data_sha256": data_sha256(rc.data),
    }
    values = rc.objective.values(best, metrics)
    if rc.objective.multi:  # the run's Pareto coordinates, in the order of objective.metric
        metrics["objective"] = {
            "metric": rc.objective.metrics,
            "direction": rc.objective.resolved_directions,
            "value": values,
        }
    write_adapter_card(run_dir, metrics, trainer.loggers)
    write_json(run_dir / "metrics.json", metrics)  # written last: its presence marks a finished run
    if trial is not None:
        for key in ("steps", "best_step", "wall_s", "eval_s", "tokens_per_s", "base_val_loss", *test):
            trial.set_user_attr(key, metrics[key])
        trial.set_user_attr("startup_s", clock.seconds)  # trial start to its first optimizer step
    start = f"{base_val[0][metric]:.4f}" if base_val and metric in base_val[0] else "n/a"
    log.info(
        "best %s %.4f at step %d (base %s); outputs in %s", metric, best[metric], best["step"], start, run_dir
    )
    return values


def write_adapter_card(run_dir: Path, metrics: dict, loggers: list) -> None:
    """The adapter's README.md model card, then the adapter as a W&B model artifact (card included).

    Neither may fail a run whose adapter is saved: a problem is logged and the run finishes."""
    import yaml

    from sweeplab.training.loggers import log_adapter_artifact
    from sweeplab.training.model_card import write_card

    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    try:
        write_card(run_dir / "adapter", config, metrics)
    except Exception as exc:  # noqa: BLE001 - a card is documentation; the adapter is already saved
        log.warning("could not write the adapter's model card: %s", exc)
    log_adapter_artifact(loggers, run_dir / "adapter", config, metrics)


def score_test_split(
    rc: RunConfig, run_dir: Path, trainer: Any, module: Any, test_eval: Any, model_dir: str, placement: Any
) -> dict:
    """test/* (the adapter) and base/* (the untouched base) on the held-out split, logged and returned."""
    from sweeplab.eval.splits import base_cache_path, score_test

    model_key = {
        "dir": model_dir,
        "quant": rc.model.quant.model_dump(),
        "device": placement.device,
        "precision": placement.precision,
    }
    base_cache = base_cache_path(rc.paths.cache_dir, test_eval, model_key)
    test = score_test(module.model, test_eval, run_dir, base_cache)
    for logger in trainer.loggers:  # test/* and base/* beside the curves, for dashboard comparison
        logger.log_metrics({k: v for k, v in test.items() if "/" in k}, step=trainer.global_step)
        logger.save()  # fit has ended, so nothing else flushes the CSV logger's buffer
    log.info(
        "test split (%d chats): tool_exact %.3f (base %.3f), args_acc %.3f, tool_name_acc %.3f, "
        "json_valid %.3f",
        test["test_chats"],
        test["test/tool_exact"],
        test["base/tool_exact"],
        test["test/args_acc"],
        test["test/tool_name_acc"],
        test["test/json_valid"],
    )
    return test


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
