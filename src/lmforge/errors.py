"""The one exception type lmforge raises for user mistakes.

The CLI catches `LmforgeError` and prints its message as a single line, without a
traceback: every message must therefore say *what* is wrong (file, line, field, value)
and *what to do* about it.
"""


class LmforgeError(Exception):
    """A user-facing error: bad config, bad input file, incompatible checkpoint."""


class ConfigError(LmforgeError):
    """A config field is unknown, mistyped or out of range."""


class RollbackRequested(LmforgeError):
    """Training must restart from an earlier checkpoint (repeated non-finite steps): the run dir
    records what to skip; the process exits with `exit_code` so a wrapper (torchrun's restarts,
    a SLURM requeue) can tell it from a bug and simply relaunch."""

    exit_code = 75  # EX_TEMPFAIL: try again
