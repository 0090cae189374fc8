"""One QLoRA run: validate -> build -> fit -> write outputs -> return the objective (default best val/loss).

python -m sweeplab.train                                  # model=base (SmolLM2-135M-Instruct) lora=r16
python -m sweeplab.train model=base lora=r16 optim.lr=3e-4 trainer.max_steps=200
python -m sweeplab.train experiment=toolcall_quick
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from sweeplab import reuse
from sweeplab.config import CONF_DIR, RunConfig, validate
from sweeplab.errors import ConfigError, DataError, DataLoaderFailed, Interrupted, OutOfMemory, SweeplabError
from sweeplab.outputs import quiet_log_write_errors
from sweeplab.quiet import quiet_job_stops, quiet_library_noise
from sweeplab.secrets import install_log_redaction, redact, redact_text
from sweeplab.sweep.task import sweeplab_task
from sweeplab.training.ranks import is_rank_zero, trial_ranks
from sweeplab.training.results import write_config, write_outputs
from sweeplab.trust import resolve_target, trusted_targets

log = logging.getLogger("sweeplab.train")
try:  # what any config may instantiate; the user adds their own code in SWEEPLAB_TRUSTED_TARGETS
    TRUSTED_TARGETS = trusted_targets()
except ConfigError as _err:
    print(f"sweeplab: error: {_err}", file=sys.stderr)
    sys.exit(2)


def preflight_model(rc: RunConfig) -> None:
    """A missing GGUF package or file fails here, before torch is imported."""
    if rc.model.gguf is not None:
        from sweeplab.models.gguf import locate

        locate(rc.model.gguf)


def preflight_callbacks(rc: RunConfig) -> None:
    """callbacks.extra names code: the app's execution whitelist (and the user's, from the
    environment) must allow it, checked before anything loads. A config cannot trust itself."""
    for i, item in enumerate(rc.callbacks.extra):
        resolve_target(f"callbacks.extra[{i}]._target_", item["_target_"])


def preflight_data(rc: RunConfig) -> None:
    """Read user data files before the base is built or loaded, so a bad line fails in seconds."""
    from sweeplab.data.readers import read_jsonl, read_text

    reader = {"jsonl": read_jsonl, "text": read_text}.get(rc.data.source)
    if reader is None:
        return
    for path in (rc.data.path, rc.data.val_path, rc.data.test_path):
        if path:
            reader(Path(path))


def fit(
    rc: RunConfig, run_dir: Path, resolved: dict, ckpt: str | None, trial: Any = None, follower: bool = False
) -> float | tuple[float, ...]:
    """follower: a rank > 0 of a sweep's multi-device trial; it prunes when rank 0 (holding `trial`) does."""
    import lightning as L
    import torch

    from sweeplab.data import loaders
    from sweeplab.eval.splits import build_evaluators
    from sweeplab.models.precision import resolve_placement
    from sweeplab.training.distributed import (
        broadcast_from_rank_zero,
        build_strategy,
        gathered_state,
        lora_digest,
    )
    from sweeplab.training.inputs import load_data, load_model
    from sweeplab.training.interrupt import GracefulStop
    from sweeplab.training.loggers import build_logger
    from sweeplab.training.module import QLoRAModule
    from sweeplab.training.resume import DataPosition
    from sweeplab.training.trainer import build_trainer

    started = time.perf_counter()
    L.seed_everything(rc.seed, workers=True, verbose=False)
    placement = resolve_placement(rc.trainer)

    keep = reuse.enabled(trial is not None)  # a sweep worker's next trial may share them
    model_dir, tokenizer, (train_set, val_set, stats) = load_data(rc, keep)
    val_eval, test_eval = build_evaluators(rc, tokenizer, keep)
    model = load_model(rc, model_dir, placement, keep)
    module = QLoRAModule(model, rc.optim, rc.trainer.max_steps, rc.objective, val_eval, rc.generate_every)
    _MODULES.add(module)

    train_loader, sampler = loaders.train_loader(rc.data, train_set, tokenizer.pad_token_id)
    val_loader = loaders.val_loader(rc.data, val_set, tokenizer.pad_token_id)

    extra = [GracefulStop(run_dir / "checkpoints" / "last.ckpt")]
    extra += [hydra.utils.instantiate(c) for c in rc.callbacks.extra]  # preflight_callbacks allowed them
    pruning, clock, pruner = [], None, None
    if (trial is not None or follower) and not rc.objective.multi:  # Optuna prunes one objective only
        from sweeplab.sweep.pruning import PruningCallback

        sign = 1.0 if rc.objective.watched_mode == rc.objective.mode else -1.0
        pruner = PruningCallback(trial, monitor=rc.objective.watched, sign=sign)
        pruning = [pruner]
    if trial is not None:
        from sweeplab.sweep.pruning import StartupClock

        clock = StartupClock(trial.datetime_start.timestamp())
        pruning.append(clock)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("base_reused", reuse.reused.get("base", False))
        trial.set_user_attr("pruner", type(trial.study.pruner).__name__)  # the one that judged this trial
        # Earlier trials in this process must have let go of their models (a failed one's traceback
        # holds its frames): the sweeper collects them after each trial; this records that it worked.
        trial.set_user_attr("models_alive_at_start", _models_alive(module))
        if placement.device != "cpu":
            trial.set_user_attr("cuda_mem_at_start_mb", torch.cuda.memory_allocated() / 2**20)
    extra = [*extra, DataPosition(sampler, rc.data.batch_size), *pruning]
    logger = build_logger(rc.logger, run_dir, resolved)
    trainer = build_trainer(rc, placement, logger, run_dir, extra, build_strategy(rc.trainer, model))
    with translate_faults(rc, trainer):
        if rc.trainer.val_at_start and ckpt is None:
            reuse.validate_at_start(trainer, module, val_loader, start_key(rc, model_dir, placement), keep)
            if trial is not None:
                trial.set_user_attr("start_validation_reused", reuse.reused["start_validation"])
        trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt, weights_only=True)
    if pruner is not None and pruner.pruned_at is not None:
        if trial is None:  # a rank > 0: rank 0 tells Optuna
            log.info("rank %d stops with rank 0: pruned at step %d", trainer.global_rank, pruner.pruned_at)
            return float("nan")
        import optuna

        trial.set_user_attr("steps", trainer.global_step)
        trial.set_user_attr("wall_s", time.perf_counter() - started)
        trial.set_user_attr("startup_s", clock.seconds)
        raise optuna.TrialPruned(f"pruned at step {pruner.pruned_at}")
    if not module.val_history or module.val_history[-1]["step"] != trainer.global_step:
        # Every run ends with final val metrics; PruningCallback reports them to the trial too.
        trainer.validate(module, val_loader, verbose=False)

    trained = [h for h in module.val_history if h["step"] > 0]
    if not trained:
        raise SweeplabError("no validation ran after training; raise trainer.max_steps")
    best = trained[0]
    for entry in trained[1:]:
        best = entry if module.better(entry, best) else best
    final = module.val_history[-1]
    metric = rc.objective.primary
    objective = broadcast_from_rank_zero(trainer, float(best[metric]))
    module.load_best()  # the adapter and the objective are the best validation's weights
    lora_sha256 = lora_digest(module.model)
    if trainer.world_size > 1:  # equal on every rank if the ranks trained one model (FSDP: its shard)
        log.info("rank %d of %d: LoRA sha256 %s", trainer.global_rank, trainer.world_size, lora_sha256)
    adapter_state = gathered_state(trainer)
    if not trainer.is_global_zero:
        return objective  # rank 0 writes the adapter and metrics, and tells Optuna
    values = write_outputs(
        rc,
        run_dir,
        trainer,
        module,
        tokenizer,
        adapter_state,
        best=best,
        final=final,
        trained=trained,
        evaluators=(val_eval, test_eval),
        model_dir=model_dir,
        placement=placement,
        stats=stats,
        lora_sha256=lora_sha256,
        started=started,
        trial=trial,
        clock=clock,
    )
    return tuple(values) if rc.objective.multi else objective  # several: the sweep's Pareto coordinates


