"""The embedded toy bases (model=toy, model=tiny): small Llamas with a ChatML tokenizer, built and
pre-trained locally once.

No model hub is reachable where sweeplab is built and tested, so `model=toy` is made here from
text that ships with CPython, cached under a key derived from its recipe, and saved in the same
layout as a hub checkpoint so the rest of the pipeline loads it with `from_pretrained`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import sys
import time
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sweeplab.config import EmbeddedRecipe
from sweeplab.data.chatml import CHAT_TEMPLATE, EOS, IM_END, IM_START, PAD, SPECIAL_TOKENS
from sweeplab.models.cache import build_once

log = logging.getLogger(__name__)

# Bump when the build code changes what it produces: old caches then stop matching.
BUILDER_VERSION = "1"
DONE_FILE = "build.json"  # written last inside the temp dir; its presence means "complete"
VAL_FRACTION = 0.05  # tail of the tokenized corpus held out for the before/after val loss
# Effective fp32 training throughput in FLOP/s (6 * params * tokens) measured on 2 CPU cores;
# only used to tell the user roughly how long the one-time build will take.
CPU_TRAIN_FLOPS = 1.0e11


def corpus_text(max_chars: int | None = None) -> str:
    """English prose every CPython install carries, so the build needs no download."""
    from pydoc_data.topics import topics  # ~465k chars of the language reference, 79 topics

    text = "\n\n".join(topics[key] for key in sorted(topics))
    return text if max_chars is None else text[:max_chars]


def build_tokenizer(corpus: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE: any text (JSON, code, non-English) encodes without unknown tokens."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,  # includes the 256 byte symbols and the specials
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([corpus], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=PAD,
        eos_token=IM_END,  # generate() stops at the end of an assistant turn
        extra_special_tokens=[EOS, IM_START],
        chat_template=CHAT_TEMPLATE,
    )


def cache_key(recipe: EmbeddedRecipe) -> str:
    """Any change to the recipe or to the builder gives a new directory, never a stale base."""
    # The corpus is the running Python's pydoc text, which changes between minor versions.
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    digest = hashlib.sha256((recipe.model_dump_json() + BUILDER_VERSION + python).encode()).hexdigest()
    return f"{recipe.name}-{digest[:12]}"


def ensure_base(recipe: EmbeddedRecipe, cache_dir: str | Path) -> Path:
    """Return the directory of the built embedded base, building it on first use."""
    final = Path(cache_dir).expanduser().resolve() / "embedded" / cache_key(recipe)
    return build_once(final, lambda out: _build(recipe, out), DONE_FILE, "embedded base")


def _build(recipe: EmbeddedRecipe, out: Path) -> None:
    """Tokenizer, model, pre-training, save; `build.json` is written last."""
    start = time.perf_counter()
    corpus = corpus_text(recipe.corpus_chars)
    tokenizer = build_tokenizer(corpus, recipe.vocab_size)
    tokenizer.model_max_length = recipe.max_position_embeddings
    # The raw backend skips the "longer than model_max_length" warning for the one long string.
    ids = torch.tensor(tokenizer.backend_tokenizer.encode(corpus).ids, dtype=torch.long)
    n_val = max(int(len(ids) * VAL_FRACTION), recipe.pretrain_seq_len + 1)
    train_ids, val_ids = ids[:-n_val], ids[-n_val:]
    if len(train_ids) <= recipe.pretrain_seq_len:
        raise ValueError(
            f"model.embedded.corpus_chars={recipe.corpus_chars} gives {len(ids)} tokens, too few for "
            f"pretrain_seq_len={recipe.pretrain_seq_len}; raise corpus_chars or lower pretrain_seq_len"
        )

    # fork_rng: the build seeds torch itself without perturbing a caller's seeded run.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=recipe.hidden_size,
            intermediate_size=recipe.intermediate_size,
            num_hidden_layers=recipe.num_layers,
            num_attention_heads=recipe.num_heads,
            num_key_value_heads=recipe.num_heads,
            max_position_embeddings=recipe.max_position_embeddings,
            tie_word_embeddings=True,  # at this size the embedding is most of the parameters
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
        )
        model = LlamaForCausalLM(config)  # fp32 on CPU: the same weights on every run of a machine
        n_params = sum(p.numel() for p in model.parameters())
        tokens = recipe.pretrain_steps * recipe.pretrain_batch_size * recipe.pretrain_seq_len
        log.info(
            "one-time build of embedded base %r (%.1fM params, %d pre-training steps, ~%.0f s on "
            "2 CPU cores); later runs load it from %s",
            recipe.name,
            n_params / 1e6,
            recipe.pretrain_steps,
            6 * n_params * tokens / CPU_TRAIN_FLOPS + 2,
            out.parent,
        )
        val_before = _val_loss(model, val_ids, recipe.pretrain_seq_len)
        _pretrain(model, train_ids, recipe)
        val_after = _val_loss(model, val_ids, recipe.pretrain_seq_len)

    model.save_pretrained(out)  # safetensors; tied lm_head stored once
    tokenizer.save_pretrained(out)
    seconds = time.perf_counter() - start
    log.info(
        "embedded base %r built in %.0f s: val loss %.2f -> %.2f", recipe.name, seconds, val_before, val_after
    )
    info = {
        "recipe": recipe.model_dump(),
        "builder_version": BUILDER_VERSION,
        "val_loss_before": val_before,
        "val_loss_after": val_after,
        "seconds": round(seconds, 1),
        "params": n_params,
        "train_tokens": len(train_ids),
        "val_tokens": len(val_ids),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
    (out / DONE_FILE).write_text(json.dumps(info, indent=2) + "\n")


def _pretrain(model: LlamaForCausalLM, ids: torch.Tensor, recipe: EmbeddedRecipe) -> None:
    """AdamW on random windows, linear warmup then cosine to 10%: the usual small-LM recipe."""
    steps, seq, batch = recipe.pretrain_steps, recipe.pretrain_seq_len, recipe.pretrain_batch_size
    if steps == 0:
        return
    # Own generator: the windows drawn do not depend on how many numbers model init consumed.
    gen = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.pretrain_lr, betas=(0.9, 0.95), weight_decay=0.1
    )
    warmup = max(1, steps // 20)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model.train()
    offsets = torch.arange(seq)
    tick, window_loss = time.perf_counter(), 0.0
    every = min(50, steps)
    for step in range(1, steps + 1):
        starts = torch.randint(0, len(ids) - seq + 1, (batch,), generator=gen)
        x = ids[starts[:, None] + offsets]  # (B, T); labels are shifted inside the model
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window_loss += loss.item()
        if step % every == 0 or step == steps:
            n = (step - 1) % every + 1
            elapsed = time.perf_counter() - tick
            log.info(
                "pre-train step %d/%d  loss %.3f  lr %.2e  %.0f tokens/s  ~%.0f s left",
                step,
                steps,
                window_loss / n,
                scheduler.get_last_lr()[0],
                n * batch * seq / elapsed,
                (steps - step) * elapsed / n,
            )
            tick, window_loss = time.perf_counter(), 0.0
    model.eval()


@torch.no_grad()
def _val_loss(model: LlamaForCausalLM, ids: torch.Tensor, seq: int) -> float:
    """Mean next-token loss over consecutive held-out windows (the same windows before and after)."""
    model.eval()
    n = len(ids) // seq
    windows = ids[: n * seq].view(n, seq)  # (N, T)
    losses = [model(input_ids=chunk, labels=chunk).loss.item() * len(chunk) for chunk in windows.split(16)]
    return sum(losses) / n
