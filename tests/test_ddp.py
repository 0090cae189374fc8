"""One trial on several devices: the strategy config, and real 2-process DDP runs (gloo) of the 4-bit
base on CPU through Lightning's launcher, a sweep and torchrun. FSDP and DeepSpeed need CUDA: gpu tests."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from sweeplab.config import TrainerConfig, validate
from sweeplab.errors import ConfigError
from tests.conftest import ROOT, TINY, make_cfg, run_train

# Two CPU processes; short, and no generation (decoding is the slow part and not what is tested here).
SHORT = [*TINY, "trainer.max_steps=8", "trainer.val_every_n_steps=4", "eval.n_generate=0", "data.n_test=0"]
DDP_CPU = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
DIGEST = re.compile(r"rank (\d+) of 2: LoRA sha256 ([0-9a-f]{64})")
DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


def rank_digests(run_dir: Path) -> dict[int, str]:
    """Each rank logs the sha256 of its LoRA weights after training (rank 0 in train.log)."""
    found = {}
    for log in run_dir.glob("*.log"):
        for rank, digest in DIGEST.findall(log.read_text()):
            found[int(rank)] = digest
    return found


def ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


# --- inside a SLURM worker job ------------------------------------------------------------------

SLURM_ONE_TASK = {
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_JOB_NAME": "sweeplab-worker",
    "SLURM_JOB_ID": "81234",
    "SLURM_NODELIST": "node1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
}


@pytest.mark.parametrize("worker", [True, False])
def test_a_sweep_worker_job_starts_its_trial_ranks_itself_under_slurm(worker: bool, monkeypatch) -> None:
    """A worker job is one SLURM task: Lightning alone would expect srun to have started one per device."""
    import lightning as L
    from lightning.fabric.plugins.environments import LightningEnvironment

    from sweeplab.training.distributed import build_strategy
    from sweeplab.training.ranks import WORKER_ENV

    for key, value in SLURM_ONE_TASK.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv(WORKER_ENV, raising=False)
    if worker:
        monkeypatch.setenv(WORKER_ENV, "1")
    trainer_cfg = TrainerConfig(strategy="ddp", accelerator="cpu", devices=2)
    strategy = build_strategy(trainer_cfg, torch.nn.Linear(2, 2))
    trainer = L.Trainer(strategy=strategy, accelerator="cpu", devices=2, logger=False)
    env = trainer.strategy.cluster_environment
    if worker:
        assert isinstance(env, LightningEnvironment)
        env.validate_settings(num_devices=2, num_nodes=1)  # what the launcher checks first
    else:  # a plain run in a one-task allocation: Lightning's own message (at launch) says to use srun
        with pytest.raises(ValueError, match="ntasks-per-node=1"):
            env.validate_settings(num_devices=2, num_nodes=1)


# --- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.devices=2"], "trainer.strategy=auto runs one process"),
        (["trainer.num_nodes=2"], "trainer.strategy=auto runs one process"),
        (["trainer.strategy=fsdp", "trainer.accelerator=cpu"], "trainer.strategy=fsdp needs CUDA GPUs"),
        (
            ["trainer=ddp", "trainer.devices=auto", "trainer.accelerator=cpu"],
            "trainer.devices=auto counts GPUs",
        ),
        (["trainer.strategy=horovod"], "trainer.strategy"),
        (["trainer.devices=0"], "trainer.devices"),
    ],
)
def test_bad_strategy_config_names_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(make_cfg(*overrides))


@pytest.mark.skipif(DEEPSPEED, reason="deepspeed is installed")
@pytest.mark.parametrize("preset", ["trainer.strategy=deepspeed_stage_2", "trainer=zero2_offload"])
def test_deepspeed_without_the_package_says_what_to_install(preset: str) -> None:
    with pytest.raises(
        ConfigError, match=re.escape("needs DeepSpeed, which is not installed: pip install deepspeed==0.19.8")
    ):
        validate(make_cfg(preset))


def test_presets_extend_the_default_trainer() -> None:
    default, ddp, zero2 = (
        make_cfg(f"trainer={name}").trainer for name in ("default", "ddp", "zero2_offload")
    )
    assert (ddp.strategy, ddp.devices) == ("ddp", 2)
    assert (zero2.strategy, zero2.devices) == ("deepspeed_stage_2_offload", "auto")
    for preset in (ddp, zero2):  # everything else comes from default.yaml
        assert {k: v for k, v in preset.items() if k not in ("strategy", "devices")} == {
            k: v for k, v in default.items() if k not in ("strategy", "devices")
        }
    assert validate(make_cfg("trainer=ddp", "trainer.accelerator=cpu")).trainer.devices == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where no GPU is visible")
def test_gpu_strategy_without_a_gpu_is_refused_before_loading() -> None:
    from sweeplab.models.precision import resolve_placement

    with pytest.raises(
        ConfigError, match=re.escape("trainer.strategy=fsdp needs CUDA GPUs and none is visible")
    ):
        resolve_placement(TrainerConfig(strategy="fsdp", devices=2))


def test_fsdp_storage_gives_the_4bit_weights_the_dtype_of_every_other_parameter() -> None:
    """FSDP flattens a unit into one tensor of one dtype; NF4 bytes stored as fp32 compute the same logits."""
    from sweeplab.models.build import build_model
    from sweeplab.models.embedded import ensure_base
    from sweeplab.training.distributed import quant_storage

    rc = validate(make_cfg("model=tiny", "trainer.strategy=fsdp"))
    base = str(ensure_base(rc.model.embedded, os.environ["SWEEPLAB_CACHE_DIR"]))
    ids = torch.arange(1, 33).unsqueeze(0)
    logits = {}
    for storage in (torch.uint8, quant_storage(rc.trainer)):
        torch.manual_seed(0)
        model = build_model(base, rc.model, rc.lora, torch.float32, "cpu", storage)
        if storage != torch.uint8:
            assert {p.dtype for p in model.parameters()} == {torch.float32}
        with torch.no_grad():
            logits[storage] = model(input_ids=ids).logits
    assert torch.equal(logits[torch.uint8], logits[torch.float32])


def test_bad_device_config_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run_train("trainer.devices=2", output_root=tmp_path)
    assert result.returncode == 2
    assert "trainer.strategy=auto runs one process" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_sweep_started_by_torchrun_is_refused(tmp_path: Path) -> None:
    """Each torchrun rank would run its own sweeper and claim its own trials."""
    result = run_train(
        "--multirun", *SHORT, "hparams_search=qlora", env={"WORLD_SIZE": "2"}, output_root=tmp_path
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "trainer.strategy=ddp trainer.devices=N" in result.stderr
    assert not (tmp_path / "sweeps").exists()


# --- 2 processes on CPU ------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_run_trains_one_model_on_two_ranks_and_writes_once(tmp_path: Path) -> None:
    ok(run_train(*SHORT, *DDP_CPU, "run_name=ddp", output_root=tmp_path))
    run_dir = tmp_path / "runs" / "ddp"
    digests = rank_digests(run_dir)
    assert set(digests) == {0, 1} and digests[0] == digests[1]  # DDP kept the ranks in step
    rank_1 = (run_dir / "rank_1.log").read_text()  # rank 1 ran in rank 0's run dir
    assert "outputs in" not in rank_1 and "outputs in" in (run_dir / "train.log").read_text()  # rank 0 wrote
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["strategy"], metrics["world_size"], metrics["steps"]) == ("ddp", 2, 8)
    assert metrics["lora_sha256"] == digests[0]  # the adapter written is the weights both ranks hold
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.joinpath("runs").iterdir()) == ["ddp"]  # one run dir, one metrics


@pytest.mark.slow
def test_ddp_sweep_stores_each_trial_once_and_prunes_every_rank(tmp_path: Path) -> None:
    """3 trials of 2 processes: 3 trials stored, not 6; rank 1 stops where rank 0 was pruned."""
    conf = f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]"
    ok(
        run_train(
            "--multirun", *SHORT, *DDP_CPU, conf, "hparams_search=hopeless_corner", output_root=tmp_path
        )
    )
    study = optuna.load_study(study_name="hopeless", storage=f"sqlite:///{tmp_path / 'sweeps' / 'optuna.db'}")
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    sweep_dir = tmp_path / "sweeps" / "hopeless"
    first = rank_digests(sweep_dir / "0")
    assert set(first) == {0, 1} and first[0] == first[1]  # same params (lr) on both ranks, one model
    assert json.loads((sweep_dir / "0" / "metrics.json").read_text())["lora_sha256"] == first[0]
    for trial in trials[1:]:
        rank_1 = (sweep_dir / str(trial.number) / "rank_1.log").read_text()
        step = max(trial.intermediate_values)
        assert f"rank 1 stops with rank 0: pruned at step {step}" in rank_1
        assert not (sweep_dir / str(trial.number) / "metrics.json").exists()


@pytest.mark.slow
def test_torchrun_starts_the_ranks_and_lightning_launches_none(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "-m", "sweeplab.train", f"paths.output_root={tmp_path}"]
        + [*SHORT, *DDP_CPU, "run_name=tr"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    ok(result)
    run_dir = tmp_path / "runs" / "tr"
    assert "started ranks" not in (run_dir / "train.log").read_text()  # torchrun's ranks, none of ours
    digests = rank_digests(run_dir)
    assert set(digests) == {0, 1} and digests[0] == digests[1]
    assert json.loads((run_dir / "metrics.json").read_text())["world_size"] == 2


def test_torchrun_without_run_name_is_refused(tmp_path: Path) -> None:
    """Each rank composes its own timestamp run_name; a second's difference would split the run."""
    env = {"TORCHELASTIC_RUN_ID": "x", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}
    result = run_train(*SHORT, *DDP_CPU, env=env, output_root=tmp_path)
    assert result.returncode == 2
    assert "under torchrun, give run_name=NAME" in result.stderr


