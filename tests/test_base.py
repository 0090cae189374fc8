"""The embedded base: tokenizer, assistant mask, cached atomic build, hub-style loading, determinism."""

import json
import threading
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from sweeplab.config import EmbeddedRecipe
from sweeplab.data.chatml import CHAT_TEMPLATE, EOS, IM_END, IM_START, PAD, SPECIAL_TOKENS
from sweeplab.models import embedded as base
from sweeplab.models.embedded import build_tokenizer, cache_key, corpus_text, ensure_base

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


def tiny_recipe(**overrides) -> EmbeddedRecipe:
    """conf/model/tiny.yaml on top of base.yaml, as Hydra's defaults list composes them."""
    merged = OmegaConf.merge(OmegaConf.load(CONF / "base.yaml"), OmegaConf.load(CONF / "tiny.yaml"))
    return EmbeddedRecipe(**{**OmegaConf.to_container(merged.embedded), **overrides})


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(corpus_text(60_000), 512)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return ensure_base(tiny_recipe(), tmp_path_factory.mktemp("cache"))


def test_corpus_is_deterministic_and_truncates():
    full = corpus_text()
    assert len(full) > 400_000 and full == corpus_text()
    assert corpus_text(1000) == full[:1000]


def test_tokenizer_has_chatml_specials_and_pad(tokenizer):
    assert len(tokenizer) == 512
    assert tokenizer.pad_token == PAD and tokenizer.eos_token == IM_END and tokenizer.bos_token is None
    assert set(SPECIAL_TOKENS) <= set(tokenizer.all_special_tokens)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    for token in SPECIAL_TOKENS:  # each special is one id, never split into bytes
        assert tokenizer(token)["input_ids"] == [tokenizer.convert_tokens_to_ids(token)]
    text = 'Beam {"id": 7, "span_m": 4.5} \u00e9\u00e8 \u4e2d'
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text  # byte-level: round-trips anything


def test_assistant_mask_covers_exactly_assistant_content_and_its_end(tokenizer):
    messages = [
        {"role": "system", "content": "You call the beam API."},
        {"role": "user", "content": "How long is beam 7?"},
        {"role": "assistant", "content": '{"name": "get_beam", "arguments": {"id": 7}}'},
        {"role": "user", "content": "And its load?"},
        {"role": "assistant", "content": " The load is 12 kN."},
    ]
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    spans, current = [], []
    for token_id, keep in zip(ids, mask, strict=True):
        if keep:
            current.append(token_id)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    assert [tokenizer.decode(span) for span in spans] == [
        '{"name": "get_beam", "arguments": {"id": 7}}' + IM_END,
        " The load is 12 kN." + IM_END,
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(ids) == rendered


def test_built_base_loads_like_a_hub_model(built):
    model = AutoModelForCausalLM.from_pretrained(built)
    tok = AutoTokenizer.from_pretrained(built)
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert (built / "model.safetensors").is_file()
    assert model.config.vocab_size == len(tok) == tiny_recipe().vocab_size
    assert model.config.pad_token_id == tok.pad_token_id == tok.convert_tokens_to_ids(PAD)
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids(IM_END)
    assert tok.model_max_length == tiny_recipe().max_position_embeddings
    assert {EOS, IM_START} <= set(tok.all_special_tokens)
    assert tok.chat_template == CHAT_TEMPLATE


def test_build_records_a_lower_val_loss(built):
    info = json.loads((built / "build.json").read_text())
    assert info["recipe"] == tiny_recipe().model_dump()
    assert info["val_loss_after"] < info["val_loss_before"]
    assert built.name == cache_key(tiny_recipe()) and built.parent.name == "embedded"


def test_second_call_reuses_the_cache(built, monkeypatch):
    mtime = (built / "build.json").stat().st_mtime_ns
    monkeypatch.setattr(base, "_build", lambda *a: pytest.fail("rebuilt a cached base"))
    assert ensure_base(tiny_recipe(), built.parent.parent) == built
    assert (built / "build.json").stat().st_mtime_ns == mtime


def test_any_recipe_change_gets_its_own_directory():
    assert cache_key(tiny_recipe()) != cache_key(tiny_recipe(seed=1))
    assert cache_key(tiny_recipe()).startswith("tiny-")


def test_same_recipe_same_weights_and_callers_rng_untouched(built, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    again = ensure_base(tiny_recipe(), tmp_path)
    assert torch.equal(torch.rand(4), expected)  # the build forked the RNG
    first, second = load_file(built / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (built / "tokenizer.json").read_text() == (again / "tokenizer.json").read_text()


def test_concurrent_callers_build_once(tmp_path, monkeypatch):
    calls, real_build = [], base._build
    monkeypatch.setattr(base, "_build", lambda recipe, out: (calls.append(out), real_build(recipe, out)))
    recipe = tiny_recipe(pretrain_steps=2)
    stale = tmp_path / "embedded" / f".{cache_key(recipe)}.tmp-999"  # as a SIGKILLed builder leaves it
    stale.mkdir(parents=True)
    results = []
    worker = lambda: results.append(ensure_base(recipe, tmp_path))  # noqa: E731
    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1 and len(results) == 3
    assert not stale.exists()


def test_crashed_build_leaves_nothing_that_looks_finished(tmp_path, monkeypatch):
    def crash(recipe, out):
        (out / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(base, "_build", crash)
    with pytest.raises(RuntimeError, match="mid-build"):
        ensure_base(tiny_recipe(), tmp_path)
    leftovers = [p for p in (tmp_path / "embedded").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def test_too_little_corpus_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="corpus_chars"):
        ensure_base(tiny_recipe(corpus_chars=300, pretrain_seq_len=512), tmp_path)
