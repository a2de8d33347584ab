"""Loss and gradient-norm spikes: detected as they happen, attributed to the documents of the
batch that caused them, and optionally not applied (skip-step).

A step's value is a spike when it exceeds the mean of the last `window` values by more than
`sigma` standard deviations (OLMo 2 counts spikes this way: 6σ over 128 steps). Spikes do not
enter the window, so one bad batch does not raise the bar for the next. For each spike the
monitor recomputes the batch's per-token losses with the weights that produced the spike and
sums them per document; rows go to RUN/spikes.jsonl (`lmforge analyze spikes RUN` reads them).

The check needs the step's values on the host: with the monitor on, each step has one host
sync between backward and the optimizer step.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from lmforge.config import Config, require
from lmforge.data.dataset import Batch
from lmforge.train.callbacks import Callback, append_jsonl

if TYPE_CHECKING:
    from lmforge.train.trainer import Trainer

SPIKES_FILE = "spikes.jsonl"
WATCHED = ("loss", "grad_norm")


@dataclasses.dataclass(kw_only=True)
class SpikeConfig(Config):
    enabled: bool = False
    """Watch every step for spikes (one host sync per step; off by default for that reason)."""
    window: int = 128
    """Steps of history the mean and standard deviation are taken over."""
    sigma: float = 6.0
    """A value above mean + sigma · std of the window is a spike."""
    min_history: int = 32
    """Steps of history needed before anything is called a spike."""
    skip_step: bool = False
    """Do not apply a spiking step's update (gradients dropped, optimizer state untouched)."""
    top_documents: int = 20
    """Documents recorded per spike, highest summed loss first."""

    def validate(self) -> None:
        require(self.window >= 2, "spikes.window", f"must be ≥ 2, got {self.window}")
        require(self.sigma > 0, "spikes.sigma", f"must be positive, got {self.sigma}")
        require(2 <= self.min_history <= self.window, "spikes.min_history",
                f"must be between 2 and spikes.window={self.window}, got {self.min_history}")
        require(self.top_documents >= 1, "spikes.top_documents", f"must be ≥ 1, got {self.top_documents}")


def threshold(history: deque, sigma: float) -> tuple[float, float, float]:
    """(mean, std, mean + sigma·std) of the values in `history`."""
    values = np.asarray(history, dtype=np.float64)
    mean, std = float(values.mean()), float(values.std())
    return mean, std, mean + sigma * std


class SpikeMonitor(Callback):
    priority = 25  # before the logger, so a spike's row carries its flag
    name = "spikes"

    def __init__(self, cfg: SpikeConfig):
        self.cfg = cfg
        self.history: dict[str, deque] = {key: deque(maxlen=cfg.window) for key in WATCHED}
        self.current: dict[str, Any] | None = None

    def pre_optim_step(self, trainer: Trainer, batch: Batch, metrics: dict[str, Any]) -> bool:
        values = {key: float(metrics[key]) for key in WATCHED}  # host sync (see module docstring)
        spiked = {}
        for key, value in values.items():
            history = self.history[key]
            if len(history) >= self.cfg.min_history:
                mean, std, bar = threshold(history, self.cfg.sigma)
                if value > bar or not math.isfinite(value):
                    spiked[key] = {"value": value, "mean": mean, "std": std, "threshold": bar}
        self.current = None
        if not spiked:
            for key, value in values.items():
                self.history[key].append(value)
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

    def state_dict(self) -> dict[str, Any]:
        return {key: list(values) for key, values in self.history.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in WATCHED:
            self.history[key] = deque(state.get(key, []), maxlen=self.cfg.window)


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
