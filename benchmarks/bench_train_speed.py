"""Training throughput of the demo model on this machine: eager vs torch.compile, side by side.

    .venv/bin/python benchmarks/bench_train_speed.py [--steps 20] [--repeats 3]

Needs the demo's token files (run `make demo` first, or pass --tokens). Each case trains the
`configs/demo.yaml` model for --steps steps after 3 warm-up steps (compilation happens in the
warm-up); prints median tokens/s per case and the ratio; writes benchmarks/results/train_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WARMUP = 3


def tokens_per_s(tokens: Path, compile_model: bool, steps: int) -> float:
    from lmforge.data.dataset import BatchLoader
    from lmforge.train.config import RunConfig
    from lmforge.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig.from_yaml(REPO / "configs" / "demo.yaml", [
            f"--trainer.run_dir={tmp}", f"--data.train=[{tokens / 'train'}]", "--data.validation=[]",
            "--tokenizer=null", f"--trainer.compile={str(compile_model).lower()}", f"--trainer.max_steps={steps + WARMUP}",
        ])
        trainer = Trainer(cfg, callbacks=[])
        batches = iter(BatchLoader(trainer.dataset, cfg.batch_instances))
        for trainer.step in range(1, WARMUP + 1):
            trainer.train_step(next(batches))
        start = time.perf_counter()
        for trainer.step in range(WARMUP + 1, WARMUP + steps + 1):
            metrics = trainer.train_step(next(batches))
        float(metrics["loss"])  # wait for the last step
        return steps * cfg.trainer.batch_tokens / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=Path, default=REPO / "runs" / "demo" / "tokens")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not (args.tokens / "train" / "meta.json").exists():
        print(f"{args.tokens}/train has no token files: run `make demo` first or pass --tokens", file=sys.stderr)
        return 2
    rates: dict[str, list[float]] = {"eager": [], "torch.compile": []}
    for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
        rates["eager"].append(tokens_per_s(args.tokens, False, args.steps))
        rates["torch.compile"].append(tokens_per_s(args.tokens, True, args.steps))
    med = {k: statistics.median(v) for k, v in rates.items()}
    for name, rate in med.items():
        print(f"{name:<14} {rate:10,.0f} tokens/s (median of {args.repeats})")
    print(f"ratio compile / eager {med['torch.compile'] / med['eager']:.2f}x")
    print(f"command: .venv/bin/python benchmarks/bench_train_speed.py --steps {args.steps} --repeats {args.repeats}")
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_speed.json").write_text(json.dumps({"tokens_per_s": rates, "median": med}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