# --- CUDA: run when a GPU is lent (one is enough) ------------------------------------------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_strategy_trains_the_4bit_base_on_one_gpu(strategy: str, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ok(
        run_train(
            *SHORT, f"trainer.strategy={strategy}", "trainer.devices=1", "run_name=g", output_root=tmp_path
        )
    )
    run_dir = tmp_path / "runs" / "g"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["strategy"], metrics["device"]) == (strategy, "cuda:0")
    assert metrics["best_val_loss"] < metrics["base_val_loss"]
    # The adapter rank 0 saved (under FSDP: gathered from the shards) loads and is trained (B != 0).
    base = AutoModelForCausalLM.from_pretrained(metrics["base_model"])
    model = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)


@pytest.mark.gpu
@needs_gpu
def test_more_devices_than_gpus_is_a_config_error(tmp_path: Path) -> None:
    result = run_train(
        *SHORT, "trainer=ddp", f"trainer.devices={torch.cuda.device_count() + 1}", output_root=tmp_path
    )
    assert result.returncode == 2
    assert "visible GPU(s)" in result.stderr


@pytest.mark.gpu
@needs_gpu
@pytest.mark.skipif(not DEEPSPEED, reason="deepspeed is not installed (pip install deepspeed==0.19.8)")
@pytest.mark.parametrize("preset", ["trainer.strategy=deepspeed_stage_2", "trainer=zero2_offload"])
def test_deepspeed_zero2_trains_the_4bit_base(preset: str, tmp_path: Path) -> None:
    ok(run_train(*SHORT, preset, "trainer.devices=1", "run_name=z", output_root=tmp_path))
    metrics = json.loads((tmp_path / "runs" / "z" / "metrics.json").read_text())
    assert metrics["strategy"].startswith("deepspeed_stage_2")
    assert metrics["best_val_loss"] < metrics["base_val_loss"]
