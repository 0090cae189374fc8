"""One trial on several devices: the Lightning strategy, the processes it runs in, and rank 0's duties.

Every rank trains the same LoRA weights on its own batches (gradients are averaged); only rank 0
talks to Optuna and writes outputs. Two ways to start the ranks:

- torchrun (or SLURM's srun) starts them: Lightning sees LOCAL_RANK/WORLD_SIZE and launches nothing.
- `python -m sweeplab.train trainer.strategy=ddp trainer.devices=N`: the first process is rank 0 and
  starts ranks 1..N-1 when training begins. Lightning's own launcher would re-run `sys.argv` (in a
  sweep: `--multirun`, a whole second sweep with the sweep's overrides, not this trial's); sweeplab's
  re-runs this job instead: its own overrides, in its run dir, with the trial id in the environment.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from typing import Any

import torch
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, Strategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from sweeplab.config import TrainerConfig
from sweeplab.training.ranks import LAUNCHED, WORKER_ENV, child_command

log = logging.getLogger(__name__)


class _Observer(_ChildProcessObserver):
    """Lightning's watchdog (a dead rank kills the job rather than leave it hanging in a collective),
    with an off switch for when rank 0 ends the ranks itself."""

    stopped = False

    def _terminate_all(self) -> None:
        if not self.stopped:
            super()._terminate_all()


class TrialLauncher(_SubprocessScriptLauncher):
    """Lightning's launcher, with ranks 1..N-1 started as `child_command` inside a Hydra job."""

    observer: _Observer | None = None

    def stop_watching(self) -> None:
        if self.observer is not None:
            self.observer.stopped = True

    def launch(self, function: Any, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            self._call_children_scripts()
            self.observer = _Observer(main_pid=os.getpid(), child_processes=self.procs)
            self.observer.start()
        return function(*args, **kwargs)

    def _call_children_scripts(self) -> None:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            super()._call_children_scripts()
            return
        self._check_can_spawn_children()
        env = self.cluster_environment
        os.environ.update(
            MASTER_ADDR=env.main_address,
            MASTER_PORT=str(env.main_port),
            NODE_RANK=str(env.node_rank()),
            LOCAL_RANK=str(env.local_rank()),
            WORLD_SIZE=str(self.num_processes * self.num_nodes),
        )
        for local_rank in range(1, self.num_processes):
            command, cwd = child_command(local_rank)
            self.procs.append(
                subprocess.Popen(command, env={**os.environ, "LOCAL_RANK": str(local_rank)}, cwd=cwd)
            )
        LAUNCHED.append(self)  # trial_ranks ends them with this job
        log.info("started ranks 1..%d of this trial (logs: rank_<n>.log)", self.num_processes - 1)


class _TrialLaunch:
    """Mixed into each strategy: Lightning's subprocess launcher replaced by TrialLauncher."""

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if type(self._launcher) is _SubprocessScriptLauncher:
            self._launcher = TrialLauncher(self.cluster_environment, self.num_processes, self.num_nodes)


class TrialDDP(_TrialLaunch, DDPStrategy):
    pass


class TrialFSDP(_TrialLaunch, FSDPStrategy):
    pass


class TrialDeepSpeed(_TrialLaunch, DeepSpeedStrategy):
    pass


def cluster_environment() -> LightningEnvironment | None:
    """A sweep worker starts its trial's ranks itself. Inside a SLURM worker job (one task) Lightning
    would detect SLURM and expect srun to have started one task per device; None: Lightning detects."""
    return LightningEnvironment() if os.environ.get(WORKER_ENV) else None


def build_strategy(trainer: TrainerConfig, model: torch.nn.Module) -> Strategy | str:
    """trainer.strategy as a Lightning strategy; DDP picks gloo on CPU and NCCL on GPUs itself."""
    name = trainer.strategy
    if name == "auto":
        return "auto"
    env = cluster_environment()
    if name == "ddp":
        return TrialDDP(cluster_environment=env)
    if name == "fsdp":
        from peft.utils.other import fsdp_auto_wrap_policy

        # Decoder layers and LoRA layers in units of their own; frozen 4-bit and trainable LoRA
        # weights share a unit only as original parameters. 4-bit storage: models.build.quant_storage.
        return TrialFSDP(
            auto_wrap_policy=fsdp_auto_wrap_policy(model), use_orig_params=True, cluster_environment=env
        )
    offload = name == "deepspeed_stage_2_offload"
    # ZeRO-2: optimizer states and gradients sharded; the frozen 4-bit base is never partitioned
    # (stage 3 would shard it, which 4-bit weights do not allow). Offload: optimizer states on the CPU.
    strategy = TrialDeepSpeed(stage=2, offload_optimizer=offload, cluster_environment=env)
    # sweeplab's optimizer (optim.name) steps on the CPU copy; DeepSpeed would otherwise insist on its
    # own DeepSpeedCPUAdam for offloading.
    strategy.config["zero_force_ds_cpu_optimizer"] = False
    return strategy


def broadcast_from_rank_zero(trainer: Any, value: Any) -> Any:
    """Rank 0's value on every rank: the pruning decision, the objective."""
    return trainer.strategy.broadcast(value, src=0) if trainer.world_size > 1 else value


def gathered_state(trainer: Any) -> dict[str, torch.Tensor] | None:
    """FSDP holds shards: every rank joins the gather (a collective) and rank 0 gets the full weights,
    keyed like the peft model's own state dict. None under the other strategies: each rank has them."""
    if not isinstance(trainer.strategy, FSDPStrategy):
        return None
    state = trainer.strategy.lightning_module_state_dict()  # the LightningModule's: "model." + peft keys
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def lora_digest(model: torch.nn.Module) -> str:
    """sha256 of the trainable weights: equal on every rank if the ranks trained one model."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def quant_storage(trainer: TrainerConfig) -> torch.dtype:
    """FSDP flattens each unit's parameters into one tensor of one dtype. prepare_model_for_kbit_training
    leaves every parameter but the 4-bit ones in fp32, so the packed NF4 bytes are stored as fp32 too."""
    return torch.float32 if trainer.strategy == "fsdp" else torch.uint8
