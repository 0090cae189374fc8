"""Every saved adapter carries a Hugging Face model card; a W&B run keeps the adapter as a model artifact."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from sweeplab.config import DataConfig
from sweeplab.data.datasets import data_sha256
from sweeplab.sweep.best_card import sweep_summary
from sweeplab.training.model_card import write_run_card
from tests.conftest import TINY, run_train


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run dir, W&B data dir): a tiny run logged to W&B offline."""
    out = tmp_path_factory.mktemp("out")
    wandb_data = tmp_path_factory.mktemp("wandb-data")  # W&B stages artifact files here for a later sync
    overrides = [o for o in TINY if not o.startswith("logger=")]
    result = run_train(
        *overrides, "logger=wandb", "run_name=card", output_root=out, env={"WANDB_DATA_DIR": str(wandb_data)}
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out / "runs" / "card", wandb_data


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_card_has_the_hub_front_matter(run: tuple[Path, Path]) -> None:
    run_dir, _ = run
    card = (run_dir / "adapter" / "README.md").read_text()
    front = front_matter(card)
    adapter_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert front["base_model"] == adapter_config["base_model_name_or_path"]
    assert front["library_name"] == "peft" and front["pipeline_tag"] == "text-generation"
    assert {"sweeplab", "lora", "qlora", "tool-calling"} <= set(front["tags"])
    assert "[More Information Needed]" not in card  # peft's own template card was replaced


def test_card_says_what_it_learned_from_how_and_how_it_scores(run: tuple[Path, Path]) -> None:
    run_dir, _ = run
    card = (run_dir / "adapter" / "README.md").read_text()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    digest = data_sha256(DataConfig(**config["data"]))
    assert metrics["data_sha256"] == digest and f"data sha256: `{digest}`" in card
    assert f"{config['data']['n_train']} train" in card
    assert f"| `lora.r` | {config['lora']['r']} |" in card
    assert f"| `optim.lr` | {config['optim']['lr']} |" in card
    assert f"| steps trained | {metrics['steps']} |" in card
    for metric in ("tool_exact", "args_acc", "tool_name_acc", "json_valid"):
        row = next(line for line in card.splitlines() if line.startswith(f"| `{metric}`"))
        assert row.endswith(f"| {metrics[f'test/{metric}']:.3f} | {metrics[f'base/{metric}']:.3f} |"), row
    assert f"Held-out test split ({metrics['test_chats']} chats)" in card
    assert f"best {metrics['best_val_loss']:.4f}" in card and f"(base {metrics['base_val_loss']:.4f})" in card
    assert "## Sweep" not in card  # a single run is no sweep's best


def wandb_records(path: Path) -> list:
    """The records of a .wandb transaction log: a 7-byte header, then LevelDB log chunks in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, records, pending = path.read_bytes(), 7, 1 << 15, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:  # zero fill
            continue
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL, FIRST | MIDDLE, LAST
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def test_offline_run_keeps_the_adapter_as_a_model_artifact(run: tuple[Path, Path]) -> None:
    run_dir, wandb_data = run
    (log,) = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    artifacts = [r.artifact for r in wandb_records(log) if r.WhichOneof("record_type") == "artifact"]
    assert len(artifacts) == 1
    artifact = artifacts[0]
    run_id = log.stem.removeprefix("run-")
    assert artifact.type == "model" and artifact.name == f"adapter-{run_id}" and "best" in artifact.aliases
    files = {entry.path: entry for entry in artifact.manifest.contents}
    assert set(files) == {p.name for p in (run_dir / "adapter").iterdir()}
    assert "README.md" in files and "adapter_model.safetensors" in files
    staged = Path(files["adapter_model.safetensors"].local_path)  # what `wandb sync` uploads later
    assert staged.is_relative_to(wandb_data)
    assert staged.read_bytes() == (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    metadata = json.loads(artifact.metadata)
    assert metadata["data_sha256"] == json.loads((run_dir / "metrics.json").read_text())["data_sha256"]


def test_an_export_gets_the_card_of_its_run(run: tuple[Path, Path], tmp_path: Path) -> None:
    """What export calls for a merged model: the same card, for transformers, without the peft snippet."""
    run_dir, _ = run
    card = write_run_card(run_dir, tmp_path, library_name="transformers").read_text()
    assert front_matter(card)["library_name"] == "transformers"
    assert "PeftModel" not in card and "## Evaluation" in card
    assert (run_dir / "adapter" / "README.md").read_text() != card


def test_data_digest_follows_the_data(tmp_path: Path) -> None:
    path = tmp_path / "chats.jsonl"
    chat = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    path.write_text(json.dumps(chat) + "\n")
    cfg = DataConfig(source="jsonl", path=str(path))
    first = data_sha256(cfg)
    assert data_sha256(cfg) == first
    path.write_text(json.dumps(chat) + "\n" + json.dumps(chat) + "\n")
    assert data_sha256(cfg) != first
    assert data_sha256(DataConfig(seed=1)) != data_sha256(DataConfig(seed=2))
    assert data_sha256(DataConfig(n_train=10)) != data_sha256(DataConfig(n_train=11))


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_sweep_summary_counts_the_trials_the_best_beat(direction: str) -> None:
    study = optuna.create_study(direction=direction, study_name="s")
    dist = {"x": FloatDistribution(0, 1)}
    sign = 1 if direction == "minimize" else -1
    trials = [
        (3, "COMPLETE"),
        (1, "COMPLETE"),
        (1, "COMPLETE"),
        (2, "PRUNED"),
        (None, "FAIL"),
        (5, "COMPLETE"),
    ]
    for value, state in trials:
        study.add_trial(
            create_trial(
                params={"x": 0.5},
                distributions=dist,
                value=None if value is None or state != "COMPLETE" else sign * value,
                intermediate_values={1: sign * value} if state == "PRUNED" else {},
                state=TrialState[state],
            )
        )
    summary = sweep_summary(study, study.best_trial)
    # best: trial 1 (value 1); trial 2 ties it (not beaten); 0 and 5 are worse, 3 was pruned, 4 failed
    assert summary == {
        "study": "s",
        "trial": 1,
        "metric": "value",
        "direction": direction,
        "value": sign * 1,
        "beat": 3,
        "others": 4,
        "complete": 3,
        "pruned": 1,
    }


def test_best_card_names_the_study(run: tuple[Path, Path], tmp_path: Path) -> None:
    """The card write_best_card gives the best trial's run: study, trial number and how many it beat."""
    run_dir, _ = run
    sweep = {"study": "s", "trial": 7, "metric": "val/loss", "direction": "minimize", "value": 1.5}
    sweep |= {"beat": 9, "others": 11, "complete": 8, "pruned": 3}
    card = write_run_card(run_dir, tmp_path, sweep=sweep).read_text()
    assert "The best trial (number 7) of the Optuna study `s`: val/loss 1.5000 (minimize)" in card
    assert "It beat 9 of the study's 11 other finished trials (8 complete, 3 pruned)" in card
