"""`lmforge analyze spikes RUN`: the loss and gradient-norm spikes of a run, the documents most
responsible for them, which steps were judged under which rule (and which not at all), and a
PNG of the curves with the spikes and the unjudged steps marked.

A run trained with the spike monitor is read from RUN/spikes.jsonl and RUN/spikes_summary.json.
A run trained without it is judged here from metrics.jsonl with the monitor's own rules
(`lmforge.train.spikes.judge_series`) when metrics.jsonl has every step (trainer.log_every=1),
without document attribution; otherwise the report says the run was not watched and names
the steps metrics.jsonl lacks. Either way a report never says "0 spikes" about steps nobody
judged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from lmforge.errors import LmforgeError
from lmforge.plot import read_metrics
from lmforge.train.spikes import (
    NON_FINITE,
    NOT_JUDGED,
    ROBUST,
    SPIKES_FILE,
    SUMMARY_FILE,
    WINDOW,
    SpikeConfig,
    inferred_rules,
    judge_series,
    rule_ranges,
)

NOT_WATCHED = "not watched"
"""Steps of a run trained without the monitor whose metrics.jsonl cannot be judged offline."""


def read_spikes(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / SPIKES_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """RUN/spikes_summary.json (the monitor's rules per stretch of steps), or None."""
    path = Path(run_dir) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.exists() else None


def run_spike_config(run_dir: str | Path) -> tuple[SpikeConfig, int]:
    """The run's `spikes:` settings and trainer.log_every, from RUN/config.yaml."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise LmforgeError(f"{run_dir}: not a run directory (config.yaml is missing)")
    data = yaml.safe_load(path.read_text()) or {}
    return (SpikeConfig.from_dict(data.get("spikes") or {}, where="spikes."),
            int((data.get("trainer") or {}).get("log_every", 1)))


def step_ranges(steps: list[int]) -> list[list[int]]:
    """Sorted steps as [first, last] runs of consecutive steps."""
    out: list[list[int]] = []
    for step in sorted(steps):
        if out and step == out[-1][1] + 1:
            out[-1][1] = step
        else:
            out.append([step, step])
    return out


def spike_report(run_dir: str | Path, top: int = 10) -> dict[str, Any]:
    """The spikes, the documents with the most loss summed over all spike batches, and how the
    run was judged: `judged_by` ("monitor", "offline" from metrics.jsonl, or None: not at all),
    `stretches` ({"rule", "first", "last", "why"} per stretch of steps under one rule) and
    `not_judged` ([first, last] step ranges no rule judged). `spikes` is None when nothing
    was judged, so that no reader takes an empty list for a clean run."""
    cfg, log_every = run_spike_config(run_dir)
    rows = [r for r in read_metrics(run_dir) if "loss" in r and "grad_norm" in r and r.get("step", 0) > 0]
    last_step = max((int(r["step"]) for r in rows), default=0)
    missing: list[list[int]] = []
    if cfg.enabled:
        judged_by, spikes = "monitor", read_spikes(run_dir)
        summary = read_summary(run_dir)
        if summary is not None:
            rules, last_step = summary["rules"], max(last_step, int(summary["last_step"]))
        else:  # a run from before the monitor wrote its summary: its rules follow from the config
            rules = inferred_rules(cfg, last_step)
            cfg = cfg.replace(robust_min_history=cfg.min_history)  # that monitor had no early rule
    else:
        by_step = {int(r["step"]): r for r in rows}
        missing = step_ranges([s for s in range(1, last_step + 1) if s not in by_step])
        if rows and not missing:
            judged_by = "offline"
            spikes, rules = judge_series([by_step[s] for s in sorted(by_step)], cfg)
        else:
            judged_by, spikes, rules = None, None, [[NOT_WATCHED, 1]]
    stretches = [{**s, "why": why(s["rule"], cfg, log_every, missing, last_step)}
                 for s in rule_ranges(rules, last_step)]
    return {
        "spikes": spikes,
        "documents": rank_documents(spikes or [], top),
        "judged_by": judged_by,
        "last_step": last_step,
        "stretches": stretches,
        "not_judged": [[s["first"], s["last"]] for s in stretches if s["rule"] in (NOT_JUDGED, NOT_WATCHED)],
        "missing_steps": missing,
    }


def why(rule: str, cfg: SpikeConfig, log_every: int, missing: list[list[int]], last_step: int) -> str:
    """What a stretch's rule means, in the run's own numbers."""
    if rule == NOT_JUDGED:
        return f"fewer than {cfg.first_judged_history} steps of history"
    if rule == ROBUST:
        return f"median + {cfg.robust_k:g}·max(1.4826·MAD, {cfg.robust_min_spread:g}·median) of the history"
    if rule == WINDOW:
        return f"mean + {cfg.sigma:g}σ of the last {cfg.window} steps"
    absent = sum(b - a + 1 for a, b in missing)
    return (f"trained with spikes.enabled: false, and metrics.jsonl lacks {absent} of {last_step} steps: "
            f"trainer.log_every={log_every}")


def rank_documents(spikes: list[dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """Documents by loss summed over all spike batches (offline spikes have none)."""
    documents: dict[tuple[str, str], dict[str, Any]] = {}
    for spike in spikes:
        for doc in spike.get("documents", []):
            entry = documents.setdefault((doc["folder"], doc["id"]), {
                "id": doc["id"], "source": doc["source"], "folder": doc["folder"], "spikes": [], "loss_sum": 0.0,
                "tokens": 0})
            entry["spikes"].append(spike["step"])
            entry["loss_sum"] += doc["loss_sum"]
            entry["tokens"] += doc["tokens"]
    for entry in documents.values():
        entry["mean_loss"] = entry["loss_sum"] / max(entry["tokens"], 1)
    return sorted(documents.values(), key=lambda d: -d["loss_sum"])[:top]


def format_steps(ranges: list[list[int]], limit: int = 6) -> str:
    """[[1, 8], [12, 12]] → "1–8, 12" (at most `limit` ranges, then "…")."""
    parts = [f"{a}–{b}" if b > a else f"{a}" for a, b in ranges[:limit]]
    return ", ".join(parts) + (", …" if len(ranges) > limit else "")


def headline(report: dict[str, Any], run: str) -> str:
    """The report's first line: how many spikes, and which steps nobody judged."""
    not_judged = report["not_judged"]
    reasons = {s["why"] for s in report["stretches"] if s["rule"] in (NOT_JUDGED, NOT_WATCHED)}
    unjudged = f"steps {format_steps(not_judged)} not judged ({'; '.join(sorted(reasons))})" if not_judged else ""
    if report["spikes"] is None:
        if not not_judged:
            return f"not watched: {run} was trained with spikes.enabled: false and has no logged steps yet"
        return f"not watched: steps {format_steps(not_judged)} of {run} not judged ({'; '.join(sorted(reasons))})"
    source = " (judged offline from metrics.jsonl: trained with spikes.enabled: false)" \
        if report["judged_by"] == "offline" else ""
    return f"{len(report['spikes'])} spike(s) in {run}{source}" + (f"; {unjudged}" if unjudged else "")


def spike_reason(why: dict[str, Any]) -> str:
    """One spiking value and the bar it crossed, in its rule's terms (spikes.jsonl rows from
    before rules were recorded are the window rule's)."""
    rule = why.get("rule", WINDOW)
    if rule == NON_FINITE:
        return f"{why['value']} (non-finite)"
    if rule == ROBUST:
        return (f"{why['value']:.4g} > {why['threshold']:.4g} "
                f"(early rule: median {why['median']:.4g}, spread {why['spread']:.3g})")
    return f"{why['value']:.4g} > {why['threshold']:.4g} (mean {why['mean']:.4g}, σ {why['std']:.3g})"


def rules_line(report: dict[str, Any]) -> str | None:
    """Which steps each rule judged ("judged: steps 9–32 by …; 33–300 by …"), or None."""
    judged = [s for s in report["stretches"] if s["rule"] in (ROBUST, WINDOW)]
    if not judged:
        return None
    return "judged: " + "; ".join(f"steps {format_steps([[s['first'], s['last']]])} by {s['why']}" for s in judged)


def format_report(report: dict[str, Any], run: str) -> str:
    """What `lmforge analyze spikes RUN` prints: the headline (with the steps not judged), which
    rule judged which steps, each spike, and the documents with the most loss in spiking batches."""
    lines = [headline(report, run)]
    if (line := rules_line(report)) is not None:
        lines.append(f"  {line}")
    for spike in report["spikes"] or []:
        what = ", ".join(f"{k} {spike_reason(v)}" for k, v in spike["spiked"].items())
        lines.append(f"  step {spike['step']}: {what}{' — skipped' if spike['skipped'] else ''}")
    if report["judged_by"] == "offline" and report["spikes"]:
        lines.append(f"  (judged offline: no documents; `lmforge inspect-batch {run} --step N` shows a step's batch)")
    if report["documents"]:
        lines.append("documents with the most loss in spiking batches:")
        lines.append(f"  {'id':<40} {'source':<14} {'tokens':>7} {'loss sum':>10} {'mean loss':>9}  spikes")
        for d in report["documents"]:
            lines.append(f"  {d['id']:<40} {d['source']:<14} {d['tokens']:>7} {d['loss_sum']:>10.1f} "
                         f"{d['mean_loss']:>9.3f}  {','.join(map(str, d['spikes']))}")
    return "\n".join(lines)


def plot_spikes(run_dir: str | Path, spikes: list[dict[str, Any]] | None, out: str | Path | None = None,
                stretches: list[dict[str, Any]] | None = None) -> Path:
    """Loss and grad norm against steps, spikes marked, the steps no rule judged shaded grey
    (and those the early robust rule judged shaded lightly) → RUN/spikes.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(run_dir) if "loss" in r]
    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    shades = {NOT_JUDGED: ("0.6", 0.35), NOT_WATCHED: ("0.6", 0.35), ROBUST: ("tab:olive", 0.12)}
    for ax, key, color in zip(axes, ("loss", "grad_norm"), ("tab:blue", "tab:red")):
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], color=color, lw=1)
        labelled = set()
        for s in stretches or []:
            if s["rule"] in shades:
                shade, alpha = shades[s["rule"]]
                label = None if s["rule"] in labelled else f"{s['rule']}: {s['why']}"
                labelled.add(s["rule"])
                ax.axvspan(s["first"] - 0.5, s["last"] + 0.5, color=shade, alpha=alpha, lw=0, label=label)
        marked = [s for s in spikes or [] if key in s["spiked"]]
        if marked:
            ax.scatter([s["step"] for s in marked], [s[key] for s in marked], marker="x", s=60, color="black",
                       zorder=3, label=f"{len(marked)} spike(s)")
        if marked or labelled:
            ax.legend(loc="upper right", fontsize=8)
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{Path(run_dir).resolve().name}: spikes")
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "spikes.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
