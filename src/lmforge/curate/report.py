"""Statistics of a curation run: merged from the tasks' markers into stats.json, printed as a
table, and drawn as stats.png (documents and tokens left after each step, per source)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from lmforge.curate.steps import Step


def merge_stats(steps: list[Step], markers: list[dict], resolves: dict[str, dict], *, n_stages: int,
                seconds: float, unit: str) -> dict[str, Any]:  # fmt: skip
    per_step: dict[str, dict[str, Any]] = {}
    for m in markers:
        for label, e in m["steps"].items():
            t = per_step.setdefault(label, {"docs_in": 0, "docs_out": 0, "tokens_in": 0, "tokens_out": 0,
                                            "removed": Counter(), "sources": {}, "counted": Counter()})  # fmt: skip
            for k in ("docs_in", "docs_out", "tokens_in", "tokens_out"):
                t[k] += e[k]
            t["removed"].update(e["removed"])
            t["counted"].update(e.get("counted", {}))
            for src, vals in e["sources"].items():
                acc = t["sources"].setdefault(src, [0, 0, 0, 0])
                for i, v in enumerate(vals):
                    acc[i] += v
    first = [m for m in markers if m["stage"] == 0]
    last = [m for m in markers if m["stage"] == n_stages - 1]
    read = sum(m["read"] for m in first)
    step_rows = []
    for step in steps:
        t = per_step.get(step.label, {"docs_in": 0, "docs_out": 0, "tokens_in": 0, "tokens_out": 0,
                                      "removed": Counter(), "sources": {}})  # fmt: skip
        step_rows.append({
            "label": step.label, "step": step.name, **{k: t[k] for k in ("docs_in", "docs_out", "tokens_in", "tokens_out")},
            "removed": dict(sorted(t["removed"].items(), key=lambda kv: -kv[1])),
            "sources": {s: dict(zip(("docs_in", "docs_out", "tokens_in", "tokens_out"), v)) for s, v in sorted(t["sources"].items())},
            **({"counted": dict(t["counted"])} if t.get("counted") else {}),
            **({"resolve": resolves[step.label]} if step.label in resolves else {}),
        })  # fmt: skip
    written = sum(m["written"] for m in last)
    tokens_in = step_rows[0]["tokens_in"] if step_rows else 0
    return {
        "token_unit": unit,
        "input": {"shards": len(first), "documents": read, "rejected_lines": sum(m["rejected"] for m in first),
                  "tokens": tokens_in},  # fmt: skip
        "output": {"documents": written, "tokens": step_rows[-1]["tokens_out"] if step_rows else 0},
        "steps": step_rows,
        "seconds": seconds,
        "task_seconds": sum(m["seconds"] for m in markers),
        "documents_per_second": read / seconds if seconds > 0 else None,
    }


def format_table(stats: dict[str, Any]) -> str:
    rows = [("step", "docs in", "docs out", "kept %", "tokens out", "top removal reasons")]
    for s in stats["steps"]:
        kept = 100 * s["docs_out"] / s["docs_in"] if s["docs_in"] else 100.0
        reasons = ", ".join(f"{r} {n:,}" for r, n in list(s["removed"].items())[:3])
        rows.append((s["label"], f"{s['docs_in']:,}", f"{s['docs_out']:,}", f"{kept:.1f}", f"{s['tokens_out']:,}", reasons))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + "  " + r[-1]
             for r in rows]  # fmt: skip
    i, o = stats["input"], stats["output"]
    lines.append(f"input {i['documents']:,} documents ({i['rejected_lines']:,} unreadable lines) → output "
                 f"{o['documents']:,} documents, {o['tokens']:,} tokens ({stats['token_unit']})")  # fmt: skip
    return "\n".join(lines)


def write_report(stats: dict[str, Any], folder: Path, *, progress: bool = True) -> None:
    if progress:
        print(format_table(stats))
    plot_stats(stats, folder / "stats.png")


def plot_stats(stats: dict[str, Any], path: Path) -> None:
    # Figure + the Agg canvas directly: importing pyplot costs more than drawing this chart.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = stats["steps"]
    labels = ["input"] + [s["label"] for s in steps]

    def left(src: str, key: str) -> list[int]:
        first = steps[0]["sources"].get(src, {}) if steps else {}
        # A source no document of which reached a step has nothing left after it.
        return [first.get(f"{key}_in", 0)] + [s["sources"].get(src, {}).get(f"{key}_out", 0) for s in steps]

    # The 11 largest sources by input tokens; the rest drawn together as "other".
    sources = sorted({src for s in steps for src in s["sources"]}, key=lambda src: -left(src, "tokens")[0])
    shown, rest = sources[:11], sources[11:]
    fig = Figure(figsize=(13, 4.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    colors = [f"C{i}" for i in range(10)] + ["#444444", "#bbbbbb"]
    for ax, key, title in ((axes[0], "docs", "documents"), (axes[1], "tokens", stats["token_unit"])):
        bottom = [0] * len(labels)
        groups = [(src, left(src, key)) for src in shown]
        if rest:
            groups.append((f"other ({len(rest)})", [sum(v) for v in zip(*(left(src, key) for src in rest))]))
        for (name, vals), color in zip(groups, colors):
            ax.bar(labels, vals, bottom=bottom, label=name, color=color)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_title(f"{title} left after each step")
        ax.tick_params(axis="x", rotation=30)
        for t in ax.get_xticklabels():
            t.set_ha("right")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles[::-1], names[::-1], loc="center right", fontsize="small", title="source")
    fig.tight_layout(rect=(0, 0, 0.85, 1))
    fig.savefig(path, dpi=100)
