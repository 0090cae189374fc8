"""Right-pad a batch of variable-length examples into dense tensors."""

from __future__ import annotations

import torch

from sweeplab.data.tokenize import IGNORE


class PadCollator:
    """Pads to the longest example in the batch, not max_seq_len: short chats stay cheap."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(example["input_ids"]) for example in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        for row, example in enumerate(batch):
            n = len(example["input_ids"])
            input_ids[row, :n] = torch.as_tensor(example["input_ids"], dtype=torch.long)
            attention_mask[row, :n] = 1
            labels[row, :n] = torch.as_tensor(example["labels"], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
