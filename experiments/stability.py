"""The stability experiment: does the OLMo 2 recipe spike less than an OLMo-0424-like one?

The same model (tiny preset: d_model 128, 4 layers) on the demo corpus, at equal tokens and a
deliberately high learning rate, trained with two recipes that differ only in the fields
marked "recipe" in configs/experiments/stability/{olmo0424,olmo2}.yaml:

    OLMo-0424-like: pre-norm, no QK-norm, RMSNorm eps 1e-5, weight decay on embeddings, no z-loss
    OLMo 2:         reordered norm, QK-norm, eps 1e-6, no decay on embeddings, z-loss 1e-5

Spikes are counted by the run's own spike monitor (`spikes:` in the config; a step whose loss
or gradient norm exceeds the mean + 6σ of the last 128 steps, as the OLMo 2 paper counts
them; the configs switch the monitor's early median/MAD rule off, so steps before 32 steps of
history are not judged), and each spike's batch is attributed to its documents.

    .venv/bin/python experiments/stability.py                 # 2 recipes × 3 seeds
    .venv/bin/python experiments/stability.py --report        # tables and plot from finished runs
    .venv/bin/python experiments/stability.py --quick         # 30-step smoke version

Runs are resumable: a run with a row in OUT/results.jsonl is skipped, an unfinished one resumes
from its checkpoint. Writes OUT/results.jsonl (one row per run), OUT/stability.json (counts per
recipe and their ratio), OUT/stability.md (tables, per-spike documents) and OUT/stability.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "experiments" / "stability"
RECIPES = {"olmo0424": "OLMo-0424-like", "olmo2": "OLMo 2"}


def run_name(recipe: str, seed: int) -> str:
    return f"{recipe}-s{seed}"


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize_run(run_dir: Path) -> dict[str, Any]:
    """Spike counts (by the monitor's spikes.jsonl), the last losses and the curve's extremes."""
    from lmforge.analysis.spikes import read_spikes
    from lmforge.plot import read_metrics

    rows = read_metrics(run_dir)
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_loss" in r]
    spikes = read_spikes(run_dir) if (run_dir / "spikes.jsonl").exists() else []
    tail = [r["loss"] for r in train[-20:]]
    return {
        "steps": train[-1]["step"],
        "tokens": train[-1]["tokens"],
        "spikes": len(spikes),
        "loss_spikes": sum("loss" in s["spiked"] for s in spikes),
        "grad_norm_spikes": sum("grad_norm" in s["spiked"] for s in spikes),
        "spike_steps": [s["step"] for s in spikes],
        "final_train_loss": sum(tail) / len(tail),
        "final_val_loss": val[-1]["val_loss"] if val else None,
        "max_grad_norm": max(r["grad_norm"] for r in train),
    }


def train_all(args: argparse.Namespace, out: Path) -> None:
    from lmforge.demo import prepare_data
    from lmforge.train.config import RunConfig
    from lmforge.experiments.train_run import train

    data = REPO / "runs" / "demo"
    prepare_data(data, verbose=False)  # the demo's tokenizer and token folders, made once
    results = out / "results.jsonl"
    plan = [(recipe, seed) for seed in args.seeds for recipe in RECIPES]
    done = {r["name"] for r in read_rows(results)}
    todo = [(r, s) for r, s in plan if run_name(r, s) not in done]
    print(f"{len(plan)} runs, {len(plan) - len(todo)} already done")
    started = time.perf_counter()
    for k, (recipe, seed) in enumerate(todo, 1):
        name = run_name(recipe, seed)
        overrides = [f"--trainer.run_dir={out / name}", f"--trainer.seed={seed}",
                     f"--data.train=[{data / 'tokens' / 'train'}]", f"--data.validation=[{data / 'tokens' / 'val'}]",
                     f"--tokenizer={data / 'tokenizer.json'}"]
        if args.lr is not None:
            overrides.append(f"--optim.lr={args.lr}")
        if args.steps is not None:
            overrides += [f"--trainer.max_steps={args.steps}", f"--trainer.checkpoint_every={args.steps}"]
        if args.quick:
            overrides += ["--trainer.max_steps=30", "--trainer.checkpoint_every=30", "--spikes.min_history=8",
                          "--trainer.eval_every=30"]
        cfg = RunConfig.from_yaml(CONFIGS / f"{recipe}.yaml", overrides)
        t0 = time.perf_counter()
        print(f"[{k}/{len(todo)}] {name}: lr {cfg.optim.lr:g}, {cfg.max_steps} steps of {cfg.trainer.batch_tokens} tokens")
        train(cfg)
        row = {"name": name, "recipe": recipe, "seed": seed, "lr": cfg.optim.lr,
               **summarize_run(out / name), "wall_s": round(time.perf_counter() - t0, 1)}
        with results.open("a") as f:  # one line per finished run: the resume marker
            f.write(json.dumps(row) + "\n")
        elapsed = time.perf_counter() - started
        eta = elapsed / k * (len(todo) - k)
        print(f"    {row['spikes']} spikes ({row['loss_spikes']} loss, {row['grad_norm_spikes']} grad-norm), "
              f"val loss {row['final_val_loss']:.3f}, {row['wall_s']:.0f} s; ETA {eta / 60:.1f} min", flush=True)


def report(out: Path) -> dict[str, Any]:
    """Counts per recipe over seeds, the ratio, and the documents behind each spike."""
    from lmforge.analysis.spikes import read_spikes

    rows = read_rows(out / "results.jsonl")
    if not rows:
        sys.exit(f"{out}/results.jsonl has no finished runs yet")
    per_recipe: dict[str, dict[str, Any]] = {}
    for recipe in RECIPES:
        mine = [r for r in rows if r["recipe"] == recipe]
        per_recipe[recipe] = {
            "runs": len(mine),
            "seeds": [r["seed"] for r in mine],
            "spikes": sum(r["spikes"] for r in mine),
            "loss_spikes": sum(r["loss_spikes"] for r in mine),
            "grad_norm_spikes": sum(r["grad_norm_spikes"] for r in mine),
            "mean_final_val_loss": _mean([r["final_val_loss"] for r in mine if r["final_val_loss"] is not None]),
            "tokens_per_run": mine[0]["tokens"] if mine else 0,
        }
    old, new = per_recipe["olmo0424"]["spikes"], per_recipe["olmo2"]["spikes"]
    summary = {
        "recipes": per_recipe,
        # null when OLMo 2 had no spike at all (the ratio is unbounded; JSON has no infinity)
        "ratio_0424_over_olmo2": old / new if new else None,
        "criterion": "OLMo 2 shows >= 5x fewer spikes than the 0424-like recipe at equal tokens",
        "criterion_met": bool(old >= 5 * new and old > 0),
        "runs": rows,
    }
    (out / "stability.json").write_text(json.dumps(summary, indent=1) + "\n")

    lines = ["| recipe | seed | lr | tokens | spikes (loss / grad-norm) | spike steps | final val loss | max grad norm |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["recipe"], r["seed"])):
        lines.append(f"| {RECIPES[r['recipe']]} | {r['seed']} | {r['lr']:g} | {r['tokens']:,} | {r['spikes']} "
                     f"({r['loss_spikes']} / {r['grad_norm_spikes']}) | {', '.join(map(str, r['spike_steps'])) or '-'} "
                     f"| {r['final_val_loss']:.3f} | {r['max_grad_norm']:.2f} |")
    lines += ["", "| recipe | runs | spikes | loss spikes | grad-norm spikes | mean final val loss |", "|---|---|---|---|---|---|"]
    for recipe, s in per_recipe.items():
        lines.append(f"| {RECIPES[recipe]} | {s['runs']} | {s['spikes']} | {s['loss_spikes']} | {s['grad_norm_spikes']} "
                     f"| {s['mean_final_val_loss']:.3f} |")
    ratio = summary["ratio_0424_over_olmo2"]
    lines += ["", f"0424-like / OLMo 2 spikes: {old} / {new}"
              + (f" = {ratio:.1f}×" if ratio is not None else " (no OLMo 2 spike: the ratio is unbounded)"), "",
              "## Documents behind each spike (top 3 by summed token loss)", ""]
    for r in sorted(rows, key=lambda r: (r["recipe"], r["seed"])):
        for spike in read_spikes(out / r["name"]) if (out / r["name"] / "spikes.jsonl").exists() else []:
            docs = "; ".join(f"`{d['id']}` ({d['source']}, {d['tokens']} tokens, mean loss {d['mean_loss']:.2f})"
                             for d in spike["documents"][:3])
            lines.append(f"- {r['name']} step {spike['step']} ({', '.join(sorted(spike['spiked']))}): {docs}")
    (out / "stability.md").write_text("\n".join(lines) + "\n")
    plot(out, rows)
    print("\n".join(lines[: len(rows) + 8 + len(RECIPES)]))
    print(f"\nwrote {out / 'stability.json'}, {out / 'stability.md'}, {out / 'stability.png'}")
    return summary


def plot(out: Path, rows: list[dict[str, Any]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmforge.plot import read_metrics

    colors = {"olmo0424": "tab:red", "olmo2": "tab:blue"}
    fig, (ax_loss, ax_gn) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, height_ratios=[2, 1])
    for r in rows:
        metrics = [m for m in read_metrics(out / r["name"]) if "loss" in m]
        steps = [m["step"] for m in metrics]
        label = f"{RECIPES[r['recipe']]} seed {r['seed']}"
        ax_loss.plot(steps, [m["loss"] for m in metrics], color=colors[r["recipe"]], lw=0.8, alpha=0.7, label=label)
        ax_gn.plot(steps, [m["grad_norm"] for m in metrics], color=colors[r["recipe"]], lw=0.8, alpha=0.7)
        by_step = {m["step"]: m for m in metrics}
        spiked = [s for s in r["spike_steps"] if s in by_step]
        ax_loss.plot(spiked, [by_step[s]["loss"] for s in spiked], "x", color=colors[r["recipe"]], ms=8)
        ax_gn.plot(spiked, [by_step[s]["grad_norm"] for s in spiked], "x", color=colors[r["recipe"]], ms=8)
    ax_loss.set_ylabel("train loss (nats/token)")
    ax_loss.set_title(f"stability at lr {rows[0]['lr']:g}: × marks a spike (6σ over 128 steps)")
    ax_loss.legend(fontsize=7, ncol=2)
    ax_gn.set_yscale("log")
    ax_gn.set_ylabel("gradient norm")
    ax_gn.set_xlabel("step")
    fig.tight_layout()
    path = out / "stability.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "experiments" / "stability")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--lr", type=float, default=None, help="override both configs' optim.lr")
    parser.add_argument("--steps", type=int, default=None, help="override both configs' trainer.max_steps")
    parser.add_argument("--quick", action="store_true", help="30 steps per run (a smoke test of the script)")
    parser.add_argument("--report", action="store_true", help="only rebuild the tables and plot")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        train_all(args, args.out)
    report(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
