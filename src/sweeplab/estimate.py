"""Parameters, memory and FLOPs of a QLoRA run from its config alone: no weights download or load.

python -m sweeplab.estimate model=qwen2.5-1.5b lora=r8 data.batch_size=1 data.max_seq_len=2048
python -m sweeplab.estimate --multirun model=qwen2.5-1.5b lora.r=4,8,16 lora.targets=all-linear,qv

The model is built on the meta device from its transformers config and wrapped by peft exactly as
sweeplab.models.build does, so trainable parameters and wrapped modules are counted, not modelled. Every
memory and FLOP formula is in docs/ESTIMATE.md.
"""

from __future__ import annotations

import sys

from sweeplab.config import RunConfig
from sweeplab.errors import ConfigError

# The calculation lives in sweeplab.models.estimate; GIB, estimate and HUB_SHAPES stay importable
# from here for the sweeper's memory check and bench/.
from sweeplab.models.estimate import GIB, HUB_SHAPES, QUANT_BLOCK, Estimate, estimate  # noqa: F401


def millions(n: float) -> str:
    return f"{n / 1e6:.1f}M"


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= 0.1 * GIB else f"{n / 2**20:.1f} MiB"


def flops(n: float) -> str:
    return f"{n / 1e9:.2f} GFLOP" if n >= 1e8 else f"{n / 1e6:.2f} MFLOP"


def report(e: Estimate, rc: RunConfig) -> str:
    """The full breakdown of one configuration, with the guide's two mistakes made visible."""
    q = rc.model.quant
    fp16_constants = 2.0 * e.quantized_params / QUANT_BLOCK
    ckpt = "on" if e.gradient_checkpointing else "off"
    lines = [
        f"architecture: {e.source}",
        f"parameters: {e.total_params:,} total, {e.trainable_params:,} trainable "
        f"({100 * e.trainable_params / e.total_params:.2f}%), {e.lora_modules} LoRA modules "
        f"(lora.targets={rc.lora.targets}, r={rc.lora.r})",
        "memory (training, one device):",
        f"  4-bit weights        {gib(e.weights_4bit):>12}  {e.quantized_params:,} Linear weights x 0.5 byte",
        f"  quant constants      {gib(e.quant_constants):>12}  {e.constant_bits:.3f} bit/param "
        f"({'8-bit absmax + fp32 per 256 blocks' if q.double_quant else 'fp32 absmax per 64'})",
        f"  16/32-bit layers     {gib(e.kept_weights):>12}  {e.kept_params:,} params: embeddings, "
        "head, norms, biases (fp32 after peft's upcast)",
        f"  LoRA weights         {gib(e.lora_weights):>12}  fp32",
        f"  gradients            {gib(e.gradients):>12}  fp32, trainable params only",
        f"  optimizer state      {gib(e.optimizer):>12}  {rc.optim.name}",
        f"  activations          {gib(e.activations):>12}  without gradient checkpointing "
        f"(batch {rc.data.batch_size} x seq {e.seq_len}{seq_note(rc)}, {e.precision}; "
        "trainer.accelerator=cpu sizes a CPU run)",
        f"  activations (ckpt)   {gib(e.activations_ckpt):>12}  with gradient checkpointing",
        f"  total                {gib(e.total):>12}  gradient checkpointing {ckpt} "
        "(model.gradient_checkpointing); CUDA context and allocator slack not included",
        f"FLOPs per training token: {flops(e.flops_per_token)} ({flops(e.forward_flops_per_token)} "
        f"forward); full fine-tuning (6N) would be {flops(6 * e.total_params)}",
        "where a 16-bit-constants guide is wrong:",
        f"  bitsandbytes stores absmax in fp32 (0.5 bit/param, 0.127 double-quantized), not fp16 "
        f"(0.25 bit/param: {gib(fp16_constants)} here)",
        f"  embeddings, head and norms are not quantized: {e.kept_params / 1e6:.1f}M params stay in "
        f"16 bits as loaded ({gib(2.0 * e.kept_params)}) and fp32 once peft prepares the model",
    ]
    return "\n".join(lines)


COLUMNS = (
    "config", "total", "trainable", "modules", "4bit+const", "kept", "lora+grad+opt", "act", "act(ckpt)",
    "peak", "FLOP/token",
)  # fmt: skip


def row(e: Estimate) -> list[str]:
    return [
        e.label or "-",
        millions(e.total_params),
        f"{millions(e.trainable_params)} ({e.trainable_params:,})",
        str(e.lora_modules),
        gib(e.weights_4bit + e.quant_constants),
        gib(e.kept_weights),
        gib(e.lora_weights + e.gradients + e.optimizer),
        gib(e.activations),
        gib(e.activations_ckpt),
        gib(e.total),
        flops(e.flops_per_token),
    ]


def table(estimates: list[Estimate]) -> str:
    rows = [list(COLUMNS), *(row(e) for e in estimates)]
    widths = [max(len(r[k]) for r in rows) for k in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def expand(overrides: list[str], multirun: bool) -> list[list[str]]:
    """One override list per configuration: comma lists and range() crossed as Hydra's basic sweeper does."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
    if sweeps and not multirun:
        raise ConfigError(f"{sweeps[0]} is a sweep: add --multirun to estimate each configuration")
    return BasicSweeper.split_arguments(parsed, max_batch_size=None)[0]


def compose_run(overrides: list[str]) -> RunConfig:
    from hydra import compose, initialize_config_dir
    from hydra.errors import MissingConfigException

    from sweeplab.config import CONF_DIR, validate

    try:
        with initialize_config_dir(config_dir=CONF_DIR):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
    except MissingConfigException as exc:
        missing = str(exc).splitlines()[0].removeprefix("In 'train': ")
        raise ConfigError(f"{missing}; available: {', '.join(exc.options or [])}") from None
    if cfg.hydra.runtime.choices.get("hparams_search"):
        raise ConfigError(
            "hparams_search is an Optuna space, not a list of configurations: give comma lists "
            "instead, e.g. --multirun lora.r=4,8,16 lora.targets=all-linear,qv"
        )
    return validate(cfg)


def seq_note(rc) -> str:
    """Unset, the run's length is its data's longest chat: sized here at the model's context, a bound."""
    return "" if rc.data.max_seq_len is not None else " = the model's context, data.max_seq_len unset"


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return
    multirun = any(a in ("-m", "--multirun") for a in args)
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    try:
        jobs = expand(overrides, multirun)
        runs = [compose_run(job) for job in jobs]  # every configuration checked before any is built
        estimates = []
        for job, rc in zip(jobs, runs, strict=True):
            swept = [o for o in job if o not in overrides]  # what varies between rows
            estimates.append(estimate(rc, label=" ".join(swept) or " ".join(job)))
    except Exception as exc:  # noqa: BLE001 - Hydra's and our errors alike, as one line
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if not isinstance(exc, (ConfigError, HydraException, OmegaConfBaseException)):
            raise
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"sweeplab: error: {message.removeprefix('invalid config: ')}", file=sys.stderr)
        sys.exit(2)
    if multirun:
        print(table(estimates))
    else:
        print(report(estimates[0], runs[0]))


if __name__ == "__main__":
    main()
