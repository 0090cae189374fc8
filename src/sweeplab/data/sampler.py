"""The training order: a shuffle drawn from (seed, epoch) alone, so a resumed run can redraw and skip it."""

from __future__ import annotations

import random
from collections.abc import Iterator

from torch.utils.data import Sampler


class EpochSeededSampler(Sampler[int]):
    """A shuffle drawn from (seed, epoch) alone, so a resumed run redraws it and skips what it trained on.

    torchdata's StatefulDataLoader (0.11.0) resumes the current epoch, but every later epoch comes out in
    another order than an uninterrupted run's: it saves its generator from the epoch start, not the draws
    the loader makes from it afterwards. Nothing here carries state between epochs.
    """

    def __init__(self, n: int, seed: int, lengths: list[int] | None = None, batch_size: int = 1) -> None:
        self.n = n
        self.seed = seed
        self.lengths = lengths  # given: batches of similar lengths (data.group_by_length, packed rows)
        self.batch_size = batch_size
        self.epoch = 0
        self.skip = 0  # samples of this epoch already trained on; used once, by the next iteration

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # Lightning calls this at every epoch start

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        order = list(range(self.n))
        rng = random.Random(f"{self.seed}/{self.epoch}")  # str seed: stable across runs
        rng.shuffle(order)
        if self.lengths is not None:
            order = self._grouped(order, rng)
        skip, self.skip = self.skip, 0
        return iter(order[skip:])

    def _grouped(self, order: list[int], rng: random.Random) -> list[int]:
        """Windows of 50 batches of the shuffle, sorted by length and cut into batches, batches shuffled.

        Windows and batches are whole multiples of batch_size, so skipping k batches stays exact.
        """
        lengths, size = self.lengths, self.batch_size
        window = 50 * size
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
            batches += [chunk[k : k + size] for k in range(0, len(chunk), size)]
        last = batches.pop() if len(order) % size else None  # a short batch stays last
        rng.shuffle(batches)
        return [i for batch in batches + ([last] if last else []) for i in batch]
