"""Nothing lost: SIGKILL mid-training, resume as if never stopped; finished runs and checkpoints stay safe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, TINY, run_train

# 96 samples / batch 8 = 12 batches an epoch: 120 steps are 10 epochs, each shuffled anew, and every
# validation (each 10 steps) but the 6th and 12th lands mid-epoch. LoRA dropout makes the RNG matter.
RESUME = [*TINY, "trainer.max_steps=120", "trainer.val_every_n_steps=10", "lora.dropout=0.1"]
KILL_AFTER_STEP = 20  # the first checkpoint at or after this step is the one resumed from


def ckpt_step(path: Path) -> int | None:
    """global_step of a whole checkpoint, None while there is none (saves are atomic: never half a file)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except (OSError, RuntimeError, EOFError):
        return None


def start_and_kill(*overrides: str, output_root: Path, run_name: str, after_step: int) -> int:
    """Start a run, SIGKILL it once its last.ckpt holds step >= after_step; returns that step."""
    run_dir = output_root / "runs" / run_name
    last = run_dir / "checkpoints" / "last.ckpt"
    cmd = [sys.executable, "-m", "sweeplab.train", f"paths.output_root={output_root}", f"run_name={run_name}"]
    proc = subprocess.Popen([*cmd, *overrides], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    step = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            step = ckpt_step(last)
            if step is not None and step >= after_step:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    assert proc.returncode == -signal.SIGKILL, (
        f"the run ended by itself (rc {proc.returncode}) before a checkpoint at step >= {after_step} "
        f"could be killed; raise trainer.max_steps.\n{stderr[-3000:]}"
    )
    assert not (run_dir / "metrics.json").exists(), "killed too late: the run had already finished"
    assert step is not None
    return step


def start_and_interrupt(
    *overrides: str, output_root: Path, run_name: str, after_step: int, sig: int = signal.SIGINT
) -> str:
    """Start a run and press Ctrl-C (SIGINT, or send `sig`) once it has a checkpoint; returns its stderr."""
    last = output_root / "runs" / run_name / "checkpoints" / "last.ckpt"
    cmd = [sys.executable, "-m", "sweeplab.train", f"paths.output_root={output_root}", f"run_name={run_name}"]
    proc = subprocess.Popen([*cmd, *overrides], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        step = ckpt_step(last)
        if step is not None and step >= after_step:
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=300)
    stderr = err.decode(errors="replace")
    assert proc.returncode == 130, f"rc {proc.returncode}:\n{stderr[-3000:]}"
    return stderr


def val_diffs(a: dict, b: dict) -> list[float]:
    assert [h["step"] for h in b["val_history"]] == [h["step"] for h in a["val_history"]]
    return [
        abs(x["val/loss"] - y["val/loss"]) for x, y in zip(a["val_history"], b["val_history"], strict=True)
    ]


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    full = run_train(*RESUME, "run_name=a", output_root=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]

    killed_at = start_and_kill(*RESUME, output_root=tmp_path, run_name="b", after_step=KILL_AFTER_STEP)
    assert killed_at < 120, f"killed at step {killed_at}: nothing left to resume"
    resumed = run_train(*RESUME, "run_name=b", "ckpt_path=last", output_root=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a = json.loads((tmp_path / "runs" / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "runs" / "b" / "metrics.json").read_text())
    assert [h["step"] for h in b["val_history"]] == [h["step"] for h in a["val_history"]]
    pairs = zip(a["val_history"], b["val_history"], strict=True)
    diffs = [abs(x["val/loss"] - y["val/loss"]) for x, y in pairs]
    print(f"killed at step {killed_at}; max |val loss diff| {max(diffs):.3g} over {len(diffs)} validations")
    assert max(diffs) <= 1e-4
    assert b["final_val_loss"] == pytest.approx(a["final_val_loss"], abs=1e-4)
    assert b["steps"] == a["steps"] == 120

    # Ctrl-C: the run stops at the next optimizer step (mid-interval), saves, exits 130; resuming from
    # that checkpoint must also give the uninterrupted run's numbers.
    stderr = start_and_interrupt(*RESUME, output_root=tmp_path, run_name="c", after_step=KILL_AFTER_STEP)
    assert "Traceback" not in stderr and "resume: python -m sweeplab.train" in stderr
    saved_at = ckpt_step(tmp_path / "runs" / "c" / "checkpoints" / "last.ckpt")
    assert saved_at is not None and saved_at % 10 != 0, f"saved at {saved_at}: not a mid-interval save"
    resumed = run_train(*RESUME, "run_name=c", "ckpt_path=last", output_root=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    c = json.loads((tmp_path / "runs" / "c" / "metrics.json").read_text())
    diffs = val_diffs(a, c)
    print(f"Ctrl-C at step {saved_at}; max |val loss diff| {max(diffs):.3g} over {len(diffs)} validations")
    assert max(diffs) <= 1e-4


@pytest.mark.slow
def test_sigterm_stops_a_run_like_ctrl_c(tmp_path: Path) -> None:
    """What SLURM and Kubernetes send before they kill: save at the step, exit 130, resume."""
    short = [*RESUME, "trainer.max_steps=40"]  # stopped past step 20, resumed to the end: no more is needed
    stderr = start_and_interrupt(
        *short, output_root=tmp_path, run_name="t", after_step=KILL_AFTER_STEP, sig=signal.SIGTERM
    )
    assert "SIGTERM at step" in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert "resume: python -m sweeplab.train" in stderr
    assert not (tmp_path / "runs" / "t" / "metrics.json").exists()
    resumed = run_train(*short, "run_name=t", "ckpt_path=last", output_root=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "runs" / "t" / "metrics.json").read_text())["steps"] == 40


def test_a_finished_run_is_never_overwritten(tmp_path: Path) -> None:
    """Same run_name again, with or without ckpt_path=last: refused, and the run's files stay as they were."""
    run_dir = tmp_path / "runs" / "done"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "metrics.json").write_text('{"final_val_loss": 1.0}')
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"finished weights")
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text("- the finished run's own overrides\n")
    (run_dir / "train.log").write_text("the finished run's log\n")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    for extra in ([], ["ckpt_path=last"]):
        result = run_train(*TINY, "run_name=done", *extra, output_root=tmp_path)
        assert result.returncode == 2, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        last_line = result.stderr.strip().splitlines()[-1]
        assert last_line.startswith("sweeplab: error: ") and "already holds a finished run" in last_line
        assert {p: p.read_bytes() for p in before} == before


