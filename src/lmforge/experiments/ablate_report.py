"""A data ablation's results compared: per data set and metric the mean and spread over seeds,
and for each pair of data sets whether the difference exceeds the seed spread; written as
ablation.json (machines), ablation.md (people) and ablation.png (one panel per metric).

Metrics of a results row: ``val_loss`` (the base config's validation set, when it has one),
``SET/loss`` and ``SET/bpb`` per eval set, ``TASK/acc`` and ``TASK/bpb`` per task. Lower is
better for losses and bits per byte, higher for accuracy (``/acc``).

A pair is `separated` on a metric when the seed ranges do not overlap: every seed of one data
set is better than every seed of the other. That needs at least two seeds on each side (with
one seed there is no spread to exceed, so nothing is separated). Welch's t statistic (and its
degrees of freedom) is reported beside it, for information: with 2–5 seeds, the ranges are the
verdict, not a p-value.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.fsutil import atomic_write

REPORT_FILES = ("ablation.json", "ablation.md", "ablation.png")


def higher_is_better(metric: str) -> bool:
    return metric.endswith("/acc")


def row_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The comparable numbers of one results row, by metric name (module doc), in report order:
    val_loss, each eval set's loss and bpb, each task's acc and bpb; None left out."""
    values: dict[str, Any] = {"val_loss": row.get("val_loss")}
    for name, e in row.get("eval", {}).items():
        values[f"{name}/loss"], values[f"{name}/bpb"] = e.get("loss"), e.get("bpb")
    for spec, t in row.get("tasks", {}).items():
        values[f"{spec}/acc"], values[f"{spec}/bpb"] = t.get("acc"), t.get("bpb")
    return {k: float(v) for k, v in values.items() if v is not None}


def stats(values: list[float], seeds: list[int]) -> dict[str, Any]:
    """mean, std (sample, ddof 1; None for one value), min, max, n, and the values by seed."""
    a = np.array(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else None,
            "min": float(a.min()), "max": float(a.max()), "n": len(a), "values": [float(v) for v in a],
            "seeds": list(seeds)}  # fmt: skip


def compare(a: dict[str, Any], b: dict[str, Any], metric: str) -> dict[str, Any]:
    """One pair on one metric: difference of means (a - b), which is better, `separated`
    (the seed ranges do not overlap), `judged` (two or more seeds each, so a spread to
    compare with) and Welch's t with its degrees of freedom (None without spread)."""
    diff = a["mean"] - b["mean"]
    up = higher_is_better(metric)
    better = None if diff == 0 else ("a" if (diff > 0) == up else "b")
    enough = a["n"] >= 2 and b["n"] >= 2
    if up:
        separated = enough and (a["min"] > b["max"] or b["min"] > a["max"])
    else:
        separated = enough and (a["max"] < b["min"] or b["max"] < a["min"])
    t = df = None
    if enough:
        va, vb = a["std"] ** 2 / a["n"], b["std"] ** 2 / b["n"]
        if va + vb > 0:
            t = diff / math.sqrt(va + vb)
            df = (va + vb) ** 2 / (va**2 / (a["n"] - 1) + vb**2 / (b["n"] - 1))
    return {"difference": diff, "better": better, "separated": bool(separated), "judged": enough, "welch_t": t,
            "welch_df": df}


def summarize_rows(rows: list[dict[str, Any]], datasets: list[str]) -> dict[str, Any]:
    """{"metrics": {metric: {"higher_is_better"}}, "results": {dataset: {metric: stats}},
    "pairs": [{"a", "b", "metric", "difference", "better" (a data set or None), "separated",
    "judged", "welch_t", "welch_df"}]} over the rows (results.jsonl rows, each with dataset and seed);
    data sets in the order given, pairs (a before b in that order) metric by metric."""
    metrics: list[str] = []
    by_set: dict[str, dict[str, list[tuple[int, float]]]] = {d: {} for d in datasets}
    # Metrics in the order rows name them (every row of an ablation names the same ones).
    for row in sorted(rows, key=lambda r: (r["dataset"], r["seed"])):
        if row["dataset"] not in by_set:
            continue
        for metric, value in row_metrics(row).items():
            if metric not in metrics:
                metrics.append(metric)
            by_set[row["dataset"]].setdefault(metric, []).append((row["seed"], value))
    results = {d: {m: stats([v for _, v in by_set[d][m]], [s for s, _ in by_set[d][m]])
                   for m in metrics if m in by_set[d]} for d in datasets}  # fmt: skip
    pairs = []
    for metric in metrics:
        for i, a in enumerate(datasets):
            for b in datasets[i + 1 :]:
                if metric in results[a] and metric in results[b]:
                    c = compare(results[a][metric], results[b][metric], metric)
                    c["better"] = {"a": a, "b": b, None: None}[c["better"]]
                    pairs.append({"a": a, "b": b, "metric": metric, **c})
    return {"metrics": {m: {"higher_is_better": higher_is_better(m)} for m in metrics}, "results": results,
            "pairs": pairs}


