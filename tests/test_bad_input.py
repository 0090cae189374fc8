"""Bad input: one clear line naming the key or file:line, non-zero exit, no traceback, no run dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TINY, run_train


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


GOOD_LINE = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}\n'
BAD_JSONL = GOOD_LINE * 2 + "{oops\n"

CASES = {
    "negative rank": (lambda d: ["lora.r=-3"], "lora.r"),
    "lr not a number": (lambda d: ["optim.lr=abc"], "optim.lr"),
    "unknown target set": (lambda d: ["lora.targets=nope"], "lora.targets"),
    "unknown key": (lambda d: ["+lora.rank=8"], "lora.rank"),
    "missing data file": (lambda d: ["data=jsonl", f"data.path={d / 'nope.jsonl'}"], "nope.jsonl"),
    "malformed jsonl line": (
        lambda d: ["data=jsonl", f"data.path={write(d / 'bad.jsonl', BAD_JSONL)}"],
        "bad.jsonl:3",
    ),
    "resume with nothing to resume": (lambda d: ["ckpt_path=last"], "ckpt_path"),
    "sweep config without --multirun": (lambda d: ["hparams_search=qlora"], "--multirun"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_cleanly(case: str, tmp_path: Path) -> None:
    make_overrides, needle = CASES[case]
    out = tmp_path / "outputs"
    result = run_train(*TINY, *make_overrides(tmp_path), output_root=out, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert needle in result.stderr, output[-2000:]
    assert "Traceback" not in output, output[-3000:]
    runs = out / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "a failed run left a run dir behind"
