"""Hub presets take the same loading path: a locally saved Qwen2 model trains through model=qwen2.5-0.5b."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sweeplab.data.chatml import CHAT_TEMPLATE
from tests.conftest import TINY, run_train

# Qwen2.5's own template has no {% generation %} tags: labels come from the prefix fallback.
TEMPLATE_WITHOUT_GENERATION_TAGS = CHAT_TEMPLATE.replace("{% generation %}", "").replace(
    "{% endgeneration %}", ""
)


@pytest.fixture(scope="module")
def local_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from sweeplab.models.embedded import build_tokenizer, corpus_text

    path = tmp_path_factory.mktemp("Qwen2.5-0.5B-Instruct")
    tokenizer = build_tokenizer(corpus_text(40_000), vocab_size=512)
    tokenizer.chat_template = TEMPLATE_WITHOUT_GENERATION_TAGS
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_preset_trains_from_a_local_copy(local_qwen: Path, tmp_path: Path) -> None:
    overrides = [o for o in TINY if not o.startswith("model=")]
    result = run_train(
        *overrides,
        "model=qwen2.5-0.5b",
        f"model.name_or_path={local_qwen}",
        "model.gradient_checkpointing=false",
        "run_name=q",
        output_root=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = tmp_path / "runs" / "q"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_val_loss"] < metrics["base_val_loss"]
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(local_qwen)
    assert json.loads((local_qwen / "config.json").read_text())["model_type"] == "qwen2"


def test_preset_without_hub_or_copy_fails_cleanly(tmp_path: Path) -> None:
    overrides = [o for o in TINY if not o.startswith("model=")]
    result = run_train(*overrides, "model=qwen2.5-0.5b", output_root=tmp_path, timeout=300)
    assert result.returncode != 0
    assert "Qwen/Qwen2.5-0.5B-Instruct" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
