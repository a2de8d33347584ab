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


HANG_EXIT_CODE = 76
"""The exit code of a rank that the watchdog stopped (`lmforge.train.watchdog`): a hang, or a
straggler evicted; RUN/faults/last.json names the suspects and their hosts, so a requeue can
leave those hosts out (`scripts/slurm_train.sbatch`)."""


class StragglersEvicted(LmforgeError):
    """Slow ranks were named and `faults.evict_stragglers` is on: the run stopped after a
    checkpoint so that it can be relaunched without their hosts."""

    exit_code = HANG_EXIT_CODE
