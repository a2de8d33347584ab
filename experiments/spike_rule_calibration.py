"""Calibrating the spike monitor's early (robust) rule: record the first 64 steps of clean tiny
runs, then score every early step the way the monitor would, and the rule's false-alarm rate on
Gaussian noise. The numbers in lmforge/train/spikes.py's docstring come from this script.

    .venv/bin/python experiments/spike_rule_calibration.py --out /tmp/spk   # ~20 min on 2 CPU cores

Runs: the test model of tests/test_spikes.py on tests/conftest.py's synthetic corpus (4 seeds ×
lr 3e-3, 1e-2, 3e-2, 1e-1), configs/demo.yaml on the demo corpus (3 seeds × 3e-3, 1e-2, 3e-2),
and both stability recipes (3 seeds at 3e-2). Curves are cached in OUT/curves/.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


class Stop(Exception):
    pass


def record(cfg_dict: dict, steps: int) -> list[tuple[int, float, float]]:
    from lmforge.train.callback import Callback
    from lmforge.train.callbacks import default_callbacks
    from lmforge.train.config import RunConfig
    from lmforge.train.trainer import Trainer

    class Record(Callback):
        name, priority = "record", 26

        def __init__(self):
            self.rows: list[tuple[int, float, float]] = []

        def pre_optim_step(self, trainer, batch, metrics):
            self.rows.append((trainer.step, float(metrics["loss"]), float(metrics["grad_norm"])))
            return True

        def post_step(self, trainer, metrics):
            if trainer.step >= steps:
                raise Stop

    rec = Record()
    cfg = RunConfig.from_dict(cfg_dict)
    trainer = Trainer(cfg, callbacks=[c for c in default_callbacks(cfg) if c.name != "checkpointer"] + [rec])
    try:
        trainer.fit()
    except Stop:
        pass
    trainer.close()
    return rec.rows


def configs(out: Path) -> dict[str, dict]:
    """name → run config, for every run of the calibration."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import write_corpus

    from lmforge.data.tokenize import tokenize
    from lmforge.data.tokenizer import train_bpe
    from lmforge.demo import prepare_data

    fixture = out / "fixture"
    if not (fixture / "train" / "meta.json").exists():
        fixture.mkdir(parents=True, exist_ok=True)
        corpus = write_corpus(fixture / "train.jsonl", 600, seed=1)  # as tests/conftest.py's token_data
        tokenize([corpus], train_bpe([corpus], vocab_size=512, show_progress=False), fixture / "train", workers=1,
                 progress=False, overwrite=True)
    prepare_data(out / "demo", verbose=False)
    runs = {}
    for seed in range(4):
        for lr in (3e-3, 1e-2, 3e-2, 1e-1):
            runs[f"test-model-s{seed}-lr{lr:g}"] = {
                "model": {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "mlp_hidden": 128},
                "data": {"train": [str(fixture / "train")], "seq_len": 64},
                "optim": {"lr": lr, "warmup_steps": 4, "schedule": "constant"},
                "trainer": {"batch_tokens": 512, "micro_batch_size": 4, "max_steps": 400, "seed": seed}}
    recipes = {"demo": ("configs/demo.yaml", (3e-3, 1e-2, 3e-2)),
               "stability-olmo0424": ("configs/experiments/stability/olmo0424.yaml", (3e-2,)),
               "stability-olmo2": ("configs/experiments/stability/olmo2.yaml", (3e-2,))}
    for name, (path, lrs) in recipes.items():
        for seed in range(3):
            for lr in lrs:
                d = yaml.safe_load((REPO / path).read_text())
                d["data"] = {"train": [str(out / "demo" / "tokens" / "train")], "seq_len": 256}
                d["tokenizer"] = None
                d.pop("spikes", None)
                d["optim"]["lr"] = lr
                d["trainer"]["seed"] = seed
                runs[f"{name}-s{seed}-lr{lr:g}"] = d
    for name, d in runs.items():
        d["trainer"].update(run_dir=str(out / "runs" / name), log_every=1, checkpoint_every=100_000)
    return runs


def scores(rows, cfg) -> dict[str, list[tuple[float, int, float]]]:
    """Per key: (score, step, value / median) of each early step, against all earlier values."""
    from lmforge.train.spikes import robust_threshold

    out = {}
    for key, col in (("loss", 1), ("grad_norm", 2)):
        xs = [r[col] for r in rows]
        out[key] = []
        for i in range(cfg.robust_min_history, cfg.min_history):
            median, spread, _ = robust_threshold(xs[:i], cfg.robust_k, cfg.robust_min_spread)
            out[key].append(((xs[i] - median) / spread, i + 1, xs[i] / median))
    return out


def gaussian_false_alarms(k: float, floor: float, cv: float, runs: int = 20_000, seed: int = 0) -> float:
    """Share of runs of iid Gaussian values (mean 1, std cv) with a bar crossed in steps 9–32."""
    x = np.abs(1 + cv * np.random.default_rng(seed).standard_normal((runs, 32)))
    alarm = np.zeros(runs, bool)
    for n in range(8, 32):
        h = x[:, :n]
        med = np.median(h, 1)
        spread = np.maximum(1.4826 * np.median(np.abs(h - med[:, None]), 1), floor * med)
        alarm |= x[:, n] > med + k * spread
    return float(alarm.mean())


def smooth_rise_score(n: int, growth: float) -> float:
    """Score of the next value of a smooth exponential rise by `growth`× over n values."""
    x = np.exp(np.log(growth) / (n - 1) * np.arange(n + 1))
    median = np.median(x[:n])
    return float((x[n] - median) / (1.4826 * np.median(np.abs(x[:n] - median))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/spike_rule_calibration")
    args = parser.parse_args()
    out = Path(args.out)
    (out / "curves").mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    from lmforge.train.spikes import SpikeConfig, judge_series

    cfg = SpikeConfig()
    for name, d in configs(out).items():
        path = out / "curves" / f"{name}.json"
        if not path.exists():
            shutil.rmtree(d["trainer"]["run_dir"], ignore_errors=True)
            path.write_text(json.dumps(record(d, 64)))
        rows = json.loads(path.read_text())
        spikes, _ = judge_series([{"step": s, "loss": l, "grad_norm": g} for s, l, g in rows], cfg)
        line = [f"{name:<32}"]
        for key, values in scores(rows, cfg).items():
            z, step, ratio = max(values)
            line.append(f"{key} max score {z:6.2f} (step {step}, {ratio:.2f}× median)")
        early = [f"{s['step']} ({'+'.join(sorted(s['spiked']))})" for s in spikes if s["step"] <= cfg.min_history]
        line.append("early spikes: " + (", ".join(early) or "none"))
        print(" | ".join(line), flush=True)
    for growth in (3, 10, 100):
        print(f"smooth rise by {growth}× over 8, 16, 31 values: scores "
              + ", ".join(f"{smooth_rise_score(n, growth):.2f}" for n in (8, 16, 31)))
    print(f"Gaussian noise, share of runs with a bar crossed in steps 9–32 (robust_k={cfg.robust_k:g}):")
    for k in (6, 8, 10):
        for floor in (0.0, 0.1):
            rates = ", ".join(f"cv {cv:g}: {gaussian_false_alarms(k, floor, cv):.2%}" for cv in (0.02, 0.1, 0.3))
            print(f"  k {k:<2} floor {floor:<4} {rates}")


if __name__ == "__main__":
    main()
