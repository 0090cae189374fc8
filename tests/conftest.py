"""Shared fixtures: compose the real config, a hermetic cache, offline W&B and hub."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
# The upstream sweeper's own suite, as copied: run against sweeplab by test_upstream_suite.py only.
collect_ignore = ["upstream"]
CONF = str(ROOT / "conf")

# Set before any test (and any subprocess it starts) runs: nothing may wait on a network.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_cfg(*overrides: str) -> DictConfig:
    """The composed config exactly as `python -m sweeplab.train` sees it."""
    with initialize_config_dir(config_dir=CONF):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


@pytest.fixture(scope="session", autouse=True)
def hermetic_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache per test session: the tiny base is built once and shared by every test."""
    cache = tmp_path_factory.mktemp("sweeplab-cache")
    os.environ["SWEEPLAB_CACHE_DIR"] = str(cache)
    os.environ.setdefault("WANDB_DATA_DIR", str(cache / "wandb-data"))  # staged artifacts, not in $HOME
    return cache


# Small enough for seconds on 2 cores, big enough that val loss moves.
TINY = [
    "model=tiny",
    "logger=csv",
    "data.n_train=96",
    "data.n_val=24",
    "data.max_seq_len=160",
    "data.batch_size=8",
    "data.packing=false",  # as the tests were written; packing has its own (test_packing.py)
    "trainer.max_steps=24",
    "trainer.val_every_n_steps=8",
    "trainer.enable_progress_bar=false",
    "optim.lr=3e-3",
    "eval.n_generate=8",  # tool-call scoring stays on, on a few chats: decoding is the slow part
    "eval.max_new_tokens=24",
    "data.n_test=8",
]


def run_train(*overrides: str, output_root: Path, env: dict | None = None, timeout: int = 600):
    """Run the real entry point in a subprocess; returns CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "sweeplab.train", f"paths.output_root={output_root}", *overrides],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def tiny_random_lora(hermetic_cache: Path):
    """(model, tokenizer, train examples): the tiny 4-bit base with LoRA B drawn at random, so the adapter
    changes the logits and LoRA A gets gradients; eval mode (no dropout), for exact comparisons."""
    import torch

    from sweeplab.config import validate
    from sweeplab.data import build_datasets
    from sweeplab.models.build import build_model, load_tokenizer, resolve_model_dir

    rc = validate(make_cfg("model=tiny", "data.n_train=16", "data.n_val=4", "data.max_seq_len=160"))
    model_dir = resolve_model_dir(rc.model, hermetic_cache)
    tokenizer = load_tokenizer(model_dir)
    train, _, _ = build_datasets(rc.data, tokenizer, hermetic_cache)
    model = build_model(model_dir, rc.model, rc.lora, torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.eval()
    return model, tokenizer, train
