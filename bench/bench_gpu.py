"""Tokens/s, peak GPU memory and MFU of sweeplab's LoRA step on a Qwen2.5-1.5B-shaped model (random weights).

    .venv/bin/python bench/bench_gpu.py --out BENCHMARKS.md      # what `make bench-gpu` runs (~3 min, H200)

No hub: the model is built from sweeplab.estimate's Qwen2.5-1.5B shapes with random weights and saved
once to a temp dir; each variant then loads it through sweeplab.models.build.build_model (4-bit NF4 from that
dir, exactly as a hub model loads) and trains it with QLoRAModule under Lightning, in a process of its
own so that its peak memory is its own. Variants: QLoRA and LoRA on the fp16 base, both fp16 mixed, and
QLoRA in bf16 mixed (what trainer.precision=auto picks on a bf16 GPU). Without CUDA it says so, exits 0
and writes nothing; `--device cpu --shape tiny` runs the same code on a tiny shape (tests/test_bench_gpu.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks_md import replace_section  # bench/ is sys.path[0] when run as a script
from timed_trainer import training_only_trainer

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench_gpu:start -->", "<!-- bench_gpu:end -->"
QWEN = "Qwen/Qwen2.5-1.5B-Instruct"  # sweeplab.estimate.HUB_SHAPES key
TINY_SHAPE = dict(
    model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True, max_position_embeddings=512,
)  # fmt: skip

# Dense fp16/bf16 tensor-core peak, TFLOPS (vendor datasheets, no sparsity); first substring match wins.
PEAK_TFLOPS = [
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("V100", 125.0),
    ("T4", 65.0),
]

# name -> (overrides beyond the shared ones, precision on CUDA)
VARIANTS = {
    "qlora-fp16": ([], "16-mixed"),
    "lora-fp16": (["model.quant.load_in_4bit=false"], "16-mixed"),
    "qlora-bf16": ([], "bf16-mixed"),
}


def peak_tflops(gpu_name: str) -> float | None:
    return next((tflops for key, tflops in PEAK_TFLOPS if key in gpu_name), None)


def run_overrides(args: argparse.Namespace, model_dir: str, variant: str) -> list[str]:
    extra, precision = VARIANTS[variant]
    on_cpu = args.device == "cpu"
    return [
        "model=qwen2.5-1.5b",
        f"model.name_or_path={model_dir}",  # estimate reads the saved config.json: the real shapes
        f"lora={args.lora}",
        f"data.batch_size={args.batch_size}",
        f"data.max_seq_len={args.seq_len}",
        f"trainer.precision={'32-true' if on_cpu else precision}",
        f"trainer.accelerator={'cpu' if on_cpu else 'gpu'}",
        "logger=none",
        *extra,
    ]


def save_random_model(shape: dict, model_dir: Path, device: str) -> None:
    """Random init on the device (seconds for 1.5B on a GPU), saved in fp16 like a hub checkpoint."""
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = dict(shape)
    config = AutoConfig.for_model(shape.pop("model_type"), **shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
    model.save_pretrained(model_dir)
    del model
    if device != "cpu":
        torch.cuda.empty_cache()


class StepTimer:
    """Times the steps after `warmup`, synchronizing the GPU so the clock sees finished work."""

    def __init__(self, warmup: int, device: str) -> None:
        self.warmup, self.device, self.start, self.seconds = warmup, device, 0.0, 0.0

    def sync(self) -> None:
        if self.device != "cpu":
            torch.cuda.synchronize()

    def callback(self):
        import lightning as L

        timer = self

        class _Timer(L.Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
                if batch_idx == timer.warmup:
                    timer.sync()
                    timer.start = time.perf_counter()

            def on_train_end(self, trainer, module) -> None:
                timer.sync()
                timer.seconds = time.perf_counter() - timer.start

        return _Timer()


def random_batches(vocab: int, n: int, batch_size: int, seq_len: int) -> list[dict[str, torch.Tensor]]:
    """Full rows (no padding): every processed token is a trained token."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (batch_size, seq_len), generator=g)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return batches


def measure(args: argparse.Namespace, model_dir: str, variant: str) -> dict:
    """One variant in this process: load through sweeplab, train warmup + steps, report."""
    from sweeplab.quiet import quiet_library_noise

    quiet_library_noise()  # before bitsandbytes is imported
    from torch.utils.data import DataLoader

    from sweeplab.estimate import compose_run
    from sweeplab.models.build import build_model, count_parameters
    from sweeplab.models.precision import COMPUTE_DTYPES
    from sweeplab.training.module import QLoRAModule

    rc = compose_run(run_overrides(args, model_dir, variant))
    device = "cpu" if args.device == "cpu" else "cuda:0"
    torch.manual_seed(rc.seed)
    model = build_model(model_dir, rc.model, rc.lora, COMPUTE_DTYPES[rc.trainer.precision], device)
    trainable, _ = count_parameters(model)
    on_gpu = device != "cpu"
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()  # the training peak, not quantization's transient one
        loaded = torch.cuda.memory_allocated()
    steps = args.warmup + args.steps
    timer = StepTimer(args.warmup, device)
    trainer = training_only_trainer(
        steps,
        [timer.callback()],
        rc.trainer.grad_clip,
        accelerator="gpu" if on_gpu else "cpu",
        precision=rc.trainer.precision,
    )
    vocab = model.get_input_embeddings().num_embeddings
    batches = random_batches(vocab, steps, args.batch_size, args.seq_len)
    trainer.fit(QLoRAModule(model, rc.optim, steps), DataLoader(batches, batch_size=None))
    result = {
        "variant": variant,
        "precision": rc.trainer.precision,
        "tokens_per_s": args.steps * args.batch_size * args.seq_len / timer.seconds,
        "trainable": trainable,
    }
    if on_gpu:
        result |= {"peak_bytes": torch.cuda.max_memory_allocated(), "loaded_bytes": loaded}
    return result


