"""µP learning-rate transfer: does the best LR stay put as the model widens?

An LR sweep at widths 64, 128, 256, 512 under standard parametrization and under µP
(mup_base_d_model 64), on the demo corpus (`make demo` first: runs/demo/tokens/{train,val},
runs/demo/tokenizer.json). Every point is an ordinary in-process `lmforge.train.trainer.train`
run of configs/experiments/mup/base.yaml (2 layers, 4 heads at every width, mlp_hidden = 3·d,
seq 128, 1,024-token batches, 64 steps = 65,536 tokens, warmup 6 then cosine) with d_model,
mlp_hidden, parametrization and optim.lr overridden, in OUT/runs/<param>-w<width>-lr<lr>/.
Its final validation loss (8,192 tokens, the same for every run) is appended to
OUT/results.jsonl as soon as it finishes, so an interrupted sweep resumes where it stopped
(a run dir without a results row is started over); the run's checkpoint is then deleted
(--keep-checkpoints keeps it).

Outputs in OUT: results.jsonl (a row per run), lr_transfer.json (best LR per width per
parametrization; under µP whether the best LRs of all widths are the same grid point or
adjacent ones; under standard how many octaves the best LR moves from width 64 to 512),
lr_transfer.png (val loss against LR, one panel per parametrization, one line per width) and
lr_transfer.md (the same as a table).

    python experiments/mup_lr_transfer.py --out runs/mup-lr-transfer           # the full sweep
    python experiments/mup_lr_transfer.py --out /tmp/lrt-quick --quick         # smoke: 8 short runs
    python experiments/mup_lr_transfer.py --out runs/mup-lr-transfer --report  # tables/plot only

Runtime: the full sweep (6 LRs 2^-10 … 2^-5 × 4 widths × 2 parametrizations = 48 runs) took 9 minutes
on 2 free cores (2026-11-28). The estimate made before it was run:
Measured while the 2 cores were shared with other jobs (load ≈ 7): a width-512 run trained at
~450 tokens/s wall, ~900 tokens per CPU-second. Training FLOPs per token at widths
64/128/256/512 are ≈ 0.04/0.11/0.31/1 of width 512's (vocab-4096 head included), so a
sweep costs ≈ 16 × 1.5 = 24 width-512 runs. With both cores free (~1,500 tokens/s at width
512) a width-512 run takes ~45 s of training (65,536 tokens) + ~5 s of validation and
checkpointing, and the sweep ≈ 16 × (50 + 4 × 5 + 25) s ≈ 25 minutes; on a loaded machine
expect 2–3× that. The progress line's ETA extrapolates from the runs done so far, weighted
by each run's FLOPs. Shorten with --set trainer.max_tokens=32768 or fewer --log2-lrs.
Unloaded, a width-64 run's fixed cost (build, 2 validations, final checkpoint) is ~2 s; the
first run of a process pays ~20 s more (imports, first DCP save). `--quick` (8 runs of 8
steps) took 4m19s wall / 2m10s CPU with the cores shared (load ≈ 7), well under a minute idle.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "configs/experiments/mup/base.yaml"
WIDTHS = (64, 128, 256, 512)
LOG2_LRS = (-10, -9, -8, -7, -6, -5)
PARAMETRIZATIONS = ("standard", "mup")
MUP_BASE = 64
QUICK = dict(widths=(64, 128), log2_lrs=(-8, -6), max_tokens=8192)


def run_name(param: str, width: int, lr: float) -> str:
    return f"{param}-w{width}-lr{lr:.3g}"


def flops_per_token(cfg) -> float:
    """Training FLOPs per token of a model config (matmuls and attention scores), for the ETA."""
    m, T = cfg.model, cfg.data.seq_len
    per_layer = 2 * m.d_model * (m.n_heads + 2 * m.kv_heads) * m.head_dim + 2 * m.d_model**2 \
        + 6 * m.d_model * m.mlp_hidden + 4 * T * m.d_model
    return 3 * (m.n_layers * per_layer + 2 * m.d_model * m.padded_vocab_size)


def run_config(base: Path, out: Path, param: str, width: int, lr: float, overrides: list[str]):
    """The RunConfig of one sweep point: base.yaml with width, MLP, parametrization, LR and run
    dir overridden (relative data/tokenizer paths are taken from the repository root)."""
    from lmforge.config import apply_overrides
    from lmforge.train.config import RunConfig

    data = yaml.safe_load(base.read_text())

    def rooted(p):
        return str(p if Path(p).is_absolute() else ROOT / p)

    data["data"]["train"] = [rooted(p) for p in data["data"]["train"]]
    data["data"]["validation"] = [rooted(p) for p in data["data"].get("validation", [])]
    if data.get("tokenizer"):
        data["tokenizer"] = rooted(data["tokenizer"])
    point = [
        f"model.d_model={width}",
        f"model.mlp_hidden={3 * width}",
        f"model.parametrization={param}",
        f"model.mup_base_d_model={MUP_BASE}",
        f"optim.lr={lr!r}",
        f"trainer.run_dir={out / 'runs' / run_name(param, width, lr)}",
    ]
    return RunConfig.from_dict(apply_overrides(data, [*point, *overrides]))


def read_results(path: Path) -> dict[tuple[str, int, float], dict]:
    rows = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[(row["parametrization"], row["width"], row["lr"])] = row
    return rows


def fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def sweep(out: Path, base: Path, params, widths, lrs, overrides: list[str], keep_checkpoints: bool) -> None:
    import torch

    from lmforge.experiments.train_run import train

    results_path = out / "results.jsonl"
    done = read_results(results_path)
    points = [(p, w, lr) for p in params for w in widths for lr in lrs]
    todo = [pt for pt in points if pt not in done]
    cfgs = {pt: run_config(base, out, *pt, overrides) for pt in todo}
    cost = {pt: flops_per_token(c) * c.max_steps * c.trainer.batch_tokens for pt, c in cfgs.items()}
    total_cost, spent_cost, spent_time = sum(cost.values()), 0.0, 0.0
    print(f"{len(points)} runs, {len(points) - len(todo)} already done, {len(todo)} to go; results in {results_path}",
          flush=True)
    for i, pt in enumerate(todo, 1):
        cfg, (param, width, lr) = cfgs[pt], pt
        run_dir = Path(cfg.trainer.run_dir)
        if run_dir.exists():
            shutil.rmtree(run_dir)  # an interrupted run: no results row, start it over
        torch.manual_seed(0)
        start = time.perf_counter()
        metrics = train(cfg)
        seconds = time.perf_counter() - start
        val = float(metrics.get("val_loss", math.nan))
        row = {
            "parametrization": param, "width": width, "lr": lr, "log2_lr": round(math.log2(lr), 6),
            "val_loss": val if math.isfinite(val) else None, "diverged": not math.isfinite(val),
            "train_loss": float(metrics.get("loss", math.nan)), "steps": cfg.max_steps,
            "tokens": cfg.max_steps * cfg.trainer.batch_tokens, "seconds": round(seconds, 2),
            "mlp_hidden": cfg.model.mlp_hidden, "run_dir": str(run_dir),
        }
        with results_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if not keep_checkpoints:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        spent_cost += cost[pt]
        spent_time += seconds
        eta = spent_time / spent_cost * (total_cost - spent_cost)
        loss = f"{val:.4f}" if math.isfinite(val) else "diverged"
        print(f"[{i}/{len(todo)}] {run_name(*pt)}: val {loss} in {seconds:.1f}s "
              f"({row['tokens'] / seconds:,.0f} tok/s) | elapsed {fmt_time(spent_time)} | ETA {fmt_time(eta)}",
              flush=True)


# -- the report ------------------------------------------------------------------------------


def analyse(rows: dict, params, widths, lrs) -> dict:
    """Best LR per width per parametrization, and how far it moves across widths."""
    report: dict = {"widths": list(widths), "lrs": list(lrs), "log2_lrs": [math.log2(lr) for lr in lrs],
                    "parametrizations": {}}
    for param in params:
        curves, best = {}, {}
        for w in widths:
            losses = [rows.get((param, w, lr), {}).get("val_loss") for lr in lrs]
            curves[str(w)] = losses
            finite = [(v, k) for k, v in enumerate(losses) if v is not None]
            if finite:
                best[str(w)] = min(finite)[1]
        entry = {
            "val_loss": curves,
            "best_lr": {w: lrs[k] for w, k in best.items()},
            "best_index": best,
            "best_val_loss": {w: curves[w][k] for w, k in best.items()},
            "complete": all((param, w, lr) in rows for w in widths for lr in lrs),
        }
        if len(best) >= 2:
            idx = list(best.values())
            entry["index_spread"] = max(idx) - min(idx)  # grid steps between the extreme best LRs
            entry["same_or_adjacent"] = entry["index_spread"] <= 1
            first, last = str(min(map(int, best))), str(max(map(int, best)))
            entry["shift_octaves"] = math.log2(lrs[best[first]] / lrs[best[last]])  # > 0: wider wants smaller
        report["parametrizations"][param] = entry
    mup, std = report["parametrizations"].get("mup", {}), report["parametrizations"].get("standard", {})
    report["mup_best_lr_same_or_adjacent"] = mup.get("same_or_adjacent")
    report["standard_shift_octaves"] = std.get("shift_octaves")
    report["mup_shift_octaves"] = mup.get("shift_octaves")
    return report


def write_report(out: Path, report: dict) -> None:
    (out / "lr_transfer.json").write_text(json.dumps(report, indent=1))
    widths, lrs = report["widths"], report["lrs"]
    lines = ["# µP learning-rate transfer", "",
             "Final validation loss per width and learning rate; **bold** = best LR of the width.", ""]
    for param, entry in report["parametrizations"].items():
        lines += [f"## {param}", "", "| width | " + " | ".join(f"2^{math.log2(lr):g}" for lr in lrs) + " | best LR |",
                  "|---:|" + "---:|" * (len(lrs) + 1)]
        for w in widths:
            cells = []
            for k, v in enumerate(entry["val_loss"][str(w)]):
                cell = "–" if v is None else f"{v:.4f}"
                cells.append(f"**{cell}**" if entry["best_index"].get(str(w)) == k else cell)
            best = entry["best_lr"].get(str(w))
            lines.append(f"| {w} | " + " | ".join(cells) + f" | {'–' if best is None else f'{best:.3g}'} |")
        if "shift_octaves" in entry:
            lines += ["", f"Best LR moves {entry['shift_octaves']:+.0f} octave(s) from width {widths[0]} to "
                      f"{widths[-1]} (positive: wider wants a smaller LR); best LRs span {entry['index_spread']} "
                      f"grid step(s){' (same or adjacent)' if entry['same_or_adjacent'] else ''}."]
        lines.append("")
    (out / "lr_transfer.md").write_text("\n".join(lines))
    plot(out / "lr_transfer.png", report)


def plot(path: Path, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = list(report["parametrizations"])
    fig, axes = plt.subplots(1, len(params), figsize=(6 * len(params), 4.5), sharey=True, squeeze=False)
    cmap = plt.get_cmap("viridis")
    lrs, widths = report["lrs"], report["widths"]
    for ax, param in zip(axes[0], params):
        entry = report["parametrizations"][param]
        for j, w in enumerate(widths):
            color = cmap(j / max(len(widths) - 1, 1))
            pts = [(lr, v) for lr, v in zip(lrs, entry["val_loss"][str(w)]) if v is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", color=color, label=f"d_model {w}")
            if str(w) in entry["best_index"]:
                k = entry["best_index"][str(w)]
                ax.plot(lrs[k], entry["val_loss"][str(w)][k], "*", ms=14, color=color, mec="black")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("learning rate")
        ax.set_title(param if param != "mup" else f"µP (base width {MUP_BASE})")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("final validation loss")
    axes[0][-1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for runs/, results.jsonl and the report")
    ap.add_argument("--config", type=Path, default=BASE_CONFIG, help="base run config")
    ap.add_argument("--widths", default=",".join(map(str, WIDTHS)), help="comma-separated d_model values")
    ap.add_argument("--log2-lrs", default=",".join(map(str, LOG2_LRS)), help="comma-separated log2 of the LRs")
    ap.add_argument("--params", default=",".join(PARAMETRIZATIONS), help="standard,mup or one of them")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke test: widths {QUICK['widths']}, LRs 2^{QUICK['log2_lrs']}, "
                         f"{QUICK['max_tokens']} tokens per run")
    ap.add_argument("--report", action="store_true", help="only (re)write the report from results.jsonl")
    ap.add_argument("--keep-checkpoints", action="store_true", help="keep each run's final checkpoint")
    ap.add_argument("--set", action="append", default=[], metavar="DOTTED=VALUE",
                    help="override the base config, e.g. --set trainer.max_tokens=32768 (repeatable)")
    args = ap.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    lrs = [2.0 ** float(e) for e in args.log2_lrs.split(",")]
    params = args.params.split(",")
    overrides = list(args.set)
    if args.quick:
        widths, lrs = list(QUICK["widths"]), [2.0**e for e in QUICK["log2_lrs"]]
        overrides = [f"trainer.max_tokens={QUICK['max_tokens']}", *overrides]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    try:
        if not args.report:
            sweep(out, args.config, params, widths, lrs, overrides, args.keep_checkpoints)
    except Exception as e:  # a user mistake (missing demo data, bad override) is one line
        from lmforge.errors import LmforgeError

        if isinstance(e, LmforgeError):
            print(f"mup_lr_transfer: error: {e}", file=sys.stderr)
            return 2
        raise
    report = analyse(read_results(out / "results.jsonl"), params, widths, lrs)
    write_report(out, report)
    print((out / "lr_transfer.md").read_text())
    print(f"wrote {out / 'lr_transfer.json'}, {out / 'lr_transfer.md'} and {out / 'lr_transfer.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
