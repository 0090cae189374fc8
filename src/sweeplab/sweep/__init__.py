"""A trial's side of a sweep: its Optuna handle, pruning, storage retries, the W&B summary."""
