"""The train and val DataLoaders of a run: the layout data.* chooses, in an order that resumes exactly."""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader

from sweeplab.config import DataConfig
from sweeplab.data.collate import PadCollator
from sweeplab.data.packing import PackCollator, PaddingFreeCollator, pack_examples, row_length
from sweeplab.data.sampler import EpochSeededSampler

log = logging.getLogger(__name__)


def train_loader(data: DataConfig, train_set: list, pad_id: int) -> tuple[DataLoader, EpochSeededSampler]:
    """Padded, padding-free or packed batches; the sampler is returned for DataPosition (resume)."""
    rows, collate, lengths = train_set, PadCollator(pad_id), None
    if data.packing:  # packed once, the same rows every run; only their order changes per epoch
        length = row_length(data.max_seq_len, train_set)
        rows, collate = pack_examples(train_set, length), PackCollator(pad_id)
        # Rows of similar length batched together: a batch is padded to its longest row only.
        lengths = [sum(len(ex["input_ids"]) for ex in row) for row in rows]
        log.info("packing: %d train chats in %d rows of <= %d tokens", len(train_set), len(rows), length)
    elif data.group_by_length:
        lengths = [len(ex["input_ids"]) for ex in train_set]
    elif data.padding_free:
        collate = PaddingFreeCollator(pad_id)
    # Shuffled by (seed, epoch) so a resumed run sees the same batches; see EpochSeededSampler.
    sampler = EpochSeededSampler(len(rows), data.seed, lengths, data.batch_size)
    loader = DataLoader(
        rows,
        batch_size=data.batch_size,
        sampler=sampler,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(data.seed),  # worker seeds; keeps torch's RNG untouched
        num_workers=data.num_workers,
    )
    return loader, sampler


def val_loader(data: DataConfig, val_set: list, pad_id: int) -> DataLoader:
    """Padded in every layout: validation compares runs, whatever their training batches were."""
    return DataLoader(
        val_set, batch_size=data.eval_batch_size, collate_fn=PadCollator(pad_id), num_workers=data.num_workers
    )
