"""Typed schema of the composed Hydra config, checked before anything heavy is imported.

Pydantic does the type and range checks (a well-kept library beats hand-written checks);
this package only turns its errors into one message that names every bad dotted key.
One module per config group; run.py holds RunConfig and validate. Every name is re-exported
here, so `from sweeplab.config import ...` is the one import the rest of the code needs.
"""

from sweeplab.config.base import CONF_DIR, Schema
from sweeplab.config.callbacks import CallbacksConfig, CheckpointConfig, EarlyStoppingConfig
from sweeplab.config.data import DataConfig
from sweeplab.config.eval import EvalConfig
from sweeplab.config.logger import LoggerConfig
from sweeplab.config.lora import TARGET_SETS, LoraConfig
from sweeplab.config.model import EmbeddedRecipe, GgufSource, ModelConfig, QuantConfig
from sweeplab.config.objective import GENERATION_METRICS, OBJECTIVE_METRICS, ObjectiveConfig
from sweeplab.config.optim import OptimConfig
from sweeplab.config.run import LrRangeTestConfig, PathsConfig, RunConfig, validate
from sweeplab.config.trainer import DEEPSPEED_PIN, GPU_ONLY_STRATEGIES, TrainerConfig, strategy_problems

__all__ = [
    "CONF_DIR",
    "DEEPSPEED_PIN",
    "GENERATION_METRICS",
    "GPU_ONLY_STRATEGIES",
    "OBJECTIVE_METRICS",
    "TARGET_SETS",
    "CallbacksConfig",
    "CheckpointConfig",
    "DataConfig",
    "EarlyStoppingConfig",
    "EmbeddedRecipe",
    "EvalConfig",
    "GgufSource",
    "LoggerConfig",
    "LoraConfig",
    "LrRangeTestConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "PathsConfig",
    "QuantConfig",
    "RunConfig",
    "Schema",
    "TrainerConfig",
    "strategy_problems",
    "validate",
]
