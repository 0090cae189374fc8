"""Chat and text data: generated tool calls or user files -> tokenized, assistant-masked, cached examples."""

from sweeplab.data.collate import PadCollator
from sweeplab.data.datasets import DataStats, build_datasets
from sweeplab.data.readers import read_jsonl, read_text
from sweeplab.data.tokenize import IGNORE, tokenize_chat, tokenize_text
from sweeplab.data.toolcalls import generate_chats, train_val_chats

__all__ = [
    "IGNORE",
    "DataStats",
    "PadCollator",
    "build_datasets",
    "generate_chats",
    "read_jsonl",
    "read_text",
    "tokenize_chat",
    "tokenize_text",
    "train_val_chats",
]
