"""The report of `lmforge data mix` (`mix.json`): per source what was available, targeted and
selected, the totals and the shards; and the table printed from it."""

from __future__ import annotations

from typing import Any

import numpy as np

from lmforge.curate.mix_config import MixConfig
from lmforge.curate.mix_select import Selection, SourceIndex
from lmforge.data.split import SIDES, ValidationSplit


def build_report(
    config: MixConfig,
    indexes: list[SourceIndex],
    selections: list[Selection],
    total: int,
    counting: dict[str, Any],
    shards: list[dict[str, Any]],
) -> dict[str, Any]:
    """The whole report: counting method, total, per-source numbers, totals, shards, config."""
    selected_total = sum(s.selected_tokens for s in selections)
    sources = []
    for source, index, sel in zip(config.sources, indexes, selections):
        available = int(index.tokens.sum())
        sources.append(
            {
                "name": source.name,
                "files": len(index.files),
                "documents_available": index.n_docs,
                "tokens_available": available,
                "proportion": source.proportion,
                "target_tokens": sel.target,
                "selected_tokens": sel.selected_tokens,
                "selected_documents": sel.selected_docs,
                "achieved_proportion": sel.selected_tokens / selected_total if selected_total else 0.0,
                "repeat_factor": sel.selected_tokens / available,
                "full_copies": sel.full_copies,
                **({"select": index.selection} if index.selection is not None else {}),
            }
        )
    return {
        "counting": counting,
        "total_tokens": total,
        "sources": sources,
        "totals": {
            "documents_available": sum(ix.n_docs for ix in indexes),
            "tokens_available": sum(s["tokens_available"] for s in sources),
            "target_tokens": sum(s.target for s in selections),
            "selected_tokens": selected_total,
            "selected_documents": sum(s.selected_docs for s in selections),
            "shards": len(shards),
            "bytes": sum(s["bytes"] for s in shards),
            "compressed_bytes": sum(s["compressed_bytes"] for s in shards),
        },
        "shards": shards,
        "config": config.to_dict(),
    }


def validation_report(
    split: ValidationSplit, indexes: list[SourceIndex], out_doc: np.ndarray, held_out: np.ndarray,
    shards: list[dict[str, Any]],
) -> dict[str, Any]:  # fmt: skip
    """mix.json's `validation`: the options, and per side its rows (copies included), distinct
    documents, tokens, shards and each source's share of its tokens."""
    tokens = np.concatenate([ix.tokens for ix in indexes])[out_doc]
    source = np.concatenate([np.full(ix.n_docs, i) for i, ix in enumerate(indexes)])[out_doc]
    report = split.describe()
    for side, rows in zip(SIDES, (~held_out, held_out)):
        total = int(tokens[rows].sum())
        per_source = [int(tokens[rows & (source == i)].sum()) for i in range(len(indexes))]
        shares = {ix.name: n / total if total else 0.0 for ix, n in zip(indexes, per_source)}
        report[side] = {
            "rows": int(rows.sum()),
            "documents": len(np.unique(out_doc[rows])),
            "tokens": total,
            "shards": sum(s["name"].startswith(f"{side}/") for s in shards),
            "proportions": shares,
        }
    return report


def format_table(report: dict[str, Any]) -> str:
    """The report's per-source numbers as a small fixed-width table."""
    header = ("source", "available", "target", "selected", "achieved %", "repeats")
    rows = [
        (
            s["name"],
            f"{s['tokens_available']:,}",
            f"{s['target_tokens']:,}",
            f"{s['selected_tokens']:,}",
            f"{100 * s['achieved_proportion']:.2f} ({100 * s['proportion']:.2f})",
            f"{s['repeat_factor']:.2f}x",
        )
        for s in report["sources"]
    ]
    t = report["totals"]
    rows.append(
        ("total", f"{t['tokens_available']:,}", f"{t['target_tokens']:,}", f"{t['selected_tokens']:,}", "100.00", "")
    )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [header, *rows]
    ]
    unit = report["counting"]["unit"]
    lines.append(f"{t['selected_documents']:,} documents, {t['shards']} shard(s), counted in {unit}")
    if "validation" in report:
        sides = (f"{side}/: {v['documents']:,} documents ({v['rows']:,} rows, {v['tokens']:,} {unit})"
                 for side, v in ((s, report["validation"][s]) for s in SIDES))  # fmt: skip
        lines.append("held out by id: " + "; ".join(sides))
    return "\n".join(lines)
