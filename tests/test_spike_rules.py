"""The spike rules as pure functions: which rule judges a step, the early robust rule (median +
k·spread, with its floor), the window rule (mean + σ·std), non-finite values, and the replay
that judges a run offline from its metrics."""

import math
from collections import deque

import numpy as np
import pytest

from lmforge.analysis.spikes import format_steps, spike_reason, step_ranges
from lmforge.errors import ConfigError
from lmforge.train.spikes import (
    NON_FINITE,
    NOT_JUDGED,
    ROBUST,
    WINDOW,
    SpikeConfig,
    inferred_rules,
    judge,
    judge_series,
    judge_step,
    robust_threshold,
    rule_for,
    rule_ranges,
    window_threshold,
)

CFG = SpikeConfig()  # window 128, 6σ, window rule from 32 values, robust rule from 8, k 8, floor 0.1


def test_rule_depends_on_history_length():
    assert [rule_for(n, CFG) for n in (0, 7, 8, 31, 32, 500)] == [NOT_JUDGED, NOT_JUDGED, ROBUST, ROBUST, WINDOW, WINDOW]
    off = SpikeConfig(min_history=16, robust_min_history=16)  # robust_min_history ≥ min_history: no robust rule
    assert [rule_for(n, off) for n in (15, 16)] == [NOT_JUDGED, WINDOW]
    assert off.first_judged_history == 16 and CFG.first_judged_history == 8


def test_robust_threshold_is_median_plus_k_scaled_mad():
    history = [1.0, 2.0, 3.0, 4.0, 100.0]  # median 3, |x - 3| = 2 1 0 1 97 → MAD 1
    median, spread, bar = robust_threshold(history, k=10, min_spread=0.1)
    assert (median, spread) == (3.0, pytest.approx(1.4826)) and bar == pytest.approx(3 + 14.826)
    # the mean and std would be pulled up by the one large early value; the median is not
    assert window_threshold(history, 6)[2] > 200


def test_robust_floor_keeps_a_quiet_history_from_calling_a_wobble_a_spike():
    history = [2.0] * 7 + [2.001, 1.999]  # MAD 0: without the floor any rise would be a spike
    assert robust_threshold(history, k=10, min_spread=0.0)[2] == pytest.approx(2.0)
    _, spread, bar = robust_threshold(history, k=10, min_spread=0.1)
    assert spread == pytest.approx(0.2) and bar == pytest.approx(4.0)  # (1 + 10·0.1) × the median
    assert judge(3.5, history, CFG) is None  # the defaults: bar 2 + 8·0.2 = 3.6
    why = judge(3.7, history, CFG)
    assert why["rule"] == ROBUST and why["threshold"] == pytest.approx(3.6) and why["median"] == 2.0


def test_window_rule_is_mean_plus_sigma_std_of_the_window():
    rng = np.random.default_rng(0)
    history = list(1.0 + 0.1 * rng.standard_normal(64))
    mean, std = float(np.mean(history)), float(np.std(history))
    why = judge(mean + 6.01 * std, history, CFG)
    assert why["rule"] == WINDOW and why["threshold"] == pytest.approx(mean + 6 * std)
    assert judge(mean + 5.99 * std, history, CFG) is None


def test_too_little_history_is_not_judged_but_non_finite_always_is():
    assert judge(1e9, [1.0] * 7, CFG) is None  # 7 values: not judged, however large
    assert judge(1e9, [1.0] * 8, CFG)["rule"] == ROBUST
    for value in (math.nan, math.inf):
        for n in (0, 8, 40):
            assert judge(value, [1.0] * n, CFG)["rule"] == NON_FINITE


def test_early_rule_on_a_falling_curve_flags_the_jump_only():
    """A falling loss and a falling, noisy gradient norm (as early training has): no step is
    flagged, until the gradient norm jumps 40× at step 25 (issue 16's run: 0.6 → 26.5)."""
    rng = np.random.default_rng(1)
    steps = np.arange(1, 41)
    rows = [{"step": int(s), "loss": float(8 * np.exp(-s / 30) + 3 + 0.05 * rng.standard_normal()),
             "grad_norm": float(0.6 + 2 * np.exp(-s / 8) + 0.05 * rng.standard_normal())} for s in steps]
    assert judge_series(rows, CFG)[0] == []
    rows[24]["grad_norm"] = 26.5
    spikes, rules = judge_series(rows, CFG)
    assert [(s["step"], list(s["spiked"])) for s in spikes] == [(25, ["grad_norm"])]
    assert spikes[0]["spiked"]["grad_norm"]["rule"] == ROBUST
    # the spike does not enter the history, so the window rule starts one step later
    assert rules == [[NOT_JUDGED, 1], [ROBUST, 9], [WINDOW, 34]]


def test_judge_step_and_spikes_stay_out_of_the_history():
    histories = {"loss": deque([5.0] * 10), "grad_norm": deque([1.0] * 10)}
    rule, spiked = judge_step({"loss": 5.0, "grad_norm": 50.0}, histories, CFG)
    assert rule == ROBUST and list(spiked) == ["grad_norm"]
    rows = [{"step": s, "loss": 5.0, "grad_norm": 1.0} for s in range(1, 13)]
    rows[9]["grad_norm"] = rows[10]["grad_norm"] = 50.0  # two bad steps in a row: both flagged
    assert [s["step"] for s in judge_series(rows, CFG)[0]] == [10, 11]


def test_rule_ranges_and_step_ranges():
    rules = [[NOT_JUDGED, 1], [ROBUST, 9], [WINDOW, 33]]
    assert rule_ranges(rules, 40) == [{"rule": NOT_JUDGED, "first": 1, "last": 8},
                                      {"rule": ROBUST, "first": 9, "last": 32},
                                      {"rule": WINDOW, "first": 33, "last": 40}]
    assert rule_ranges(rules, 5) == [{"rule": NOT_JUDGED, "first": 1, "last": 5}]
    assert step_ranges([5, 1, 2, 3, 9]) == [[1, 3], [5, 5], [9, 9]]
    assert format_steps([[1, 8], [12, 12]]) == "1–8, 12"
    # a monitor from before rules were recorded judged nothing before min_history values
    assert inferred_rules(CFG, 40) == [[NOT_JUDGED, 1], [WINDOW, 33]] and inferred_rules(CFG, 20) == [[NOT_JUDGED, 1]]


@pytest.mark.parametrize("field,value", [("robust_min_history", 2), ("robust_k", 0.0), ("robust_min_spread", -0.1)])
def test_bad_robust_settings_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"spikes.{field}"):
        SpikeConfig.from_dict({field: value})


def test_each_rule_says_why_in_its_own_terms():
    history = [2.0] * 9
    assert spike_reason(judge(5.0, history, CFG)) == "5 > 3.6 (early rule: median 2, spread 0.2)"
    assert spike_reason(judge(math.nan, history, CFG)) == "nan (non-finite)"
    legacy = {"value": 9.0, "mean": 1.0, "std": 0.5, "threshold": 4.0}  # a spikes.jsonl row from before rules
    assert spike_reason(legacy) == "9 > 4 (mean 1, σ 0.5)"