def start_key(rc: RunConfig, model_dir: str, placement: Any) -> tuple:
    """What the validation of the untouched base depends on (not lora.r, optim, seed: B = 0 at start)."""
    return (
        model_dir,
        rc.model.model_dump_json(),
        rc.data.model_dump_json(),
        rc.eval.model_dump_json(),
        rc.objective.model_dump_json(),
        rc.trainer.limit_val_batches,
        rc.lora.use_dora,
        placement.device,
        placement.precision,
    )


@contextlib.contextmanager
def translate_faults(rc: RunConfig, trainer: Any) -> Iterator[None]:
    """Out-of-memory and data loader crashes as errors that say what happened and what to change."""
    import torch

    try:
        yield
    except torch.OutOfMemoryError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "out of memory"
        raise OutOfMemory(
            f"out of memory at step {trainer.global_step} ({first}) with data.batch_size="
            f"{rc.data.batch_size}, data.max_seq_len={rc.data.max_seq_len}, lora.r={rc.lora.r}: lower "
            "data.batch_size (raise trainer.accumulate_grad_batches to keep the batch) or set "
            "data.max_seq_len (unset, it is the longest chat)"
        ) from None
    except RuntimeError as err:
        if "DataLoader worker" not in str(err):
            raise
        raise DataLoaderFailed(
            f"data loader failed at step {trainer.global_step}: {err}; with data.num_workers="
            f"{rc.data.num_workers}, try data.num_workers=0 to see the worker's own error"
        ) from None


