"""The real entry point, in a subprocess: outputs, learning, reload with plain peft, reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import TINY, run_train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out")
    result = run_train(*TINY, "run_name=a", output_root=out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out / "runs" / "a"


def test_run_leaves_the_promised_outputs(tiny_run: Path) -> None:
    assert (tiny_run / "adapter" / "adapter_config.json").is_file()
    assert (tiny_run / "adapter" / "adapter_model.safetensors").is_file()
    assert (tiny_run / "checkpoints" / "last.ckpt").is_file()
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert config["lora"]["r"] == 16 and "${" not in (tiny_run / "config.yaml").read_text()
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    for key in (
        "best_val_loss",
        "final_val_loss",
        "final_val_ppl",
        "final_val_acc",
        "steps",
        "tokens_per_s",
        "peak_mem_mb",
        "trainable_params",
        "wall_s",
    ):
        assert isinstance(metrics[key], int | float), key
    assert metrics["steps"] == 24 and metrics["tokens_per_s"] > 0 and metrics["trainable_params"] > 0
    # validation at every 8 steps and at the end, plus the untouched base at step 0
    assert [h["step"] for h in metrics["val_history"]] == [0, 8, 16, 24]
    assert 0.0 <= metrics["final_val_acc"] <= 1.0


def test_run_scores_tool_calls_on_val_and_test(tiny_run: Path) -> None:
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["objective"] == {
        "metric": "val/loss",
        "direction": "minimize",
        "value": metrics["best_val_loss"],
    }
    # eval.generate_every=null -> every 3rd for a val/loss objective: validation 0, and always the last
    generated = [h["step"] for h in metrics["val_history"] if "val/tool_exact" in h]
    assert generated == [0, 24]
    for entry in metrics["val_history"]:
        assert 0.0 <= entry.get("val/tool_exact", 0) <= entry.get("val/json_valid", 0) <= 1.0
    for prefix in ("test", "base"):
        assert {f"{prefix}/{m}" for m in ("json_valid", "tool_name_acc", "args_acc", "tool_exact")} <= set(
            metrics
        )
    assert metrics["test_chats"] == 8 and metrics["eval_s"] > 0
    for name in ("predictions.jsonl", "predictions_base.jsonl", "predictions_val.jsonl"):
        records = [json.loads(line) for line in (tiny_run / name).read_text().splitlines()]
        assert len(records) == 8, name
        assert {"request", "expected", "output", "parsed", "verdict"} <= set(records[0])


def test_generation_does_not_change_training(tiny_run: Path, tmp_path: Path) -> None:
    """The same run without any decoding: the same val losses at every validation, to the bit."""
    result = run_train(*TINY, "run_name=quiet", "eval.n_generate=0", "eval.test=false", output_root=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    quiet = json.loads((tmp_path / "runs" / "quiet" / "metrics.json").read_text())
    loud = json.loads((tiny_run / "metrics.json").read_text())
    assert [h["val/loss"] for h in quiet["val_history"]] == [h["val/loss"] for h in loud["val_history"]]
    assert "test/tool_exact" not in quiet and "val/tool_exact" not in quiet["val_history"][-1]
    assert not (tmp_path / "runs" / "quiet" / "predictions.jsonl").exists()


def test_val_loss_fell(tiny_run: Path) -> None:
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["best_val_loss"] < metrics["base_val_loss"] - 0.1


def test_csv_logger_has_the_metric_names(tiny_run: Path) -> None:
    header = next((tiny_run / "csv").rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    assert {"train/loss", "val/loss", "val/ppl", "val/acc", "lr", "tokens_per_s"} <= set(header)
    assert {"val/tool_exact", "test/tool_exact", "base/tool_exact", "test/args_acc"} <= set(header)


def test_adapter_reloads_with_plain_peft(tiny_run: Path) -> None:
    """A plain transformers + peft client rebuilds the model from the adapter dir alone."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from sweeplab.config import DataConfig
    from sweeplab.data import PadCollator, build_datasets

    adapter = tiny_run / "adapter"
    base_path = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base_path).is_absolute() and Path(base_path).is_dir()
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    base = AutoModelForCausalLM.from_pretrained(base_path, quantization_config=quant)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter))

    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    _, val_set, _ = build_datasets(
        DataConfig(**config["data"]), tokenizer, Path(config["paths"]["cache_dir"])
    )
    batch = PadCollator(tokenizer.pad_token_id)(val_set)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    loss = torch.nn.functional.cross_entropy(logits[:, :-1][mask], targets[mask]).item()
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    # A plain client's bitsandbytes repacks the 4-bit weights for its avx512-bf16 eval kernel (training
    # turns that off): measured 1.1e-4 off with it, 5e-7 without, on a CPU that has avx512_bf16.
    assert loss == pytest.approx(metrics["best_val_loss"], abs=5e-4)


