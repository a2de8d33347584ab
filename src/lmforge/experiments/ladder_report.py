"""ladder.md: a ladder's fit for people (fit.json holds the same for machines): the law, every
fitted point against it, the held-out checks and each task's two laws."""

from __future__ import annotations

from typing import Any

from lmforge.analysis import scaling
from lmforge.experiments.ladder_config import LadderConfig


def _fmt_pred(p: dict[str, Any], digits: int = 4) -> str:
    if p["low"] is None:
        return f"{p['value']:.{digits}f}"
    return f"{p['value']:.{digits}f} [{p['low']:.{digits}f}, {p['high']:.{digits}f}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---"] + ["---:"] * (len(header) - 1)
    return [f"| {' | '.join(r)} |" for r in (header, align, *rows)]


def format_markdown(cfg: LadderConfig, fit: dict[str, Any], held: list[dict]) -> str:
    """ladder.md: the law, every fitted point against it, the held-out checks, each task's laws."""
    law, pct = fit["law"], f"{cfg.level:.0%}"
    lines = [
        f"# Model ladder `{cfg.out}`", "",
        f"L(N, D) = {law['E']:.4g} + {law['A']:.4g} / N^{law['alpha']:.4g} + {law['B']:.4g} / D^{law['beta']:.4g}"
        f"  (N non-embedding parameters, D tokens; {fit['bootstrap']['fits']} bootstrap fits, {pct} intervals)", "",
    ]  # fmt: skip
    lines += _table(
        ["point", "d_model", "N", "D", "D/N", "loss", "fitted law", "seeds"],
        [[p["name"], str(p["d_model"]), f"{p['params']:,}", f"{p['tokens']:,.0f}", f"{p['tokens'] / p['params']:.2f}",
          f"{p['loss']:.4f}", f"{_law_value(law, p):.4f}", ",".join(map(str, p["seeds"]))] for p in fit["points"]],
    )  # fmt: skip
    if fit["holdout"]:
        lines += ["", "## Held-out sizes", ""]
        lines += _table(
            ["point", "N", "D", "actual", f"predicted [{pct} interval]", "relative error", "inside"],
            [[h["name"], f"{h['params']:,}", f"{h['tokens']:,.0f}", f"{h['actual']:.4f}", _fmt_pred(h["predicted"]),
              f"{h['relative_error']:.2%}", _yes(h["inside"])] for h in fit["holdout"]],
        )  # fmt: skip
    for spec, t in fit["tasks"].items():
        lines += ["", f"## Task {spec}", ""]
        if "error" in t:
            lines.append(f"not fitted: {t['error']}")
            continue
        ll, tl = t["loss_law"], t["task_law"]
        lines.append(f"step 1: bpb(N, D) = {ll['E']:.4g} + {ll['A']:.4g} / N^{ll['alpha']:.4g} + "
                     f"{ll['B']:.4g} / D^{ll['beta']:.4g}; step 2: acc = {tl['a']:.3g} / (1 + exp(-{tl['k']:.3g} "
                     f"(bpb - {tl['L0']:.3g}))) + {tl['b']:.3g}")  # fmt: skip
        if t["holdout"]:
            lines.append("")
            lines += _table(
                ["point", "bpb", "predicted bpb", "acc", f"predicted acc [{pct}]", "inside"],
                [[h["name"], f"{h['bpb']['actual']:.4f}", _fmt_pred(h["bpb"]["predicted"]), f"{h['acc']['actual']:.3f}",
                  _fmt_pred(h["acc"]["predicted"], 3), _yes(h["acc"]["inside"])] for h in t["holdout"]],
            )  # fmt: skip
    if fit["missing"]:
        lines += ["", f"Not yet trained (left out of the fit): {', '.join(fit['missing'])}"]
    return "\n".join(lines) + "\n"


def _law_value(law: dict[str, float], p: dict[str, Any]) -> float:
    return float(scaling.LossLaw.from_dict(law)(p["params"], p["tokens"]))


def _yes(inside: bool | None) -> str:
    return "-" if inside is None else "yes" if inside else "no"
