"""Train/val examples for a DataConfig, tokenized once and cached for every later run and trial."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sweeplab.config import DataConfig
from sweeplab.data.readers import read_jsonl, read_text
from sweeplab.data.tokenize import IGNORE, chat_template, tokenize_chat, tokenize_text
from sweeplab.data.toolcalls import train_val_chats, val_test_chats
from sweeplab.errors import DataError
from sweeplab.outputs import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataStats:
    n_train: int
    n_val: int
    truncated_train: int  # examples cut to max_seq_len (kept if a label token survived)
    truncated_val: int
    dropped: int  # examples with no label token left after truncation (train + val)
    mean_len: float  # tokens per train example, after truncation
    label_tokens: int  # train tokens that carry loss


def build_datasets(
    cfg: DataConfig, tokenizer, cache_dir: Path, context: int | None = None
) -> tuple[list[dict], list[dict], DataStats]:
    """Each example is {"input_ids", "labels"} (same length, unshifted: the model shifts).

    context: the model's positions, the limit when data.max_seq_len is unset (None: no limit)."""
    path = Path(cache_dir) / "tokenized" / f"{cache_key(cfg, tokenizer, context)}.pt"
    if path.is_file():
        try:
            blob = torch.load(path, weights_only=True)
            train, val = unpack(blob["train"]), unpack(blob["val"])
            stats = DataStats(**blob["stats"])
        except Exception as exc:  # a truncated or foreign file: rebuild rather than fail the run
            log.warning("ignoring unreadable data cache %s (%s); rebuilding", path, exc)
        else:
            log_stats(cfg, stats, f"cached {path.name}", context)
            return train, val, stats
    train, val, stats = tokenize_split(cfg, tokenizer, context)
    with atomic_path(path) as tmp:  # concurrent trials never read a half-written cache
        torch.save({"train": pack(train), "val": pack(val), "stats": asdict(stats)}, tmp)
    log_stats(cfg, stats, f"tokenized, cached as {path.name}", context)
    return train, val, stats


def limit_of(cfg: DataConfig, context: int | None) -> tuple[int | None, str]:
    """The token limit a chat is cut to, and how a message names it."""
    if cfg.max_seq_len is not None:
        return cfg.max_seq_len, f"data.max_seq_len={cfg.max_seq_len}"
    return context, f"the model's context ({context} tokens; data.max_seq_len is unset)"


def tokenize_split(
    cfg: DataConfig, tokenizer, context: int | None = None
) -> tuple[list[dict], list[dict], DataStats]:
    limit, named = limit_of(cfg, context)
    if cfg.source == "text":
        if limit is None:
            raise DataError("data.source=text needs data.max_seq_len: the length of its windows")

        def chunks(path: str) -> list[list[int]]:
            return tokenize_text(tokenizer, read_text(path), limit)

        train_chunks, val_chunks = split(cfg, chunks)
        train = [{"input_ids": ids, "labels": list(ids)} for ids in train_chunks]
        val = [{"input_ids": ids, "labels": list(ids)} for ids in val_chunks]
        truncated_train = truncated_val = dropped = 0  # chunking cuts nothing away
    else:
        if cfg.source == "toolcalls":
            train_chats, val_chats = train_val_chats(cfg.n_train, cfg.n_val, cfg.seed)
        else:
            train_chats, val_chats = split(cfg, read_jsonl)
        train, truncated_train, dropped_train = encode_chats(train_chats, tokenizer, limit)
        val, truncated_val, dropped_val = encode_chats(val_chats, tokenizer, limit)
        dropped = dropped_train + dropped_val
        for name, kept, cut, chats in (
            ("train", train, truncated_train, train_chats),
            ("val", val, truncated_val, val_chats),
        ):
            if not kept:
                raise DataError(
                    f"every {name} example lost all its assistant tokens to truncation at "
                    f"{named} ({len(chats)} chats); {raise_hint(cfg)}"
                )
            if chats and cut == len(chats):  # not one chat fits: no end of turn would ever be learned
                raise DataError(
                    f"all {cut} of {len(chats)} {name} chats are longer than {named} "
                    f"and would be cut; {raise_hint(cfg)}"
                )
    if not train or not val:
        raise DataError(
            f"data.source={cfg.source} gave {len(train)} train / {len(val)} val examples; need one of each"
        )
    stats = DataStats(
        n_train=len(train),
        n_val=len(val),
        truncated_train=truncated_train,
        truncated_val=truncated_val,
        dropped=dropped,
        mean_len=sum(len(ex["input_ids"]) for ex in train) / len(train),
        label_tokens=sum(label != IGNORE for ex in train for label in ex["labels"]),
    )
    return train, val, stats


def raise_hint(cfg: DataConfig) -> str:
    if cfg.max_seq_len is not None:
        return "raise data.max_seq_len (or set it to null: the longest chat, up to the model's context)"
    return "shorten the chats or choose a model with a longer context"


