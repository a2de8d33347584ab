"""`lmforge analyze spikes RUN`: the loss and gradient-norm spikes a run's spike monitor
recorded (RUN/spikes.jsonl), the documents most responsible for them, and a PNG of the curves
with the spikes marked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.plot import read_metrics
from lmforge.train.spikes import SPIKES_FILE


def read_spikes(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / SPIKES_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def spike_report(run_dir: str | Path, top: int = 10) -> dict[str, Any]:
    """The spikes, and the documents with the most loss summed over all spike batches."""
    if not (Path(run_dir) / "config.yaml").exists():
        raise LmforgeError(f"{run_dir}: not a run directory (config.yaml is missing)")
    spikes = read_spikes(run_dir)
    documents: dict[tuple[str, str], dict[str, Any]] = {}
    for spike in spikes:
        for doc in spike["documents"]:
            entry = documents.setdefault((doc["folder"], doc["id"]), {
                "id": doc["id"], "source": doc["source"], "folder": doc["folder"], "spikes": [], "loss_sum": 0.0,
                "tokens": 0})
            entry["spikes"].append(spike["step"])
            entry["loss_sum"] += doc["loss_sum"]
            entry["tokens"] += doc["tokens"]
    for entry in documents.values():
        entry["mean_loss"] = entry["loss_sum"] / max(entry["tokens"], 1)
    ranked = sorted(documents.values(), key=lambda d: -d["loss_sum"])[:top]
    return {"spikes": spikes, "documents": ranked}


def plot_spikes(run_dir: str | Path, spikes: list[dict[str, Any]], out: str | Path | None = None) -> Path:
    """Loss and grad norm against steps, spikes marked → RUN/spikes.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(run_dir) if "loss" in r]
    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for ax, key, color in zip(axes, ("loss", "grad_norm"), ("tab:blue", "tab:red")):
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], color=color, lw=1)
        marked = [s for s in spikes if key in s["spiked"]]
        if marked:
            ax.scatter([s["step"] for s in marked], [s[key] for s in marked], marker="x", s=60, color="black",
                       zorder=3, label=f"{len(marked)} spike(s) > mean + σ-threshold")
            ax.legend(loc="upper right")
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{Path(run_dir).resolve().name}: spikes")
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "spikes.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
