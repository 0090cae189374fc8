"""The loaded base is really 4-bit, LoRA lands on the named targets, and eval passes don't bend grads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bitsandbytes.nn import Linear4bit

from sweeplab.config import validate
from sweeplab.model import build_model, load_tokenizer, resolve_model_dir
from tests.conftest import make_cfg


@pytest.fixture(scope="module")
def tiny_dir(hermetic_cache: Path) -> str:
    return resolve_model_dir(validate(make_cfg("model=tiny")).model, hermetic_cache)


def tiny_model(tiny_dir: str, *overrides: str):
    rc = validate(make_cfg("model=tiny", *overrides))
    return build_model(tiny_dir, rc.model, rc.lora, torch.float32)


def fixed_batch(tiny_dir: str) -> dict[str, torch.Tensor]:
    tokenizer = load_tokenizer(tiny_dir)
    chats = [
        [
            {"role": "user", "content": f"Add node {i} at x={i}.5 m"},
            {"role": "assistant", "content": f'{{"name": "POST /db/node", "arguments": {{"id": {i}}}}}'},
        ]
        for i in range(4)
    ]
    enc = tokenizer.apply_chat_template(
        chats, tokenize=True, return_dict=True, padding=True, return_tensors="pt"
    )
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def test_base_linear_layers_are_nf4(tiny_dir: str) -> None:
    model = tiny_model(tiny_dir)
    quantized = {name for name, m in model.named_modules() if isinstance(m, Linear4bit)}
    assert quantized, "no bitsandbytes 4-bit layer"
    assert all(m.weight.quant_state.quant_type == "nf4" for m in model.modules() if isinstance(m, Linear4bit))
    assert not any("lm_head" in name for name in quantized)  # the head stays full precision
    assert all(not m.support_avx512bf16_for_cpu for m in model.modules() if isinstance(m, Linear4bit))


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        ("qv", {"q_proj", "v_proj"}),
        ("attention", {"q_proj", "k_proj", "v_proj", "o_proj"}),
        ("mlp", {"gate_proj", "up_proj", "down_proj"}),
        ("all-linear", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    ],
)
def test_lora_targets(tiny_dir: str, targets: str, expected: set[str]) -> None:
    model = tiny_model(tiny_dir, f"lora.targets={targets}")
    wrapped = {
        name.split(".lora_A")[0].split(".")[-1] for name, _ in model.named_parameters() if "lora_A" in name
    }
    assert wrapped == expected
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_layers_to_transform(tiny_dir: str) -> None:
    model = tiny_model(tiny_dir, "lora.layers_to_transform=[1]", "lora.targets=qv")
    layers = {
        name.split("layers.")[1].split(".")[0] for name, _ in model.named_parameters() if "lora_A" in name
    }
    assert layers == {"1"}


def lora_grads(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad()
    torch.manual_seed(0)  # same dropout masks for both passes
    model(**batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def test_lora_grads_unchanged_by_a_validation_pass(tiny_dir: str) -> None:
    """bitsandbytes repacks 4-bit weights on eval passes on avx512_bf16 CPUs unless told not to."""
    model = tiny_model(tiny_dir)
    batch = fixed_batch(tiny_dir)
    # LoRA B starts at zero, so A's grads vanish; one step makes every grad non-trivial.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    before = lora_grads(model, batch)
    model.eval()
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    model.train()
    after = lora_grads(model, batch)
    assert before.keys() == after.keys() and len(before) > 0
    for name in before:
        assert torch.equal(before[name], after[name]), name