def _models_alive(current: Any) -> int:
    """QLoRAModules of earlier fits in this process still alive after the sweeper's collection.

    No gc.collect of its own: a full collection took ~0.75 s per trial start, and the sweeper has
    just run one (release_memory); this records whether that one freed them."""
    return sum(1 for m in list(_MODULES) if m is not current)


_MODULES: weakref.WeakSet = weakref.WeakSet()  # every QLoRAModule fit built; a WeakSet keeps none alive


def run(cfg: DictConfig) -> float | tuple[float, ...]:
    install_log_redaction()  # Hydra set up this job's log handlers just before calling us
    quiet_library_noise()
    quiet_job_stops()
    sys.argv[:] = [redact_text(a) for a in sys.argv]  # W&B records argv in every run's metadata
    rc = validate(cfg)
    hydra_cfg = HydraConfig.get()
    rank_zero = is_rank_zero()  # a rank > 0 runs the job rank 0 started, and writes nothing of its own
    if rank_zero and hydra_cfg.mode == RunMode.RUN and hydra_cfg.runtime.choices.get("hparams_search"):
        if any(o.startswith("hparams_search=") for o in hydra_cfg.overrides.task):
            raise ConfigError("hparams_search is set, but this is a single run: add --multirun to sweep")
        # An experiment that carries a sweep, run once: how a sweep's best command reproduces a trial.
        log.warning("this experiment defines a sweep; running one trial's config (add --multirun to sweep)")
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if "TORCHELASTIC_RUN_ID" in os.environ and not any(
        o.startswith("run_name=") for o in hydra_cfg.overrides.task
    ):
        # Each rank composes its own config: a timestamp run_name could differ by a second between them.
        raise ConfigError("under torchrun, give run_name=NAME so that every rank uses one run dir")
    if (run_dir / "metrics.json").exists():
        raise ConfigError(f"{run_dir} already holds a finished run; choose another run_name")
    preflight_model(rc)
    preflight_callbacks(rc)
    preflight_data(rc)
    ckpt = None
    if rc.ckpt_path is not None:
        from sweeplab.training.resume import check_checkpoint, resolve_ckpt

        ckpt = resolve_ckpt(rc.ckpt_path, run_dir, Path(rc.paths.output_root))
        check_checkpoint(ckpt)  # before the model loads: a file that would run code is refused in seconds
    resolved = redact(OmegaConf.to_container(cfg, resolve=True))  # also what W&B logs
    if rank_zero:
        write_config(run_dir, resolved, hydra_cfg)
    if rc.lr_range_test is not None:  # a sweep's first phase: where the lr range lies, no adapter
        from sweeplab.training.lr_range import run_range_test

        try:
            return run_range_test(rc, run_dir, keep=reuse.enabled(hydra_cfg.mode == RunMode.MULTIRUN))
        finally:
            reuse.end_trial(clean=sys.exc_info()[1] is None)
    trial = None
    in_sweep = bool(os.environ.get("SWEEPLAB_TRIAL_ID"))
    if in_sweep and rank_zero:  # only inside a sweeplab sweep: optuna stays unimported
        from sweeplab.sweep.trial import trial_from_env

        trial = trial_from_env(HydraConfig.get().sweeper, rc.trainer.max_steps)
    failed = True
    try:
        with trial_ranks():  # a multi-device trial's other ranks end with it
            objective = fit(rc, run_dir, resolved, ckpt, trial, follower=in_sweep and not rank_zero)
        failed = False
        return objective
    finally:
        if "wandb" in sys.modules:  # else no run can be open, and the loggers module stays unimported
            from sweeplab.training.loggers import finish_wandb_run

            finish_wandb_run(failed)
        # A pruned trial stopped cleanly at a validation; any other failure may have left its base
        # half-wrapped (an OOM mid-step), so the next trial loads a fresh one.
        reuse.end_trial(clean=not failed or type(sys.exc_info()[1]).__name__ == "TrialPruned")


