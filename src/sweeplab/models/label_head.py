"""Logits only where a label reads them: the LM head and its softmax skip every prompt and pad position.

On the default chats ~40% of tokens carry an assistant label, and the head (hidden x vocab) is the widest
matmul of a small model: projecting only those positions gives the same loss and gradients for less work.
"""

from __future__ import annotations

import logging

import torch

from sweeplab.data.packing import model_inputs
from sweeplab.data.tokenize import IGNORE

log = logging.getLogger(__name__)

# Config fields with which a causal LM's forward changes the logits after the head (soft-capping, scaling):
# calling body and head apart would skip that, so such a model keeps the full forward.
LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)


def split_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | str:
    """(decoder body, output head) of a peft-wrapped or plain causal LM, or why it cannot be split."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA layers live inside
    head = causal.get_output_embeddings() if hasattr(causal, "get_output_embeddings") else None
    if head is None:
        return f"{type(causal).__name__} exposes no output head"
    text_config = causal.config.get_text_config()
    scaled = [name for name in LOGIT_TRANSFORMS if getattr(text_config, name, None) not in (None, 1, 1.0)]
    if scaled:
        return f"{type(causal).__name__} transforms its logits after the head ({', '.join(scaled)})"
    body = causal.get_decoder()
    if body is causal or any(m is head for m in body.modules()):
        return f"{type(causal).__name__} has no decoder separate from its head"
    return body, head


class LabelLogits:
    """Next-token logits and targets at the labelled positions of a padded or packed batch.

    The loss over them is the one `model(..., labels=...)` returns (mean cross-entropy over labelled
    tokens), and its gradients the same; a model whose head cannot be called apart gets the full forward.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        parts = split_head(model)
        if isinstance(parts, str):
            log.info("loss from full logits: %s", parts)
        # A tuple, not attributes: assigned to a Module, body and head would be registered twice.
        self.parts = parts if isinstance(parts, tuple) else None
        self.model = model

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, vocab) in float32, targets (N,)): position t of a row predicts its token t+1."""
        targets = batch["labels"][:, 1:]  # (B, T-1)
        mask = targets != IGNORE
        if self.parts is None:
            logits = self.model(**model_inputs(batch)).logits[:, :-1][mask]
        else:
            body, head = self.parts
            hidden = body(**model_inputs(batch)).last_hidden_state  # (B, T, hidden)
            logits = head(hidden[:, :-1][mask])  # (N, vocab): the head runs on labelled positions only
        return logits.float(), targets[mask]
