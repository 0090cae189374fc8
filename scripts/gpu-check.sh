#!/usr/bin/env bash
# The GPU checks in one go, on a fresh CUDA machine with this repo: install, `pytest -m gpu`, `make
# bench-gpu`. Each step has its own time limit, so one hang does not eat the others; ~8 min in all.
#
#   bash scripts/gpu-check.sh              # logs and results under $OUT if set, else outputs/gpu-check
#
# Without a package registry `make install` cannot work: put wheels of the pinned packages that the
# machine's Python lacks in .whl/ (scripts/gpu-wheels.sh does it) and this script installs those
# into /tmp/site and runs with the machine's python3 and src/ on PYTHONPATH instead. An image with
# torch, lightning, peft and transformers still lacks at least bitsandbytes, hydra-core, omegaconf
# (+ antlr4-python3-runtime), optuna, pydantic (+ pydantic-core) and wandb; and transformers must be
# new enough for activation_checkpointing_enable, which wrap_lora calls (the pinned 5.23 is).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-outputs/gpu-check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
export PIP_DEFAULT_TIMEOUT=5 PIP_RETRIES=0  # no registry: fail in seconds, not after minutes of retries
status=0

step() {  # step NAME SECONDS COMMAND...: run, log to $OUT/NAME.log, record the outcome
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - start)) s (limit $limit s)" | tee -a "$OUT/summary.txt"
    tail -n 15 "$OUT/$name.log"
    return $rc
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/nvidia-smi.txt" 2>&1
if step install 120 make install; then
    PY=.venv/bin/python
elif [ -d .whl ]; then
    echo "make install failed; using python3 with the wheels in .whl/" | tee -a "$OUT/summary.txt"
    step wheels 60 python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD/src:$PWD"
    PY=python3
else
    echo "make install failed and there is no .whl/: nothing to test with" | tee -a "$OUT/summary.txt"
    exit 1
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/summary.txt"

step pytest-gpu 240 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py tests/test_bench_gpu.py \
    tests/test_ddp.py || status=1
step bench-gpu 240 "$PY" bench/bench_gpu.py --out BENCHMARKS.md --json "$OUT/bench_gpu.json" || status=1
# The section the bench wrote, to paste into the repository's BENCHMARKS.md.
sed -n '/<!-- bench_gpu:start -->/,/<!-- bench_gpu:end -->/p' BENCHMARKS.md >"$OUT/BENCHMARKS_gpu.md"
cat "$OUT/summary.txt"
exit $status
