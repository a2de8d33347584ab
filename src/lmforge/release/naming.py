"""Revision names in OLMo's style: ``{prefix}step{step}-tokens{N}{unit}``.

OLMo publishes each kept checkpoint as a branch of the model repository, named after the
step and the tokens seen so far, e.g. ``stage1-step928646-tokens3896B``. The rule we follow is
OLMo 2's:

    N = ceil(step × batch_tokens / unit)      unit ∈ {B: 10^9, M: 10^6, K: 10^3}, chosen once per run

Decimal units, not 2^30: 928646 × 4,194,304 = 3,895.02 × 10^9 → ``tokens3896B``; in 2^30 it would
be 3,627.5. Ceiling is what all OLMo 2 stage-1 branches (7B, 13B, 32B, 1B) and the OLMo-core
stage-2 branches (1B, 32B) show: 32B ``stage2-ingredient1-step11921-tokens101B`` is
100.0006 × 10^9 rounded up.

Older names round otherwise, and `revision_name` can reproduce them:
* ``rounding="floor"``: the OLMo 2 7B/13B stage-2 (ingredient) branches, trained with the first
  OLMo trainer: 7B ``stage2-ingredient1-step11931-tokens50B`` is 50.04 × 10^9 rounded down.
* ``rounding="nearest"``: OLMo 1 (OLMo-1B, OLMo-7B, OLMo-7B-Twin-2T): OLMo-1B
  ``step117850-tokens494B`` is 494.30 and ``step20000-tokens84B`` is 83.89 × 10^9.

The unit is chosen once per run from its final token count, so every branch of a run shares
it and the names sort the same way the steps do.
"""

from __future__ import annotations

import re

from lmforge.errors import LmforgeError

UNITS: dict[str, int] = {"B": 10**9, "M": 10**6, "K": 10**3}
"""Largest first: `choose_unit` takes the first one the run fills at least once."""

ROUNDINGS = ("ceil", "floor", "nearest")

_PREFIX = re.compile(r"[A-Za-z0-9._-]*-")


def choose_unit(total_tokens: int) -> str:
    """The largest unit in which the run's final token count is at least 1 (a 4T-token run: B;
    a 2M-token run: M). Below 1000 tokens it is K anyway: K is the smallest unit, and with
    ceiling rounding such a run's names read ``tokens1K`` rather than ``tokens0K``."""
    if isinstance(total_tokens, bool) or not isinstance(total_tokens, int) or total_tokens < 0:
        raise LmforgeError(f"total_tokens={total_tokens!r} must be a non-negative integer "
                           "(the run's final step × batch_tokens)")
    for unit, size in UNITS.items():
        if total_tokens >= size:
            return unit
    return "K"


def scaled_tokens(tokens: int, unit: str, rounding: str = "ceil") -> int:
    """`tokens` in `unit`, rounded by `rounding`; exact integer arithmetic, since float division
    would misround past 2^53 tokens."""
    size = UNITS[unit]
    if rounding == "ceil":
        return -(-tokens // size)
    if rounding == "floor":
        return tokens // size
    return (2 * tokens + size) // (2 * size)  # nearest, halves up


def revision_name(step: int, batch_tokens: int, unit: str, prefix: str = "", rounding: str = "ceil") -> str:
    """The branch name of the checkpoint after `step` optimizer steps of `batch_tokens` tokens:
    ``f"{prefix}step{step}-tokens{N}{unit}"``. `prefix` is passed whole, e.g. ``"stage1-"`` or
    ``"stage2-ingredient1-"``; `rounding` is "ceil" (our rule) or "floor"/"nearest" for older
    OLMo names (see the module docstring)."""
    _check_int("step", step, minimum=0)
    _check_int("batch_tokens", batch_tokens, minimum=1)
    if unit not in UNITS:
        raise LmforgeError(f"unit={unit!r} is not a token unit; use one of {', '.join(UNITS)}")
    if prefix and not _PREFIX.fullmatch(prefix):
        raise LmforgeError(f"prefix={prefix!r} must be empty or end with '-' and use only "
                           "letters, digits, '.', '_' and '-' (e.g. 'stage1-')")
    if rounding not in ROUNDINGS:
        raise LmforgeError(f"rounding={rounding!r} is not a rounding; use one of {', '.join(ROUNDINGS)}")
    return f"{prefix}step{step}-tokens{scaled_tokens(step * batch_tokens, unit, rounding)}{unit}"


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LmforgeError(f"{name}={value!r} must be an integer ≥ {minimum}")
