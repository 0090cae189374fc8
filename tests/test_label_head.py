"""The label-only LM head: the same loss and LoRA gradients as the model's own full-logits loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sweeplab.data import PadCollator
from sweeplab.data.packing import PackCollator, packed_forward
from sweeplab.models.label_head import LabelLogits, split_head


@pytest.fixture(scope="module")
def tiny(tiny_random_lora):
    model, tokenizer, train = tiny_random_lora
    return model, tokenizer, [train[i] for i in range(4)]


def loss_and_grads(model, loss_fn) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_label_only_loss_and_grads_equal_the_full_logits(tiny, layout: str) -> None:
    model, tokenizer, examples = tiny
    if layout == "padded":
        batch = PadCollator(tokenizer.pad_token_id)(examples)
    else:
        batch = PackCollator(tokenizer.pad_token_id)([examples[:2], examples[2:]])
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert 0 < labelled < batch["input_ids"].numel() * 0.8  # the head really skips positions

    full, full_grads = loss_and_grads(model, lambda: packed_forward(model, batch).loss)
    head = LabelLogits(model)
    assert head.parts is not None, "the tiny Llama must take the label-only path"
    ours, our_grads = loss_and_grads(model, lambda: F.cross_entropy(*head(batch)))

    assert ours == pytest.approx(full, abs=1e-5)
    assert full_grads.keys() == our_grads.keys() and any("lora_A" in n for n in our_grads)
    for name, grad in full_grads.items():
        torch.testing.assert_close(our_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
        assert grad.abs().max() > 0, name  # every LoRA matrix is really compared


def test_split_head_finds_the_lora_body_and_the_output_head(tiny) -> None:
    model, _, _ = tiny
    body, head = split_head(model)
    assert head is model.get_base_model().lm_head
    assert any("lora_A" in n for n, _ in body.named_parameters())  # the adapters run inside the body


def test_a_model_that_scales_its_logits_keeps_the_full_forward(tiny, monkeypatch) -> None:
    model, tokenizer, examples = tiny
    monkeypatch.setattr(model.get_base_model().config, "final_logit_softcapping", 30.0, raising=False)
    reason = split_head(model)
    assert isinstance(reason, str) and "final_logit_softcapping" in reason
    head = LabelLogits(model)
    assert head.parts is None
    batch = PadCollator(tokenizer.pad_token_id)(examples)
    with torch.no_grad():
        logits, targets = head(batch)
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (len(targets), full.shape[-1])
