"""How well a trained classifier separates the held-out documents: report.json, report.md, scores.png.

Each held-out document is scored as the `classifier` curate step scores it with `score:
probability`: the probability fastText gives the positive label, every label asked for (k = -1;
`predict_all`). On those scores and on fastText's own top-1 predictions the report has:

* `precision`, `recall`, `f1` of the positive label at fastText's top-1 prediction, computed as
  fastText's `Meter` does (null where fastText gives NaN: precision with nothing predicted
  positive, recall with no positive held out), so they equal `model.test_label(holdout.txt)`;
  `fasttext_test` is `model.test(holdout.txt)` itself (over both labels, P@1 = R@1);
* `roc_auc`: the chance that a held-out positive scores above a held-out negative, ties counting
  half (Mann–Whitney U over average ranks);
* `thresholds`: for each share f of the held-out negatives (0.01 … 0.5), the highest score t
  such that keeping `score >= t` keeps at least f of them (the `>=` of a `classifier` step's
  `keep_above`, and of DCLM's cut), with the share of negatives it actually keeps (more than f
  only where scores tie) and the share of positives it keeps (their recall at t). This is how
  DCLM chose its threshold: the score that keeps its top 10 % of a web pool.

A label with no held-out documents leaves the metrics that need it null, with a note saying so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.curate.fasttext_model import LABEL_PREFIX, predict_all, predict_top
from lmforge.fsutil import atomic_write

NEGATIVE_FRACTIONS = (0.01, 0.02, 0.05, 0.07, 0.10, 0.20, 0.50)
"""Shares of the held-out negatives that the threshold table keeps."""

METRIC_KEYS = ("precision", "recall", "f1", "fasttext_test", "roc_auc", "thresholds")


@dataclass
class Evaluation:
    """The held-out scores of each label (positive label's probability) and the metrics on them."""

    positive_scores: np.ndarray
    negative_scores: np.ndarray
    metrics: dict[str, Any] = field(default_factory=dict)


def score_file(model: Any, path: Path, positive_label: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(labels, scores, top-1 is positive) of each line of a fastText-format file that
    `train_classifier` wrote (`__label__<label> <text>`)."""
    key = LABEL_PREFIX + positive_label
    labels, scores, top_is_positive = [], [], []
    # newline="\n": the text may hold \r, \x0b, \x1c, \u2028 …, which fastText reads as part of the line
    with open(path, encoding="utf-8", newline="\n") as f:
        for raw in f:
            label, _, line = raw.removesuffix("\n").partition(" ")
            labels.append(label.removeprefix(LABEL_PREFIX))
            scores.append({lab: p for p, lab in predict_all(model, line)}.get(key, 0.0))
            top_is_positive.append(predict_top(model, line)[1] == key)
    return labels, np.asarray(scores, dtype=np.float64), np.asarray(top_is_positive, dtype=bool)


def evaluate(model: Any, holdout: Path, positive_label: str, negative_label: str) -> Evaluation:
    """Score the held-out file and compute the report's metrics (see the module doc)."""
    labels, scores, top_pos = score_file(model, holdout, positive_label)
    is_pos = np.asarray([lab == positive_label for lab in labels], dtype=bool)
    pos, neg = scores[is_pos], scores[~is_pos]
    notes = []
    if not len(pos):
        notes.append(f"no held-out {positive_label} documents: recall, ROC-AUC and the {positive_label} recall at "
                     "each threshold are undefined (null); give more documents or a larger --holdout")  # fmt: skip
    if not len(neg):
        notes.append(f"no held-out {negative_label} documents: ROC-AUC and the threshold table are undefined "
                     "(null); give more documents or a larger --holdout")  # fmt: skip
    metrics: dict[str, Any] = {
        "score_rule": (
            f"probability of {LABEL_PREFIX}{positive_label}, every label predicted (k=-1): "
            "the classifier step's `score: probability`"
        ),
        **label_metrics(is_pos, top_pos),
        "fasttext_test": _fasttext_test(model, holdout) if len(labels) else None,
        "roc_auc": roc_auc(pos, neg),
        "thresholds": threshold_table(pos, neg) if len(neg) else None,
        "notes": notes,
    }
    return Evaluation(pos, neg, metrics)


def label_metrics(is_positive: np.ndarray, predicted_positive: np.ndarray) -> dict[str, float | None]:
    """Precision, recall and F1 of the positive label at the top-1 prediction, with fastText's
    formulas (`Meter::Metrics`; F1 = 2·tp / (predicted + gold)); None where fastText gives NaN."""
    tp = int(np.sum(is_positive & predicted_positive))
    predicted, gold = int(np.sum(predicted_positive)), int(np.sum(is_positive))
    return {
        "precision": tp / predicted if predicted else None,
        "recall": tp / gold if gold else None,
        "f1": 2 * tp / (predicted + gold) if predicted + gold else None,
    }


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """P(a positive scores above a negative), ties counted half: the Mann–Whitney U statistic
    over average ranks, divided by n_pos · n_neg. None when either side is empty."""
    n_pos, n_neg = len(positive), len(negative)
    if not n_pos or not n_neg:
        return None
    scores = np.concatenate([positive, negative])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # 1-based rank of each distinct score's last occurrence
    average_rank = (last - (counts - 1) / 2.0)[inverse]
    u = average_rank[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def threshold_table(positive: np.ndarray, negative: np.ndarray,
                    fractions: tuple[float, ...] = NEGATIVE_FRACTIONS) -> list[dict[str, Any]]:  # fmt: skip
    """For each share f of the negatives: the highest threshold t whose `score >= t` keeps at
    least ceil(f · n) of them, the share of negatives and of positives (None without any) kept."""
    desc = np.sort(negative)[::-1]
    rows = []
    for f in fractions:
        k = max(1, math.ceil(round(f * len(desc), 9)))  # round: 0.07 · 100 is 7.000000000000001
        t = float(desc[min(k, len(desc)) - 1])
        kept_neg = int(np.sum(negative >= t))
        kept_pos = int(np.sum(positive >= t))
        rows.append({
            "negative_fraction": f,
            "threshold": t,
            "negatives_kept": kept_neg / len(negative),
            "negatives_kept_count": kept_neg,
            "positive_recall": kept_pos / len(positive) if len(positive) else None,
            "positives_kept_count": kept_pos,
        })  # fmt: skip
    return rows


def no_metrics() -> dict[str, Any]:
    """The report's metric fields when nothing was held out."""
    return {**dict.fromkeys(METRIC_KEYS), "notes": ["--holdout 0: no documents were held out, so there are no metrics"]}


def _fasttext_test(model: Any, path: Path) -> dict[str, Any]:
    n, p, r = model.test(str(path))
    return {"n": int(n), "precision_at_1": _finite(p), "recall_at_1": _finite(r)}


def _finite(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def write_report(folder: Path, report: dict[str, Any], evaluation: Evaluation | None) -> None:
    """report.json, report.md and (with held-out scores) scores.png in `folder`."""
    atomic_write(folder / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    atomic_write(folder / "report.md", report_markdown(report))
    if evaluation is not None and (len(evaluation.positive_scores) or len(evaluation.negative_scores)):
        plot_scores(folder / "scores.png", evaluation, report["labels"])


def _fmt(x: Any, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def report_markdown(report: dict[str, Any]) -> str:
    """A short human-readable summary of the report."""
    pos, neg = report["labels"]
    docs = report["documents"]
    lines = [
        f"# fastText classifier: {pos} (positive) vs {neg}",
        "",
        (
            f"Preset `{report['preset']}`, seed {report['seed']}, holdout {report['holdout']}; "
            f"model {report['model_bytes'] / 2**20:.1f} MiB (sha256 `{report['model_sha256'][:12]}…`)."
        ),
        "",
        "| documents | " + " | ".join(docs) + " |",
        "|---|" + "---:|" * len(docs),
        *(f"| {label} | " + " | ".join(str(docs[side][label]) for side in docs) + " |" for label in (pos, neg)),
        "",
    ]
    if report.get("precision") is None and report.get("roc_auc") is None and report.get("thresholds") is None:
        lines += [*(f"*{note}*" for note in report.get("notes", [])), ""]
        return "\n".join(lines)
    test = report.get("fasttext_test") or {}
    lines += [
        f"Held-out scores: {report.get('score_rule', '')}.",
        "",
        "| metric | value |",
        "|---|---:|",
        f"| ROC-AUC | {_fmt(report['roc_auc'], 4)} |",
        f"| precision ({pos}, top-1) | {_fmt(report['precision'])} |",
        f"| recall ({pos}, top-1) | {_fmt(report['recall'])} |",
        f"| F1 ({pos}, top-1) | {_fmt(report['f1'])} |",
        f"| fastText test: N, P@1 | {test.get('n', '–')}, {_fmt(test.get('precision_at_1'))} |",
        "",
    ]
    if report.get("thresholds"):
        lines += [
            f"Keeping `score >= threshold` keeps this share of the held-out {neg} (negative) documents:",
            "",
            f"| target {neg} share | threshold | {neg} kept | {pos} recall |",
            "|---:|---:|---:|---:|",
            *(f"| {r['negative_fraction']:.0%} | {r['threshold']:.6f} | {r['negatives_kept']:.1%} "
              f"({r['negatives_kept_count']}) | {_fmt(r['positive_recall'])} |" for r in report["thresholds"]),
            "",
        ]  # fmt: skip
    lines += [*(f"*{note}*" for note in report.get("notes", [])), ""]
    return "\n".join(lines)


def plot_scores(path: Path, evaluation: Evaluation, labels: list[str]) -> None:
    """Histograms of the held-out positives' and negatives' scores (log counts: the tails are
    where thresholds fall)."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    pos, neg = labels
    bins = np.linspace(0.0, 1.0 + 2e-5, 51)  # fastText's scores reach 1.00001
    fig, ax = plt.subplots(figsize=(7, 4))
    for scores, label, color in ((evaluation.negative_scores, neg, "tab:red"),
                                 (evaluation.positive_scores, pos, "tab:blue")):  # fmt: skip
        if len(scores):
            ax.hist(scores, bins=bins, histtype="stepfilled", alpha=0.45, color=color, label=f"{label} ({len(scores)})")
    for row in evaluation.metrics.get("thresholds") or []:
        if row["negative_fraction"] == 0.10:  # DCLM's cut: the top 10 % of the web pool
            ax.axvline(row["threshold"], color="k", ls="--", lw=1, label=f"keeps 10% of {neg}")
    ax.set_yscale("log")
    ax.set_xlabel(f"P({pos}) (the classifier step's score)")
    ax.set_ylabel("held-out documents")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
