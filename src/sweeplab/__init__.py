"""sweeplab: Hydra + Optuna sweeps for QLoRA adapters."""

__version__ = "0.1.0"