class _RunsCode:
    """Unpickling this calls open(marker, "w"): what a hostile checkpoint would do, visibly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _hostile_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    ckpt, marker = tmp_path / "hostile.ckpt", tmp_path / "pwned"
    torch.save({"state_dict": {}, "global_step": 3, "payload": _RunsCode(marker)}, ckpt)
    assert not marker.exists()
    return ckpt, marker


def test_a_checkpoint_that_runs_code_is_refused(tmp_path: Path) -> None:
    ckpt, marker = _hostile_checkpoint(tmp_path)
    result = run_train(*TINY, "run_name=m", f"ckpt_path={ckpt}", output_root=tmp_path / "out")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("sweeplab: error: ckpt_path: refusing to unpickle"), last_line
    assert "io.open" in last_line  # names what the pickle wanted to call
    assert not marker.exists(), "the checkpoint's code ran"
    assert not (tmp_path / "out" / "runs" / "m").exists()  # nothing was produced, no run dir left


def test_lightning_loads_checkpoints_weights_only(tmp_path: Path) -> None:
    """The second gate: Lightning's own ckpt_path load goes through our CheckpointIO, weights-only."""
    import pickle

    from sweeplab.training.resume import AtomicCheckpointIO

    ckpt, marker = _hostile_checkpoint(tmp_path)
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):
        AtomicCheckpointIO().load_checkpoint(ckpt, weights_only=False)  # even when asked otherwise
    assert not marker.exists()


def test_a_truncated_checkpoint_is_refused_in_one_line(tmp_path: Path) -> None:
    from sweeplab.errors import ConfigError
    from sweeplab.training.resume import check_checkpoint

    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}, "global_step": 8}, whole)
    check_checkpoint(str(whole))
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ConfigError, match="not a readable checkpoint") as err:
        check_checkpoint(str(cut))
    assert "\n" not in str(err.value)


def test_checkpoint_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save that dies halfway leaves the previous checkpoint whole and no stray temp file."""
    from sweeplab.training.resume import AtomicCheckpointIO

    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 8, "w": torch.arange(4)}, path)
    real_save = torch.save

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # as a signal would, mid-write

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 16, "w": torch.arange(8)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert io.load_checkpoint(path)["global_step"] == 8
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_rng_states_survive_a_weights_only_round_trip(tmp_path: Path) -> None:
    import random

    import numpy as np

    from sweeplab.rng import rng_state, set_rng_state

    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3).tolist(), random.random(), np.random.rand())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (torch.rand(3).tolist(), random.random(), np.random.rand()) == expected


def test_sampler_order_depends_on_seed_and_epoch_only() -> None:
    from sweeplab.data.sampler import EpochSeededSampler

    a, b = EpochSeededSampler(20, seed=7), EpochSeededSampler(20, seed=7)
    a.set_epoch(3)
    first = list(a)
    b.set_epoch(3)
    b.skip = 8
    assert list(b) == first[8:]  # a resumed epoch: the same order, minus what was trained on
    assert list(b) == first  # skip is used once
    a.set_epoch(4)
    assert sorted(first) == list(range(20)) and list(a) != first
