"""The README.md model card (Hugging Face format) that every saved adapter carries, and exports too.

Written from the run's resolved config and metrics: what the adapter is, the data it learned from (and
that data's digest), its hyperparameters, its test scores beside the untouched base's, and for a
sweep's best trial the study it won. A sweep rewrites its best trial's card when the study ends.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from sweeplab.outputs import atomic_write_text

CARD = "README.md"
TOOL_METRICS = (  # (metrics.json suffix, what it counts), as in docs/EVALUATION.md
    ("tool_exact", "exactly the right call, nothing around it"),
    ("args_acc", "right arguments"),
    ("tool_name_acc", "right endpoint"),
    ("json_valid", "a call could be read"),
)
HYPERPARAMETERS = (
    ("lora", ("r", "alpha", "use_rslora", "use_dora", "dropout", "targets", "layers_to_transform")),
    ("optim", ("name", "lr", "weight_decay", "schedule", "warmup_ratio", "warmup_steps", "min_lr_ratio")),
    ("optim", ("loraplus_lr_ratio",)),
    ("data", ("batch_size", "max_seq_len", "packing", "padding_free")),
    ("trainer", ("max_steps", "accumulate_grad_batches", "precision")),
)


def write_run_card(
    run_dir: Path, dest: Path | None = None, *, library_name: str = "peft", sweep: dict | None = None
) -> Path:
    """(Re)write the card of a finished run from its config.yaml and metrics.json.

    dest: the directory to write README.md into (default the run's adapter/; an export passes its own
    dir and library_name="transformers" for a merged model). sweep: see card_text."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    return write_card(dest or run_dir / "adapter", config, metrics, library_name=library_name, sweep=sweep)


def write_card(
    dest: Path, config: dict, metrics: dict, *, library_name: str = "peft", sweep: dict | None = None
) -> Path:
    path = Path(dest) / CARD
    atomic_write_text(path, card_text(config, metrics, library_name=library_name, sweep=sweep))
    return path


def base_model(config: dict, metrics: dict) -> str:
    """A hub id when the run named one; else the local base dir the adapter loads on (as peft writes it)."""
    return config["model"].get("name_or_path") or str(metrics.get("base_model"))


def card_text(config: dict, metrics: dict, *, library_name: str = "peft", sweep: dict | None = None) -> str:
    """sweep: {"study", "trial", "metric", "direction", "value", "beat", "others", "complete", "pruned"}."""
    lora = config["lora"]
    quantized = config["model"].get("quant", {}).get("load_in_4bit", False)
    tags = ["sweeplab", "lora", *(["qlora"] if quantized else [])]
    tags += ["dora"] if lora.get("use_dora") else []
    if "test/tool_exact" in metrics or config["data"].get("source") == "toolcalls":
        tags.append("tool-calling")
    front = {
        "base_model": base_model(config, metrics),
        "library_name": library_name,
        "pipeline_tag": "text-generation",
        "tags": tags,
    }
    name = config.get("run_name", "run")
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {name}: a LoRA adapter trained with sweeplab",
        "",
        f"LoRA r={lora['r']}, alpha={lora['alpha']}{' (rsLoRA)' if lora.get('use_rslora') else ''} on "
        f"`{lora['targets']}` of {base_description(config, metrics)}"
        f"{', loaded in 4 bits (NF4) for training (QLoRA)' if quantized else ''}.",
        "",
        *data_section(config, metrics),
        *hyperparameter_section(config, metrics),
        *score_section(metrics),
        *(sweep_section(sweep) if sweep else []),
        *use_section(config, library_name),
    ]
    return "\n".join(lines) + "\n"


def base_description(config: dict, metrics: dict) -> str:
    model = config["model"]
    if model.get("gguf"):
        gguf = model["gguf"]
        where = f" from the Python package `{gguf['package']}`" if gguf.get("package") else ""
        return f"`{gguf['file']}`{where} (converted to `{metrics.get('base_model')}`)"
    if model.get("embedded"):
        return f"sweeplab's embedded base `{model['embedded']['name']}` (`{metrics.get('base_model')}`)"
    return f"`{model['name_or_path']}`"


