"""Chat -> token ids with assistant-only labels; text -> fixed-length chunks."""

from __future__ import annotations

import re

from sweeplab.errors import DataError

IGNORE = -100  # label value torch's cross_entropy (and HF models) skip
GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")


def chat_template(tokenizer) -> str:
    try:
        return tokenizer.get_chat_template()
    except ValueError:  # transformers raises ValueError when the tokenizer has none
        raise DataError(
            "the tokenizer has no chat template, so chats cannot be rendered; "
            "use a chat model or data.source=text"
        ) from None


def tokenize_chat(tokenizer, messages: list[dict], max_seq_len: int) -> tuple[list[int], list[int], bool]:
    """Labels are the assistant turns (content and end token) only; the rest only conditions."""
    mask = None
    if GENERATION_TAG.search(chat_template(tokenizer)):
        out = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    if mask is None or not any(mask):  # hub templates (Qwen2.5, Llama 3) have no generation tags
        ids, mask = assistant_mask_from_prefixes(tokenizer, messages)
    labels = [tok if keep else IGNORE for tok, keep in zip(ids, mask, strict=True)]
    # Cut from the right: the system prompt and first request stay, the end of the chat goes.
    return ids[:max_seq_len], labels[:max_seq_len], len(ids) > max_seq_len


def assistant_mask_from_prefixes(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Locate each assistant turn as the text added between two renders of the chat's prefixes."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if i:
            before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
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
