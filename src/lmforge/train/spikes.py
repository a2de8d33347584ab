"""Loss and gradient-norm spikes: detected as they happen, attributed to the documents of the
batch that caused them, and optionally not applied (skip-step).

Which rule judges a step depends on how much history there is (values of earlier steps that
were not spikes; a spike does not enter the history, so one bad batch does not raise the bar
for the next):

* fewer than `robust_min_history` values: the step is **not judged** (only a non-finite value
  is a spike there); the monitor records which steps these were, so a report never calls
  them clean;
* from `robust_min_history` to `min_history` values: the **robust rule**, a value above
  median + robust_k · max(1.4826 · MAD, robust_min_spread · median) of the whole history.
  Early training has a falling loss and a moving gradient norm, whose mean and standard
  deviation over a few steps say little; the median and MAD are not pulled up by the few
  large early values, and the spread floor keeps a quiet stretch from making any wobble a
  spike;
* from `min_history` values on: the **window rule**, a value above mean + sigma · std of the
  last `window` values (OLMo 2 counts spikes this way: 6σ over 128 steps).

A non-finite value is always a spike.

Choosing robust_k and robust_min_spread, from 31 clean runs (no injected batch): the test model
of tests/test_spikes.py (4 seeds × lr 3e-3, 1e-2, 3e-2, 1e-1), configs/demo.yaml (3 seeds × lr
3e-3, 1e-2, 3e-2) and both stability recipes (3 seeds at lr 3e-2), steps 9–32 each judged
against all earlier values (1,488 values). Score = (value − median) / spread:

* every value that was not a single-step grad-norm jump scored < 2.5 (≤ 1.4 in every
  test-model run; the loss ≤ 1.8 anywhere: a falling curve sits below its median);
* grad-norm blips of 1.6–3.8× the median (2–5× the step before) scored 2.5–5.2: not flagged;
* jumps of 4.3× and 4.5× the median scored 9.0 (flagged) and 7.7 (not: its history had just
  fallen fast); jumps of 7–19× the median, all at lr 3e-2 with the loss up 10–33 %, 20–47;
* a smooth exponential rise scores low: 10× growth over the history 3.0–3.8 (100×, a
  divergence, 8.5–13.6);
* the MAD of 8–31 values is a noisy estimate of σ: on Gaussian noise a bar of k = 6 is crossed
  somewhere in steps 9–32 in 1.8 % of runs, k = 8 in 0.6 %, k = 10 in 0.3 %; the floor at
  0.1 × the median brings k = 8 to 0 % for noise up to 10 % of the median, 0.25 % at 30 %.

Hence k = 8 (the window rule's 6σ, widened for the small sample) with the floor 0.1: values
that are not jumps stay below a third of the bar, and jumps from about 4–5× the median up are
flagged. `experiments/spike_rule_calibration.py` prints these numbers. The early rule does not
see a loss spike on its own: the falling early loss makes its MAD wide (an injected bad batch took
the loss from 4.9 to 6.8 at step 10, under the bar); such a batch is caught by its grad norm.

The rules are the pure functions `judge_step` and `remember` below; the monitor and the
offline analysis (`lmforge analyze spikes` on a run trained without the monitor) both call
them. For each spike the monitor recomputes the batch's per-token losses with the weights that
produced the spike and sums them per document; rows go to RUN/spikes.jsonl, and which rule
judged which steps to RUN/spikes_summary.json (`lmforge analyze spikes RUN` reads both).

The check needs the step's values on the host: with the monitor on, each step has one host
sync between backward and the optimizer step.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lmforge.data.dataset import Batch
from lmforge.fsutil import atomic_write
from lmforge.train.callback import Callback, append_jsonl
from lmforge.train.config import SpikeConfig

if TYPE_CHECKING:
    from lmforge.train.trainer import Trainer

SPIKES_FILE = "spikes.jsonl"
SUMMARY_FILE = "spikes_summary.json"
WATCHED = ("loss", "grad_norm")

NOT_JUDGED = "not judged"
ROBUST = "robust"
WINDOW = "window"
NON_FINITE = "non-finite"

MAD_TO_STD = 1.4826
"""1.4826 · MAD estimates the standard deviation of normally distributed values."""


# -- the rules (pure functions; the monitor and the offline analysis share them) ----------------------
def window_threshold(history: Sequence[float], sigma: float) -> tuple[float, float, float]:
    """(mean, std, mean + sigma·std) of the values in `history`."""
    values = np.asarray(history, dtype=np.float64)
    mean, std = float(values.mean()), float(values.std())
    return mean, std, mean + sigma * std


def robust_threshold(history: Sequence[float], k: float, min_spread: float) -> tuple[float, float, float]:
    """(median, spread, median + k·spread), where spread = max(1.4826·MAD, min_spread·|median|):
    the MAD of a handful of values can be tiny by chance, the floor keeps the bar above it."""
    values = np.asarray(history, dtype=np.float64)
    median = float(np.median(values))
    spread = max(MAD_TO_STD * float(np.median(np.abs(values - median))), min_spread * abs(median))
    return median, spread, median + k * spread


def rule_for(n_history: int, cfg: SpikeConfig) -> str:
    """The rule a step with `n_history` values of history is judged under."""
    if n_history >= cfg.min_history:
        return WINDOW
    if n_history >= cfg.robust_min_history:
        return ROBUST
    return NOT_JUDGED


def judge(value: float, history: Sequence[float], cfg: SpikeConfig) -> dict[str, Any] | None:
    """Why `value` is a spike against `history` (rule, value, threshold and the rule's centre and
    spread), or None when it is not one or cannot be judged."""
    if not math.isfinite(value):
        return {"rule": NON_FINITE, "value": value}
    rule = rule_for(len(history), cfg)
    if rule == WINDOW:
        mean, std, bar = window_threshold(history, cfg.sigma)
        return {"rule": WINDOW, "value": value, "mean": mean, "std": std, "threshold": bar} if value > bar else None
    if rule == ROBUST:
        median, spread, bar = robust_threshold(history, cfg.robust_k, cfg.robust_min_spread)
        return {"rule": ROBUST, "value": value, "median": median, "spread": spread,
                "threshold": bar} if value > bar else None
    return None


def judge_step(values: Mapping[str, float], histories: Mapping[str, Sequence[float]],
               cfg: SpikeConfig) -> tuple[str, dict[str, dict[str, Any]]]:
    """The rule this step was judged under and its spiking values (empty: not a spike). The
    histories grow together (a step enters all or none), so the shortest names the rule."""
    rule = rule_for(min(len(histories[key]) for key in values), cfg)
    spiked = {key: why for key, value in values.items() if (why := judge(value, histories[key], cfg))}
    return rule, spiked


def remember(histories: Mapping[str, deque], values: Mapping[str, float], spiked: Mapping[str, Any]) -> None:
    """A step that is not a spike enters every history; a spike enters none."""
    if not spiked:
        for key, value in values.items():
            histories[key].append(value)


def note_rule(rules: list[list], step: int, rule: str) -> bool:
    """Record that `step` was judged under `rule` in `rules` ([rule, first step] pairs, one per
    stretch of steps under one rule); True when this starts a new stretch."""
    if rules and rules[-1][0] == rule:
        return False
    rules.append([rule, step])
    return True


def rule_ranges(rules: Sequence[Sequence], last_step: int) -> list[dict[str, Any]]:
    """[rule, first step] pairs as {"rule", "first", "last"} stretches up to `last_step`."""
    out = []
    for i, (rule, first) in enumerate(rules):
        last = min(rules[i + 1][1] - 1, last_step) if i + 1 < len(rules) else last_step
        if last >= first:
            out.append({"rule": rule, "first": int(first), "last": int(last)})
    return out


def inferred_rules(cfg: SpikeConfig, last_step: int) -> list[list]:
    """The [rule, first step] pairs of a monitor from before they were recorded: it judged
    nothing (not even non-finite values) before `min_history` values of history, then used the
    window rule. Exact, not a guess: flagging nothing early, its history grew by one a step."""
    return [[NOT_JUDGED, 1]] + ([[WINDOW, cfg.min_history + 1]] if last_step > cfg.min_history else [])


def new_histories(cfg: SpikeConfig) -> dict[str, deque]:
    return {key: deque(maxlen=cfg.window) for key in WATCHED}


def judge_series(rows: Sequence[Mapping[str, Any]], cfg: SpikeConfig) -> tuple[list[dict[str, Any]], list[list]]:
    """Replay the monitor over a run's per-step rows (step, loss, grad_norm; every step, in
    order): the spikes it would have flagged (without documents) and its [rule, first step]
    pairs. A run trained without the monitor is judged this way from its metrics.jsonl."""
    histories, rules, spikes = new_histories(cfg), [], []
    for row in rows:
        values = {key: float(row[key]) for key in WATCHED}
        rule, spiked = judge_step(values, histories, cfg)
        note_rule(rules, int(row["step"]), rule)
        if spiked:
            spikes.append({"step": int(row["step"]), **values, "spiked": spiked, "skipped": False})
        remember(histories, values, spiked)
    return spikes, rules


# -- the monitor -------------------------------------------------------------------------------------
class SpikeMonitor(Callback):
    """Judges every step before its update (see the module docstring); spikes go to
    RUN/spikes.jsonl, the rules per stretch of steps to RUN/spikes_summary.json."""

    priority = 25  # before the logger, so a spike's row carries its flag
    name = "spikes"

    def __init__(self, cfg: SpikeConfig):
        self.cfg = cfg
        self.history = new_histories(cfg)
        self.rules: list[list] = []
        """[rule, first step] per stretch of steps judged under one rule (checkpointed)."""
        self.current: dict[str, Any] | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.step > 0 and not self.rules:  # resumed from a checkpoint that did not record them
            self.rules = inferred_rules(self.cfg, trainer.step)
        if trainer.world.is_main:
            drop_spikes_after(trainer.run_dir / SPIKES_FILE, trainer.step)  # those steps run again
            self.write_summary(trainer)

    def pre_optim_step(self, trainer: Trainer, batch: Batch, metrics: dict[str, Any]) -> bool:
        values = {key: float(metrics[key]) for key in WATCHED}  # host sync (see module docstring)
        rule, spiked = judge_step(values, self.history, self.cfg)
        remember(self.history, values, spiked)
        if note_rule(self.rules, trainer.step, rule) and trainer.world.is_main:
            self.write_summary(trainer)  # a few times per run: when the rule changes
        self.current = None
        if not spiked:
            return True
        documents = attribute(trainer, batch, self.cfg.top_documents)
        self.current = {"step": trainer.step, **values, "spiked": spiked, "skipped": self.cfg.skip_step,
                        "documents": documents}
        if trainer.world.is_main:
            append_jsonl(trainer.run_dir / SPIKES_FILE, self.current)
        return not self.cfg.skip_step

    def post_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.current is not None:
            metrics["spike"] = sorted(self.current["spiked"])

    def on_train_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if trainer.world.is_main:
            self.write_summary(trainer)

    def write_summary(self, trainer: Trainer) -> None:
        """RUN/spikes_summary.json: the [rule, first step] pairs so far (the last stretch runs
        on to the end of the run), the last step seen, and the rules' settings."""
        summary = {"rules": self.rules, "last_step": trainer.step, "config": self.cfg.to_dict()}
        atomic_write(trainer.run_dir / SUMMARY_FILE, json.dumps(summary, indent=1))

    def state_dict(self) -> dict[str, Any]:
        return {**{key: list(values) for key, values in self.history.items()}, "rules": [list(p) for p in self.rules]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in WATCHED:
            self.history[key] = deque(state.get(key, []), maxlen=self.cfg.window)
        self.rules = [list(pair) for pair in state.get("rules", [])]


def attribute(trainer: Trainer, batch: Batch, top: int) -> list[dict[str, Any]]:
    """The documents of the global batch with their summed and mean token loss, highest sum
    first. Every rank scores its own rows; rank 0 gathers them."""
    losses = trainer.module.token_losses(batch).numpy()  # (rows, T)
    dataset = trainer.dataset
    per_doc: dict[tuple[str, str], dict[str, Any]] = {}
    for row, instance in enumerate(np.asarray(batch.instances).tolist()):
        start, end = dataset.token_range(instance)
        positions = np.arange(start + 1, end)  # the targets of this row, in stream positions
        for folder, span in dataset.stream.documents_in(start, end):
            inside = (positions >= span.start) & (positions <= span.end)
            if not inside.any():
                continue
            doc = per_doc.setdefault((folder, span.id), {"id": span.id, "source": span.source, "folder": folder,
                                                           "tokens": 0, "loss_sum": 0.0, "instances": []})
            doc["tokens"] += int(inside.sum())
            doc["loss_sum"] += float(losses[row][inside].sum())
            doc["instances"].append(instance)
    gathered = trainer.world.all_gather_object(list(per_doc.values()))
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for rows in gathered:
        for doc in rows:
            key = (doc["folder"], doc["id"])
            if key in merged:  # a document split over rows of several ranks
                merged[key]["tokens"] += doc["tokens"]
                merged[key]["loss_sum"] += doc["loss_sum"]
                merged[key]["instances"] += doc["instances"]
            else:
                merged[key] = doc
    for doc in merged.values():
        doc["mean_loss"] = doc["loss_sum"] / max(doc["tokens"], 1)
    return sorted(merged.values(), key=lambda d: -d["loss_sum"])[:top]


def drop_spikes_after(path, step: int) -> None:
    """Keep only the spikes.jsonl rows of steps ≤ `step` (a resumed run judges the rest again)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if _row_step(line) <= step]
    if len(kept) != len(lines):
        atomic_write(path, "".join(line + "\n" for line in kept))


def _row_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (json.JSONDecodeError, KeyError):
        return 1 << 62  # a torn last line from a killed run: drop it
