"""The calculation behind sweeplab.estimate: a config's parameters, memory and FLOPs, on the meta device."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeplab.config import RunConfig
from sweeplab.errors import ConfigError

GIB = 2**30
# bitsandbytes 4-bit: one absmax per 64 weights; double quantization stores it in 8 bits with one
# fp32 absmax per 256 of those (QLoRA paper, section 3).
QUANT_BLOCK = 64
DQ_BLOCK = 256
OPTIM8_BLOCK = 256  # bitsandbytes 8-bit optimizers: one fp32 absmax per 256 values of each state
OPTIM8_MIN_SIZE = 4096  # smaller tensors keep 32-bit states (bitsandbytes' min_8bit_size default)

# Architecture of the hub presets, from each model's config.json, for estimates without the hub.
HUB_SHAPES: dict[str, dict[str, Any]] = {
    "Qwen/Qwen2.5-1.5B-Instruct": dict(
        model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
    ),
    "Qwen/Qwen2.5-0.5B-Instruct": dict(
        model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
    ),
    "meta-llama/Llama-3.2-1B-Instruct": dict(
        model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True,
    ),
    "HuggingFaceTB/SmolLM2-360M-Instruct": dict(
        model_type="llama", hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
        num_attention_heads=15, num_key_value_heads=5, vocab_size=49152, tie_word_embeddings=True,
    ),
    "SmolLM2-135M-Instruct.Q4_1.gguf": dict(
        model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
    ),
}  # fmt: skip


def architecture(rc: RunConfig) -> tuple[Any, str]:
    """(transformers config, where it came from): a config.json on disk first, else the shape table."""
    from transformers import AutoConfig, LlamaConfig

    cache = Path(rc.paths.cache_dir).expanduser()
    m = rc.model
    if m.embedded is not None:
        from sweeplab.models.embedded import cache_key

        built = cache / "embedded" / cache_key(m.embedded) / "config.json"
        if built.is_file():
            return AutoConfig.from_pretrained(built.parent), str(built)
        e = (
            m.embedded
        )  # the same LlamaConfig as sweeplab.models.embedded._build; the built tokenizer fills vocab_size
        config = LlamaConfig(
            vocab_size=e.vocab_size, hidden_size=e.hidden_size, intermediate_size=e.intermediate_size,
            num_hidden_layers=e.num_layers, num_attention_heads=e.num_heads, num_key_value_heads=e.num_heads,
            max_position_embeddings=e.max_position_embeddings, tie_word_embeddings=True,
        )  # fmt: skip
        return config, f"model.embedded ({e.name})"
    if m.gguf is not None:
        name = Path(m.gguf.file).name
        converted = sorted((cache / "models").glob(f"{Path(name).stem}-*/config.json"))
        if converted:
            return AutoConfig.from_pretrained(converted[-1].parent), str(converted[-1])
        key = name
    else:
        key = m.name_or_path
        try:  # a local directory, or a copy in the Hugging Face cache; never the network
            config = AutoConfig.from_pretrained(
                key, local_files_only=True, trust_remote_code=m.trust_remote_code
            )
            return config, f"{key} (config.json)"
        except (OSError, ValueError):
            pass
    if key not in HUB_SHAPES:
        raise ConfigError(
            f"no architecture for {key!r}: no config.json on disk and not a built-in preset "
            f"({', '.join(HUB_SHAPES)}); point model.name_or_path at a directory with its config.json"
        )
    shape = dict(HUB_SHAPES[key])
    return AutoConfig.for_model(shape.pop("model_type"), **shape), "built-in shape table"


def meta_peft_model(config: Any, rc: RunConfig) -> Any:
    """The base on the meta device, wrapped by peft with the same LoraConfig as models.build.wrap_lora."""
    import warnings

    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from sweeplab.models.build import peft_lora_config

    with torch.device("meta"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        model = AutoModelForCausalLM.from_config(config)
        try:
            peft_config = peft_lora_config(model, rc.lora)
        except ValueError as exc:
            raise ConfigError(f"lora: peft refuses this adapter: {exc}") from None
        for p in model.parameters():  # prepare_model_for_kbit_training freezes the base first
            p.requires_grad_(False)
        return get_peft_model(model, peft_config)


@dataclass
class Estimate:
    """One row: counts are exact (from the meta model), bytes and FLOPs follow docs/ESTIMATE.md."""

    label: str
    source: str
    total_params: int  # base + LoRA, tied weights once
    trainable_params: int
    lora_modules: int
    quantized_params: int  # Linear weights stored in 4 bits
    kept_params: int  # embeddings, untied head, norms, biases: not quantized
    weights_4bit: float  # bytes, 0.5 per parameter
    quant_constants: float  # bytes
    kept_weights: float  # bytes, fp32 after peft's prepare_model_for_kbit_training
    lora_weights: float
    gradients: float
    optimizer: float
    activations: float  # no gradient checkpointing
    activations_ckpt: float  # with gradient checkpointing
    gradient_checkpointing: bool
    precision: str  # Lightning precision the activations were sized for
    seq_len: int  # tokens per row the activations were sized for
    flops_per_token: float  # training step, as configured (recompute included with checkpointing)
    forward_flops_per_token: float

    @property
    def total(self) -> float:
        acts = self.activations_ckpt if self.gradient_checkpointing else self.activations
        static = self.weights_4bit + self.quant_constants + self.kept_weights + self.lora_weights
        return static + self.gradients + self.optimizer + acts

    @property
    def constant_bits(self) -> float:
        return 8 * self.quant_constants / self.quantized_params if self.quantized_params else 0.0


def quant_constant_bytes(numel: int, double_quant: bool) -> float:
    """absmax per 64-weight block: fp32, or 8 bits plus one fp32 per 256 blocks with double quant."""
    blocks = math.ceil(numel / QUANT_BLOCK)
    if not double_quant:
        return 4.0 * blocks
    return 1.0 * blocks + 4.0 * math.ceil(blocks / DQ_BLOCK)


def optimizer_bytes(numel: int, name: str) -> float:
    if name == "adamw" or numel < OPTIM8_MIN_SIZE:
        return 8.0 * numel  # exp_avg and exp_avg_sq in fp32
    return 2.0 * numel + 2 * 4.0 * math.ceil(numel / OPTIM8_BLOCK)  # two uint8 states + their absmax


def estimate(rc: RunConfig, label: str = "") -> Estimate:
    import torch
    from peft.tuners.lora import LoraLayer

    config, source = architecture(rc)
    model = meta_peft_model(config, rc)
    base = model.get_base_model()
    head = base.get_output_embeddings()
    lora_layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]

    quantized = kept = consts = 0.0
    for name, module in base.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if "lora_" in name or (module is head and getattr(config, "tie_word_embeddings", False)):
                continue  # LoRA counted below; a tied head is the embedding, counted once
            quantizable = isinstance(module, torch.nn.Linear) and module is not head and pname == "weight"
            if rc.model.quant.load_in_4bit and quantizable:
                quantized += p.numel()
                consts += quant_constant_bytes(p.numel(), rc.model.quant.double_quant)
            else:
                kept += p.numel()
    lora_params = [p for n, p in model.named_parameters() if "lora_" in n]
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_lora = sum(p.numel() for p in lora_params)
    n_trainable = sum(p.numel() for p in trainable)

    # Compute dtype: 16-bit on a GPU (auto picks bf16 or fp16 mixed: the same bytes), fp32 on CPU.
    on_cpu = rc.trainer.accelerator == "cpu"
    precision = (
        rc.trainer.precision if rc.trainer.precision != "auto" else ("32-true" if on_cpu else "16-mixed")
    )
    act_bytes = 4 if precision == "32-true" else 2
    h, i, n_layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    h_kv = config.num_key_value_heads * head_dim
    vocab = config.vocab_size
    # Unset, a run's rows are its longest chat, known only once the data is tokenized: the model's
    # context bounds it (the printout says so; data.max_seq_len=N sizes a given length).
    seq_len = rc.data.max_seq_len or getattr(config, "max_position_embeddings", None) or 2048
    tokens = rc.data.batch_size * seq_len

    # Per token and layer (docs/ESTIMATE.md): residual stream and norms in fp32 (peft upcasts
    # embeddings and norm weights), matmul outputs saved for backward in the compute dtype.
    per_layer = 6 * h * 4 + (3 * h + 2 * h_kv + 4 * i) * act_bytes
    lora_copy = rc.lora.dropout > 0 or act_bytes != 4  # the LoRA branch keeps its own copy of x
    for _, layer in lora_layers:
        d_in = layer.in_features
        per_layer_share = rc.lora.r * act_bytes + (d_in * act_bytes if lora_copy else 0)
        per_layer_share += d_in if rc.lora.dropout > 0 else 0  # dropout mask, one byte per element
        per_layer += per_layer_share / n_layers  # averaged: layers_to_transform may wrap only some
    logits = 12 * vocab  # fp32 log-softmax output, its gradient and the logits' gradient at the loss
    outside = 3 * h * 4  # embedding output, final norm input and output
    activations = tokens * (n_layers * per_layer + logits + outside)
    activations_ckpt = tokens * (n_layers * h * 4 + per_layer + logits + outside)

    # FLOPs per token: 2 per multiply-add. Frozen weights need only activation gradients (2N), not
    # weight gradients: 4N per token instead of the 6N of full training (docs/ESTIMATE.md).
    n_matmul = quantized + (head.weight.numel() if head is not None else 0)  # the head is not recomputed
    attn = 2 * n_layers * seq_len * config.num_attention_heads * head_dim
    forward = 2 * n_matmul + 2 * n_lora + attn
    backward = 2 * n_matmul + 2 * attn + 4 * n_lora
    recompute = forward - 2 * (n_matmul - quantized) if rc.model.gradient_checkpointing else 0

    return Estimate(
        label=label,
        source=source,
        total_params=int(quantized + kept + n_lora),
        trainable_params=n_trainable,
        lora_modules=len(lora_layers),
        quantized_params=int(quantized),
        kept_params=int(kept),
        weights_4bit=quantized / 2,
        quant_constants=consts,
        kept_weights=4.0 * kept,
        lora_weights=4.0 * n_lora,
        gradients=4.0 * n_trainable,
        optimizer=sum(optimizer_bytes(p.numel(), rc.optim.name) for p in trainable),
        activations=activations,
        activations_ckpt=activations_ckpt,
        gradient_checkpointing=rc.model.gradient_checkpointing,
        precision=precision,
        seq_len=seq_len,
        flops_per_token=forward + backward + recompute,
        forward_flops_per_token=forward,
    )
