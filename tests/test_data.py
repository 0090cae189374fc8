"""Data pipeline: generated chats, assistant-only labels, truncation, caching, collation."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import sweeplab.data.datasets as datasets
from sweeplab.config import DataConfig
from sweeplab.data import (
    IGNORE,
    PadCollator,
    build_datasets,
    generate_chats,
    tokenize_chat,
    tokenize_text,
    train_val_chats,
)
from sweeplab.data.chatml import CHAT_TEMPLATE, IM_END, PAD, SPECIAL_TOKENS
from sweeplab.data.packing import pack_examples, row_length
from sweeplab.errors import DataError

PLAIN_TEMPLATE = CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
# Like Qwen2.5's: no generation tags, and a default system prompt when the chat has none.
QWEN_LIKE_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
CHAT = [
    {"role": "system", "content": "Reply with one JSON tool call."},
    {"role": "user", "content": "Delete node 7."},
    {"role": "assistant", "content": '{"name": "DELETE /db/node", "arguments": {"id": 7}}'},
    {"role": "user", "content": "And node 8."},
    {"role": "assistant", "content": '{"name": "DELETE /db/node", "arguments": {"id": 8}}'},
]


def make_tokenizer(bpe: Tokenizer, template: str | None) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token=PAD, eos_token=IM_END, chat_template=template
    )


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    """A 512-token byte-level BPE trained on generated chats in ~0.1 s (the embedded one is alike)."""
    corpus = "\n".join(m["content"] for chat in generate_chats(300, 0) for m in chat["messages"])
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([corpus], trainer)
    return bpe


@pytest.fixture(scope="module")
def tokenizer(bpe) -> PreTrainedTokenizerFast:
    return make_tokenizer(bpe, CHAT_TEMPLATE)


def labelled_runs(tokenizer, labels: list[int]) -> list[str]:
    """Decode each contiguous run of label tokens."""
    runs, current = [], []
    for label in [*labels, IGNORE]:
        if label != IGNORE:
            current.append(label)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs


# --- generated tool-calling chats ---------------------------------------------------------------


def test_generate_chats_is_deterministic_and_covers_the_api():
    chats = generate_chats(500, seed=7)
    assert chats == generate_chats(500, seed=7)
    assert chats[:100] == generate_chats(100, seed=7)
    assert chats != generate_chats(500, seed=8)
    names = set()
    for chat in chats:
        roles = [m["role"] for m in chat["messages"]]
        assert roles in (["system", "user", "assistant"], ["system"] + ["user", "assistant"] * 2)
        for message in chat["messages"]:
            if message["role"] == "assistant":
                call = json.loads(message["content"])
                assert list(call) == ["name", "arguments"] and isinstance(call["arguments"], dict)
                assert message["content"] == json.dumps(call)  # canonical: re-serializing is the identity
                names.add(call["name"])
    assert len(names) >= 15, sorted(names)
    assert any(len(chat["messages"]) == 5 for chat in chats)  # some multi-turn chats
    assert len({chat["messages"][1]["content"] for chat in chats}) > 450  # varied requests


def test_generate_chats_does_not_depend_on_the_hash_seed():
    # Sweep workers are separate processes: a set or hash() in the generator would make them differ.
    # sweeplab.data is stubbed in the children so they skip its torch import (~3 s each).
    code = (
        "import hashlib, json, sys, types\n"
        "sys.modules['sweeplab.data'] = types.ModuleType('sweeplab.data', '')\n"
        f"sys.modules['sweeplab.data'].__path__ = [{str(Path(datasets.__file__).parent)!r}]\n"
        "from sweeplab.data.toolcalls import generate_chats\n"
        "print(hashlib.sha256(json.dumps(generate_chats(300, 1)).encode()).hexdigest())"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for hash_seed in ("1", "2")
    }
    assert len(outputs) == 1 and len(outputs.pop()) == 65  # one sha256 hex line


def test_train_and_val_are_disjoint():
    train, val = train_val_chats(2000, 200, seed=1234)
    assert len(train) == 2000 and len(val) == 200
    turns = {json.dumps(chat["messages"][1:]) for chat in train}  # system prompts aside
    assert not any(json.dumps(chat["messages"][1:]) in turns for chat in val)
    assert train == generate_chats(2000, 1234)


# --- labels ------------------------------------------------------------------------------------


def test_labels_are_exactly_the_assistant_turns(tokenizer):
    ids, labels, truncated = tokenize_chat(tokenizer, CHAT, max_seq_len=1000)
    assert not truncated and len(ids) == len(labels)
    assert all(label in (IGNORE, tok) for tok, label in zip(ids, labels, strict=True))
    expected = [CHAT[2]["content"] + IM_END, CHAT[4]["content"] + IM_END]
    assert labelled_runs(tokenizer, labels) == expected


@pytest.mark.parametrize("template", [PLAIN_TEMPLATE, QWEN_LIKE_TEMPLATE])
def test_prefix_fallback_labels_the_same_tokens(bpe, tokenizer, template):
    fallback = make_tokenizer(bpe, template)
    for chat in [CHAT, *generate_chats(100, seed=3)]:
        messages = chat if isinstance(chat, list) else chat["messages"]
        ids, labels, _ = tokenize_chat(fallback, messages, max_seq_len=1000)
        if template == PLAIN_TEMPLATE:  # same text, so the same tokens as the generation-tag path
            assert (ids, labels) == tokenize_chat(tokenizer, messages, 1000)[:2]
        assistant = [m["content"] + IM_END for m in messages if m["role"] == "assistant"]
        assert labelled_runs(fallback, labels) == assistant


def test_template_that_rewrites_history_is_refused(bpe):
    # Renders earlier assistant turns differently once a later turn exists (as reasoning templates do).
    template = PLAIN_TEMPLATE.replace("message['content']", "(message['content'] if loop.last else 'x')")
    with pytest.raises(DataError, match="not prefix-consistent"):
        tokenize_chat(make_tokenizer(bpe, template), CHAT, 1000)


def test_no_chat_template_is_a_data_error(bpe):
    with pytest.raises(DataError, match="no chat template"):
        tokenize_chat(make_tokenizer(bpe, None), CHAT, 1000)


def test_truncation_cuts_the_end(tokenizer):
    full, full_labels, _ = tokenize_chat(tokenizer, CHAT, 1000)
    ids, labels, truncated = tokenize_chat(tokenizer, CHAT, len(full) - 5)
    assert truncated and ids == full[:-5] and labels == full_labels[:-5]


def test_text_chunks_cover_the_text(tokenizer):
    text = "Apply a 25 kN downward point load at node 7. " * 40
    chunks = tokenize_text(tokenizer, text, max_seq_len=64)
    assert all(len(chunk) <= 64 for chunk in chunks) and all(len(chunk) == 64 for chunk in chunks[:-1])
    assert tokenizer.decode([tok for chunk in chunks for tok in chunk]) == text


# --- build_datasets -------------------------------------------------------------------------------


def test_build_toolcalls_counts_truncation_and_caches(tokenizer, tmp_path, monkeypatch, caplog):
    cfg = DataConfig(n_train=60, n_val=20, max_seq_len=96, seed=5)
    with caplog.at_level(logging.INFO, logger="sweeplab.data.datasets"):
        train, val, stats = build_datasets(cfg, tokenizer, tmp_path)
    assert (stats.n_train, stats.n_val) == (len(train), len(val))
    assert stats.n_train + stats.n_val + stats.dropped == 80
    assert stats.truncated_train > 0  # about half the chats are longer than 96 tokens (71-196)
    assert all(len(ex["input_ids"]) == len(ex["labels"]) <= 96 for ex in train + val)
    assert stats.label_tokens == sum(label != IGNORE for ex in train for label in ex["labels"])
    assert f"truncated to max_seq_len=96: {stats.truncated_train} train" in caplog.text
    assert len(list((tmp_path / "tokenized").glob("*.pt"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("tokenized again instead of reading the cache")

    monkeypatch.setattr(datasets, "tokenize_chat", fail)
    assert build_datasets(cfg, tokenizer, tmp_path) == (train, val, stats)
    with pytest.raises(AssertionError, match="tokenized again"):  # another length is another key
        build_datasets(cfg.model_copy(update={"max_seq_len": 97}), tokenizer, tmp_path)


def test_cache_key_follows_tokenizer_and_file_content(bpe, tokenizer, tmp_path):
    cfg = DataConfig()
    assert datasets.cache_key(cfg, tokenizer) != datasets.cache_key(cfg, make_tokenizer(bpe, PLAIN_TEMPLATE))
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"messages": CHAT}) + "\n")
    jsonl = DataConfig(source="jsonl", path=str(path))
    before = datasets.cache_key(jsonl, tokenizer)
    path.write_text(json.dumps({"messages": CHAT[:3]}) + "\n")
    assert datasets.cache_key(jsonl, tokenizer) != before


def test_every_example_too_long_names_max_seq_len(tokenizer, tmp_path):
    cfg = DataConfig(n_train=10, n_val=5, max_seq_len=8)  # the system prompt alone is longer
    with pytest.raises(DataError, match=r"data\.max_seq_len=8"):
        build_datasets(cfg, tokenizer, tmp_path)


def test_unset_max_seq_len_follows_the_data_up_to_the_context(tokenizer, tmp_path, caplog):
    """The default cuts nothing a model can read: chats of 71-196 tokens stay whole, without a limit or
    under a context of 512; a context shorter than the chats cuts them and says it was the context."""
    cfg = DataConfig(n_train=60, n_val=20, seed=5)
    assert cfg.max_seq_len is None
    lengths = {}
    for context in (None, 512):
        train, val, stats = build_datasets(cfg, tokenizer, tmp_path / str(context), context)
        assert stats.truncated_train == stats.truncated_val == 0
        lengths[context] = sorted(len(ex["input_ids"]) for ex in train)
    assert lengths[None] == lengths[512] and lengths[None][-1] > 150  # longer than a cut would allow
    with caplog.at_level(logging.INFO, logger="sweeplab.data.datasets"):
        _, _, stats = build_datasets(cfg, tokenizer, tmp_path / "short", context=120)
    assert stats.truncated_train > 0 and "truncated to max_seq_len=120" in caplog.text
    with pytest.raises(DataError, match=r"the model's context \(8 tokens; data\.max_seq_len is unset\)"):
        build_datasets(cfg, tokenizer, tmp_path / "tiny", context=8)
    with pytest.raises(DataError, match="data.source=text needs data.max_seq_len"):
        path = tmp_path / "corpus.txt"
        path.write_text("a b c\n" * 50)
        build_datasets(DataConfig(source="text", path=str(path)), tokenizer, tmp_path)


def test_packed_rows_are_as_long_as_the_longest_chat_when_unset():
    examples = [{"input_ids": [0] * n} for n in (30, 70, 120, 50)]
    assert row_length(None, examples) == 120 and row_length(64, examples) == 64
    rows = pack_examples(examples, row_length(None, examples))
    assert sorted(sum(len(ex["input_ids"]) for ex in row) for row in rows) == [30, 120, 120]


def test_build_jsonl_with_seeded_split_and_val_path(tokenizer, tmp_path):
    path, val_path = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    path.write_text("".join(json.dumps(chat) + "\n" for chat in generate_chats(30, 1)))
    val_path.write_text("".join(json.dumps(chat) + "\n" for chat in generate_chats(4, 2)))
    cfg = DataConfig(source="jsonl", path=str(path), val_fraction=0.2, max_seq_len=512)
    train, val, stats = build_datasets(cfg, tokenizer, tmp_path / "a")
    assert (stats.n_train, stats.n_val) == (24, 6)
    assert build_datasets(cfg.model_copy(update={"seed": 9}), tokenizer, tmp_path / "b")[1] != val
    with_val = cfg.model_copy(update={"val_path": str(val_path)})
    train, val, stats = build_datasets(with_val, tokenizer, tmp_path)
    assert (stats.n_train, stats.n_val) == (30, 4)


def test_build_text_labels_every_token(tokenizer, tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("Run a linear static analysis for combination 3.\n" * 200)
    cfg = DataConfig(source="text", path=str(path), max_seq_len=32)
    train, val, stats = build_datasets(cfg, tokenizer, tmp_path)
    assert stats.n_val >= 1 and stats.truncated_train == 0
    assert all(ex["labels"] == ex["input_ids"] and len(ex["input_ids"]) <= 32 for ex in train + val)


# --- collation ----------------------------------------------------------------------------------


def test_pad_collator_pads_right():
    batch = [{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    out = PadCollator(pad_id=0)(batch)
    assert {k: v.shape for k, v in out.items()} == {k: torch.Size([2, 3]) for k in out}
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert all(v.dtype == torch.long for v in out.values())
