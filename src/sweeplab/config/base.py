"""What every config group shares: the strict Schema base and where the project's conf/ lives."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

# The Hydra config groups shipped with the project (the train app, estimate and compare compose them).
CONF_DIR = str(Path(__file__).resolve().parents[3] / "conf")


class Schema(BaseModel):
    """Unknown keys are errors: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)