def data_section(config: dict, metrics: dict) -> list[str]:
    data = config["data"]
    source = data["source"]
    if source == "toolcalls":
        what = (
            f"sweeplab's generated tool-calling chats (seed {data['seed']}: {data['n_train']} train, "
            f"{data['n_val']} val, {data['n_test']} test)"
        )
    else:
        files = ", ".join(f"{k} `{data[k]}`" for k in ("path", "val_path", "test_path") if data.get(k))
        what = f"{'chats' if source == 'jsonl' else 'plain text'} from {files}"
    stats = metrics.get("data") or {}
    lines = ["## Training data", "", f"- {what}"]
    if stats:
        lines.append(
            f"- {stats.get('n_train')} train / {stats.get('n_val')} val examples, mean "
            f"{stats.get('mean_len', 0):.1f} tokens, {stats.get('truncated_train', 0)} cut to "
            f"`data.max_seq_len`, {stats.get('label_tokens')} train tokens with loss (assistant turns)"
        )
    lines.append(f"- data sha256: `{metrics.get('data_sha256', 'not recorded')}`")
    lines += ["", "```yaml", yaml.safe_dump({"data": data}, sort_keys=False).strip(), "```", ""]
    return lines


def hyperparameter_section(config: dict, metrics: dict) -> list[str]:
    lines = ["## Hyperparameters", "", "| key | value |", "|---|---|"]
    for group, keys in HYPERPARAMETERS:
        for key in keys:
            if key in config.get(group, {}):
                lines.append(f"| `{group}.{key}` | {_cell(config[group][key])} |")
    lines.append(f"| `seed` | {config.get('seed')} |")
    for key, label in (("steps", "steps trained"), ("trainable_params", "trainable parameters")):
        if key in metrics:
            lines.append(f"| {label} | {_cell(metrics[key])} |")
    lines.append("")
    return lines


def score_section(metrics: dict) -> list[str]:
    lines = ["## Evaluation", ""]
    if "test/tool_exact" in metrics:
        lines += [
            f"Held-out test split ({metrics.get('test_chats')} chats), greedy decoding; the tool call read "
            "from each answer is scored by BFCL's AST-checker rules. The base is the same 4-bit model with "
            "the adapter switched off.",
            "",
            "| metric | this adapter | base |",
            "|---|---|---|",
            *(
                f"| `{m}` ({what}) | {metrics[f'test/{m}']:.3f} | {_score(metrics.get(f'base/{m}'))} |"
                for m, what in TOOL_METRICS
            ),
        ]
    else:
        lines.append("No test split was scored (eval.test=false, or no test chat ends in a tool call).")
    if metrics.get("best_val_loss") is not None:
        lines += [
            "",
            f"Validation loss: best {metrics['best_val_loss']:.4f} at step {metrics.get('best_step')}"
            f" (base {_score(metrics.get('base_val_loss'), 4)}).",
        ]
    lines.append("")
    return lines


def sweep_section(sweep: dict) -> list[str]:
    return [
        "## Sweep",
        "",
        f"The best trial (number {sweep['trial']}) of the Optuna study `{sweep['study']}`: "
        f"{sweep['metric']} {sweep['value']:.4f} ({sweep['direction']}). It beat {sweep['beat']} of the "
        f"study's {sweep['others']} other finished trials ({sweep['complete']} complete, "
        f"{sweep['pruned']} pruned); failed trials are not counted. "
        f"`python -m sweeplab.report {sweep['study']}` shows them all.",
        "",
    ]


def use_section(config: dict, library_name: str) -> list[str]:
    if library_name != "peft":
        return []
    return [
        "## Use",
        "",
        "```python",
        "import json",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig",
        'adapter = "."  # this directory',
        'base_path = json.load(open(f"{adapter}/adapter_config.json"))["base_model_name_or_path"]',
        "base = AutoModelForCausalLM.from_pretrained(base_path, quantization_config=BitsAndBytesConfig(",
        '    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True))',
        "model = PeftModel.from_pretrained(base, adapter)",
        "tokenizer = AutoTokenizer.from_pretrained(adapter)  # the chat template it was trained with",
        "```",
        "",
        "Or talk to it, with the tool call read from each answer: `python -m sweeplab.chat <this dir>`.",
    ]


def _cell(value: Any) -> str:
    return f"`{json.dumps(value)}`" if isinstance(value, list | dict) else str(value)


def _score(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
