"""sweeplab's Hydra sweeper: the upstream Optuna sweeper plus pruning, resume to the total and workers."""
