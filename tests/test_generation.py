"""Generation-based scoring: what it reads from chats, and that decoding leaves training untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from sweeplab.config import validate
from sweeplab.data import PadCollator, build_datasets, generate_chats
from sweeplab.data.sampler import EpochSeededSampler
from sweeplab.eval.generate import ToolCallEvaluator, build_cases, stop_token_ids
from sweeplab.models.build import build_model, load_tokenizer, resolve_model_dir
from tests.conftest import make_cfg
from tests.test_model import fixed_batch, lora_grads


@pytest.fixture(scope="module")
def tiny_dir(hermetic_cache: Path) -> str:
    return resolve_model_dir(validate(make_cfg("model=tiny")).model, hermetic_cache)


@pytest.fixture(scope="module")
def evaluator(tiny_dir: str) -> ToolCallEvaluator:
    tokenizer = load_tokenizer(tiny_dir)
    return ToolCallEvaluator(tokenizer, build_cases(tokenizer, generate_chats(6, 0, "val")), 4, 12)


def trained_looking_model(tiny_dir: str):
    rc = validate(make_cfg("model=tiny", "lora.dropout=0.3"))  # dropout draws from torch's RNG
    model = build_model(tiny_dir, rc.model, rc.lora, torch.float32)
    with torch.no_grad():  # LoRA B starts at zero; a random B makes every LoRA grad non-trivial
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model


def test_cases_take_the_final_assistant_call(tiny_dir: str) -> None:
    tokenizer = load_tokenizer(tiny_dir)
    chat = {
        "messages": [
            {"role": "user", "content": "Create node 1 at (0, 0, 0) m."},
            {"role": "assistant", "content": '{"name": "POST /db/node", "arguments": {"id": 1}}'},
            {"role": "user", "content": "Now make it fixed."},
            {"role": "assistant", "content": '{"name": "POST /db/support", "arguments": {"node": 1}}'},
        ]
    }
    prose = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    [case] = build_cases(tokenizer, [prose, chat])
    assert case.expected.name == "POST /db/support" and case.request == "Now make it fixed."
    prompt = tokenizer.decode(case.prompt)
    assert prompt.endswith("<|im_start|>assistant\n") and "POST /db/node" in prompt
    assert "support" not in prompt
    assert len(build_cases(tokenizer, [chat] * 5, limit=3)) == 3


def test_decoding_stops_at_the_end_of_turn(tiny_dir: str) -> None:
    tokenizer = load_tokenizer(tiny_dir)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tokenizer, None)


def test_generation_leaves_grads_rng_and_mode_unchanged(tiny_dir: str, evaluator: ToolCallEvaluator) -> None:
    model = trained_looking_model(tiny_dir)
    batch = fixed_batch(tiny_dir)
    torch.manual_seed(0)
    before = lora_grads(model, batch)
    torch.manual_seed(0)
    rng = torch.get_rng_state()
    scores, records = evaluator.run(model)
    assert torch.equal(torch.get_rng_state(), rng), "decoding moved the RNG: LoRA dropout would drift"
    assert model.training, "the model must come back in train mode"
    after = lora_grads(model, batch)
    assert set(scores) == {"json_valid", "tool_name_acc", "args_acc", "tool_exact"}
    assert len(records) == len(evaluator.cases) and evaluator.seconds > 0
    assert before.keys() == after.keys() and len(before) > 0
    for name in before:
        assert torch.equal(before[name], after[name]), name


def test_generation_leaves_the_next_batch_unchanged(tiny_dir: str, evaluator: ToolCallEvaluator) -> None:
    rc = validate(make_cfg("model=tiny", "data.n_train=32", "data.n_val=8", "data.max_seq_len=160"))
    tokenizer = load_tokenizer(tiny_dir)
    train, _, _ = build_datasets(rc.data, tokenizer, Path(rc.paths.cache_dir))

    def second_batch(decode_between: bool) -> dict[str, torch.Tensor]:
        loader = DataLoader(
            train, batch_size=4, sampler=EpochSeededSampler(len(train), 7), collate_fn=PadCollator(0)
        )
        batches = iter(loader)
        next(batches)
        if decode_between:
            evaluator.run(trained_looking_model(tiny_dir))
        return next(batches)

    plain, decoded = second_batch(False), second_batch(True)
    assert all(torch.equal(plain[k], decoded[k]) for k in plain)


def test_batched_decoding_matches_one_by_one(tiny_dir: str, evaluator: ToolCallEvaluator) -> None:
    """Left padding plus the attention mask: a prompt's answer does not depend on its batch mates."""
    model = trained_looking_model(tiny_dir)
    batched = evaluator.generate(model)
    single = ToolCallEvaluator(evaluator.tokenizer, evaluator.cases, 1, evaluator.max_new_tokens)
    assert single.generate(model) == batched
    assert len({len(c.prompt) for c in evaluator.cases}) > 1, "prompts of one length would need no padding"
