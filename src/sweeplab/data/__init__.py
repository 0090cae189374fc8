"""Chat and text data: generated tool calls or user files -> tokenized, assistant-masked, cached examples.

Names load on first use: checking a user's data file (readers) must not import torch (~5 s).
"""

import importlib
from typing import Any

_HOMES = {
    "PadCollator": "collate",
    "DataStats": "datasets",
    "build_datasets": "datasets",
    "eval_chats": "datasets",
    "read_jsonl": "readers",
    "read_text": "readers",
    "IGNORE": "tokenize",
    "prompt_ids": "tokenize",
    "render_inputs": "tokenize",
    "tokenize_chat": "tokenize",
    "tokenize_text": "tokenize",
    "generate_chats": "toolcalls",
    "train_val_chats": "toolcalls",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'sweeplab.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sweeplab.data.{_HOMES[name]}"), name)