def eval_chats(cfg: DataConfig) -> tuple[list[dict], list[dict]]:
    """(val, test) chats as messages, for generation-based scoring; plain text has none."""
    if cfg.source == "toolcalls":
        return val_test_chats(cfg.n_train, cfg.n_val, cfg.n_test, cfg.seed)
    if cfg.source == "jsonl":
        return split(cfg, read_jsonl)[1], read_jsonl(cfg.test_path) if cfg.test_path else []
    return [], []


def split(cfg: DataConfig, load) -> tuple[list, list]:
    """val_path when given, else a seeded val_fraction of the items (chats or text chunks)."""
    items = load(cfg.path)
    if cfg.val_path:
        return items, load(cfg.val_path)
    if len(items) < 2:
        raise DataError(
            f"{cfg.path}: {len(items)} example(s) cannot be split into train and val; "
            "add data or set data.val_path"
        )
    order = list(range(len(items)))
    random.Random(cfg.seed).shuffle(order)
    n_val = min(max(1, round(len(items) * cfg.val_fraction)), len(items) - 1)
    return [items[i] for i in sorted(order[n_val:])], [items[i] for i in sorted(order[:n_val])]


def encode_chats(chats: list[dict], tokenizer, max_seq_len: int | None) -> tuple[list[dict], int, int]:
    examples, truncated, dropped = [], 0, 0
    for chat in chats:
        ids, labels, cut = tokenize_chat(tokenizer, chat["messages"], max_seq_len, chat.get("tools"))
        truncated += cut
        # Position 0 is never predicted (the model shifts labels left), so it does not count.
        if all(label == IGNORE for label in labels[1:]):
            dropped += 1
            continue
        examples.append({"input_ids": ids, "labels": labels})
    return examples, truncated, dropped


def log_stats(cfg: DataConfig, stats: DataStats, origin: str, context: int | None = None) -> None:
    log.info(
        "data %s: %d train / %d val examples; truncated to max_seq_len=%s: %d train, %d val; "
        "dropped (no label left): %d; mean length %.1f tokens; %d train label tokens (%s)",
        cfg.source,
        stats.n_train,
        stats.n_val,
        limit_of(cfg, context)[0],
        stats.truncated_train,
        stats.truncated_val,
        stats.dropped,
        stats.mean_len,
        stats.label_tokens,
        origin,
    )


def cache_key(cfg: DataConfig, tokenizer, context: int | None = None) -> str:
    """Everything that changes the tokens: the fields used, input bytes, tokenizer, and this code."""
    fields = {"source": cfg.source, "max_seq_len": limit_of(cfg, context)[0], "seed": cfg.seed}
    if cfg.source == "toolcalls":
        fields |= {"n_train": cfg.n_train, "n_val": cfg.n_val}
    else:
        fields["files"] = [file_sha256(cfg.path), file_sha256(cfg.val_path) if cfg.val_path else None]
        if not cfg.val_path:
            fields["val_fraction"] = cfg.val_fraction
    fields["tokenizer"] = tokenizer_sha256(tokenizer)
    # The generator and tokenization code are part of the data: editing them must not reuse old tokens.
    code = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.glob("*.py"))))
    fields["code"] = code.hexdigest()
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def data_sha256(cfg: DataConfig) -> str:
    """The data a run learned from and was scored on, as one digest: its files' bytes, or the
    generated chats of every split (the same config on another machine gives the same digest)."""
    digest = hashlib.sha256()
    if cfg.source == "toolcalls":
        train, val = train_val_chats(cfg.n_train, cfg.n_val, cfg.seed)
        test = val_test_chats(cfg.n_train, cfg.n_val, cfg.n_test, cfg.seed)[1]
        digest.update(json.dumps([train, val, test], sort_keys=True, ensure_ascii=False).encode())
    else:
        for path in (cfg.path, cfg.val_path, cfg.test_path):
            digest.update((file_sha256(path) if path else "-").encode())
    return digest.hexdigest()


def tokenizer_sha256(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    template = chat_template(tokenizer) if tokenizer.chat_template else ""
    return hashlib.sha256(vocab.encode() + template.encode()).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file (set data.path / data.val_path to an existing file)")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pack(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Flat tensors: unpickling millions of Python ints took as long as tokenizing again."""
    return {
        "input_ids": torch.tensor([t for ex in examples for t in ex["input_ids"]], dtype=torch.long),
        "labels": torch.tensor([t for ex in examples for t in ex["labels"]], dtype=torch.long),
        "lengths": torch.tensor([len(ex["input_ids"]) for ex in examples], dtype=torch.long),
    }


def unpack(packed: dict[str, torch.Tensor]) -> list[dict]:
    lengths = packed["lengths"].tolist()
    ids = packed["input_ids"].split(lengths)
    labels = packed["labels"].split(lengths)
    return [{"input_ids": i.tolist(), "labels": lab.tolist()} for i, lab in zip(ids, labels, strict=True)]
