"""The data group: where the chats come from, how they are split, batched and packed."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from sweeplab.config.base import Schema


class DataConfig(Schema):
    source: Literal["toolcalls", "jsonl", "text"] = "toolcalls"
    path: str | None = None
    val_path: str | None = None
    test_path: str | None = None  # jsonl only: held-out chats scored once at the end
    n_train: int = Field(default=2000, gt=0)  # toolcalls only
    n_val: int = Field(default=200, gt=0)  # toolcalls only
    n_test: int = Field(default=100, ge=0)  # toolcalls only: its own stream, minus train and val chats
    val_fraction: float = Field(default=0.1, gt=0, lt=1)  # jsonl/text without val_path
    # None: the data's longest chat, up to the model's context, so nothing is cut or refused unless the
    # user sets a limit (packed rows are then as long as that chat). A number: chats are cut to it from
    # the right, and text is split into windows of it (data=text sets 256).
    max_seq_len: int | None = Field(default=None, ge=8)
    batch_size: int = Field(default=8, gt=0)
    eval_batch_size: int = Field(default=16, gt=0)
    seed: int = 1234
    num_workers: int = Field(default=0, ge=0)
    # Training rows hold whole chats, best-fit decreasing into max_seq_len tokens, with position_ids
    # restarting per chat (no cross-chat attention); batch_size then counts rows. Rows are batched by
    # length like group_by_length's batches and padded to the batch's longest row. Validation is unpacked.
    packing: bool = False
    # packing=false: batches drawn from the seeded shuffle's windows of 50 batches, sorted by length, to
    # cut padding. Off by default: it changes every default run's batches (and their results).
    group_by_length: bool = False
    # The padded batches, each collated into one row of its chats (position_ids restarting per chat): the
    # same batches, loss and gradients as padded training, with no pad token computed. Validation is padded.
    # The row holds the whole batch: attention (and sdpa's row x row mask) grows with its square, so small
    # models or big batches gain less (model=toy: as fast as padded); packing keeps rows at max_seq_len.
    padding_free: bool = False

    @model_validator(mode="after")
    def _path_for_files(self) -> DataConfig:
        if self.source in ("jsonl", "text") and not self.path:
            raise ValueError(f"path is required for source '{self.source}' (data.path=/path/to/file)")
        given = [k for k in ("path", "val_path", "test_path") if getattr(self, k)]
        if self.source == "toolcalls" and given:  # silently training on generated data is worse than failing
            raise ValueError(
                f"data.{given[0]} is set but data.source is toolcalls, which reads no file; "
                "choose data=jsonl or data=text for your file, or drop the path"
            )
        if self.path and self.val_path and Path(self.path).resolve() == Path(self.val_path).resolve():
            raise ValueError(
                "data.val_path is the same file as data.path: val loss would be measured on training data; "
                "use another file, or drop data.val_path to split off data.val_fraction"
            )
        if self.packing and self.group_by_length:
            raise ValueError(
                "data.group_by_length applies to padded batches; with data.packing=true rows are always "
                "batched by length: set one of them to false"
            )
        if self.padding_free and (self.packing or self.group_by_length):
            other = "packing" if self.packing else "group_by_length"
            raise ValueError(
                f"data.padding_free and data.{other} both drop padding (padding_free keeps the padded run's "
                f"batches; {other} changes them): set one of them to false"
            )
        if self.test_path and self.source != "jsonl":
            raise ValueError("data.test_path holds chats: it needs data=jsonl")
        held_in = [k for k in ("path", "val_path") if getattr(self, k)]
        if self.test_path and any(
            Path(getattr(self, k)).resolve() == Path(self.test_path).resolve() for k in held_in
        ):
            raise ValueError(
                "data.test_path is the same file as data.path or data.val_path: a test split must be held out"
            )
        return self