def run_worker(args: argparse.Namespace, model_dir: str, variant: str) -> dict:
    """A fresh process per variant: CUDA's peak counter and allocator cache start from nothing."""
    cmd = [sys.executable, __file__, "--worker", variant, "--model-dir", model_dir, *forwarded(args)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        return {"variant": variant, "error": f"no result within --worker-timeout={args.worker_timeout} s"}
    sys.stderr.write(proc.stderr[-4000:])
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"variant": variant, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(lines[-1].removeprefix("RESULT "))


def forwarded(args: argparse.Namespace) -> list[str]:
    return [
        f"--device={args.device}",
        f"--lora={args.lora}",
        f"--batch-size={args.batch_size}",
        f"--seq-len={args.seq_len}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
    ]


def add_estimates(args: argparse.Namespace, model_dir: str, result: dict) -> None:
    """sweeplab.estimate's peak for the same config, and model FLOPs per token (no recompute: MFU)."""
    from sweeplab.estimate import compose_run, estimate

    overrides = run_overrides(args, model_dir, result["variant"])
    result["estimate_bytes"] = estimate(compose_run(overrides)).total
    # Model FLOPs: 4N for the frozen matmuls (forward + input grads), 6 x LoRA params, attention;
    # checkpointing's recompute is work the hardware does, not model FLOPs, so it is left out.
    no_recompute = compose_run([*overrides, "model.gradient_checkpointing=false"])
    result["flops_per_token"] = estimate(no_recompute).flops_per_token


def gib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f}"


def section(results: list[dict], args: argparse.Namespace, gpu: str, wall: float) -> str:
    peak = peak_tflops(gpu)
    rows = []
    for r in results:
        if "error" in r:
            rows.append(f"| {r['variant']} | failed: {r['error']} | | | | | |")
            continue
        achieved = r["tokens_per_s"] * r["flops_per_token"]
        mfu = f"{100 * achieved / (peak * 1e12):.1f}%" if peak else "n/a (GPU not in PEAK_TFLOPS)"
        ratio = f"{r['peak_bytes'] / r['estimate_bytes']:.2f}" if "peak_bytes" in r else "n/a"
        rows.append(
            f"| {r['variant']} | {r['precision']} | {r['tokens_per_s']:.0f} | {gib(r.get('loaded_bytes'))} | "
            f"{gib(r.get('peak_bytes'))} | {gib(r['estimate_bytes'])} ({ratio}) | {mfu} |"
        )
    table = "\n".join(rows)
    return f"""{START}
## GPU: QLoRA vs LoRA on a Qwen2.5-1.5B-shaped model

`make bench-gpu` (`bench/bench_gpu.py`): random weights in the Qwen2.5-1.5B shapes (no hub), saved in
fp16 and loaded through `sweeplab.models.build.build_model` (4-bit NF4 + double quantization, or the fp16 base
as is), LoRA `lora={args.lora}`, gradient checkpointing on, AdamW, batch {args.batch_size} x
{args.seq_len} tokens of random ids (no padding), {args.steps} timed steps after {args.warmup}, one process
per variant. Peak: `torch.cuda.max_memory_allocated` during training (weights included; allocator cache
and CUDA context not); "loaded": allocated after the load. Estimate: `python -m sweeplab.estimate` for
the same config, in parentheses measured/estimate. MFU: tokens/s x model FLOPs per token (4 x frozen
matmul params for forward + input gradients, 6 x LoRA params, attention; recompute not counted) over
the GPU's dense fp16/bf16 peak ({f"{peak:.0f} TFLOPS" if peak else "unknown for this GPU"}).

| variant | precision | tokens/s | loaded GiB | peak GiB | estimate GiB (measured/estimate) | MFU |
|---|---|---|---|---|---|---|
{table}

GPU: {gpu}; torch {torch.__version__}, CUDA {torch.version.cuda}. Whole benchmark {wall:.0f} s;
measured {datetime.date.today().isoformat()}.
{END}"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="BENCHMARKS.md to update")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {list(VARIANTS)}")
    parser.add_argument("--lora", default="r16")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (CUDA/cuBLAS warmup)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a smoke run")
    parser.add_argument("--shape", choices=["qwen2.5-1.5b", "tiny"], default="qwen2.5-1.5b")
    parser.add_argument("--worker-timeout", type=int, default=300, help="seconds per variant")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(measure(args, args.model_dir, args.worker)), flush=True)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA device")
        return 0
    from sweeplab.estimate import HUB_SHAPES

    started = time.perf_counter()
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "none (CPU smoke run)"
    if args.device == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        variants = [v for v in variants if not v.endswith("bf16")]  # emulated bf16 is no benchmark
    shape = TINY_SHAPE if args.shape == "tiny" else {"model_type": "qwen2", **HUB_SHAPES[QWEN]}
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        save_random_model(shape, Path(tmp), "cpu" if args.device == "cpu" else "cuda")
        print(f"random {args.shape} model saved in {time.perf_counter() - started:.0f} s", flush=True)
        for variant in variants:
            result = run_worker(args, tmp, variant)
            if "error" not in result:
                add_estimates(args, tmp, result)
            print(json.dumps(result), flush=True)
            results.append(result)
    text = section(results, args, gpu, time.perf_counter() - started)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"gpu": gpu, "results": results}, indent=2))
    if args.out:
        replace_section(args.out, START, END, text)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
