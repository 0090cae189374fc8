"""Which chats are decoded when: val chats at validations, the test split once at the end."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from sweeplab import reuse
from sweeplab.config import RunConfig
from sweeplab.data import eval_chats
from sweeplab.data.datasets import cache_key
from sweeplab.errors import DataError
from sweeplab.eval.generate import ToolCallEvaluator, build_cases
from sweeplab.outputs import atomic_write_text, write_json

log = logging.getLogger(__name__)


def eval_cases(rc: RunConfig, tokenizer: Any) -> tuple[list, list]:
    """(val cases, test cases): the chats decoded at validations and once at the end, tokenized."""
    val_chats, test_chats = eval_chats(rc.data)
    val_cases = build_cases(tokenizer, val_chats, rc.eval.n_generate) if rc.eval.n_generate else []
    if rc.objective.needs_generation and not val_cases:
        raise DataError(
            f"objective.metric={rc.objective.metric} scores tool calls, but none of the {len(val_chats)} val "
            "chats ends in an assistant tool call (JSON or tool_calls); use objective.metric=val/loss"
        )
    test_cases = build_cases(tokenizer, test_chats) if rc.eval.test else []
    return val_cases, test_cases


def build_evaluators(
    rc: RunConfig, tokenizer: Any, keep: bool = False
) -> tuple[ToolCallEvaluator | None, ToolCallEvaluator | None]:
    """(val, test) evaluators; None where the config turns it off or no chat ends in a tool call."""
    if rc.data.source == "text" or not (rc.eval.n_generate or rc.eval.test or rc.objective.needs_generation):
        return None, None  # nothing decodes: skip generating the chats (~0.2 s per trial)
    # A sweep worker's next trial with the same data, tokenizer and eval config gets the same cases.
    key = (cache_key(rc.data, tokenizer), rc.eval.model_dump_json(), rc.objective.model_dump_json())
    val_cases, test_cases = reuse.held("eval_cases", key, lambda: eval_cases(rc, tokenizer), keep)
    make = lambda cases: ToolCallEvaluator(tokenizer, cases, rc.eval.batch_size, rc.eval.max_new_tokens)  # noqa: E731
    val = make(val_cases) if val_cases else None
    test = make(test_cases) if test_cases else None
    log.info(
        "tool-call scoring: %d val chats per generating validation, %d test chats at the end",
        len(val_cases),
        len(test_cases),
    )
    return val, test


def score_test(model: Any, evaluator: ToolCallEvaluator, run_dir: Path, base_cache: Path | None) -> dict:
    """test/* for the adapter as trained, base/* for the same model with the adapter switched off."""
    scores, records = evaluator.run(model)
    write_jsonl(run_dir / "predictions.jsonl", records)
    cached = _read_cache(base_cache)
    if cached is None:
        with model.disable_adapter():  # the untouched 4-bit base, through the very same decoding
            base_scores, base_records = evaluator.run(model)
        if base_cache is not None:
            write_json(base_cache, {"scores": base_scores, "records": base_records})
    else:
        base_scores, base_records = cached["scores"], cached["records"]
        log.info("base test scores reused from %s", base_cache)
    write_jsonl(run_dir / "predictions_base.jsonl", base_records)
    return {
        **{f"test/{k}": v for k, v in scores.items()},
        **{f"base/{k}": v for k, v in base_scores.items()},
        "test_chats": len(evaluator.cases),
    }


def base_cache_path(cache_dir: str | Path, evaluator: ToolCallEvaluator, model_key: dict[str, Any]) -> Path:
    """Every trial of a sweep scores the same base on the same chats: once per (model, chats, decoding)."""
    code = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.glob("*.py"))))
    key = {
        "model": model_key,
        "prompts": [c.prompt for c in evaluator.cases],
        "expected": [[c.expected.name, c.expected.arguments] for c in evaluator.cases],
        "max_new_tokens": evaluator.max_new_tokens,
        "batch_size": evaluator.batch_size,  # padding changes fp rounding, so it is part of the result
        "code": code.hexdigest(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return Path(cache_dir) / "base_scores" / f"{digest}.json"


def _read_cache(path: Path | None) -> dict | None:
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # a foreign or damaged file: score again
        log.warning("ignoring unreadable base score cache %s (%s)", path, exc)
        return None


def write_jsonl(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