def test_same_seed_same_losses(tiny_run: Path, tmp_path: Path) -> None:
    result = run_train(*TINY, "run_name=b", output_root=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    first = json.loads((tiny_run / "metrics.json").read_text())["val_history"]
    second = json.loads((tmp_path / "runs" / "b" / "metrics.json").read_text())["val_history"]
    assert first == second


def test_resume_with_ckpt_path_last(tiny_run: Path, tmp_path: Path) -> None:
    """ckpt_path=last finds the newest unfinished run and continues from its last.ckpt."""
    import shutil

    unfinished = tmp_path / "runs" / "interrupted" / "checkpoints"
    shutil.copytree(tiny_run / "checkpoints", unfinished)  # a run dir with no metrics.json
    result = run_train(*TINY, "run_name=c", "trainer.max_steps=32", "ckpt_path=last", output_root=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs" / "c" / "metrics.json").read_text())
    assert metrics["steps"] == 32
    assert [h["step"] for h in metrics["val_history"]] == [0, 8, 16, 24, 32]  # history carried over


def test_wandb_logs_offline_without_a_key(tmp_path: Path) -> None:
    """No API key, no network: W&B must write an offline run, never wait on a login."""
    overrides = [o for o in TINY if not o.startswith(("logger=", "trainer.max_steps", "trainer.val_every"))]
    env = {"WANDB_API_KEY": "", "WANDB_MODE": "", "HOME": str(tmp_path)}  # no ~/.netrc either
    result = run_train(
        *overrides,
        "logger=wandb",
        "trainer.max_steps=4",
        "trainer.val_every_n_steps=4",
        "logger.group=g1",
        "run_name=w",
        output_root=tmp_path / "out",
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = list((tmp_path / "out" / "runs" / "w" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


def test_early_stopping_counts_optimizer_steps(tmp_path: Path) -> None:
    """min_delta no step can reach + patience 1: stops at the second validation; with accumulation 2
    the validations still come every 8 optimizer steps."""
    result = run_train(
        *TINY,
        "run_name=es",
        "callbacks.early_stopping.min_delta=10",
        "callbacks.early_stopping.patience=1",
        "trainer.accumulate_grad_batches=2",
        "data.batch_size=4",
        output_root=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs" / "es" / "metrics.json").read_text())
    assert metrics["steps"] == 16 and metrics["stopped_early"] is True
    assert [h["step"] for h in metrics["val_history"]] == [0, 8, 16]


@pytest.mark.parametrize("source", ["jsonl", "text"])
def test_user_data_trains(source: str, tmp_path: Path) -> None:
    from sweeplab.data import generate_chats

    if source == "jsonl":
        path = tmp_path / "chats.jsonl"
        path.write_text("".join(json.dumps(chat) + "\n" for chat in generate_chats(40, seed=7)))
    else:
        from sweeplab.models.embedded import corpus_text

        path = tmp_path / "corpus.txt"
        path.write_text(corpus_text(20_000))
    overrides = [o for o in TINY if not o.startswith(("trainer.max_steps", "data.n_"))]
    result = run_train(
        *overrides,
        f"data={source}",
        f"data.path={path}",
        "data.val_fraction=0.2",
        "trainer.max_steps=8",
        "run_name=u",
        output_root=tmp_path / "out",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "runs" / "u" / "metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["data"]["n_val"] >= 1


def test_export_merges_the_adapter(tiny_run: Path, tmp_path: Path) -> None:
    """python -m sweeplab.export: the merged model computes what the run trained: the adapter on the
    4-bit base (its NF4 weights dequantized, in fp32), not the adapter on the original weights."""
    import subprocess
    import sys

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from sweeplab.config import ModelConfig
    from sweeplab.models.build import load_quantized

    out = tmp_path / "merged"
    result = subprocess.run(
        [sys.executable, "-m", "sweeplab.export", str(tiny_run), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    base_path = json.loads((tiny_run / "adapter" / "adapter_config.json").read_text())[
        "base_model_name_or_path"
    ]
    model_cfg = ModelConfig.model_validate(yaml.safe_load((tiny_run / "config.yaml").read_text())["model"])
    trained = PeftModel.from_pretrained(
        load_quantized(base_path, model_cfg, torch.float32), str(tiny_run / "adapter")
    ).eval()
    original = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_path), str(tiny_run / "adapter")
    ).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    ids = torch.arange(1, 40).unsqueeze(0)
    with torch.no_grad():
        logits = merged(ids).logits
        assert torch.allclose(logits, trained(ids).logits, atol=1e-4)
        assert not torch.allclose(logits, original(ids).logits, atol=1e-4)  # the NF4 weights differ
    again = subprocess.run(
        [sys.executable, "-m", "sweeplab.export", str(tiny_run), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert again.returncode != 0 and "exists" in again.stderr
