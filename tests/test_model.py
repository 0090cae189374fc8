"""The loaded base is really 4-bit, LoRA lands on the named targets, and eval passes don't bend grads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from bitsandbytes.nn import Linear4bit

from sweeplab.config import LoraConfig, validate
from sweeplab.errors import ConfigError
from sweeplab.models.build import build_model, load_tokenizer, resolve_model_dir
from sweeplab.training.module import QLoRAModule
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


def lora_layers(model) -> dict[str, set[str]]:
    """Which module names got adapters in which decoder layer: {"1": {"q_proj", ...}}."""
    out: dict[str, set[str]] = {}
    for name, _ in model.named_parameters():
        if "lora_A" in name:
            layer, module = name.split("layers.")[1].split(".")[0], name.split(".lora_A")[0].split(".")[-1]
            out.setdefault(layer, set()).add(module)
    return out


@pytest.mark.parametrize(("layers", "expected"), [("[-1]", {"1"}), ("-2", {"0"}), ("[-2,-1]", {"0", "1"})])
def test_negative_layers_count_from_the_last(tiny_dir: str, layers: str, expected: set[str]) -> None:
    model = tiny_model(tiny_dir, f"lora.layers_to_transform={layers}", "lora.targets=qv")
    assert lora_layers(model) == {k: {"q_proj", "v_proj"} for k in expected}
    assert set(model.peft_config["default"].layers_to_transform) == {int(k) for k in expected}


def test_all_linear_on_the_last_layer_only(tiny_dir: str) -> None:
    """peft refuses layers_to_transform with its all-linear keyword; sweeplab names the layers for it."""
    model = tiny_model(tiny_dir, "lora.layers_to_transform=[-1]", "lora.targets=all-linear")
    assert lora_layers(model) == {
        "1": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    }


def test_layer_out_of_range_names_the_depth_once_the_model_loads(tiny_dir: str) -> None:
    """A hub model's depth is known only after loading: the check runs in wrap_lora too."""
    rc = validate(make_cfg("model=tiny"))
    lora = LoraConfig(layers_to_transform=[0, -3])
    with pytest.raises(ConfigError, match=re.escape("[-3] out of range")) as err:
        build_model(tiny_dir, rc.model, lora, torch.float32)
    assert "num_layers=2, so use 0..1, or -2..-1" in str(err.value)


def test_a_target_that_matches_nothing_is_refused(tiny_dir: str) -> None:
    with pytest.raises(ConfigError, match=re.escape("['bogus'] match no module")) as err:
        tiny_model(tiny_dir, "lora.targets=[q_proj,bogus]")
    assert "'q_proj', 'up_proj', 'v_proj'" in str(err.value)  # the linear layers that exist


def test_dora_trains_a_magnitude_per_output_row(tiny_dir: str) -> None:
    model = tiny_model(tiny_dir, "lora.use_dora=true", "lora.targets=qv")
    magnitudes = {n: p for n, p in model.named_parameters() if "lora_magnitude_vector" in n}
    assert len(magnitudes) == 4  # q_proj and v_proj in each of 2 layers
    assert all(p.requires_grad and p.ndim == 1 for p in magnitudes.values())
    assert model.peft_config["default"].use_dora
    plain = tiny_model(tiny_dir, "lora.targets=qv")
    assert not any("lora_magnitude_vector" in n for n, _ in plain.named_parameters())
    # One optimizer step moves the magnitudes: they are trained, not just present.
    module = QLoRAModule(model, validate(make_cfg("model=tiny", "optim.lr=1e-2")).optim, max_steps=4)
    optimizer = module.configure_optimizers()["optimizer"]
    before = {n: p.detach().clone() for n, p in magnitudes.items()}
    model(**fixed_batch(tiny_dir)).loss.backward()
    optimizer.step()
    assert all(not torch.equal(before[n], p) for n, p in magnitudes.items())
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert all(decay[id(p)] == 0.0 for p in magnitudes.values())  # a magnitude is not decayed to 0


def test_loraplus_speeds_up_every_b_matrix_of_the_model(tiny_dir: str) -> None:
    model = tiny_model(tiny_dir, "lora.use_dora=true")
    optim = validate(
        make_cfg("model=tiny", "optim.loraplus_lr_ratio=8", "optim.lr=1e-3", "optim.warmup_steps=0")
    ).optim
    optimizer = QLoRAModule(model, optim, max_steps=10).configure_optimizers()["optimizer"]
    lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert {n.split(".")[-3] for n, p in trainable if lr[id(p)] == pytest.approx(8e-3)} == {"lora_B"}
    assert all(lr[id(p)] == pytest.approx(1e-3) for n, p in trainable if "lora_B" not in n)
    assert len(lr) == len(trainable)  # every trainable parameter is in one group


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


def test_gradient_checkpointing_follows_the_config_and_keeps_the_grads(tiny_dir: str) -> None:
    """wrap_lora enables it through transformers' current API; recomputing must not change LoRA grads."""
    batch = fixed_batch(tiny_dir)
    grads = {}
    for on in (True, False):
        torch.manual_seed(0)  # same LoRA init
        model = tiny_model(tiny_dir, f"model.gradient_checkpointing={str(on).lower()}", "lora.dropout=0")
        assert model.get_base_model().is_activation_checkpointing is on
        model(**batch, use_cache=False).loss.backward()
        grads[on] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads[True].keys() == grads[False].keys() and grads[True]
    for name in grads[True]:
        torch.testing.assert_close(grads[True][name], grads[False][name], atol=1e-6, rtol=1e-5, msg=name)
