"""Read a sweep's Optuna study and write a report: trial table, plots, the best trial's command.

python -m sweeplab.report qlora-base-toolcalls              # a study in the default storage
python -m sweeplab.report sqlite:///outputs/sweeps/optuna.db # the only study in that file
python -m sweeplab.report NAME --storage postgresql://user:pass@host/db --out report/

Nothing heavy is imported here, so `--help` stays fast.
"""
