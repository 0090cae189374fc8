"""Writes are atomic: a process SIGKILLed while writing never leaves a file that looks finished."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import ROOT

BLOB = 4_000_000

JSON_WRITER = f"""
import sys
from pathlib import Path
from sweeplab.outputs import write_json
i = 0
print("ready", flush=True)
while True:
    write_json(Path(sys.argv[1]), {{"i": i, "blob": str(i % 10) * {BLOB}}})
    i += 1
"""

ADAPTER_WRITER = """
import sys
from pathlib import Path
import torch
from sweeplab.config import validate
from sweeplab.models.build import build_model, load_tokenizer, resolve_model_dir
from sweeplab.outputs import save_adapter
from tests.conftest import make_cfg
rc = validate(make_cfg("model=tiny", "lora=r64"))
path = resolve_model_dir(rc.model, rc.paths.cache_dir)
tok = load_tokenizer(path)
model = build_model(path, rc.model, rc.lora, torch.float32)
print("ready", flush=True)
while True:
    save_adapter(model, tok, Path(sys.argv[1]))
"""


def kill_while_writing(script: str, target: Path, times: int, check) -> None:
    rng = random.Random(0)
    for _ in range(times):
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(target)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        visible = [p.name for p in target.parent.iterdir() if not p.name.startswith(".")]
        assert visible in ([], [target.name]), visible  # only hidden temp names besides the result
        if target.exists():
            check(target)


def test_json_killed_mid_write_is_old_or_new_never_torn(tmp_path: Path) -> None:
    def whole(path: Path) -> None:
        data = json.loads(path.read_text())  # a torn file would not parse
        assert len(data["blob"]) == BLOB and set(data["blob"]) == {str(data["i"] % 10)}

    kill_while_writing(JSON_WRITER, tmp_path / "metrics.json", times=6, check=whole)
    assert (tmp_path / "metrics.json").exists()  # it was killed mid-stream, not before the first write


@pytest.mark.slow
def test_adapter_killed_mid_save_is_whole_or_absent(tmp_path: Path) -> None:
    def whole(path: Path) -> None:
        config = json.loads((path / "adapter_config.json").read_text())
        assert config["r"] == 64
        weights = load_file(str(path / "adapter_model.safetensors"))  # a torn file would not load
        assert weights and (path / "tokenizer_config.json").is_file()

    kill_while_writing(ADAPTER_WRITER, tmp_path / "adapter", times=4, check=whole)
