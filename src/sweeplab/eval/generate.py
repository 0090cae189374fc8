"""Greedy-decode the final assistant turn of held-out chats and score each tool call it writes."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from sweeplab.data.tokenize import prompt_ids
from sweeplab.eval.toolcall import ToolCall, aggregate, call_from_message, score
from sweeplab.rng import rng_state, set_rng_state

# End-of-turn tokens of the chat formats sweeplab renders (ChatML, Llama 3); the model's own eos too.
TURN_ENDS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>")
MARGIN_TOKENS = 16  # room past the longest reference for tags or a closing brace written differently


@dataclass(frozen=True)
class Case:
    """One chat to answer: the prompt the model sees and the call it should make."""

    prompt: list[int]
    expected: ToolCall
    request: str  # the last user turn, for a person reading predictions.jsonl


def build_cases(tokenizer: Any, chats: list[dict], limit: int | None = None) -> list[Case]:
    """Chats whose final assistant turn is a tool call; prose answers have nothing to score."""
    cases = []
    for chat in chats:
        if limit is not None and len(cases) == limit:
            break
        messages = chat["messages"]
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None or (expected := call_from_message(messages[last])) is None:
            continue
        users = [m.get("content") or "" for m in messages[:last] if m["role"] == "user"]
        prompt = prompt_ids(tokenizer, messages[:last], chat.get("tools"))
        cases.append(Case(prompt=prompt, expected=expected, request=users[-1] if users else ""))
    return cases


def stop_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """Generation stops at any end-of-turn token the tokenizer knows, or the model's configured eos."""
    ids: set[int] = set()
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in TURN_ENDS if token in vocab)
    return sorted(ids)


class ToolCallEvaluator:
    """Scores a model on fixed cases; leaves its mode, gradients and every RNG as it found them."""

    def __init__(
        self, tokenizer: Any, cases: list[Case], batch_size: int, max_new_tokens: int | None
    ) -> None:
        if not cases:
            raise ValueError("no case to evaluate")
        self.tokenizer = tokenizer
        self.cases = cases
        self.batch_size = batch_size
        longest = max(
            len(tokenizer(render_call(c.expected), add_special_tokens=False)["input_ids"]) for c in cases
        )
        self.max_new_tokens = max_new_tokens or longest + MARGIN_TOKENS
        self.seconds = 0.0  # all time spent here: a run's eval_s, kept out of its tokens_per_s

    def run(self, model: torch.nn.Module) -> tuple[dict[str, float], list[dict]]:
        """(json_valid, tool_name_acc, args_acc, tool_exact) over the cases, and one record per case."""
        outputs = self.generate(model)
        records, verdicts = [], []
        for case, text in zip(self.cases, outputs, strict=True):
            parsed, verdict = score(case.expected, text)
            verdicts.append(verdict)
            records.append(
                {
                    "request": case.request,
                    "expected": call_dict(case.expected),
                    "output": text,
                    "parsed": call_dict(parsed.call) if parsed.call else None,
                    "format": parsed.fmt,
                    "parse_error": parsed.error,
                    "verdict": verdict.to_dict(),
                }
            )
        return aggregate(verdicts), records

    @torch.no_grad()
    def generate(self, model: torch.nn.Module) -> list[str]:
        started = time.perf_counter()
        device = next(p.device for p in model.parameters())
        stop = stop_token_ids(self.tokenizer, model)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else stop[0]
        texts = []
        with preserved_state(model):
            for i in range(0, len(self.cases), self.batch_size):
                prompts = [c.prompt for c in self.cases[i : i + self.batch_size]]
                input_ids, attention_mask = left_pad(prompts, pad)  # (B, T): new tokens follow every prompt
                out = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    eos_token_id=stop,
                    pad_token_id=pad,
                    use_cache=True,
                )
                for row in out[:, input_ids.shape[1] :].tolist():
                    end = next((k for k, tok in enumerate(row) if tok in stop), len(row))
                    texts.append(self.tokenizer.decode(row[:end], skip_special_tokens=True))
        self.seconds += time.perf_counter() - started
        return texts


@contextlib.contextmanager
def preserved_state(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode while decoding (no dropout); afterwards the caller's mode and RNG draws, as if never run."""
    training, rng = model.training, rng_state()
    model.eval()
    try:
        yield
    finally:
        model.train(training)
        set_rng_state(rng)


def left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.as_tensor(prompt, dtype=torch.long)
        attention_mask[row, width - len(prompt) :] = 1
    return input_ids, attention_mask


def render_call(call: ToolCall) -> str:
    return json.dumps(call_dict(call), ensure_ascii=False)


def call_dict(call: ToolCall) -> dict[str, Any]:
    return {"name": call.name, "arguments": call.arguments}
