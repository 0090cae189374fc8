"""Whole chats packed into rows of max_seq_len, attention kept inside each chat by position_ids alone.

transformers 5 finds the chats of a packed row where position_ids stop counting up by one
(masking_utils.find_packed_sequence_indices) and masks attention between them for eager, sdpa and
flex_attention, but only when no attention_mask is passed and no KV cache is built: an all-ones mask,
or use_cache=True (the default, even in train mode), silently lets a chat attend to the one before it.
model_inputs() builds the arguments of every packed forward (packed_forward, models.label_head), so both
stay refused.
"""

from __future__ import annotations

import bisect

import torch

from sweeplab.data.tokenize import IGNORE


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Example indices per row: longest first, each into the fullest row it still fits (deterministic)."""
    if any(n > capacity for n in lengths):
        raise ValueError(f"an example of {max(lengths)} tokens does not fit a row of {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, row index), sorted: bisect finds the best fit
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k == len(free):
            rows.append([i])
            bisect.insort(free, (capacity - n, len(rows) - 1))
        else:
            space, row = free.pop(k)
            rows[row].append(i)
            bisect.insort(free, (space - n, row))
    return rows


def row_length(max_seq_len: int | None, examples: list[dict]) -> int:
    """data.max_seq_len, or (unset) the longest example: a packed row then holds any one chat whole."""
    return max_seq_len if max_seq_len is not None else max(len(ex["input_ids"]) for ex in examples)


def pack_examples(examples: list[dict], max_seq_len: int) -> list[list[dict]]:
    """Rows of whole examples, each row at most max_seq_len tokens; the same rows every run."""
    rows = best_fit_decreasing([len(ex["input_ids"]) for ex in examples], max_seq_len)
    return [[examples[i] for i in row] for row in rows]


class PackCollator:
    """Rows of chats -> input_ids, position_ids (restarting at each chat), labels; no attention_mask.

    The model shifts labels left, so a chat's first label is what its predecessor's last token would be
    trained to predict: it is set to IGNORE. Rows are right-padded to the batch's longest; the padding
    is a sequence of its own (positions from 0) that nothing attends to, with IGNORE labels.
    real_tokens counts the non-pad tokens (for tokens/s and data/useful_fraction); it is not a model input.
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[list[dict]]) -> dict[str, torch.Tensor]:
        width = max(sum(len(ex["input_ids"]) for ex in row) for row in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)  # (B, T)
        position_ids = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        real = 0
        for r, row in enumerate(batch):
            start = 0
            for ex in row:
                n = len(ex["input_ids"])
                input_ids[r, start : start + n] = torch.as_tensor(ex["input_ids"], dtype=torch.long)
                position_ids[r, start : start + n] = torch.arange(n)
                labels[r, start : start + n] = torch.as_tensor(ex["labels"], dtype=torch.long)
                labels[r, start] = IGNORE  # never the target of the previous chat's last token
                start += n
            position_ids[r, start:] = torch.arange(width - start)
            real += start
        return {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "labels": labels,
            "real_tokens": torch.tensor(real),
        }


class PaddingFreeCollator:
    """A batch of chats -> one row of them all (data.padding_free): the batches, loss and gradients of
    padded training, without a pad token. TRL's padding_free does the same; a row may pass max_seq_len."""

    def __init__(self, pad_id: int) -> None:
        self.pack = PackCollator(pad_id)

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        return self.pack([batch])


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | bool]:
    """The model's keyword arguments (labels aside) for a padded or packed batch; a packed one with a mask
    is refused. No KV cache either way: training never reads it, and a packed batch must not build one."""
    if "position_ids" not in batch:
        return {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "use_cache": False,
        }
    if batch.get("attention_mask") is not None:
        raise ValueError(
            "a packed batch (position_ids) must not carry an attention_mask: transformers then attends "
            "across the chats of a row; drop the mask and let position_ids separate them"
        )
    # use_cache=False: with a cache built, transformers 5 skips packed-row detection (cross-talk).
    return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}


def packed_forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
    """The model's output (and loss, given labels) for a packed or padded batch."""
    return model(**model_inputs(batch), labels=batch.get("labels"))


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Non-pad tokens of a padded (attention_mask) or packed (real_tokens) batch."""
    if "real_tokens" in batch:
        return int(batch["real_tokens"])
    return int(batch["attention_mask"].sum())
