"""4-bit load + LoRA wrap: one path for the embedded base, a converted GGUF, a local copy and a hub model."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from bitsandbytes.nn import Linear4bit
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedTokenizerBase

from sweeplab import reuse
from sweeplab.config import TARGET_SETS, LoraConfig, ModelConfig
from sweeplab.errors import ConfigError
from sweeplab.models.lora_dropout import use_fast_dropout

log = logging.getLogger(__name__)


def resolve_model_dir(cfg: ModelConfig, cache_dir: str | Path) -> str:
    """The embedded base is built and a GGUF converted (once) into the cache; else a hub id or local dir."""
    if cfg.embedded is not None:
        from sweeplab.models.embedded import ensure_base

        return str(ensure_base(cfg.embedded, cache_dir).resolve())
    if cfg.gguf is not None:
        from sweeplab.models.gguf import ensure_converted

        return str(ensure_converted(cfg.gguf, cache_dir))
    path = Path(cfg.name_or_path).expanduser()
    # An absolute adapter base path lets any peft client rebuild the model from the adapter alone.
    return str(path.resolve()) if path.exists() else cfg.name_or_path


def model_context(name_or_path: str, trust_remote_code: bool = False) -> int | None:
    """The base's positions (max_position_embeddings): the default limit of a chat's tokens."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    return getattr(config, "max_position_embeddings", None)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except OSError as exc:  # not a local dir, and the hub is unreachable or has no such repo
        raise ConfigError(
            f"model.name_or_path={name_or_path!r} is not a local model directory and could not be "
            f"fetched from the hub ({type(exc).__name__}); point it at a local copy: "
            f"model.name_or_path=/path/to/model"
        ) from None
    if tokenizer.pad_token is None:  # Llama 3 ships none; padding is masked out of the loss anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def disable_cpu_repack(model: torch.nn.Module) -> int:
    """Stop bitsandbytes repacking frozen 4-bit weights on eval passes (DESIGN.md: it shrinks LoRA grads)."""
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def load_quantized(
    name_or_path: str,
    cfg: ModelConfig,
    compute_dtype: torch.dtype,
    device: str = "cpu",
    quant_storage: torch.dtype = torch.uint8,
) -> torch.nn.Module:
    """from_pretrained with NF4 + double quantization, exactly as for a hub model."""
    quant = None
    if cfg.quant.load_in_4bit:
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=cfg.quant.quant_type,
            bnb_4bit_use_double_quant=cfg.quant.double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_quant_storage=quant_storage,  # packed NF4 bytes seen as this dtype (FSDP needs it)
        )
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path,
        quantization_config=quant,
        dtype=compute_dtype if device != "cpu" else torch.float32,
        device_map={"": device} if device != "cpu" else None,
        trust_remote_code=cfg.trust_remote_code,
    )
    n_4bit = disable_cpu_repack(model)
    if cfg.quant.load_in_4bit and n_4bit == 0:
        raise RuntimeError(f"{name_or_path}: no layer was quantized to 4 bits")
    return model


def check_targets(model: torch.nn.Module, lora: LoraConfig) -> None:
    """peft skips a listed name that matches no module: a typo would quietly train fewer layers."""
    targets = lora.target_modules
    if isinstance(targets, str):  # "all-linear": peft's own keyword
        return
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        )
        given = lora.targets if isinstance(lora.targets, list) else f"{lora.targets} = {targets}"
        raise ConfigError(
            f"lora.targets ({given}): {missing} match no module of {model.config.name_or_path}; its linear "
            f"layers are {linear}; or use a named set: {sorted(TARGET_SETS)}"
        )


def layer_targets(model: torch.nn.Module, targets: str | list[str]) -> str | list[str]:
    """peft refuses layers_to_transform with its "all-linear" keyword: name the linear layers instead
    (every nn.Linear leaf name but the output head, which is what all-linear means to peft)."""
    if targets != "all-linear":
        return targets
    head = model.get_output_embeddings()
    return sorted(
        {
            n.rsplit(".", 1)[-1]
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not head
        }
    )


def peft_lora_config(model: torch.nn.Module, lora: LoraConfig) -> PeftLoraConfig:
    """The adapter as peft takes it; sweeplab.models.estimate wraps its meta model with the very same."""
    check_targets(model, lora)
    depth = model.config.get_text_config().num_hidden_layers
    layers = lora.resolve_layers(depth, model.config.name_or_path)
    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
        lora_dropout=lora.dropout,
        bias=lora.bias,
        target_modules=layer_targets(model, lora.target_modules)
        if layers is not None
        else lora.target_modules,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )


def wrap_lora(model: torch.nn.Module, lora: LoraConfig, gradient_checkpointing: bool) -> PeftModel:
    """Freeze the base, upcast norms, and add LoRA adapters on the chosen target set."""
    peft_config = peft_lora_config(model, lora)
    # peft would enable checkpointing through transformers' deprecated gradient_checkpointing_enable (and
    # only for a 4-bit base): the same call under its current name, non-reentrant as before, for any base.
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    peft_model = get_peft_model(model, peft_config)
    use_fast_dropout(peft_model)  # the same dropout; its CPU mask was 17% of a SmolLM2 step
    peft_model.train()  # from_pretrained leaves eval mode; dropout and the repack guard need train
    return peft_model


def unwrap_lora(peft_model: PeftModel) -> torch.nn.Module:
    """The base as from_pretrained left it: no LoRA layers, checkpointing or input-grad hooks, eval mode.

    What stays: prepare_model_for_kbit_training's frozen parameters and fp32 casts, which it applies
    again, as no-ops, to the next trial's wrap."""
    base = peft_model.unload()
    base.activation_checkpointing_disable()
    base.disable_input_require_grads()  # the next enable would otherwise leave these hooks behind
    return base.eval()


def base_key(
    name_or_path: str, cfg: ModelConfig, compute_dtype: torch.dtype, device: str, quant_storage: torch.dtype
) -> tuple:
    """Everything load_quantized reads: a trial whose key differs loads its own base."""
    return (
        name_or_path,
        repr(cfg.quant.model_dump()),
        str(compute_dtype),
        device,
        str(quant_storage),
        cfg.trust_remote_code,
    )


def build_model(
    name_or_path: str,
    cfg: ModelConfig,
    lora: LoraConfig,
    compute_dtype: torch.dtype,
    device: str = "cpu",
    quant_storage: torch.dtype = torch.uint8,
    keep: bool = False,
) -> PeftModel:
    """keep: hold the loaded base for the next trial of this process and give it back adapter-free."""
    model = reuse.held(
        "base",
        base_key(name_or_path, cfg, compute_dtype, device, quant_storage),
        lambda: load_quantized(name_or_path, cfg, compute_dtype, device, quant_storage),
        keep,
    )
    # After the seed (set first in fit): LoRA A's init draws from torch's RNG, as in a run alone.
    peft_model = wrap_lora(model, lora, cfg.gradient_checkpointing)
    if keep:
        reuse.after_trial(lambda: unwrap_lora(peft_model))
    trainable, total = count_parameters(peft_model)
    log.info(
        "LoRA r=%d alpha=%g%s on %s: %s trainable of %s parameters",
        lora.r,
        lora.alpha,
        " (DoRA)" if lora.use_dora else "",
        lora.targets,
        f"{trainable:,}",
        f"{total:,}",
    )
    return peft_model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total); 4-bit weights count as stored bytes x 2 (two NF4 values per byte)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = 0
    for p in model.parameters():
        packed = getattr(p, "quant_state", None) is not None or p.dtype == torch.uint8
        total += p.numel() * 2 * p.element_size() if packed else p.numel()
    return trainable, total
