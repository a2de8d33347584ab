"""OLMo 2's periodic-repetition detector on token ids: a pattern of 1–13 tokens repeated back
to back 32 or more times (runs of the same n-gram that caused loss spikes). Used on training
instances (their loss is masked) and, as a curation step, on whole documents."""

from __future__ import annotations

import numpy as np

REPEAT_MAX_PERIOD = 13
REPEAT_MIN_COUNT = 32


def longest_repetition(tokens: np.ndarray, max_period: int = REPEAT_MAX_PERIOD) -> tuple[int, int]:
    """(period, times) of the longest run of a 1..max_period-token pattern repeated back to back.

    For period p, positions where tokens[j] == tokens[j + p] form runs; a run of length r means
    the pattern repeats 1 + r / p times. Vectorised: 13 comparisons over the instance.
    """
    best = (0, 0)
    for p in range(1, max_period + 1):
        if len(tokens) <= p:
            break
        same = np.concatenate([[False], tokens[p:] == tokens[:-p], [False]])
        edges = np.flatnonzero(np.diff(same.astype(np.int8)))
        if len(edges) == 0:
            continue
        longest = int((edges[1::2] - edges[::2]).max())
        times = 1 + longest // p
        if times > best[1]:
            best = (p, times)
    return best


def is_repetitive(tokens: np.ndarray, min_count: int = REPEAT_MIN_COUNT, max_period: int = REPEAT_MAX_PERIOD) -> bool:
    """OLMo 2's instance filter: some period of 1..13 tokens repeats ≥ 32 times in a row."""
    return longest_repetition(tokens, max_period)[1] >= min_count