def summarize(cfg: Any, runs: list[Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What ablation.json holds: the ablation's setup, `summarize_rows`, the runs not yet trained."""
    datasets = list(cfg.datasets)
    done = {r["name"] for r in rows}
    return {
        "out": str(cfg.out), "tokens": runs[0].budget if runs else cfg.tokens, "seeds": list(cfg.seeds),
        "datasets": datasets, "epochs": {r.dataset: round(r.epochs, 4) for r in runs},
        **summarize_rows(rows, datasets), "missing": [r.name for r in runs if r.name not in done],
    }  # fmt: skip


# -- words ------------------------------------------------------------------------------------


def metric_words(metric: str) -> str:
    """'python_docs/bpb' → 'python_docs bpb'; 'val_loss' → 'validation loss'."""
    return "validation loss" if metric == "val_loss" else metric.replace("/", " ")


def verdict(pair: dict[str, Any]) -> str:
    """A pair's comparison in words: who is better, by how much, and whether it exceeds the seed spread."""
    what = metric_words(pair["metric"])
    if pair["better"] is None:
        return f"{pair['a']} and {pair['b']} tie on {what}"
    winner, loser = (pair["a"], pair["b"]) if pair["better"] == pair["a"] else (pair["b"], pair["a"])
    by = f"{abs(pair['difference']):.3g}"
    if pair["separated"]:
        return f"{winner} beats {loser} on {what} by {by} (seed ranges do not overlap)"
    if not pair["judged"]:
        return f"{winner} is ahead of {loser} on {what} by {by} (one seed: no spread to judge by)"
    return f"{winner} is ahead of {loser} on {what} by {by}, within the seed spread (seed ranges overlap)"


def _cell(s: dict[str, Any] | None, best: bool) -> str:
    if s is None:
        return "-"
    text = f"{s['mean']:.4f}" + (f" ± {s['std']:.4f}" if s["std"] is not None else "")
    return f"**{text}**" if best else text


def format_markdown(summary: dict[str, Any]) -> str:
    """ablation.md: a table (data sets × metrics, mean ± std over seeds, the best in bold),
    then every pair's verdict, metric by metric."""
    metrics, results = list(summary["metrics"]), summary["results"]
    setup = (f"{summary['tokens']:,} tokens per run, seeds {', '.join(map(str, summary['seeds']))}; "
             "mean ± std over seeds (sample std); lower is better except accuracy (acc).")
    lines = [f"# Data ablation `{summary['out']}`", "", setup, ""]
    best = {}
    for m in metrics:
        means = {d: r[m]["mean"] for d, r in results.items() if m in r}
        if means:
            best[m] = (max if summary["metrics"][m]["higher_is_better"] else min)(means.values())
    header = ["data set", "seeds", *(metric_words(m) for m in metrics)]
    lines += [f"| {' | '.join(header)} |", f"| {' | '.join(['---'] + ['---:'] * (len(header) - 1))} |"]
    for d, r in results.items():
        n = max((s["n"] for s in r.values()), default=0)
        cells = [_cell(r.get(m), m in r and r[m]["mean"] == best.get(m)) for m in metrics]
        lines.append(f"| {' | '.join([d, str(n), *cells])} |")
    repeated = {d: e for d, e in summary.get("epochs", {}).items() if e > 1}
    if repeated:
        lines += ["", "Repeated (fewer tokens than the budget): "
                  + ", ".join(f"{d} {e:.2f} epochs" for d, e in repeated.items())]  # fmt: skip
    if summary["pairs"]:
        lines += ["", "## Pairs", ""]
        lines += [f"- {verdict(p)}" for p in summary["pairs"]]
    if summary.get("missing"):
        lines += ["", f"Not yet trained (left out): {', '.join(summary['missing'])}"]
    return "\n".join(lines) + "\n"


def plot_ablation(summary: dict[str, Any], path: str | Path) -> Path:
    """ablation.png: one panel per metric; each data set's seeds as dots, its mean as a bar
    with ± std whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics, datasets = list(summary["metrics"]), list(summary["results"])
    cols = min(3, max(1, len(metrics)))
    nrows = max(1, math.ceil(len(metrics) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, metrics):
        for i, d in enumerate(datasets):
            s = summary["results"][d].get(metric)
            if s is None:
                continue
            ax.bar(i, s["mean"] - _floor(summary, metric), bottom=_floor(summary, metric), width=0.6, alpha=0.35,
                   color=f"C{i}", yerr=s["std"] or 0, capsize=4)
            offsets = np.linspace(-0.15, 0.15, len(s["values"])) if len(s["values"]) > 1 else [0.0]
            ax.scatter(i + np.asarray(offsets), s["values"], color=f"C{i}", zorder=3, s=18)
        better = "higher" if summary["metrics"][metric]["higher_is_better"] else "lower"
        ax.set_title(f"{metric_words(metric)} ({better} is better)", fontsize=9)
        ax.set_xticks(range(len(datasets)), datasets, rotation=20, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{summary['out']}: {summary['tokens']:,} tokens, {len(summary['seeds'])} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _floor(summary: dict[str, Any], metric: str) -> float:
    """Where the bars start: a little under the lowest seed, so differences stay visible."""
    values = [v for r in summary["results"].values() if metric in r for v in r[metric]["values"]]
    lo, hi = min(values), max(values)
    return lo - 0.5 * (hi - lo) if hi > lo else lo * 0.99


def write_report(out: str | Path, summary: dict[str, Any]) -> None:
    """ablation.json, ablation.md and ablation.png in `out`."""
    out = Path(out)
    atomic_write(out / "ablation.json", json.dumps(summary, indent=1) + "\n")
    atomic_write(out / "ablation.md", format_markdown(summary))
    plot_ablation(summary, out / "ablation.png")
