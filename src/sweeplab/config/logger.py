"""The logger group: which experiment logger a run writes to, and under what names."""

from __future__ import annotations

from typing import Literal

from sweeplab.config.base import Schema


class LoggerConfig(Schema):
    backend: Literal["wandb", "csv", "tensorboard", "none"] = "wandb"
    project: str = "sweeplab"
    group: str | None = None
    name: str | None = None
    tags: list[str] = []
    mode: Literal["auto", "online", "offline"] = "auto"  # auto: online only with an API key
