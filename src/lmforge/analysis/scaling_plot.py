"""ladder.png: a scaling-law fit for people (`lmforge.analysis.scaling` does the fitting)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.analysis.scaling import LossLaw
from lmforge.errors import LmforgeError


def plot_ladder(points: list[dict[str, Any]], law: LossLaw, out: str | Path, *,
                holdout: Sequence[dict[str, Any]] = (), predictions: Sequence[dict[str, Any]] = (),
                title: str = "") -> Path:
    """Left: loss against tokens (log x), one curve of the law per model size, fitted points as
    dots, held-out points as stars with the prediction and its interval as an error bar. Right:
    predicted against actual loss, with y = x.

    Rows of `points` and `holdout` have keys "params", "tokens", "loss". `predictions[i]` (e.g.
    `Prediction.to_dict()`) is the prediction for `holdout[i]`; without it the law's value is
    shown with no interval.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if predictions and len(predictions) != len(holdout):
        raise LmforgeError(f"plot_ladder: {len(predictions)} predictions for {len(holdout)} held-out points; "
                           f"pass one prediction per held-out point")
    held = list(holdout)
    preds = [dict(p) for p in predictions] or [
        {"value": float(law(h["params"], h["tokens"]))} for h in held]
    for p in preds:
        p.setdefault("low", p["value"])
        p.setdefault("high", p["value"])

    rows = list(points) + held
    sizes = sorted({float(r["params"]) for r in rows})
    tokens = [float(r["tokens"]) for r in rows]
    grid = np.geomspace(min(tokens) / 1.5, max(tokens) * 1.5, 200)
    cmap = plt.get_cmap("viridis")
    color = {n: cmap(i / max(len(sizes) - 1, 1)) for i, n in enumerate(sizes)}

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.5))
    for n in sizes:
        ax.plot(grid, law(n, grid), color=color[n], lw=1.2, label=f"N = {_human(n)}")
    for r in points:
        ax.scatter(r["tokens"], r["loss"], color=color[float(r["params"])], s=25, zorder=3)
    for i, (h, p) in enumerate(zip(held, preds)):
        c = color[float(h["params"])]
        ax.errorbar(h["tokens"], p["value"], yerr=[[p["value"] - p["low"]], [p["high"] - p["value"]]],
                    fmt="_", markersize=14, color=c, capsize=4, zorder=3,
                    label=_interval_label(p) if i == 0 else None)
        ax.scatter(h["tokens"], h["loss"], marker="*", s=160, color=c, edgecolor="black", zorder=4,
                   label="held out (actual)" if i == 0 else None)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens D")
    ax.set_ylabel("loss")
    ax.set_title(f"L = {law.E:.3g} + {law.A:.3g}/N^{law.alpha:.3g} + {law.B:.3g}/D^{law.beta:.3g}", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3, which="both")

    fitted_actual = [float(r["loss"]) for r in points]
    fitted_pred = [float(law(r["params"], r["tokens"])) for r in points]
    ax2.scatter(fitted_actual, fitted_pred, s=25, color="tab:blue", label="fitted", zorder=3)
    if held:
        actual = [float(h["loss"]) for h in held]
        value = [p["value"] for p in preds]
        yerr = [[p["value"] - p["low"] for p in preds], [p["high"] - p["value"] for p in preds]]
        ax2.errorbar(actual, value, yerr=yerr, fmt="none", ecolor="tab:red", capsize=4, zorder=3)
        ax2.scatter(actual, value, marker="*", s=160, color="tab:red", edgecolor="black", label="held out",
                    zorder=4)
    everything = fitted_actual + fitted_pred + [float(h["loss"]) for h in held] + [p["value"] for p in preds]
    lo, hi = min(everything), max(everything)
    pad = 0.05 * (hi - lo or 1.0)
    ax2.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="gray", ls="--", lw=1, label="y = x")
    ax2.set_xlabel("actual loss")
    ax2.set_ylabel("predicted loss")
    ax2.legend(fontsize=8, loc="upper left")
    ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _interval_label(p: Mapping[str, Any]) -> str:
    if "level" in p and p["high"] > p["low"]:
        return f"predicted, {100 * float(p['level']):.0f}% bootstrap interval"
    return "predicted"


def _human(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"
