"""Errors a user can fix; train.py prints them as one line instead of a traceback."""


class SweeplabError(Exception):
    """Base class: the message alone tells the user what to change."""


class ConfigError(SweeplabError, ValueError):
    """Raised before any weights load, so a bad trial fails in seconds."""


class DataError(SweeplabError, ValueError):
    """A data file is missing or malformed; the message names file:line."""


class Interrupted(SweeplabError):
    """Ctrl-C or SIGTERM: the run stopped at a step boundary after saving checkpoints/last.ckpt."""


class OutOfMemory(SweeplabError, MemoryError):
    """The device ran out of memory; the message names the knobs that shrink a step."""


class DataLoaderFailed(SweeplabError, RuntimeError):
    """A data loader worker died or raised mid-training."""


class DivergedError(SweeplabError, FloatingPointError):
    """A NaN/inf training loss; the run stops instead of training on garbage."""


class DiskFull(SweeplabError, OSError):
    """A checkpoint, the adapter or metrics.json did not fit; the previous file is left whole."""

    def __init__(self, path: object) -> None:
        super().__init__(
            f"disk full while writing {path} (the previous file is unchanged): free space on its "
            "filesystem, then run the same command again"
        )


class ExportError(SweeplabError, ValueError):
    """A run that cannot be exported as asked (no adapter, a base the format cannot hold)."""
