"""Packing: chats share a row but never attend to each other; loss, grads and resume as if unpacked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sweeplab.config import validate
from sweeplab.data import PadCollator, build_datasets
from sweeplab.data.packing import (
    PackCollator,
    PaddingFreeCollator,
    best_fit_decreasing,
    pack_examples,
    packed_forward,
)
from sweeplab.data.sampler import EpochSeededSampler
from sweeplab.data.tokenize import IGNORE
from sweeplab.models.embedded import build_tokenizer, corpus_text
from tests.conftest import TINY, make_cfg, run_train


def test_best_fit_decreasing_places_every_example_once_within_capacity() -> None:
    lengths = [90, 10, 60, 40, 30, 70, 100, 5, 55, 45]
    rows = best_fit_decreasing(lengths, 100)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 100 for row in rows)
    assert len(rows) == -(-sum(lengths) // 100)  # 505 tokens: 6 rows, none wasted here
    assert rows == best_fit_decreasing(lengths, 100)
    with pytest.raises(ValueError, match="does not fit"):
        best_fit_decreasing([101], 100)


def test_next_chat_first_token_is_never_a_label() -> None:
    a = {"input_ids": [1, 2, 3], "labels": [IGNORE, 2, 3]}
    b = {"input_ids": [4, 5, 6, 7], "labels": [4, 5, 6, 7]}  # as if every token were a label
    batch = PackCollator(pad_id=0)([[a, b], [b]])
    assert batch["input_ids"][0].tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 0, 1, 2, 3]
    assert batch["labels"][0].tolist() == [IGNORE, 2, 3, IGNORE, 5, 6, 7]  # 3 is never trained to predict 4
    assert batch["labels"][1].tolist() == [IGNORE, 5, 6, 7, IGNORE, IGNORE, IGNORE]
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 3, 0, 1, 2]  # the padding: its own sequence
    assert "attention_mask" not in batch and int(batch["real_tokens"]) == 11


def logits_alone(model, example: dict) -> torch.Tensor:
    ids = torch.tensor([example["input_ids"]])
    return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]


# flex_attention compiles its block mask: ~35 s on CPU.
@pytest.mark.parametrize("attn", ["eager", "sdpa", pytest.param("flex_attention", marks=pytest.mark.slow)])
def test_a_packed_chat_has_its_logits_alone(tiny_random_lora, attn: str) -> None:
    model, tokenizer, train = tiny_random_lora
    model.base_model.model.set_attn_implementation(attn)
    a, b = train[0], train[1]
    batch = PackCollator(tokenizer.pad_token_id)([[a, b]])
    with torch.no_grad():
        packed = packed_forward(model, batch).logits[0]
        n = len(a["input_ids"])
        torch.testing.assert_close(packed[:n], logits_alone(model, a), atol=1e-5, rtol=0)
        torch.testing.assert_close(packed[n:], logits_alone(model, b), atol=1e-5, rtol=0)

        # Why packed_forward refuses masks and caches: either one brings the first chat into the second's.
        mask = torch.ones_like(batch["input_ids"])
        masked = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask)
        cached = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True)
        for leaky in (masked.logits[0], cached.logits[0]):
            assert (leaky[n:] - logits_alone(model, b)).abs().max() > 1e-2
    model.base_model.model.set_attn_implementation("sdpa")


def test_a_packed_batch_with_an_attention_mask_is_refused(tiny_random_lora) -> None:
    model, tokenizer, train = tiny_random_lora
    batch = PackCollator(tokenizer.pad_token_id)([[train[0], train[1]]])
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    with pytest.raises(ValueError, match="must not carry an attention_mask"):
        packed_forward(model, batch)


def lora_grads(model, batch) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = packed_forward(model, batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return loss.item(), grads


def test_packed_loss_and_lora_grads_equal_unpacked(tiny_random_lora) -> None:
    model, tokenizer, train = tiny_random_lora
    chats = train[:8]
    rows = pack_examples(chats, 320)
    assert len(rows) < len(chats)  # something was packed
    loss_u, grads_u = lora_grads(model, PadCollator(tokenizer.pad_token_id)(chats))
    loss_p, grads_p = lora_grads(model, PackCollator(tokenizer.pad_token_id)(rows))
    assert loss_p == pytest.approx(loss_u, abs=1e-5)  # both token-weighted over the same label tokens
    assert grads_p.keys() == grads_u.keys() and grads_u
    for name in grads_u:
        torch.testing.assert_close(grads_p[name], grads_u[name], atol=1e-5, rtol=1e-4, msg=name)


def test_a_padding_free_batch_has_the_padded_batch_loss_and_lora_grads(tiny_random_lora) -> None:
    """data.padding_free: the padded run's batch as one row, every pad token gone, the same step."""
    model, tokenizer, train = tiny_random_lora
    chats = train[:6]
    padded = PadCollator(tokenizer.pad_token_id)(chats)
    row = PaddingFreeCollator(tokenizer.pad_token_id)(chats)
    assert (
        row["input_ids"].shape == (1, sum(len(c["input_ids"]) for c in chats)) and "attention_mask" not in row
    )
    assert int(row["real_tokens"]) == int(padded["attention_mask"].sum()) < padded["input_ids"].numel()
    loss_u, grads_u = lora_grads(model, padded)
    loss_f, grads_f = lora_grads(model, row)
    assert loss_f == pytest.approx(loss_u, abs=1e-5)
    for name in grads_u:
        torch.testing.assert_close(grads_f[name], grads_u[name], atol=1e-5, rtol=1e-4, msg=name)