def resume_command(hydra_cfg: Any) -> str:
    overrides = [o for o in hydra_cfg.overrides.task if not o.startswith(("ckpt_path=", "run_name="))]
    name = Path(hydra_cfg.runtime.output_dir).name
    return redact_text(
        " ".join(["python -m sweeplab.train", *overrides, f"run_name={name}", "ckpt_path=last"])
    )


def _holds_only_bookkeeping(run_dir: Path) -> bool:
    """Hydra's .hydra/ and log, our config.yaml: safe to delete; checkpoints or metrics never are."""
    return run_dir.is_dir() and all(
        p.name in (".hydra", "config.yaml") or p.suffix == ".log" for p in run_dir.iterdir()
    )


def _remove_empty_parents(run_dir: Path, run_name: str) -> None:
    """A refused run_name=a/b has made runs/a as well: remove the directories its slashes made."""
    for parent in list(run_dir.parents)[: len(Path(run_name).parts) - 1]:
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


# Targets any config may instantiate: sweeplab.trust.BASE_TRUSTED and SWEEPLAB_TRUSTED_TARGETS.
# Marked: the sweeper applies sweeplab's checks and phases to this task only (sweeplab.sweep.task).
@hydra.main(config_path=CONF_DIR, config_name="train", execution_whitelist=TRUSTED_TARGETS)
@sweeplab_task
def main(cfg: DictConfig) -> float | tuple[float, ...]:
    quiet_log_write_errors()  # a full disk: one line per log file, not a traceback per record
    hydra_cfg = HydraConfig.get()
    try:
        return run(cfg)
    except Interrupted as err:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # the sweeper marks the trial, queues its params again and stops
        print(f"sweeplab: {err}\n  resume: {resume_command(hydra_cfg)}", file=sys.stderr)
        sys.exit(130)
    except (ConfigError, DataError, SweeplabError) as err:
        if hydra_cfg.mode == RunMode.MULTIRUN or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise  # the sweeper records the trial as failed, with this reason
        run_dir = Path(hydra_cfg.runtime.output_dir)
        if _holds_only_bookkeeping(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing was produced: leave no run dir behind
            _remove_empty_parents(
                run_dir, str(OmegaConf.select(cfg, "run_name", throw_on_resolution_failure=False))
            )
        print(f"sweeplab: error: {redact_text(str(err))}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
