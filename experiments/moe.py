"""The MoE experiment: a dense model and a mixture of experts of equal *active* parameters,
trained on equal tokens of the demo corpus over several seeds.

    dense  configs/experiments/moe/dense.yaml: the tiny preset (d_model 128, 4 layers, SwiGLU 384)
    moe    configs/experiments/moe/moe.yaml:   tiny-moe, 8 experts of SwiGLU 192, 2 per token

Both run 200 steps of 4,096 tokens with the same optimizer and schedule; the MoE adds its
load-balancing (0.01) and router z-loss (0.001). Per run: the final validation loss, the
median tokens/s of its logged steps, FLOPs per token (active parameters), and the curves.

    .venv/bin/python experiments/moe.py             # 2 models × seeds 0, 1, 2 (about 15 min on 2 cores)
    .venv/bin/python experiments/moe.py --report    # tables and plot from finished runs

Needs `make demo`'s token folders. Runs are resumable (`lmforge.experiments.runner`): a run with
a row in OUT/results.jsonl is skipped, an unfinished one resumes from its checkpoint. Writes
OUT/results.jsonl, OUT/moe.json (per model: mean and spread), OUT/moe.md and OUT/moe.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "experiments" / "moe"
OUT = REPO / "runs" / "experiments" / "moe"
MODELS = ("dense", "moe")
SEEDS = (0, 1, 2)


def plan(out: Path) -> list[Any]:
    from lmforge.experiments.runner import PlannedRunBase
    from lmforge.train.config import RunConfig

    @dataclasses.dataclass
    class Run(PlannedRunBase):
        name: str
        model: str
        seed: int
        config: RunConfig

    runs = []
    for seed in SEEDS:
        for model in MODELS:
            name = f"{model}-s{seed}"
            cfg = RunConfig.from_yaml(CONFIGS / f"{model}.yaml", [f"trainer.run_dir={out / 'runs' / name}",
                                                                  f"trainer.seed={seed}"])  # fmt: skip
            runs.append(Run(name=name, model=model, seed=seed, config=cfg))
    return runs


def train_one(out: Path, run: Any) -> dict[str, Any]:
    from lmforge.experiments import runner
    from lmforge.model.size import flops_per_token, model_size
    from lmforge.experiments.train_run import train

    runner.launch(run, out / "runs" / f"{run.name}.yaml", nproc=1, in_process=train, what="experiment")
    rows = runner.read_metrics(run.run_dir)
    steps = [r for r in rows if "loss" in r]
    size = model_size(run.config.model)
    return {"name": run.name, "model": run.model, "seed": run.seed,
            "val_loss": runner.final_metrics(run, what="experiment")["val_loss"],
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steps if "tokens_per_s" in r),
            "flops_per_token": flops_per_token(run.config.model, run.config.data.seq_len),
            "params_total": size.total, "params_active": size.active,
            "val_curve": [[r["step"], r["val_loss"]] for r in rows if "val_loss" in r],
            "train_curve": [[r["step"], r["loss"]] for r in steps],
            "expert_imbalance": steps[-1].get("expert_imbalance"),
            "config_sha256": run.config_sha256}  # fmt: skip


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in MODELS:
        group = [r for r in rows if r["model"] == model]
        if not group:
            continue
        val = [r["val_loss"] for r in group]
        out[model] = {"seeds": sorted(r["seed"] for r in group), "val_loss_mean": statistics.mean(val),
                      "val_loss_std": statistics.stdev(val) if len(val) > 1 else None,
                      "val_loss_min": min(val), "val_loss_max": max(val),
                      "tokens_per_s": statistics.median(r["tokens_per_s"] for r in group),
                      "flops_per_token": group[0]["flops_per_token"], "params_total": group[0]["params_total"],
                      "params_active": group[0]["params_active"]}  # fmt: skip
    if len(out) == 2:
        d, m = out["dense"], out["moe"]
        out["moe_minus_dense_val_loss"] = m["val_loss_mean"] - d["val_loss_mean"]
        out["separated"] = m["val_loss_max"] < d["val_loss_min"] or d["val_loss_max"] < m["val_loss_min"]
        out["moe_over_dense_tokens_per_s"] = m["tokens_per_s"] / d["tokens_per_s"]
    return out


def markdown(summary: dict[str, Any]) -> str:
    lines = ["| model | params (total / active) | FLOPs/token | tokens/s (median) | final val loss (mean ± std, seeds) |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    for model in MODELS:
        s = summary.get(model)
        if s:
            std = f" ± {s['val_loss_std']:.4f}" if s["val_loss_std"] is not None else ""
            lines.append(f"| {model} | {s['params_total']:,} / {s['params_active']:,} | {s['flops_per_token']:.3g} | "
                         f"{s['tokens_per_s']:,.0f} | {s['val_loss_mean']:.4f}{std} ({len(s['seeds'])}) |")  # fmt: skip
    if "separated" in summary:
        lines += ["", f"MoE − dense final validation loss: {summary['moe_minus_dense_val_loss']:+.4f} "
                      f"(seed ranges {'do not overlap' if summary['separated'] else 'overlap'}); MoE tokens/s "
                      f"{summary['moe_over_dense_tokens_per_s']:.2f}× dense's."]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"dense": "tab:blue", "moe": "tab:orange"}
    for r in rows:
        label = r["model"] if r["seed"] == min(SEEDS) else None
        for ax, key in zip(axes, ("train_curve", "val_curve")):
            steps, losses = zip(*r[key])
            ax.plot(steps, losses, color=colors[r["model"]], alpha=0.7, label=label)
    for ax, title in zip(axes, ("training loss", "validation loss")):
        ax.set(title=title, xlabel="step", ylabel="loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("dense vs MoE of equal active parameters, equal tokens (one line per seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--report", action="store_true", help="only tables and plot from finished runs")
    args = ap.parse_args()
    from lmforge.experiments import runner

    out = OUT
    out.mkdir(parents=True, exist_ok=True)
    runs = plan(out)
    runner.check_rows(out, runs, runner.read_results(out), what="experiment", changed="configs/experiments/moe/*.yaml")
    if not args.report:
        runner.train_all(out, runs, lambda run: train_one(out, run),
                         summary=lambda row: f"val_loss {row['val_loss']:.4f}, {row['tokens_per_s']:,.0f} tok/s")  # fmt: skip
    rows = runner.read_results(out)
    summary = summarize(rows)
    (out / "moe.json").write_text(json.dumps(summary, indent=1))
    (out / "moe.md").write_text(markdown(summary))
    plot(rows, out / "moe.png")
    print(markdown(summary))


if __name__ == "__main__":
    main()
