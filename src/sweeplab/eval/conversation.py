"""A multi-turn chat with a model: rendered as in training, streamed, its KV cache kept across turns.

Each answer is read for a tool call exactly as the scorer reads generated text (eval.toolcall), and the
chat can be saved as one training row in the data format (a corrected answer becomes an example).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList, TextStreamer

from sweeplab.data.tokenize import prompt_ids
from sweeplab.eval.generate import call_dict, stop_token_ids
from sweeplab.eval.toolcall import Parsed, parse_tool_call


@dataclass
class Settings:
    temperature: float = 0.0  # 0: greedy, as the scorer decodes
    max_new_tokens: int = 256


@dataclass(frozen=True)
class Reply:
    text: str
    parsed: Parsed
    new_tokens: int
    prompt_tokens: int
    reused_tokens: int  # prompt tokens whose keys and values came from the previous turns' cache
    seconds: float
    stopped: bool  # cut short by the caller (Ctrl-C), not by an end-of-turn token or the token limit


class _StopWhenSet(StoppingCriteria):
    """Ends generation after the current token once the event is set (a SIGINT handler sets it)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


class _Stream(TextStreamer):
    """TextStreamer's word-by-word decoding, handed to a callback instead of print."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text = on_text

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.on_text(text)


class Conversation:
    """The turns so far (system prompt and tools apart, so either can change) and the cache behind them."""

    def __init__(self, tokenizer: Any, system: str | None = None, tools: list[dict] | None = None) -> None:
        self.tokenizer = tokenizer
        self.system = system
        self.tools = tools
        self.turns: list[dict] = []  # user and assistant messages
        self._cache: DynamicCache | None = None
        self._cached: list[int] = []  # the token ids whose keys and values the cache holds

    def messages(self) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.turns

    def ask(self, model: Any, text: str, settings: Settings, **kw: Any) -> Reply:
        self.turns.append({"role": "user", "content": text})
        return self.answer(model, settings, **kw)

    def answer(
        self,
        model: Any,
        settings: Settings,
        on_text: Callable[[str], None] | None = None,
        stop: threading.Event | None = None,
    ) -> Reply:
        """Answer the last user turn; the answer (even one cut short) becomes the next assistant turn."""
        if not self.turns or self.turns[-1]["role"] != "user":
            raise ValueError("nothing to answer: the conversation does not end with a user turn")
        prompt = prompt_ids(self.tokenizer, self.messages(), self.tools)
        reused = self._reuse_cache(prompt)
        stop_ids = stop_token_ids(self.tokenizer, model)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else stop_ids[0]
        sampling = (
            {"do_sample": True, "temperature": settings.temperature}
            if settings.temperature > 0
            else {"do_sample": False}
        )
        event = stop or threading.Event()
        device = next(p.device for p in model.parameters())
        started = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                input_ids=torch.tensor([prompt], device=device),
                attention_mask=torch.ones((1, len(prompt)), dtype=torch.long, device=device),
                past_key_values=self._cache,
                max_new_tokens=settings.max_new_tokens,
                eos_token_id=stop_ids,
                pad_token_id=pad,
                streamer=_Stream(self.tokenizer, on_text) if on_text else None,
                stopping_criteria=StoppingCriteriaList([_StopWhenSet(event)]),
                use_cache=True,
                return_dict_in_generate=True,
                **sampling,
            )
        seconds = time.perf_counter() - started
        ids = out.sequences[0].tolist()
        self._cached = ids[: self._cache.get_seq_length()]  # the last token was sampled, never fed back
        new = ids[len(prompt) :]
        end = next((k for k, tok in enumerate(new) if tok in stop_ids), len(new))
        text = self.tokenizer.decode(new[:end], skip_special_tokens=True)  # as the scorer decodes
        self.turns.append({"role": "assistant", "content": text})
        return Reply(
            text=text,
            parsed=parse_tool_call(text),
            new_tokens=len(new),
            prompt_tokens=len(prompt),
            reused_tokens=reused,
            seconds=seconds,
            stopped=event.is_set() and end == len(new),
        )

    def _reuse_cache(self, prompt: list[int]) -> int:
        """Keep the cache for the longest prefix the new prompt shares with it; generate feeds the rest.

        At least the prompt's last token is fed again: generate needs one token to predict from."""
        common = 0
        for a, b in zip(self._cached, prompt, strict=False):
            if a != b:
                break
            common += 1
        keep = min(common, len(prompt) - 1)
        if self._cache is None or keep == 0:
            self._cache, self._cached = DynamicCache(), []
            return 0
        if keep < len(self._cached):
            try:
                self._cache.crop(keep - len(self._cached))  # transformers 5: minus the tokens to drop
            except (ValueError, RuntimeError):  # a cache kind that cannot roll back (linear attention)
                self._cache, self._cached = DynamicCache(), []
                return 0
            self._cached = self._cached[:keep]
            if self._cache.get_seq_length() != keep:  # sliding-window layers keep fewer: start afresh
                self._cache, self._cached = DynamicCache(), []
                return 0
        return keep

    # --- editing the conversation -----------------------------------------------------------------
    # The cache needs no care here: the next prompt keeps only the prefix it shares with it.

    def undo(self) -> bool:
        """Drop the last exchange (the last user turn and any answer to it)."""
        last_user = max((i for i, m in enumerate(self.turns) if m["role"] == "user"), default=None)
        if last_user is None:
            return False
        del self.turns[last_user:]
        return True

    def drop_answer(self) -> bool:
        """Drop the last answer so that its request can be answered again."""
        if not self.turns or self.turns[-1]["role"] != "assistant":
            return False
        self.turns.pop()
        return True

    def correct(self, text: str) -> bool:
        """Replace the last answer with what it should have been."""
        if not self.turns or self.turns[-1]["role"] != "assistant":
            return False
        self.turns[-1] = {"role": "assistant", "content": text}
        return True

    def clear(self) -> None:
        self.turns.clear()

    def training_row(self) -> dict:
        """{"messages", "tools"} as in a training JSONL file (data.source=jsonl reads it back).

        An answer that is exactly one call in <tool_call> tags is stored as tool_calls, the form the
        chat template renders back into those tags; any other answer is kept as its text."""
        messages = []
        for message in self.messages():
            parsed = parse_tool_call(message["content"]) if message["role"] == "assistant" else None
            if parsed is not None and parsed.clean and parsed.fmt == "tagged":
                call = {"type": "function", "function": call_dict(parsed.call)}
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            else:
                messages.append(dict(message))
        return {"messages": messages, **({"tools": self.tools} if self.tools else {})}


def describe_call(parsed: Parsed) -> str:
    """The tool call as the scorer read it: name and arguments, how it was written, and what is unclean."""
    if parsed.call is None:
        return f"tool call: none ({parsed.error})"
    args = json.dumps(parsed.call.arguments, ensure_ascii=False)
    note = "" if parsed.clean else f"; not exact-eligible: {parsed.error}"
    return f"tool call: {parsed.call.name} {args}  [{parsed.fmt}{note}]"
