"""`lmforge plot RUN`: the run's curves as a PNG, for people (metrics.jsonl is for machines)."""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.errors import LmforgeError


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise LmforgeError(f"{run_dir}: no metrics.jsonl (has the run started?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Train/validation loss, learning rate and gradient norm against tokens → loss.png."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training machines
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_loss" in r]
    if not train and not val:
        raise LmforgeError(f"{run_dir}/metrics.jsonl has no loss rows yet")
    evals = sorted({k for r in rows for k in r if k.startswith("eval/") and not k.endswith("bits_per_byte")})
    panels = 4 if evals else 3
    fig, axes = plt.subplots(panels, 1, figsize=(8, 9 + 2 * (panels - 3)), sharex=True,
                             height_ratios=[3, 1, 1, 1.5][:panels])
    ax_loss, ax_lr, ax_gn = axes[:3]
    ax_loss.plot([r["tokens"] for r in train], [r["loss"] for r in train], lw=1, alpha=0.8, label="train")
    if val:
        ax_loss.plot([r["tokens"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    ax_loss.set_ylabel("cross-entropy (nats/token)")
    ax_loss.set_title(f"{Path(run_dir).resolve().name}")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_lr.plot([r["tokens"] for r in train], [r["lr"] for r in train], color="tab:green")
    ax_lr.set_ylabel("learning rate")
    ax_lr.grid(alpha=0.3)
    ax_gn.plot([r["tokens"] for r in train], [r["grad_norm"] for r in train], color="tab:red", lw=1)
    ax_gn.set_ylabel("grad norm")
    ax_gn.grid(alpha=0.3)
    if evals:  # downstream tasks scored in the loop (evals: in the run config)
        ax_ev = axes[3]
        for key in evals:
            points = [(r["tokens"], r[key]) for r in rows if r.get(key) is not None]
            ax_ev.plot(*zip(*points), "o-", ms=3, label=key.removeprefix("eval/"))
        ax_ev.set_ylabel("task score")
        ax_ev.legend(fontsize=8)
        ax_ev.grid(alpha=0.3)
    axes[-1].set_xlabel("tokens")
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "loss.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_series(series: dict[str, list[tuple[float, float]]], out: str | Path, *, xlabel: str, ylabel: str,
                title: str) -> Path:
    """One line per named series of (x, y) points → a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, points in series.items():
        ax.plot(*zip(*points), "o-", ms=4, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
