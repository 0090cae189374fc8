"""Chat -> token ids with assistant-only labels; text -> fixed-length chunks."""

from __future__ import annotations

import json
import re

from sweeplab.errors import DataError

IGNORE = -100  # label value torch's cross_entropy (and HF models) skip
GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")
TOOLS_VAR = re.compile(r"\btools\b")  # a template that reads `tools` renders schemas and calls itself
TOOLS_PROMPT = (
    "You may call one or more functions. Their JSON schemas are in <tools></tools>, one per line. "
    'To call one, write {"name": <function-name>, "arguments": <args-json-object>} '
    "within <tool_call></tool_call>; results come back within <tool_response></tool_response>."
)


def chat_template(tokenizer) -> str:
    try:
        return tokenizer.get_chat_template()
    except ValueError:  # transformers raises ValueError when the tokenizer has none
        raise DataError(
            "the tokenizer has no chat template, so chats cannot be rendered; "
            "use a chat model or data.source=text"
        ) from None


def render_inputs(
    tokenizer, messages: list[dict], tools: list[dict] | None = None
) -> tuple[list[dict], dict]:
    """The messages and apply_chat_template kwargs that training and generation both render.

    messages and tools as read_jsonl gives them (arguments already dicts). A template with tool
    support gets them as they are (`tools=`, `tool_calls`); any other template gets plain text.
    """
    if not tools and not any(m["role"] == "tool" or m.get("tool_calls") for m in messages):
        return messages, {}
    if TOOLS_VAR.search(chat_template(tokenizer)):
        return messages, ({"tools": tools} if tools else {})
    return tools_as_text(messages, tools), {}


def tools_as_text(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """Tool use as plain text, for templates that know no tools (sweeplab's ChatML among them)."""
    # The Hermes / Qwen2.5 convention, which hub models fine-tuned for tools already read and write:
    # schemas in <tools> in the system message, calls in <tool_call>, results as user <tool_response>.
    out = []
    for message in messages:
        if message["role"] == "tool":
            text = f"<tool_response>\n{message['content']}\n</tool_response>"
            out.append({"role": "user", "content": text})
        elif message.get("tool_calls"):
            calls = [
                {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                for c in message["tool_calls"]
            ]
            blocks = [f"<tool_call>\n{json.dumps(call, ensure_ascii=False)}\n</tool_call>" for call in calls]
            text = "\n".join([message["content"], *blocks] if message["content"] else blocks)
            out.append({"role": "assistant", "content": text})
        else:
            out.append({"role": message["role"], "content": message["content"]})
    if tools:
        schemas = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
        block = f"{TOOLS_PROMPT}\n<tools>\n{schemas}\n</tools>"
        if out and out[0]["role"] == "system":
            system = out[0]["content"]
            out[0] = {"role": "system", "content": f"{system}\n\n{block}" if system else block}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def tokenize_chat(
    tokenizer, messages: list[dict], max_seq_len: int | None, tools: list[dict] | None = None
) -> tuple[list[int], list[int], bool]:
    """Labels are the assistant turns (content, tool calls and end token) only; the rest only conditions."""
    messages, kwargs = render_inputs(tokenizer, messages, tools)
    mask = None
    if GENERATION_TAG.search(chat_template(tokenizer)):
        out = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, **kwargs
        )
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    if mask is None or not any(mask):  # hub templates (Qwen2.5, Llama 3) have no generation tags
        ids, mask = assistant_mask_from_prefixes(tokenizer, messages, kwargs)
    labels = [tok if keep else IGNORE for tok, keep in zip(ids, mask, strict=True)]
    if max_seq_len is None or len(ids) <= max_seq_len:
        return ids, labels, False
    # Cut from the right: the system prompt and first request stay, the end of the chat goes.
    return ids[:max_seq_len], labels[:max_seq_len], True


def prompt_ids(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    """Generation prompt: the turns before the answer, converted and rendered exactly as in training."""
    messages, kwargs = render_inputs(tokenizer, messages, tools)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])  # the template writes any BOS itself


def assistant_mask_from_prefixes(
    tokenizer, messages: list[dict], kwargs: dict | None = None
) -> tuple[list[int], list[int]]:
    """Locate each assistant turn as the text added between two renders of the chat's prefixes."""
    kwargs = kwargs or {}

    def render(upto: int, add_generation_prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(
            messages[:upto], tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )

    full = render(len(messages))
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        through = render(i + 1)
        if i:
            before = render(i, add_generation_prompt=True)
        else:  # nothing to render before a leading assistant turn: start at its content
            before = through[: max(through.find(message["content"]), 0)]
        if not (through.startswith(before) and full.startswith(through)):
            raise DataError(
                "the chat template is not prefix-consistent (rendering the first turns of a chat is not "
                "a prefix of rendering all of it), so assistant labels cannot be located; "
                "use a template with {% generation %} tags"
            )
        # The span ends at the turn's end token; the newline the template writes after it is not learned.
        spans.append((len(before), len(through.rstrip())))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(s < end and e > start for start, end in spans)) for s, e in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask


def tokenize_text(tokenizer, text: str, max_seq_len: int) -> list[list[int]]:
    """Consecutive max_seq_len windows of the whole text; a last window under 2 tokens predicts nothing."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    chunks = [ids[i : i + max_seq_len] for i in range(0, len(ids), max_seq_len)]
    return [chunk for chunk in chunks if len(chunk) >= 2]
