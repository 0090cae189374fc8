"""The eval group: greedy-decoding tool-call accuracy at validation and the held-out test split."""

from __future__ import annotations

from pydantic import Field

from sweeplab.config.base import Schema


class EvalConfig(Schema):
    """Tool-call accuracy from greedy decoding of validation chats, and the held-out test split."""

    n_generate: int = Field(default=64, ge=0)  # val chats decoded at a generating validation; 0: off
    # Every Nth validation generates (the last always does); None: every one when the objective is a
    # generation metric, else every 3rd.
    generate_every: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=64, gt=0)  # prompts decoded together (left-padded, KV cache on)
    max_new_tokens: int | None = Field(default=None, gt=0)  # None: longest reference call + 16 tokens
    test: bool = True  # score the final adapter and the untouched base on the test split
