"""Estimated vs measured peak memory of a few CPU training steps (model=base, model=tiny).

python scripts/estimate_vs_measured.py model=base data.batch_size=8 data.max_seq_len=256

Measured: peak RSS (ru_maxrss) growth over 3 steps of forward, backward and AdamW on random tokens,
from the RSS after one warm-up step at batch 1 x 16 tokens (code pages, weights and optimizer state
are then resident), against the estimated activations + gradients of the same run
(trainer.accelerator=cpu). glibc returns large freed blocks to the OS, so RSS follows tensors.
"""

from __future__ import annotations

import resource
import sys


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main(overrides: list[str]) -> None:
    import torch
    from tests.conftest import make_cfg

    from sweeplab.config import validate
    from sweeplab.estimate import estimate, gib
    from sweeplab.model import build_model, resolve_model_dir
    from sweeplab.module import build_optimizer

    rc = validate(make_cfg("trainer.accelerator=cpu", *overrides))
    e = estimate(rc)
    model_dir = resolve_model_dir(rc.model, rc.paths.cache_dir)  # built before the baseline
    torch.manual_seed(0)
    model = build_model(model_dir, rc.model, rc.lora, torch.float32, "cpu")
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], rc.optim)
    vocab = model.get_input_embeddings().weight.shape[0]
    for step in range(4):
        shape = (1, 16) if step == 0 else (rc.data.batch_size, rc.data.max_seq_len)
        ids = torch.randint(0, vocab, shape)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step == 0:
            base_mb = rss_mb()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_mb
    print(" ".join(overrides))
    acts = e.activations_ckpt if e.gradient_checkpointing else e.activations
    ckpt = "on" if e.gradient_checkpointing else "off"
    print(
        f"  estimate: activations + gradients {gib(acts + e.gradients)} (checkpointing {ckpt}; "
        f"without {gib(e.activations)}, with {gib(e.activations_ckpt)}), whole run {gib(e.total)}; "
        f"measured peak RSS growth {peak_mb:.1f} MiB"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