def useful_fraction(rows: list, collate, batch_size: int) -> float:
    real = processed = 0
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size])
        real += int(batch["real_tokens"]) if "real_tokens" in batch else int(batch["attention_mask"].sum())
        processed += batch["input_ids"].numel()
    return real / processed


def test_packing_fills_rows_on_the_default_data(hermetic_cache: Path) -> None:
    """In the order training sees them (train.fit's sampler), at the default rows of 256 tokens.

    Most chats (> 85 tokens with model=toy) go at most two to a row, so row lengths vary: padding every
    row to 256 kept 0.87 useful; batching rows by length and padding to the batch's longest keeps >= 0.95.
    """
    rc = validate(
        make_cfg("model=toy", "data.max_seq_len=256", "data.batch_size=8")
    )  # the default 2000 chats, rows of 256
    recipe = rc.model.embedded
    tokenizer = build_tokenizer(corpus_text(recipe.corpus_chars), recipe.vocab_size)  # base's, unpretrained
    train, _, _ = build_datasets(rc.data, tokenizer, hermetic_cache)
    size, seed, pad = rc.data.batch_size, rc.data.seed, PadCollator(tokenizer.pad_token_id)
    padded = useful_fraction([train[i] for i in EpochSeededSampler(len(train), seed)], pad, size)
    lengths = [len(ex["input_ids"]) for ex in train]
    by_length = EpochSeededSampler(len(train), seed, lengths, size)
    grouped = useful_fraction([train[i] for i in by_length], pad, size)
    rows = pack_examples(train, rc.data.max_seq_len)
    row_lengths = [sum(len(ex["input_ids"]) for ex in row) for row in rows]
    order = EpochSeededSampler(len(rows), seed, row_lengths, size)
    packed = useful_fraction([rows[i] for i in order], PackCollator(tokenizer.pad_token_id), size)
    print(f"useful fraction: padded {padded:.3f}, grouped by length {grouped:.3f}, packed {packed:.3f}")
    assert packed >= 0.95
    assert grouped > padded


def test_length_grouping_is_seeded_and_resumable() -> None:
    lengths = [(i * 37) % 101 for i in range(203)]
    sampler = EpochSeededSampler(len(lengths), 7, lengths, batch_size=4)
    sampler.set_epoch(3)
    full = list(sampler)
    assert sorted(full) == list(range(203)) and full == list(sampler)
    sampler.skip = 5 * 4  # what DataPosition sets after 5 batches
    assert list(sampler) == full[20:]
    assert full[-3:] == sorted(full[-3:], key=lambda i: -lengths[i])  # the short batch comes last
    sampler.set_epoch(4)
    assert list(sampler) != full


def test_group_by_length_with_packing_is_refused() -> None:
    with pytest.raises(Exception, match="group_by_length"):
        validate(make_cfg("data.packing=true", "data.group_by_length=true"))


@pytest.mark.parametrize("other", ["packing", "group_by_length"])
def test_padding_free_with_another_way_to_drop_padding_is_refused(other: str) -> None:
    with pytest.raises(Exception, match=f"data.padding_free and data.{other} both drop padding"):
        validate(make_cfg("data.packing=false", "data.padding_free=true", f"data.{other}=true"))


@pytest.mark.parametrize("data", ["data.packing=true", "data.group_by_length=true", "data.padding_free=true"])
def test_a_run_stores_its_useful_fraction(tmp_path: Path, data: str) -> None:
    packing = "data.packing=true" if data == "data.packing=true" else "data.packing=false"
    result = run_train(*TINY, packing, data, "run_name=p", output_root=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs" / "p" / "metrics.json").read_text())
    assert 0.5 < metrics["data/useful_fraction"] <= 1.0
    if data == "data.padding_free=true":
        assert metrics["data/useful_fraction"] == 1.0


@pytest.mark.slow
def test_sigkill_then_resume_with_packing_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    """As tests/test_resume.py's, with packed rows: their order per epoch comes from (seed, epoch) too."""
    from tests.test_resume import KILL_AFTER_STEP, RESUME, start_and_kill, val_diffs

    # 96 chats (175 tokens on average uncut) -> 36 rows of 512: 18 batches an epoch. Killed at step 20
    # (mid epoch 2), the resumed run crosses two epoch boundaries (36, 54) before step 60: each new
    # epoch's packed order must come out as in the uninterrupted run.
    overrides = [
        *RESUME,
        "trainer.max_steps=60",
        "data.packing=true",
        "data.max_seq_len=512",
        "data.batch_size=2",
    ]
    full = run_train(*overrides, "run_name=a", output_root=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    killed_at = start_and_kill(*overrides, output_root=tmp_path, run_name="b", after_step=KILL_AFTER_STEP)
    assert killed_at < 36, f"killed at step {killed_at}: too late to cross both epoch boundaries"
    resumed = run_train(*overrides, "run_name=b", "ckpt_path=last", output_root=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((tmp_path / "runs" / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "runs" / "b" / "metrics.json").read_text())
    diffs = val_diffs(a, b)
    print(f"packed: killed at step {killed_at}; max |val loss diff| {max(diffs):.3g} over {len(diffs)}")
    assert max(diffs) <= 1e-4
    assert b["steps"] == a["steps"] == 60
    assert b["data/useful_fraction"] == pytest.approx(a["data/useful_fraction"], abs=1e-9)
